"""Base models, built by name from the registry `MODELS`.

Every model exposes `features(x)` (the penultimate layer, what ResMem's kNN searches in) and `head`
(the final linear layer), with forward(x) = head(features(x)).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from resmem.config import ConfigError
from resmem.io import check_hash_in_name


class SmallCNN(nn.Module):
    """Two 3×3 conv stages (width, 2·width channels), global average pooling, a linear head.

    Global pooling keeps the parameter count small at small widths, so one family spans models that
    underfit 8×8 digits to models that fit their training data. The convolutions have no bias: the batch norm
    after each subtracts it again, so its gradient is rounding noise, which Adam's normalized steps would turn
    into a random walk of the bias and of the running means that follow it."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:  # projection shortcut (He et al. option B)
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. 2016 (Sec. 4.2): depth 6n+2, three stages of n basic blocks with
    16, 32, 64 channels (times `width_multiplier`), global average pooling, a linear head."""

    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 20, width_multiplier: float = 1.0):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"cifar_resnet depth must be 6n+2 (8, 14, 20, 32, 44, 56, ...), got {depth}")
        blocks = (depth - 2) // 6
        widths = [max(1, round(c * width_multiplier)) for c in (16, 32, 64)]
        layers = [
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        in_width = widths[0]
        for stage, width in enumerate(widths):
            for block in range(blocks):
                layers.append(BasicBlock(in_width, width, 2 if stage > 0 and block == 0 else 1))
                in_width = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(in_width, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TorchvisionResNet(nn.Module):
    """torchvision's ResNet-18/34/50 with `features` = everything up to the pooled 512/2048-dim vector.

    pretrained=True loads torchvision's ImageNet weights through its weights API (cached under
    torch.hub.get_dir()); the head is replaced when the class count is not ImageNet's 1000."""

    def __init__(self, name: str, num_classes: int, in_channels: int = 3, pretrained: bool = False):
        super().__init__()
        import torchvision

        builder = getattr(torchvision.models, name)
        weights = torchvision.models.get_model_weights(name).DEFAULT if pretrained else None
        net = builder(weights=None)
        if weights is not None:
            net.load_state_dict(_pretrained_state_dict(name, weights))
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.head = net.fc if net.fc.out_features == num_classes else nn.Linear(net.fc.in_features, num_classes)
        net.fc = nn.Identity()
        self.body = net
        self.normalization = (weights.transforms().mean, weights.transforms().std) if pretrained else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _pretrained_state_dict(name: str, weights) -> dict:
    """torchvision's weights, with a message that says where to put the file when there is no network. A cached
    file is first checked against the sha256 prefix in its name (torch checks it only when it downloads), and
    every file is read as data only (weights_only)."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if cached.exists():
        check_hash_in_name(cached, f"pretrained weights for {name}")
    try:
        return torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ConfigError(f"{cached}: not a plain weights file ({exc}); delete it and fetch it again") from None
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        raise ConfigError(
            f"pretrained weights for {name} ({weights}) are not in {cached} and could not be downloaded "
            f"({exc}). Download {weights.url} where there is network and copy it to {cached} (or set "
            f"TORCH_HOME), or set 'pretrained: false' for this model."
        ) from None


def _torchvision(name: str):
    def build(num_classes: int, in_channels: int = 3, pretrained: bool = False) -> TorchvisionResNet:
        return TorchvisionResNet(name, num_classes, in_channels, pretrained)

    return build


class TimmModel(nn.Module):
    """Any timm model (`name`), from scratch or with its pretrained weights (`pretrained`), with the model's own
    keyword arguments passed through to timm.create_model. `features` = the pooled pre-logits
    (forward_head(..., pre_logits=True)) and `head` = its classifier, so that head(features(x)) is the model's
    own output and embeddings and logits agree. Pretrained weights come from timm's cache (the workflow fetches
    them before any job: resmem.vision.pretrained); with `pretrained`, inputs are normalized with the constants
    the weights were trained with (`normalization`)."""

    def __init__(self, num_classes: int, in_channels: int = 3, name: str = "", pretrained: bool = False, **kwargs):
        super().__init__()
        import timm

        self.net = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels,
                                     **kwargs)  # fmt: skip
        cfg = self.net.pretrained_cfg
        self.normalization = (tuple(cfg["mean"]), tuple(cfg["std"])) if pretrained and "mean" in cfg else None

    @property
    def head(self) -> nn.Module:
        return self.net.get_classifier()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


MODELS = {
    "cifar_resnet": CifarResNet,
    "timm": TimmModel,
    "resnet18": _torchvision("resnet18"),
    "resnet34": _torchvision("resnet34"),
    "resnet50": _torchvision("resnet50"),
    "small_cnn": SmallCNN,
}


def build_model(spec: dict, num_classes: int, in_channels: int) -> nn.Module:
    """spec = a model entry of the config: {'arch': name, **keyword arguments of that architecture}."""
    kwargs = {k: v for k, v in spec.items() if k != "arch"}
    try:
        cls = MODELS[spec["arch"]]
    except KeyError:
        raise ConfigError(f"unknown model arch {spec['arch']!r}; known: {sorted(MODELS)}") from None
    return cls(num_classes=num_classes, in_channels=in_channels, **kwargs)


@torch.inference_mode()
def extract(model: nn.Module, loader, amp: bool = False):
    """Yield (penultimate features, logits) float32 numpy blocks of the loader's examples, in order, in eval
    mode: callers stream them to disk instead of holding a whole split in memory."""
    model.to(loader.device).eval()
    with torch.autocast(loader.device.type, dtype=torch.bfloat16, enabled=amp):
        for x, _ in loader.epoch():
            f = model.features(x)
            yield f.float().cpu().numpy(), model.head(f).float().cpu().numpy()
