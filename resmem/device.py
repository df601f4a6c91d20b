"""The one device switch: config `device` is `auto` (CUDA when present), `cpu` or `cuda`.

Every GPU path (torch training and embedding, faiss index and search) asks here, so the CPU path that CI
tests is the same code with the switch off.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

DEVICES = ("auto", "cpu", "cuda")
SIMULATED_GPUS = "RESMEM_SIMULATED_GPUS"  # tests: pretend this many GPUs exist
GPU_BRANCHES_ON_CPU = "RESMEM_GPU_BRANCHES_ON_CPU"  # tests: "1" takes the GPU-only branches on the CPU too
GPU_LOCK_DIR = "RESMEM_GPU_LOCK_DIR"  # where the per-GPU lock files live (default: a per-user temp folder)
GPU_LOCK_TIMEOUT = "RESMEM_GPU_LOCK_TIMEOUT"  # seconds a job waits for a free GPU before it fails

log = logging.getLogger("resmem")


# The kernels of an AVX2 CPU (x86-64-v3) for every library that picks its own by the CPU it runs on: with these,
# a run on the CPU writes the same bytes on an AVX-512 machine as on an AVX2-only one (bench/bench_cpu_determinism.py
# measures it; glibc's choice, made when a process starts, changed no result there and is left alone).
CPU_KERNELS = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorized kernels
    "DNNL_MAX_CPU_ISA": "AVX2",  # oneDNN: torch's CPU convolutions
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",  # MKL: torch's CPU matrix products
    "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility: its AVX2 path, run to run
    "FAISS_OPT_LEVEL": "avx2",  # faiss's AVX2 build instead of its AVX-512 one
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # numpy's dispatched loops
    "OPENBLAS_CORETYPE": "Haswell",  # numpy's OpenBLAS
}


# This machine made to behave like an AVX2-only CPU: the pins and glibc's choice of libm and string functions too
# (bench/bench_cpu_determinism.py and the tests compare a run under CPU_KERNELS with one under this)
AVX2_CPU_EMULATION = {
    **CPU_KERNELS,
    "GLIBC_TUNABLES": "glibc.cpu.hwcaps="
    + ",".join(f"-AVX512{f}" for f in ("F", "CD", "BW", "DQ", "VL", "_VNNI", "_BF16", "_FP16")),
}


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


def pin_cpu_kernels(device: str, kernels: str = "avx2") -> dict[str, str]:
    """With config `cpu_kernels: avx2`, for a run on the CPU (device: cpu, or auto where no GPU is visible) on a
    CPU with AVX2 and FMA, set CPU_KERNELS in this process's environment, which every job inherits, before any
    job loads torch, numpy or faiss; a variable already set (by the user) is left as it is. Returns the settings
    in effect (provenance)."""
    _check(device)
    if kernels == "native" or device == "cuda" or (device == "auto" and visible_gpus()):
        return {}
    if not {"avx2", "fma"} <= cpu_flags():
        return {}
    for name, value in CPU_KERNELS.items():
        os.environ.setdefault(name, value)
    return {name: os.environ[name] for name in CPU_KERNELS}


def _check(device: str) -> None:
    """One of DEVICES, or "cuda:N" (the library's `resmem.checks.check_device` passes one GPU's number on)."""
    if device not in DEVICES and not re.fullmatch(r"cuda:\d+", str(device)):
        raise ValueError(f"config key 'device' must be one of {DEVICES}, got {device!r}")


def gpu_number(device: str) -> int:
    """The GPU that "cuda:N" names; 0 for "cuda" and "auto"."""
    return int(device.split(":")[1]) if device.startswith("cuda:") else 0


def torch_device(device: str = "auto"):
    import torch

    _check(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"'device: {device}' but torch sees no CUDA GPU; set 'device: auto' or 'cpu'")
    if device.startswith("cuda:") and gpu_number(device) >= torch.cuda.device_count():
        raise RuntimeError(f"'device: {device}' but torch sees {torch.cuda.device_count()} GPUs (numbered from 0)")
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
    if device.startswith("cuda") and count <= gpu_number(device):
        raise RuntimeError(f"'device: {device}' but faiss sees {count} GPUs; set 'device: auto' or 'cpu'")
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


def lock_folder() -> Path:
    """The folder of this user's GPU lock files, private to them: RESMEM_GPU_LOCK_DIR, else a per-user folder in
    the temp dir (per allocation under SLURM, where another job of the user on the node numbers its own GPUs
    from 0 too). Created 0700; an existing one must be a real folder of this user that nobody else may write
    or list, or another local user could hold every lock or plant links in it."""
    named = os.environ.get(GPU_LOCK_DIR)
    job = f"-{os.environ['SLURM_JOB_ID']}" if os.environ.get("SLURM_JOB_ID") else ""
    folder = Path(named) if named else Path(tempfile.gettempdir()) / f"resmem-gpus-{os.getuid()}{job}"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700, parents=bool(named))
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise RuntimeError(
            f"GPU lock folder {folder} is not a private folder of this user (a link, owned by uid {info.st_uid}, or "
            f"mode {stat.filemode(info.st_mode)}): remove it, or set {GPU_LOCK_DIR} to a folder only you can use "
            "(mode 0700)"
        )
    return folder


def _try_lock(path: Path):
    """An open lock file on which this process holds the exclusive flock, or None if another process holds it.
    Opened without following a link and without truncating: a planted link's target is never touched."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise RuntimeError(f"GPU lock file {path} cannot be opened ({exc}; a link?): remove it") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def claim_gpu(device: str = "auto", poll_seconds: float = 0.5, timeout_seconds: float | None = None):
    """Give this job a GPU of its own for as long as the block runs (Snakemake assigns no GPU ids, so with
    `--resources gpu=4` four jobs would otherwise all land on device 0).

    Each GPU has a lock file in a private folder (`lock_folder`); the job takes the first free one with flock
    and sets CUDA_VISIBLE_DEVICES to it before torch or faiss start CUDA. The kernel drops the lock when the job
    ends or dies, so a killed job never keeps a GPU. While every GPU is taken it logs that it waits, and after
    `timeout_seconds` (default RESMEM_GPU_LOCK_TIMEOUT, else a day) it fails naming the folder. Yields the GPU
    id, or None on the CPU path and for a SLURM job that sees one GPU (its scheduler gave it that one); a job
    that sees several (an salloc allocation running the workflow locally) takes its lock like any other."""
    _check(device)
    gpus = [] if device == "cpu" else visible_gpus()
    if not gpus or (os.environ.get("SLURM_JOB_ID") and len(gpus) == 1):
        yield None
        return
    if timeout_seconds is None:
        timeout_seconds = float(os.environ.get(GPU_LOCK_TIMEOUT, 86400))
    folder = lock_folder()
    started = last_said = time.monotonic()
    while True:
        for gpu in gpus:
            fd = _try_lock(folder / f"gpu{gpu}.lock")
            if fd is None:
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
                os.close(fd)  # releases the lock
            return
        waited = time.monotonic() - started
        if waited >= timeout_seconds:
            raise RuntimeError(
                f"no GPU free after {waited:.0f} s: other jobs hold the locks of GPUs {', '.join(gpus)} in {folder}. "
                "Run at most as many GPU jobs as there are GPUs (snakemake --resources gpu=N), or raise "
                f"{GPU_LOCK_TIMEOUT}"
            )
        if waited < poll_seconds or time.monotonic() - last_said >= 60:
            log.info("every GPU (%s) is taken by another job (locks in %s); waiting", ", ".join(gpus), folder)
            last_said = time.monotonic()
        time.sleep(poll_seconds)  # every GPU is taken: more GPU jobs run than --resources gpu allows
