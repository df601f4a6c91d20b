"""What every benchmark writes beside its figures, and where: bench/results/<name>.json holds the machine (CPU
model, cores, torch's and faiss's threads, the device and its float32 matmul throughput, the package versions),
the date, the git commit and the exact command and arguments, then the bench's own results.
bench/render_tables.py renders the docs' tables from these files; `machine_line` is the line it writes under each.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from resmem.device import cpu_flags
from resmem.provenance import package_versions

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
RUN_KEYS = ("date", "commit", "uncommitted_changes", "command", "arguments")  # what `run_record` returns


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def matmul_gflops(device, size: int = 2048, min_seconds: float = 1.0) -> float:
    """The device's float32 matmul throughput (GFLOP/s): square products repeated for at least `min_seconds`."""
    import torch

    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        torch.mm(a, b)
        count += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e9


def machine(device: str = "cpu") -> dict:
    """The machine as this process sees it: call it where the timed work runs, so that its threads are the work's.
    `device` is the bench's switch (cpu, cuda, auto); the matmul throughput is measured on the device it resolves to."""
    import faiss
    import torch

    from resmem.device import faiss_gpu_count, torch_device

    resolved = torch_device(device)
    record = {"cpu": cpu_model(), "cores": os.cpu_count(), "avx512": "avx512f" in cpu_flags(),
              "threads": torch.get_num_threads(), "torch_threads": torch.get_num_threads(),
              "faiss_threads": faiss.omp_get_max_threads(), "device": resolved.type,
              "gpu": torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else None,
              "faiss_gpus": faiss_gpu_count(device), "matmul_gflops": matmul_gflops(resolved),
              "versions": package_versions()}  # fmt: skip
    return record


def git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def run_record(args) -> dict:
    """The date (UTC), the commit (and whether tracked files differed from it), the command and its parsed arguments."""
    changes = git("status", "--porcelain", "--untracked-files=no")
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": git("rev-parse", "HEAD"), "uncommitted_changes": None if changes is None else bool(changes),
            "command": shlex.join(["python", str(shown), *sys.argv[1:]]),
            "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}  # fmt: skip


def write(path: Path, args, host: dict, results: dict) -> dict:
    """bench/results/<name>.json (or --out): the run's record, the machine and the results. Returns the report."""
    report = {"bench": Path(sys.argv[0]).stem, **run_record(args), "machine": host, "results": results}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    return report


def machine_line(report: dict) -> str:
    """One line: the machine, its threads and matmul throughput, the versions, the date, commit and command (what
    the record holds; an older file without some of them says so)."""
    m = report["machine"]
    parts = [f"{m.get('cpu', 'unknown CPU')}, {m.get('cores', '?')} cores" + (", AVX-512" if m.get("avx512") else "")]
    threads = [f"{m[k]} {name} threads" for k, name in (("torch_threads", "torch"), ("faiss_threads", "faiss"))
               if m.get(k) is not None]  # fmt: skip
    if not threads and m.get("threads") is not None:
        threads = [f"{m['threads']} threads"]
    parts.append(", ".join(threads) or "threads not recorded")
    device = m.get("gpu") or m.get("device") or "cpu"
    gflops = m.get("matmul_gflops")
    parts.append(f"float32 matmul {gflops:,.0f} GFLOP/s on {device}" if gflops else "matmul throughput not recorded")
    versions = m.get("versions") or {}
    parts.append(", ".join(f"{k} {v.split(' ')[0]}" for k, v in versions.items() if v and k != "snakemake"))
    when = report.get("date", "date not recorded")
    commit = report.get("commit")
    if commit:
        when += f", commit {commit[:10]}" + (" with uncommitted changes" if report.get("uncommitted_changes") else "")
    parts.append(when)
    command = f"`{report['command']}`" if report.get("command") else "command not recorded"
    return "Machine: " + "; ".join(p for p in parts if p) + "; " + command + "."
