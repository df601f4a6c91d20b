"""Pretrained weights of a config's image models (torchvision's and timm's), found in their caches or fetched
once, in the process that plans the workflow, before any job: jobs (often on cluster nodes without network)
only ever read the cache, and an offline run without the weights stops before it starts, naming the weights
and the folder to put them in."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from resmem.config import ConfigError
from resmem.io import fetch_or_explain, hub_files

TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50")


def pretrained_models(config: dict) -> list[tuple[str, dict]]:
    """(config key path, model spec) of every image model with `pretrained: true`."""
    return [
        (f"experiments.{name}.models.{model}", spec)
        for name, experiment in (config.get("experiments") or {}).items()
        for model, spec in experiment.get("models", {}).items()
        if spec.get("pretrained")
    ]


def _torchvision_weights(name: str):
    import torchvision

    return torchvision.models.get_model_weights(name).DEFAULT


def locate(spec: dict) -> tuple[str, Path, bool]:
    """(what the weights are, the folder they are cached in, whether they are there) for a model spec."""
    import torch

    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    if spec["arch"] in TORCHVISION_ARCHS:
        weights = _torchvision_weights(spec["arch"])
        return f"{weights} ({weights.url})", checkpoints, (checkpoints / Path(weights.url).name).exists()
    import timm.models
    from huggingface_hub import constants, try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(spec["name"])
    if cfg is None:
        raise ConfigError(f"timm has no pretrained weights for {spec['name']!r}; set pretrained: false")
    if cfg.hf_hub_id:
        found = any(
            isinstance(try_to_load_from_cache(cfg.hf_hub_id, file), str)
            for file in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
        )
        return f"Hugging Face hub {cfg.hf_hub_id}", Path(constants.HF_HUB_CACHE), found
    return f"{spec['name']} ({cfg.url})", checkpoints, (checkpoints / Path(cfg.url).name).exists()


def download(spec: dict) -> None:
    if spec["arch"] in TORCHVISION_ARCHS:
        _torchvision_weights(spec["arch"]).get_state_dict(progress=True, check_hash=True, weights_only=True)
    else:
        import timm.models

        cfg = timm.models.get_pretrained_cfg(spec["name"])
        if cfg is not None and cfg.hf_hub_id:
            hub_files(cfg.hf_hub_id)  # fails at once where the hub cannot be reached
        timm.create_model(spec["name"], pretrained=True)


def check_timm_names(config: dict) -> None:
    """Every `arch: timm` model names a model timm has (timm is imported only when one is configured)."""
    named = [
        (f"experiments.{name}.models.{model}.name", spec["name"])
        for name, experiment in (config.get("experiments") or {}).items()
        for model, spec in experiment.get("models", {}).items()
        if spec["arch"] == "timm"
    ]
    if not named:
        return
    import timm

    for at, model_name in named:
        if not timm.is_model(model_name.split(".")[0]):
            close = timm.list_models(f"*{model_name.split('.')[0][:6]}*")[:5]
            raise ConfigError(f"invalid config at {at}: timm has no model {model_name!r} (similar: {close})")


def fetch_missing(config: dict) -> None:
    """Fetch the pretrained weights the config's models need and their caches lack; without network, a
    ConfigError naming the model's key, the weights and the folder they belong in."""
    for at, spec in pretrained_models(config):
        what, folder, cached = locate(spec)
        if cached:
            continue
        fetch_or_explain(
            f"{at}.pretrained",
            f"the weights {what} are",
            folder,
            partial(download, spec),
            f"Where there is network, run the workflow once (or `python -m resmem.vision.pretrained CONFIG`) and "
            f"copy {folder} here (or point TORCH_HOME / HF_HOME at a copy), or set pretrained: false",
        )


if __name__ == "__main__":
    import sys

    from resmem.config import load

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fetch_missing(load(sys.argv[1]))
