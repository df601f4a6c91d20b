"""Training: deterministic on CPU, and a killed run resumes to the same weights as an uninterrupted one."""

import numpy as np
import pytest
import torch
from torch import nn

import resmem.train as train_module
from resmem.config import validate
from resmem.train import seed_everything, train
from resmem.vision.data import load_dataset, make_split
from resmem.vision.loader import Loader
from resmem.vision.models import build_model, extract

CPU = torch.device("cpu")
CFG = validate({"experiments": {"x": {"models": {"m": {"arch": "small_cnn"}}, "train": {"epochs": 3}}}})["experiments"][
    "x"
]["train"]


@pytest.fixture(scope="module")
def data():
    digits = load_dataset({"name": "digits"})
    split = make_split(digits, 0.25, 0.2, 0)
    return (
        Loader(digits.train, split["train_idx"][:300], 64, CPU),
        Loader(digits.train, split["val_idx"][:100], 64, CPU),
    )


def fresh_model(seed=0):
    seed_everything(seed)
    return build_model({"arch": "small_cnn", "width": 4}, 10, 1)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def fit(data, checkpoint=None, seed=0, cfg=CFG):
    model = fresh_model(seed)
    history = train(model, *data, cfg, seed, CPU, checkpoint)
    return model, history


def assert_same_weights(a, b):
    for key, value in a.items():
        torch.testing.assert_close(value, b[key], rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def reference(data):
    """The uninterrupted 3-epoch run of seed 0 without a checkpoint, trained once for the module: (its weights, its
    history)."""
    model, history = fit(data)
    return state(model), history


def test_cpu_training_is_deterministic(data, reference):
    weights_a, history_a = reference
    b, history_b = fit(data)
    assert_same_weights(weights_a, state(b))
    assert [r["loss"] for r in history_a] == [r["loss"] for r in history_b]
    assert history_a[-1]["train_acc"] > history_a[0]["train_acc"]


def test_killed_run_resumes_to_identical_weights(data, reference, tmp_path, monkeypatch):
    uninterrupted, full_history = reference
    checkpoint = tmp_path / "train_checkpoint.pt"
    real_atomic_path = train_module.atomic_path
    writes = []

    def killed_after_first_checkpoint(path):
        writes.append(path)
        if len(writes) > 1:
            raise KeyboardInterrupt  # the job is killed during epoch 2's checkpoint
        return real_atomic_path(path)

    monkeypatch.setattr(train_module, "atomic_path", killed_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        fit(data, checkpoint)
    monkeypatch.setattr(train_module, "atomic_path", real_atomic_path)
    assert torch.load(checkpoint, weights_only=False)["history"][-1]["epoch"] == 1

    resumed, history = fit(data, checkpoint)
    assert_same_weights(uninterrupted, state(resumed))
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert [r["loss"] for r in history] == [r["loss"] for r in full_history]


def test_checkpoint_of_another_config_is_ignored(data, reference, tmp_path):
    checkpoint = tmp_path / "train_checkpoint.pt"
    fit(data, checkpoint, cfg={**CFG, "epochs": 1})
    started_over, history = fit(data, checkpoint)  # 3 epochs: must start over, not resume the 1-epoch run
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert_same_weights(reference[0], state(started_over))
    resumed, _ = fit(data, checkpoint)
    assert_same_weights(reference[0], state(resumed))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_weight_decay_spares_biases_and_norm_weights(optimizer):
    conv, norm, linear, frozen = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(2, 3), nn.LayerNorm(3)
    frozen.requires_grad_(False)  # no grad: in neither group
    head = nn.Linear(3, 3)
    head.weight = linear.weight  # tied weights: one parameter, in one group once
    model = nn.Sequential(conv, norm, linear, frozen, head)
    opt = train_module.make_optimizer(model, {**CFG, "optimizer": optimizer, "weight_decay": 0.1})
    decayed, plain = opt.param_groups
    assert [id(p) for p in decayed["params"]] == [id(conv.weight), id(linear.weight)]
    no_decay = (conv.bias, norm.weight, norm.bias, linear.bias, head.bias)
    assert [id(p) for p in plain["params"]] == [id(p) for p in no_decay]
    assert (decayed["weight_decay"], plain["weight_decay"]) == (0.1, 0.0)
    assert isinstance(opt, torch.optim.AdamW if optimizer == "adam" else torch.optim.SGD)


def test_extract_returns_penultimate_features_and_logits(data):
    model, _ = fit(data, cfg={**CFG, "epochs": 1})
    blocks = list(extract(model, data[0]))
    assert len(blocks) == 5  # 300 examples in batches of 64
    emb, logits = (np.concatenate(parts) for parts in zip(*blocks, strict=True))
    assert emb.dtype == np.float32 and emb.shape == (300, 8)
    # The head applied to each block's features as extract returned them: the same products of the same shapes
    # (64 rows), so the same bits, whatever the CPU's kernels round (all 300 rows at once could round otherwise).
    with torch.no_grad():
        model.eval()
        expected = np.concatenate([model.head(torch.as_tensor(features)).numpy() for features, _ in blocks])
    np.testing.assert_array_equal(logits, expected)


def test_split_is_stratified_disjoint_and_deterministic():
    digits = load_dataset({"name": "digits"})
    labels = digits.train.labels
    a, b = make_split(digits, 0.25, 0.2, 7), make_split(digits, 0.25, 0.2, 7)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    joined = np.concatenate(list(a.values()))
    assert len(np.unique(joined)) == len(labels) == len(joined)
    assert abs(len(a["test_idx"]) - 0.25 * len(labels)) < 10
    for cls in range(10):  # every class keeps its share in every split
        share = (labels[a["test_idx"]] == cls).mean()
        assert abs(share - (labels == cls).mean()) < 0.01
    assert not np.array_equal(make_split(digits, 0.25, 0.2, 8)["test_idx"], a["test_idx"])


def test_checkpoint_of_another_seed_is_ignored(data, reference, tmp_path):
    """The seed is part of a checkpoint's fingerprint: seed 1's finished checkpoint is not taken for seed 0's run
    (it would return seed 1's weights at once)."""
    checkpoint = tmp_path / "train_checkpoint.pt"
    other, _ = fit(data, checkpoint, seed=1)
    run, history = fit(data, checkpoint, seed=0)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert_same_weights(reference[0], state(run))
    assert any(not torch.equal(value, state(other)[key]) for key, value in state(run).items())
