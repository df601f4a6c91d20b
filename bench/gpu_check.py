"""One command for a CUDA machine: every GPU branch of the project on tiny data, each compared with the CPU path.

    .venv/bin/python bench/gpu_check.py      # prints a table; exit status 1 on any mismatch

Checks, each timed on both sides and compared with the CPU path:

- train: small_cnn, 10 epochs on 300 digits, with bf16 autocast, channels_last and torch.compile (where a compiler
  is) on the GPU: val accuracy within 0.10 of the CPU's float32 run;
- embed: the CPU-trained weights embedded with bf16 + channels_last: features within 5 % of their scale, at least
  95 % of the predictions the same;
- augment: the GPU-resident crop+flip and flip of a batch: identical images (one CPU generator draws offsets);
- faiss flat / IVF / IVF-PQ (float16 lookup tables), built and searched on the GPU: flat the same neighbours,
  IVF and IVF-PQ a recall@10 within 0.05 of the CPU's;
- token logits: `KeyLogits` (states times the output layer) on CUDA within float32 rounding of the CPU's;
- engine: the sweep engine on CUDA, for images and for tokens (`KeyLogits` of states and weights whose logits are
  exact in float32, so both sides see the same logits): identical counts at every grid point; kNN-LM's sweep on
  CUDA: identical counts, losses within 1e-12;
- torch + faiss in one process (a torch CUDA tensor alive while faiss searches on the GPU, then used again) and in
  two (faiss in a child while this process holds CUDA): the same neighbours, the tensor intact;
- two GPUs: two jobs take the GPU locks (`resmem.device.claim_gpu`) at once and get different GPUs.

Without CUDA it says so and runs the CPU halves: the GPU side then runs on the CPU with the GPU branches switched
on (RESMEM_GPU_BRANCHES_ON_CPU=1, as the tests do), faiss on the CPU, the locks over two simulated GPUs, so every
comparison still executes. torch's CUDA 13 runtime and faiss-gpu's CUDA 12 libraries are separate shared objects;
the one- and two-process checks are where a clash would show.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from resmem.device import GPU_BRANCHES_ON_CPU, SIMULATED_GPUS, faiss_gpu_count

REPO = Path(__file__).resolve().parents[1]

CUDA = torch.cuda.is_available()
CPU = torch.device("cpu")
RESULTS: list[tuple[str, str, float, float, str]] = []  # (check, status, CPU seconds, GPU seconds, detail)


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    if CUDA:
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def record(check: str, ok: bool | None, cpu_s: float, gpu_s: float, detail: str) -> None:
    status = "skip" if ok is None else ("ok" if ok else "MISMATCH")
    RESULTS.append((check, status, cpu_s, gpu_s, detail))
    print(f"{check:<30} {status:<8} cpu {cpu_s:7.2f} s   gpu side {gpu_s:7.2f} s   {detail}", flush=True)


class gpu_branches:
    """The GPU side's context: CUDA when present, else the CPU with the GPU-only branches switched on."""

    def __enter__(self):
        self.previous = os.environ.get(GPU_BRANCHES_ON_CPU)
        if not CUDA:
            os.environ[GPU_BRANCHES_ON_CPU] = "1"
        return torch.device("cuda") if CUDA else CPU

    def __exit__(self, *exc):
        if self.previous is None:
            os.environ.pop(GPU_BRANCHES_ON_CPU, None)
        else:
            os.environ[GPU_BRANCHES_ON_CPU] = self.previous


# --- training, embedding, augmentation -------------------------------------------------------------------------


def digits_loaders(device, channels_last: bool):
    from resmem.vision.data import load_dataset, make_split
    from resmem.vision.loader import Loader

    digits = load_dataset({"name": "digits"})
    split = make_split(digits, 0.25, 0.2, 0)
    return [Loader(digits.train, split[f"{s}_idx"][:n], 64, device, channels_last=channels_last)
            for s, n in (("train", 300), ("val", 100))]  # fmt: skip


