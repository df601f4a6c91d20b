"""The test suite's wall time, this checkout against another commit, one after the other on the same machine.

    .venv/bin/python bench/bench_suite.py --baseline f771002

checks the baseline commit out into a temporary git worktree, runs `python -m pytest -q -p no:cacheprovider`
there and then here (each in a fresh process, with this checkout's virtual environment, the baseline first), and
writes bench/results/bench_suite.json: each run's wall time, its counts of passed / skipped / failed tests and
the slowest tests, and the machine's float32 matmul throughput measured just before it, beside the machine.
bench/render_tables.py renders the table of docs/development.md from it.

Run it on a quiet machine: other work on the cores slows the runs unevenly. Where the machine's own speed
drifts (a shared host), `--repeats 2` runs the suites in the order baseline, here, here, baseline, so a drift
that is linear in time slows both alike, and compares the faster run of each.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_record import REPO, RESULTS, git, machine, matmul_gflops, write

COUNTS = re.compile(r"(\d+) (passed|skipped|failed|errors?|deselected)")
SLOWEST = re.compile(r"^(\d+\.\d+)s (call|setup|teardown) +(\S+)$", re.M)


def run_suite(checkout: Path, pytest_args: list[str]) -> dict:
    """Time the suite of `checkout` (its own tests and package, first on the path) in a fresh process."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=15", *pytest_args]
    env = {**os.environ, "PYTHONPATH": str(checkout)}  # its package before the installed one
    import torch  # here, not at the top: render_tables.py imports this module for its table alone

    gflops = matmul_gflops(torch.device("cpu"))
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=checkout, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    counts = {name.rstrip("s") if name.startswith("error") else name: int(n) for n, name in COUNTS.findall(tail)}
    slowest = [{"seconds": float(s), "phase": phase, "test": test} for s, phase, test in SLOWEST.findall(proc.stdout)]
    return {"seconds": seconds, "returncode": proc.returncode, "counts": counts, "summary": tail,
            "slowest": slowest[:15], "matmul_gflops_before": gflops}  # fmt: skip


def table(report: dict) -> str:
    """The Markdown table of a bench_suite.json report."""
    rows = ["Wall time of `python -m pytest` for each commit, one after the other on the same machine (in the order "
            "listed), without a SLURM controller (the SLURM tests skip); the machine's float32 matmul throughput "
            "measured just before each run.", "",
            "| suite | commit | tests passed | skipped | failed | matmul GFLOP/s before | wall time |",
            "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    runs = report["results"]["runs"]
    for run in runs:
        counts, gflops = run["counts"], run.get("matmul_gflops_before")
        rows.append(f"| {run['label']} | `{run['commit'][:10]}` | {counts.get('passed', 0)} | "
                    f"{counts.get('skipped', 0)} | {counts.get('failed', 0) + counts.get('error', 0)} | "
                    f"{'–' if gflops is None else f'{gflops:.0f}'} | {run['seconds'] / 60:.1f} min |")  # fmt: skip
    fastest = {label: min(r["seconds"] for r in runs if r["label"] == label) for label in ("baseline", "this checkout")
               if any(r["label"] == label for r in runs)}  # fmt: skip
    if len(fastest) == 2:
        of = "the faster run of each" if len(runs) > 2 else "one run each"
        rows += ["", f"This suite takes {fastest['this checkout'] / fastest['baseline']:.0%} of the baseline's time "
                     f"({of})."]  # fmt: skip
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="a commit whose suite runs first, for comparison")
    parser.add_argument("--repeats", type=int, default=1, help="suite runs per commit, interleaved (ABBA)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_suite.json")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (e.g. a test file)")
    args = parser.parse_args()
    here = ("this checkout", git("rev-parse", "HEAD") or "?", REPO)
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        suites = [here]
        if args.baseline:
            worktree = Path(folder) / "baseline"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(worktree), args.baseline],
                           check=True)  # fmt: skip
            suites = [("baseline", git("rev-parse", args.baseline) or args.baseline, worktree), here]
        try:
            for repeat in range(args.repeats):
                for label, commit, checkout in suites if repeat % 2 == 0 else suites[::-1]:
                    runs.append({"label": label, "commit": commit, **run_suite(checkout, args.pytest_args)})
                    print(f"{label}: {runs[-1]['seconds']:.0f} s, {runs[-1]['summary']}", flush=True)
        finally:
            if args.baseline:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], check=False)
    report = write(args.out, args, machine("cpu"), {"runs": runs})
    print(table(report))


if __name__ == "__main__":
    main()
