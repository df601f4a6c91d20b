"""Did every job of a finished run get the memory it needed? Each job's request (mem_mb, from the run's log) against
its measured peak (max_rss of its Snakemake benchmark file), per rule.

    .venv/bin/python bench/bench_requests.py WORKDIR [--log LOG]    # LOG: the run's .snakemake/log file (latest)

A request below the measured peak is a job that SLURM would have killed; it is flagged. The ratio peak/request
says how much of its request a rule uses (requests carry 25 % slack and the interpreter, `resmem.bounds`).
"""

from __future__ import annotations

import argparse
import os
import platform
from collections import defaultdict
from pathlib import Path

import pandas as pd


def jobs_of(log: Path) -> list[dict]:
    """(rule, benchmark file, mem_mb) of each job the log lists."""
    jobs, current = [], None
    for line in log.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith(("rule ", "localrule ")) and stripped.endswith(":"):
            current = {"rule": stripped.split()[1].rstrip(":")}
            jobs.append(current)
        elif current is not None and stripped.startswith("benchmark:"):
            current["benchmark"] = stripped.split(":", 1)[1].strip()
        elif current is not None and stripped.startswith("resources:"):
            pairs = dict(item.split("=", 1) for item in stripped.split(":", 1)[1].replace(" ", "").split(","))
            current["mem_mb"] = int(pairs["mem_mb"]) if pairs.get("mem_mb", "").isdigit() else None
    return [job for job in jobs if job.get("benchmark") and job.get("mem_mb")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--log", type=Path, help="the run's log (default: the latest in WORKDIR/.snakemake/log)")
    args = parser.parse_args()
    log = args.log or max((args.workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    by_rule = defaultdict(list)
    for job in jobs_of(log):
        benchmark = pd.read_csv(args.workdir / job["benchmark"], sep="\t")
        by_rule[job["rule"]].append((float(benchmark.max_rss.max()), job["mem_mb"]))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())  # fmt: skip
    print(f"{log} — {cpu}, {os.cpu_count()} cores; measured max_rss (MB) of each job\n")
    print("| rule | jobs | peak, largest (MB) | request, smallest (MB) | peak / request, worst | within the request |")
    print("|---|---:|---:|---:|---:|---|")
    for rule, measured in by_rule.items():
        worst = max(peak / request for peak, request in measured)
        killed = sum(peak > request for peak, request in measured)
        print(f"| {rule} | {len(measured)} | {max(p for p, _ in measured):,.0f} | {min(r for _, r in measured):,} "
              f"| {worst:.2f} | {'all' if not killed else f'NO: {killed} jobs above'} |")  # fmt: skip


if __name__ == "__main__":
    main()
