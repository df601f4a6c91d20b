"""The planner on the paper configs and on its published anchors: what README, docs/paper.md and docs/scale.md show
of the paper studies' costs, rendered from this script's output (bench/results/bench_plan.json).

    .venv/bin/python bench/bench_plan.py      # plans config/paper/*.yaml for each GPU class (about a minute)

For each published anchor (`resmem.timing.ANCHORS`) the anchor's throughput beside the planner's on the same work;
for each paper config and GPU class the plan of `python -m resmem.plan --json` (its jobs, GPU hours, disk and the
longest request). Plans are estimates, not measurements: no GPU runs here.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench_record import REPO, RESULTS, machine, machine_line, write

from resmem import timing
from resmem.plan import markdown, plan

CONFIGS = sorted((REPO / "config" / "paper").glob("*.yaml"))


def anchor_rows() -> list[dict]:
    return [{"name": a.name, "hardware": a.hardware, "unit": a.unit, "published": a.published, "planned": a.planned(),
             "role": a.role, "source": a.source} for a in timing.ANCHORS]  # fmt: skip


def anchors_table(rows: list[dict]) -> str:
    lines = ["| work | hardware | published | planner | difference | role | source |",
             "|---|---|---:|---:|---:|---|---|"]  # fmt: skip
    for r in rows:
        difference = r["planned"] / r["published"] - 1
        flag = "" if r["role"] == "calibrates" or abs(difference) <= timing.ANCHOR_GOAL else " (outside the goal)"
        published, planned = (f"{r[key]:,.4g} {r['unit']}" for key in ("published", "planned"))
        lines.append(f"| {r['name']} | {r['hardware']} | {published} | {planned} | {difference:+.1%}{flag} | "
                     f"{r['role']} | {r['source']} |")  # fmt: skip
    return "\n".join(lines)


def longest(report: dict) -> dict:
    """The job of the longest runtime request: its rule and request in hours."""
    jobs = [(job["runtime"] or 0, rule) for rule, entry in report["rules"].items() for job in entry["jobs"]]
    minutes, rule = max(jobs)
    return {"rule": rule, "hours": minutes / 60}


def totals_table(plans: dict[str, dict[str, dict]]) -> str:
    """Per paper config: its jobs, its GPU hours on each class, its disk and its longest request."""
    gpus = sorted(timing.GPUS)
    header = " | ".join(f"GPU hours, {timing.GPUS[g].label.split(' ')[1]}" for g in gpus)
    lines = [f"| config | jobs | {header} | disk (GB) | longest request (A100) | most segments |",
             "|---|---:|" + "---:|" * len(gpus) + "---:|---|---:|"]  # fmt: skip
    for config, by_gpu in plans.items():
        first = by_gpu[gpus[0]]
        hours = " | ".join(f"{by_gpu[g]['total']['gpu_hours']:,.1f}" for g in gpus)
        worst = longest(by_gpu["a100"])
        segments = max(j["segments"] for entry in first["rules"].values() for j in entry["jobs"])
        lines.append(f"| `{config}` | {first['planned_jobs']:,} | {hours} | {first['total']['disk_gb']:,.0f} | "
                     f"{worst['hours']:,.1f} h ({worst['rule']}) | {segments} |")  # fmt: skip
    return "\n".join(lines)


def rules_tables(plans: dict[str, dict[str, dict]]) -> str:
    """The planner's per-rule tables of every paper config on an A100 (`resmem.plan.markdown`)."""
    return "\n".join("\n".join(markdown(by_gpu["a100"])) for by_gpu in plans.values()).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_plan.json")
    args = parser.parse_args()
    os.chdir(REPO)  # the configs by their paths in the repository, as the tables name them
    plans = {}
    for config in CONFIGS:
        name = str(config.relative_to(REPO))
        plans[name] = {gpu: plan(name, gpu) for gpu in sorted(timing.GPUS)}
    results = {"anchors": anchor_rows(), "goal": timing.ANCHOR_GOAL, "plans": plans}
    print(anchors_table(results["anchors"]), "", totals_table(plans), sep="\n")
    report = write(args.out, args, machine("cpu"), results)
    print(machine_line(report))


if __name__ == "__main__":
    main()