def recipe(accelerated: bool) -> dict:
    from resmem.config import validate

    cfg = validate({"experiments": {"x": {"models": {"m": {"arch": "small_cnn"}}}}})["experiments"]["x"]["train"]
    compiler = shutil.which("g++") or shutil.which("c++")
    return {**cfg, "epochs": 10, "amp": accelerated, "channels_last": accelerated,
            "compile": accelerated and compiler is not None}  # fmt: skip


def fit(device, accelerated: bool):
    from resmem.train import seed_everything, train
    from resmem.vision.models import build_model

    cfg = recipe(accelerated)
    seed_everything(0)
    model = build_model({"arch": "small_cnn", "width": 8}, 10, 1)
    history = train(model, *digits_loaders(device, cfg["channels_last"]), cfg, 0, device)
    return model, history[-1]["val_acc"]


def embed(model, device, accelerated: bool):
    from resmem.vision.models import extract

    blocks = list(extract(model, digits_loaders(device, accelerated)[1], amp=accelerated))
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


def check_training_and_embedding() -> None:
    (model, cpu_acc), cpu_s = timed(fit, CPU, False)
    with gpu_branches() as device:
        (_, gpu_acc), gpu_s = timed(fit, device, True)
    record("train (bf16, channels_last)", abs(gpu_acc - cpu_acc) <= 0.10, cpu_s, gpu_s,
           f"val accuracy {gpu_acc:.3f} vs {cpu_acc:.3f} on the CPU")  # fmt: skip
    (features, logits), cpu_s = timed(embed, model, CPU, False)
    with gpu_branches() as device:
        (gpu_features, gpu_logits), gpu_s = timed(embed, model, device, True)
    error = np.abs(gpu_features - features).max() / np.abs(features).max()
    same = (gpu_logits.argmax(1) == logits.argmax(1)).mean()
    record("embed (bf16, channels_last)", error < 0.05 and same >= 0.95, cpu_s, gpu_s,
           f"features within {error:.1%} of their scale, {same:.1%} same argmax")  # fmt: skip


def check_augmentation() -> None:
    from resmem.vision.loader import crop_flip, flip

    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def augment(device):
        batch = x.to(device)
        return (crop_flip(batch, torch.Generator().manual_seed(1), 4).cpu(),
                flip(batch, torch.Generator().manual_seed(2)).cpu())  # fmt: skip

    cpu, cpu_s = timed(augment, CPU)
    with gpu_branches() as device:
        gpu, gpu_s = timed(augment, device)
    same = all(torch.equal(a, b) for a, b in zip(cpu, gpu, strict=True))
    record("augment (crop+flip, flip)", same, cpu_s, gpu_s, "identical images" if same else "images differ")


# --- faiss ----------------------------------------------------------------------------------------------------------


