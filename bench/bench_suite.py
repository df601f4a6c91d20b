"""The test suite's wall time, this checkout against another commit, one after the other on the same machine.

    .venv/bin/python bench/bench_suite.py --baseline f771002

checks the baseline commit out into a temporary git worktree, runs `python -m pytest -q -p no:cacheprovider`
there and then here (each in a fresh process, with this checkout's virtual environment, the baseline first), and
writes bench/results/bench_suite.json: each run's wall time, its counts of passed / skipped / failed tests and
the slowest tests, beside the machine. Run it on a quiet machine: other work on the cores slows both runs
unevenly. bench/render_tables.py renders the table of docs/development.md from it.
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

from bench_record import REPO, RESULTS, git, machine, write

COUNTS = re.compile(r"(\d+) (passed|skipped|failed|errors?|deselected)")
SLOWEST = re.compile(r"^(\d+\.\d+)s (call|setup|teardown) +(\S+)$", re.M)


def run_suite(checkout: Path, pytest_args: list[str]) -> dict:
    """Time the suite of `checkout` (its own tests and package, first on the path) in a fresh process."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=15", *pytest_args]
    env = {**os.environ, "PYTHONPATH": str(checkout)}  # its package before the installed one
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=checkout, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    counts = {name.rstrip("s") if name.startswith("error") else name: int(n) for n, name in COUNTS.findall(tail)}
    slowest = [{"seconds": float(s), "phase": phase, "test": test} for s, phase, test in SLOWEST.findall(proc.stdout)]
    return {"seconds": seconds, "returncode": proc.returncode, "counts": counts, "summary": tail,
            "slowest": slowest[:15]}  # fmt: skip


def table(report: dict) -> str:
    """The Markdown table of a bench_suite.json report."""
    rows = ["Wall time of `python -m pytest` for each commit, one after the other on the same machine, without a SLURM "
            "controller (the SLURM tests skip).", "",
            "| suite | commit | tests passed | skipped | failed | wall time |",
            "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for run in report["results"]["runs"]:
        counts = run["counts"]
        rows.append(f"| {run['label']} | `{run['commit'][:10]}` | {counts.get('passed', 0)} | "
                    f"{counts.get('skipped', 0)} | {counts.get('failed', 0) + counts.get('error', 0)} | "
                    f"{run['seconds'] / 60:.1f} min |")  # fmt: skip
    runs = report["results"]["runs"]
    if len(runs) == 2:
        rows.append("")
        rows.append(f"This suite takes {runs[1]['seconds'] / runs[0]['seconds']:.0%} of the baseline's time.")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="a commit whose suite runs first, for comparison")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_suite.json")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (e.g. a test file)")
    args = parser.parse_args()
    runs = []
    if args.baseline:
        with tempfile.TemporaryDirectory() as folder:
            worktree = Path(folder) / "baseline"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(worktree), args.baseline],
                           check=True)  # fmt: skip
            try:
                commit = git("rev-parse", args.baseline) or args.baseline
                runs.append({"label": "baseline", "commit": commit, **run_suite(worktree, args.pytest_args)})
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], check=False)
        print(f"baseline: {runs[-1]['seconds']:.0f} s, {runs[-1]['summary']}", flush=True)
    runs.append(
        {"label": "this checkout", "commit": git("rev-parse", "HEAD") or "?", **run_suite(REPO, args.pytest_args)}
    )
    print(f"this checkout: {runs[-1]['seconds']:.0f} s, {runs[-1]['summary']}", flush=True)
    report = write(args.out, args, machine("cpu"), {"runs": runs})
    print(table(report))


if __name__ == "__main__":
    main()
