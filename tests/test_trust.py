"""Files from elsewhere are data, never code: a pickled call planted in a model file, a training checkpoint or a
cached weights file is refused before it runs (the marker file it would create never appears), and the run
goes on or stops with a message naming the file."""

import hashlib
import os

import numpy as np
import pytest
import torch
import torchvision

from resmem.config import ConfigError, load
from resmem.io import ArtifactError
from resmem.train import train
from resmem.vision.data import Pool
from resmem.vision.loader import Loader
from resmem.vision.models import build_model
from resmem.vision.stages import load_model
from tests.conftest import REPO


class PlantedCall:
    """Unpickles as os.system(command): what a crafted .pt file can hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def planted_file(path, marker, wrap=lambda call: call):
    torch.save(wrap(PlantedCall(marker)), path)
    return path


def test_the_planted_call_runs_when_unpickled(tmp_path):
    """The crafted files below are effective: loading one the unsafe way runs the command."""
    planted_file(tmp_path / "x.pt", tmp_path / "ran")
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert (tmp_path / "ran").exists()


def test_a_model_file_holding_a_pickled_call_is_refused(tmp_path):
    path = planted_file(tmp_path / "model.pt", tmp_path / "ran", lambda call: {"state_dict": call, "meta": {}})
    with pytest.raises(ArtifactError, match=r"model.pt: not a model file this workflow wrote .*rerun train"):
        load_model(path)
    assert not (tmp_path / "ran").exists()


def test_a_model_file_for_another_model_spec_is_refused(tmp_path):
    """The network is the config's: a file trained for another spec names both and the rule to rerun."""
    net = build_model({"arch": "small_cnn", "width": 2}, 10, 1)
    meta = {"model": {"arch": "small_cnn", "width": 2}, "num_classes": 10, "in_channels": 1}
    torch.save({"state_dict": net.state_dict(), "meta": meta}, tmp_path / "model.pt")
    model, _ = load_model(tmp_path / "model.pt", {"arch": "small_cnn", "width": 2})
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), net.state_dict().values(), strict=True))
    with pytest.raises(
        ArtifactError, match=r"trained for the model \{'arch': 'small_cnn', 'width': 2\}, but the config"
    ):
        load_model(tmp_path / "model.pt", {"arch": "small_cnn", "width": 4})


def test_a_checkpoint_holding_a_pickled_call_is_ignored_and_training_runs(tmp_path):
    recipe = load(REPO / "config" / "smoke.yaml")["experiments"]["smoke"]["train"]
    recipe = {**recipe, "epochs": 1}
    rng = np.random.default_rng(0)
    pool = Pool(rng.integers(0, 10, 40), images=rng.integers(0, 16, (40, 1, 8, 8)).astype(np.uint8), scale=16.0)
    loader = Loader(pool, np.arange(40), 16, torch.device("cpu"))
    checkpoint = planted_file(tmp_path / "train_checkpoint.pt", tmp_path / "ran", lambda call: {"history": call})
    history = train(build_model({"arch": "small_cnn", "width": 2}, 10, 1), loader, loader, recipe, 0,
                    torch.device("cpu"), checkpoint)  # fmt: skip
    assert [row["epoch"] for row in history] == [1]
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("hash_matches", [False, True])
def test_cached_pretrained_weights_holding_a_pickled_call_are_refused(tmp_path, monkeypatch, hash_matches):
    """torchvision weights in the hub cache: a file whose sha256 is not the prefix in its name is refused before
    it is read; one whose name matches its content is still read as data only."""
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    planted = planted_file(tmp_path / "planted.pt", tmp_path / "ran")
    prefix = hashlib.sha256(planted.read_bytes()).hexdigest()[:8] if hash_matches else "f37072fd"
    planted.rename(checkpoints / f"resnet18-{prefix}.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    weights = torchvision.models.Weights(f"https://example.invalid/resnet18-{prefix}.pth", None, {})
    monkeypatch.setattr(torchvision.models, "get_model_weights", lambda name: type("W", (), {"DEFAULT": weights}))
    message = "not a plain weights file" if hash_matches else f"is not the {prefix} its name promises"
    with pytest.raises(ConfigError, match=message):
        build_model({"arch": "resnet18", "pretrained": True}, 10, 3)
    assert not (tmp_path / "ran").exists()