def vectors(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = 3 * rng.normal(size=(256, dim))
    return (centers[rng.integers(0, 256, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def faiss_search(kind: str, device: str, k: int = 10):
    from resmem.knn import build_index, search

    base, queries = vectors(20_000), vectors(1_000, seed=1)
    index = build_index(base, device=device, kind=kind, nlist=64, pq_m=16)
    return search(index, queries, k, device=device, nprobe=16)


def check_faiss() -> None:
    from resmem.knn import recall_at_k

    gpu_device = "cuda" if faiss_gpu_count("auto") else "cpu"
    note = "" if gpu_device == "cuda" else " (faiss sees no GPU: both sides on the CPU)"
    (exact_dist, exact_idx), _ = timed(faiss_search, "flat", "cpu")
    for kind in ("flat", "ivf", "ivfpq"):
        (cpu_dist, cpu_idx), cpu_s = timed(faiss_search, kind, "cpu")
        (gpu_dist, gpu_idx), gpu_s = timed(faiss_search, kind, gpu_device)
        if kind == "flat":
            same = (gpu_idx == cpu_idx).all(axis=1).mean()
            close = np.abs(gpu_dist - cpu_dist).max()
            record(f"faiss {kind}", same >= 0.999 and close < 1e-3, cpu_s, gpu_s,
                   f"{same:.1%} of rows the same neighbours, distances within {close:.1e}{note}")  # fmt: skip
        else:
            cpu_recall, gpu_recall = recall_at_k(cpu_idx, exact_idx), recall_at_k(gpu_idx, exact_idx)
            label = "faiss ivfpq (fp16 tables)" if kind == "ivfpq" else f"faiss {kind}"
            record(label, abs(gpu_recall - cpu_recall) <= 0.05, cpu_s, gpu_s,
                   f"recall@10 {gpu_recall:.3f} vs {cpu_recall:.3f} on the CPU{note}")  # fmt: skip


def faiss_in_child(queue) -> None:
    queue.put(faiss_search("flat", "auto")[1])


def check_torch_and_faiss() -> None:
    expected, _ = timed(faiss_search, "flat", "cpu")
    with gpu_branches() as device:
        held = torch.arange(1_000_000, device=device, dtype=torch.float32)
        (_, found), gpu_s = timed(faiss_search, "flat", "auto")
        intact = bool((held.sum() == held.numel() * (held.numel() - 1) / 2).item())
        record("torch + faiss, one process", intact and np.array_equal(found, expected[1]), 0.0, gpu_s,
               f"same neighbours: {np.array_equal(found, expected[1])}, torch tensor intact: {intact}")  # fmt: skip
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        start = time.perf_counter()
        child = context.Process(target=faiss_in_child, args=(queue,))
        child.start()
        found = queue.get(timeout=300)
        child.join()
        same = np.array_equal(found, expected[1])
        record("torch + faiss, two processes", same, 0.0, time.perf_counter() - start,
               f"same neighbours in the child: {same}")  # fmt: skip


# --- the sweep engine -----------------------------------------------------------------------------------------------


def check_engine() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from bench_sweep import make_problem

    from resmem.core import METHODS
    from resmem.engine import sweep_correct
    from resmem.knn import build_index, search
    from resmem.lm.tokens import KeyLogits, knnlm_sweep

    train_emb, train_logits, train_y, query_emb, query_logits, query_y = make_problem(5_000, 1_000, 64, 100)
    dist, idx = search(build_index(train_emb, device="cpu"), query_emb, 64, device="cpu")
    grid = ([1, 4, 16, 64], [0.3, 1.0, 3.0], [0.5, 1.0])
    images = (train_logits, train_y, query_logits, query_y, dist, idx)
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(512, 64)).astype(np.float32), np.zeros(512, np.float32)
    train_next, query_next = rng.integers(0, 512, len(train_emb)), rng.integers(0, 512, len(query_emb))
    # Token states and an output layer on grids of 1/4 and 1/16 (|state| < 12, |weight| < 5): each logit's
    # products and their sum take at most 18 significant bits, exact in float32 whatever the order of addition,
    # so MKL and cuBLAS compute the same logits and the engine and kNN-LM are compared on the same inputs. (On
    # continuous states the two round differently in the last bits: the "token logits" check.)
    exact_weight = np.round(weight * 16) / 16
    train_states, query_states = np.round(train_emb * 4) / 4, np.round(query_emb * 4) / 4

    def tokens(device):
        return (KeyLogits(train_states, exact_weight, bias, device), train_next,
                KeyLogits(query_states, exact_weight, bias, device), query_next, dist, idx)  # fmt: skip

    def token_logits(device):  # continuous states: float32 products that each BLAS rounds its own way
        return KeyLogits(train_emb, weight, bias, device)[np.arange(len(train_emb))]

    gpu_device = "cuda" if CUDA else "cpu"
    cpu_z, cpu_s = timed(token_logits, "cpu")
    gpu_z, gpu_s = timed(token_logits, gpu_device)
    worst = float(np.abs(gpu_z - cpu_z).max() / np.abs(cpu_z).max())
    record("token logits (KeyLogits)", worst < 1e-5, cpu_s, gpu_s,
           f"within {worst:.0e} of the largest logit (float32 rounding; TF32 would show as 1e-3)")  # fmt: skip

    def engine(device, make, budget, groups):  # ResMem and both baselines
        return sweep_correct(*make(device), *grid, budget, device=device, groups=groups, lambdas=[0.1, 0.5, 0.9],
                             methods=METHODS)  # fmt: skip

    # the whole residual table (10 MB), and per-block tables of the rows that blocks of queries share, with the
    # queries in two groups (val and test swept at once)
    two_groups = np.arange(len(query_y)) % 2
    for name, make, budget, groups in (("images", lambda device: images, 2**28, None),
                                       ("tokens", tokens, 2**28, None),
                                       ("token blocks, groups", tokens, 2**21, two_groups)):  # fmt: skip
        cpu, cpu_s = timed(engine, "cpu", make, budget, groups)
        gpu, gpu_s = timed(engine, gpu_device, make, budget, groups)
        differ = sum(int((cpu[m] != gpu[m]).sum()) for m in METHODS)
        record(f"engine ({name})", differ == 0, cpu_s, gpu_s,
               f"{sum(c.size for c in cpu.values())} grid points of 3 methods, {differ} differ")  # fmt: skip

    def knnlm(device):  # (k, τ, λ) grid of the published kernel, beside the engine on the same neighbours
        return knnlm_sweep(tokens(device)[2], query_next, dist, idx, train_next, [1, 4, 16, 64], [1.0, 10.0],
                           [0.0, 0.25, 1.0], device=device)  # fmt: skip

    (cpu_correct, cpu_nll), cpu_s = timed(knnlm, "cpu")
    (gpu_correct, gpu_nll), gpu_s = timed(knnlm, gpu_device)
    worst = float(np.abs(gpu_nll - cpu_nll).max() / np.abs(cpu_nll).max())
    differ = int((cpu_correct != gpu_correct).sum())
    record("kNN-LM (tokens)", differ == 0 and worst < 1e-12, cpu_s, gpu_s,
           f"{differ} of {cpu_correct.size} counts differ, losses within {worst:.0e}")  # fmt: skip


# --- GPU locks ------------------------------------------------------------------------------------------------------

LOCK_JOB = """from resmem.device import claim_gpu; import time
with claim_gpu("auto") as gpu:
    print(gpu)
    time.sleep(2)
"""


def check_two_gpus(tmp: Path) -> None:
    env = {**os.environ, "RESMEM_GPU_LOCK_DIR": str(tmp)}
    count = torch.cuda.device_count() if CUDA else 0
    if count < 2:
        env[SIMULATED_GPUS] = "2"  # the lock logic over two simulated GPUs
    start = time.perf_counter()
    jobs = [subprocess.Popen([sys.executable, "-c", LOCK_JOB], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
            for _ in range(2)]  # fmt: skip
    claimed = sorted(job.communicate()[0].strip() for job in jobs)
    simulated = " (simulated)" if count < 2 else ""
    record("two GPUs, two jobs", claimed == ["0", "1"], 0.0, time.perf_counter() - start,
           f"jobs claimed GPUs {claimed}{simulated}")  # fmt: skip


def main() -> int:
    import tempfile

    if CUDA:
        print(f"CUDA: {torch.cuda.get_device_name(0)} × {torch.cuda.device_count()}, torch {torch.__version__} "
              f"(CUDA {torch.version.cuda}); faiss sees {faiss_gpu_count('auto')} GPU(s)")  # fmt: skip
    else:
        print(
            f"no CUDA here (torch {torch.__version__}): running the CPU halves — the GPU side on the CPU with "
            "the GPU branches switched on, faiss on the CPU, two simulated GPUs for the locks"
        )
    check_training_and_embedding()
    check_augmentation()
    check_faiss()
    check_torch_and_faiss()
    check_engine()
    with tempfile.TemporaryDirectory() as tmp:
        check_two_gpus(Path(tmp))
    failed = [check for check, status, *_ in RESULTS if status == "MISMATCH"]
    print(f"\n{len(RESULTS) - len(failed)} of {len(RESULTS)} checks passed" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
