"""Base models, built by name from the registry `MODELS`.

Every model exposes `features(x)` (the penultimate layer, what ResMem's kNN searches in) and `head`
(the final linear layer), with forward(x) = head(features(x)).
"""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two 3×3 conv stages (width, 2·width channels), global average pooling, a linear head.

    Global pooling keeps the parameter count small at small widths, so one family spans models that
    underfit 8×8 digits to models that fit their training data."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
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


MODELS = {"small_cnn": SmallCNN}


def build_model(spec: dict, num_classes: int, in_channels: int) -> nn.Module:
    """spec = a model entry of the config: {'arch': name, **keyword arguments of that architecture}."""
    kwargs = {k: v for k, v in spec.items() if k != "arch"}
    try:
        cls = MODELS[spec["arch"]]
    except KeyError:
        raise ValueError(f"unknown model arch {spec['arch']!r}; known: {sorted(MODELS)}") from None
    return cls(num_classes=num_classes, in_channels=in_channels, **kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
