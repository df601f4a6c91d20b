"""The speed branches written for a GPU (bf16 autocast, channels_last, torch.compile), taken on the CPU under
the test switch RESMEM_GPU_BRANCHES_ON_CPU (`resmem.device.accelerated`), against the plain path: so CI runs
the code a GPU box runs. channels_last gives the same network; bf16 stays within its precision."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from resmem.config import validate
from resmem.device import GPU_BRANCHES_ON_CPU, accelerated
from resmem.lm.model import GPT, datastore_entries, sliding_windows
from resmem.train import seed_everything, train, use_amp
from resmem.vision.data import load_dataset, make_split
from resmem.vision.loader import Loader
from resmem.vision.models import build_model, extract
from tests.conftest import REPO

CPU = torch.device("cpu")


def recipe(**changes) -> dict:
    cfg = validate({"experiments": {"x": {"models": {"m": {"arch": "small_cnn"}}}}})["experiments"]["x"]["train"]
    return {**cfg, "epochs": 2, "amp": False, "channels_last": False, "compile": False, **changes}


def digit_loaders(cfg: dict) -> list[Loader]:
    """300 training and 100 validation digits, in the memory format `cfg` asks for."""
    digits = load_dataset({"name": "digits"})
    split = make_split(digits, 0.25, 0.2, 0)
    return [Loader(digits.train, split[f"{s}_idx"][:n], 64, CPU, channels_last=cfg["channels_last"])
            for s, n in (("train", 300), ("val", 100))]  # fmt: skip


def val_labels() -> np.ndarray:
    """The labels of `digit_loaders`' 100 validation digits, in their order."""
    digits = load_dataset({"name": "digits"})
    return digits.train.labels[make_split(digits, 0.25, 0.2, 0)["val_idx"][:100]]


def embed(model, cfg: dict):
    """(features, logits) of the validation digits, under bf16 autocast where `cfg` asks and the switch allows."""
    blocks = list(extract(model, digit_loaders(cfg)[1], amp=use_amp(cfg, CPU)))
    return tuple(np.concatenate([b[i] for b in blocks]) for i in (0, 1))


def fit_and_embed(cfg: dict, float64: bool = False):
    """small_cnn trained on 300 digits with `cfg`, then embedded: (state dict, features, logits, history). With
    `float64`, the same steps from the same initial weights in float64 (eager, whatever the switch says)."""
    seed_everything(0)
    model = build_model({"arch": "small_cnn", "width": 4}, 10, 1)
    net = Float64(model) if float64 else model
    history = train(net, *digit_loaders(cfg), {**cfg, "compile": cfg["compile"] and not float64}, 0, CPU)
    features, logits = embed(net, cfg)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, features, logits, history


class Float64(torch.nn.Module):
    """A network run in float64 on the loaders' float32 batches (its weights converted exactly)."""

    def __init__(self, model):
        super().__init__()
        self.model = model.double()

    def forward(self, x):
        return self.model(x.double())

    def features(self, x):
        return self.model.features(x.double())

    def head(self, features):
        return self.model.head(features)


# The longest float32 sums of this training: a batch's 64 digits × 8·8 positions (the first convolution's weight
# gradient, the batch norm's statistics).
LONGEST_SUM = 64 * 64


def relative_spread(a, b) -> float:
    """max |a − b| / max |b|: of two arrays, or the largest over the floating-point tensors of two state dicts."""
    if isinstance(b, np.ndarray):
        return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())
    return float(np.max([(a[k].double() - v.double()).abs().max().item() / v.double().abs().max().item()
                         for k, v in b.items() if v.is_floating_point()]))  # fmt: skip  # a NaN propagates


def spreads(branch, plain, exact) -> dict[str, tuple[float, float]]:
    """{weights, features, logits: (how far the branch's are from the plain path's, how far the plain path's are
    from the float64 run's)} (`fit_and_embed` results)."""
    return {what: (relative_spread(branch[i], plain[i]), relative_spread(plain[i], exact[i]))
            for i, what in enumerate(("weights", "features", "logits"))}  # fmt: skip


def assert_within_float32_rounding(measured: dict[str, tuple[float, float]]) -> None:
    """A branch that changes which float32 kernels run, not what they compute (channels_last, torch.compile): its
    sums are ordered and grouped otherwise, so it rounds otherwise. How far float32 rounding moves this training
    on this machine is measured, not assumed: the plain path's distance from the same steps in float64 (rounding
    2⁻²⁹ as coarse). A sum of n terms rounded into one running total errs by about √n·u where a blocked sum errs
    less, so another kernel stays within √n times that distance of the float64 run and within (1 + √n) times it
    of the plain path, n = LONGEST_SUM. (A branch that trained another network, a compiled copy's weights or a lost
    step, is off by the weights' own scale: 10⁵ times more.)"""
    allowed = 1 + np.sqrt(LONGEST_SUM)
    for what, (branch, rounding) in measured.items():
        assert 0 < rounding and branch <= allowed * rounding, (what, branch, rounding, allowed)


