"""The model registry: every name builds and trains a step on the CPU; sizes rise along each family."""

import os
import subprocess
import sys

import pytest
import torch
import yaml

from resmem.config import ConfigError, validate
from resmem.train import count_parameters, lr_factor
from resmem.vision.models import MODELS, build_model

FAMILIES = {
    "small_cnn width": [{"arch": "small_cnn", "width": w} for w in (1, 2, 4, 8, 32)],
    "cifar_resnet depth": [{"arch": "cifar_resnet", "depth": d} for d in (8, 14, 20, 32)],
    "cifar_resnet width": [{"arch": "cifar_resnet", "depth": 8, "width_multiplier": m} for m in (0.5, 1, 2)],
    "torchvision": [{"arch": a} for a in ("resnet18", "resnet34", "resnet50")],
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_parameter_counts_rise_along_each_family(family):
    sizes = [count_parameters(build_model(spec, 100, 3)) for spec in FAMILIES[family]]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


def test_cifar_resnet20_has_the_papers_size():
    # He et al. 2016, Table 6: ResNet-20 has 0.27M parameters (on CIFAR-10; 100 classes add 5,850).
    assert abs(count_parameters(build_model({"arch": "cifar_resnet", "depth": 20}, 10, 3)) - 0.27e6) < 0.01e6


ARCH_KEYS = {"timm": {"name": "test_vit", "img_size": 32}}  # timm: any of its models; a tiny ViT here


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_every_model_builds_and_trains_one_step_on_cpu(arch):
    torch.manual_seed(0)
    model = build_model({"arch": arch, **ARCH_KEYS.get(arch, {})}, num_classes=7, in_channels=3).eval()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    features = model.features(x)
    assert features.ndim == 2 and model(x).shape == (4, 7)
    torch.testing.assert_close(model.head(features), model(x))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_depth_must_be_6n_plus_2():
    config = {"experiments": {"x": {"models": {"r": {"arch": "cifar_resnet", "depth": 21}}}}}
    with pytest.raises(ConfigError, match=r"experiments.x.models.r.depth: 21 is not 6n\+2"):
        validate(config)


def test_pretrained_weights_offline_say_where_to_put_the_file(monkeypatch, tmp_path):
    """An empty torch hub cache and no network (the suite's guard, tests/conftest.py): the error says where the
    file belongs."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # torch.hub reads it at every call
    with pytest.raises(ConfigError, match=r"pretrained weights for resnet18 .* are not in .*checkpoints/resnet18-.*"
                                          r"could not be downloaded \(.*network blocked"):  # fmt: skip
        build_model({"arch": "resnet18", "pretrained": True}, 1000, 3)


@pytest.mark.parametrize("declared_offline", [True, False], ids=["HF_HUB_OFFLINE", "no network"])
def test_missing_pretrained_timm_weights_name_the_weights_and_the_cache(tmp_path, declared_offline):
    """`python -m resmem.vision.pretrained CONFIG` where the Hugging Face cache (HF_HOME) is empty and the hub is
    declared offline (HF_HUB_OFFLINE=1, as a user of an offline machine sets it; huggingface_hub reads both when it
    is imported, hence a fresh process), or is not declared so but cannot be reached (the session's network guard),
    stops with a message that names the weights and the cache folder, at once: without retries."""
    model = {"arch": "timm", "name": "vit_tiny_patch16_224", "pretrained": True}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"experiments": {"x": {"models": {"vit": model}}}}))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE"):
        env.pop(name, None)  # else HF_HUB_CACHE, not HF_HOME, names the cache
    if declared_offline:
        env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run([sys.executable, "-m", "resmem.vision.pretrained", str(tmp_path / "c.yaml")],
                          capture_output=True, text=True, env=env)  # fmt: skip
    message = proc.stderr
    assert proc.returncode != 0, message[-2000:]
    assert "invalid config at experiments.x.models.vit.pretrained: the weights Hugging Face hub " in message
    assert f"timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k are not in {tmp_path / 'hf' / 'hub'}" in message
    assert "Retrying" not in message


def test_offline_workflow_without_pretrained_weights_stops_before_any_job(monkeypatch, tmp_path):
    from tests.conftest import snakemake, write_config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def edit(config):
        config["experiments"]["smoke"]["models"] = {"r18": {"arch": "resnet18", "pretrained": True}}

    proc = snakemake(tmp_path, configfile=write_config(tmp_path / "c.yaml", edit), check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in output
    assert "invalid config at experiments.smoke.models.r18.pretrained: the weights ResNet18_Weights" in output
    assert f"are not in {tmp_path / 'torch' / 'hub' / 'checkpoints'}" in output
    assert not (tmp_path / "results").exists()


def test_unknown_timm_model_is_named_before_any_job():
    from resmem.vision.pretrained import check_timm_names

    config = validate({"experiments": {"x": {"models": {"m": {"arch": "timm", "name": "resnet_nonesuch"}}}}})
    with pytest.raises(ConfigError, match=r"experiments.x.models.m.name: timm has no model 'resnet_nonesuch'"):
        check_timm_names(config)


def test_learning_rate_schedules():
    cfg = {"warmup_epochs": 2, "schedule": "cosine", "milestones": [0.5, 0.75], "gamma": 0.1}
    total, per_epoch = 100, 10
    assert lr_factor(0, total, cfg, per_epoch) == pytest.approx(1 / 20)
    assert lr_factor(19, total, cfg, per_epoch) == pytest.approx(1.0)
    assert lr_factor(20, total, cfg, per_epoch) == pytest.approx(1.0)
    assert lr_factor(60, total, cfg, per_epoch) == pytest.approx(0.5)  # halfway through the cosine
    assert lr_factor(99, total, cfg, per_epoch) < 0.001
    step = {**cfg, "schedule": "step", "warmup_epochs": 0}
    assert [lr_factor(s, total, step, per_epoch) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
