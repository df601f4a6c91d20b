"""The one device switch: config `device` is `auto` (CUDA when present), `cpu` or `cuda`.

Every GPU path (torch training and embedding, faiss index and search) asks here, so the CPU path that CI
tests is the same code with the switch off.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

DEVICES = ("auto", "cpu", "cuda")
SIMULATED_GPUS = "RESMEM_SIMULATED_GPUS"  # tests: pretend this many GPUs exist
GPU_BRANCHES_ON_CPU = "RESMEM_GPU_BRANCHES_ON_CPU"  # tests: "1" takes the GPU-only branches on the CPU too
GPU_LOCK_DIR = "RESMEM_GPU_LOCK_DIR"  # where the per-GPU lock files live (default: a per-user temp folder)


def _check(device: str) -> None:
    if device not in DEVICES:
        raise ValueError(f"config key 'device' must be one of {DEVICES}, got {device!r}")


def torch_device(device: str = "auto"):
    import torch

    _check(device)
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config 'device: cuda' but torch sees no CUDA GPU; set 'device: auto' or 'cpu'")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def accelerated(device) -> bool:
    """Whether the speed branches written for a GPU are taken (bf16 autocast, channels_last, torch.compile): on a
    CUDA device, and under the test switch RESMEM_GPU_BRANCHES_ON_CPU=1 on the CPU too, where torch runs them
    as well, so that CI executes the code a GPU box runs and compares it with the plain path."""
    return device.type == "cuda" or os.environ.get(GPU_BRANCHES_ON_CPU) == "1"


def faiss_gpu_count(device: str = "auto") -> int:
    """GPUs that faiss may use under this switch (0 means the CPU path)."""
    import faiss

    _check(device)
    if device == "cpu" or not hasattr(faiss, "get_num_gpus"):
        return 0
    count = faiss.get_num_gpus()
    if device == "cuda" and count == 0:
        raise RuntimeError("config 'device: cuda' but faiss sees no GPU; set 'device: auto' or 'cpu'")
    return count


def visible_gpus() -> list[str]:
    """The GPU ids this process may use: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists."""
    if os.environ.get(SIMULATED_GPUS):
        return [str(i) for i in range(int(os.environ[SIMULATED_GPUS]))]
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() not in ("", "-1")]
    if shutil.which("nvidia-smi") is None:
        return []
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    return [str(i) for i, line in enumerate(line for line in listed.splitlines() if line.startswith("GPU "))]


@contextlib.contextmanager
def claim_gpu(device: str = "auto", poll_seconds: float = 0.5):
    """Give this job a GPU of its own for as long as the block runs (Snakemake assigns no GPU ids, so with
    `--resources gpu=4` four jobs would otherwise all land on device 0).

    Each GPU has a lock file; the job takes the first free one with flock and sets CUDA_VISIBLE_DEVICES to
    it before torch or faiss start CUDA. The kernel drops the lock when the job ends or dies, so a killed job
    never keeps a GPU. Yields the GPU id, or None on the CPU path, and under SLURM, whose scheduler already
    gives each job its own devices."""
    _check(device)
    gpus = [] if device == "cpu" or os.environ.get("SLURM_JOB_ID") else visible_gpus()
    if not gpus:
        yield None
        return
    lock_dir = Path(os.environ.get(GPU_LOCK_DIR) or Path(tempfile.gettempdir()) / f"resmem-gpus-{getpass.getuser()}")
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for gpu in gpus:
            handle = open(lock_dir / f"gpu{gpu}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            previous = os.environ.get("CUDA_VISIBLE_DEVICES")
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
            try:
                yield gpu
            finally:
                if previous is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = previous
                handle.close()  # releases the lock
            return
        time.sleep(poll_seconds)  # every GPU is taken: more GPU jobs run than --resources gpu allows