def test_the_switch_turns_the_branches_on_only_when_asked(monkeypatch):
    monkeypatch.delenv(GPU_BRANCHES_ON_CPU, raising=False)
    assert not accelerated(CPU) and accelerated(torch.device("cuda"))
    assert not use_amp(recipe(amp=True), CPU)
    digits = load_dataset({"name": "digits"})
    assert Loader(digits.train, np.arange(8), 4, CPU, channels_last=True).memory_format == torch.contiguous_format
    monkeypatch.setenv(GPU_BRANCHES_ON_CPU, "1")
    assert accelerated(CPU) and use_amp(recipe(amp=True), CPU)
    loader = Loader(digits.train, np.arange(8), 4, CPU, channels_last=True)
    x, _ = next(loader.epoch())
    assert loader.memory_format == torch.channels_last and x.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_trains_the_same_network(monkeypatch):
    cfg = recipe(channels_last=True)
    plain, exact = fit_and_embed(cfg), fit_and_embed(cfg, float64=True)  # switch off: not taken on the CPU
    monkeypatch.setenv(GPU_BRANCHES_ON_CPU, "1")
    branch = fit_and_embed(cfg)
    assert_within_float32_rounding(spreads(branch, plain, exact))


def test_bf16_autocast_stays_within_its_precision(monkeypatch):
    cfg = recipe(amp=True, epochs=10)  # 10 epochs: past chance (46 % val accuracy), so "learns as much" means it
    plain = fit_and_embed(cfg)
    monkeypatch.setenv(GPU_BRANCHES_ON_CPU, "1")
    branch = fit_and_embed(cfg)
    # Trained in bf16, the network learns as much and predicts the same nearly everywhere (its weights take
    # another path: how far its features end up depends on the CPU's bf16 kernels, not only on bf16). As much:
    # of the 100 validation digits, those only one of the two networks gets right split evenly between them,
    # within twice the binomial spread √(b + c) of such a split (McNemar's test at about 95 %; none may then
    # differ where the two never disagree), not within a fixed share of the digits.
    labels = val_labels()
    right, right_bf16 = plain[2].argmax(axis=1) == labels, branch[2].argmax(axis=1) == labels
    b, c = int((right_bf16 & ~right).sum()), int((right & ~right_bf16).sum())
    assert plain[3][-1]["val_acc"] == right.mean() >= 0.3 and branch[3][-1]["val_acc"] == right_bf16.mean()
    assert abs(b - c) <= 2 * np.sqrt(b + c), (b, c)
    assert (branch[2].argmax(axis=1) == plain[2].argmax(axis=1)).mean() >= 0.95
    # The same weights embedded under bf16 autocast (8 bits of mantissa): features within a few percent of their
    # scale, and the same predictions nearly everywhere.
    model = build_model({"arch": "small_cnn", "width": 4}, 10, 1)
    model.load_state_dict(plain[0])
    features, logits = embed(model, cfg)
    scale = np.abs(plain[1]).max()
    assert np.abs(features - plain[1]).max() < 0.05 * scale
    assert (logits.argmax(axis=1) == plain[2].argmax(axis=1)).mean() >= 0.95


COMPILE_CHECK = """
import json, os
import torch
from tests.test_gpu_branches import GPU_BRANCHES_ON_CPU, fit_and_embed, recipe, spreads
cfg = recipe(compile=True)
plain, exact = fit_and_embed(cfg), fit_and_embed(cfg, float64=True)
os.environ[GPU_BRANCHES_ON_CPU] = "1"
branch = fit_and_embed(cfg)
print(json.dumps({"spreads": spreads(branch, plain, exact),
                  "compiled": torch._dynamo.utils.counters["stats"]["unique_graphs"]}))
"""


@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="torch.compile needs a C++ compiler"
)
def test_torch_compile_trains_the_same_network(tmp_path):
    """In a fresh interpreter, as a job runs it: inductor builds its C++ through setuptools, which breaks when
    the standard library's distutils was imported first (as some earlier test in this process may). Inductor's
    caches in a folder of the test's own: the machine's shared one (/tmp/torchinductor_$USER) may hold what other
    processes compiled under other settings (an entry made under other CPU kernels trained NaN weights here)."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    proc = subprocess.run([sys.executable, "-c", COMPILE_CHECK], cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["compiled"] >= 1  # the branch really compiled the model
    assert_within_float32_rounding(result["spreads"])


def test_the_token_datastore_under_bf16_autocast(monkeypatch):
    """lm_datastore's amp branch: bf16 states within bf16 precision of the float32 ones."""
    torch.manual_seed(0)
    model = GPT(256, 16, n_layer=2, n_head=2, n_embd=32)
    tokens = np.random.default_rng(0).integers(0, 256, 200).astype(np.int32)
    positions, windows = np.arange(150), sliding_windows(200, 16, 8)
    plain = np.concatenate([s["hidden"] for s, _ in datastore_entries(model, tokens, positions, windows, 4, "cpu")])
    bf16 = np.concatenate(
        [s["hidden"] for s, _ in datastore_entries(model, tokens, positions, windows, 4, "cpu", amp=True)]
    )
    assert not np.array_equal(bf16, plain)  # the branch really ran in bf16
    np.testing.assert_allclose(bf16, plain, atol=0.1 * np.abs(plain).max())


def test_the_gpu_check_runs_its_cpu_halves_without_cuda():
    """bench/gpu_check.py, the one command for a GPU box, runs here too: every comparison on the CPU halves. On a
    machine with a GPU too: CUDA_VISIBLE_DEVICES="" hides it from the child (torch and faiss alike)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "bench/gpu_check.py"], cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no CUDA here" in proc.stdout
    assert "14 of 14 checks passed" in proc.stdout
    for check in (
        "train (bf16, channels_last)",
        "faiss ivfpq (fp16 tables)",
        "token logits",
        "engine (tokens)",
        "kNN-LM",
        "two GPUs",
    ):
        assert check in proc.stdout
