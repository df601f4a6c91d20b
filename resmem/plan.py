"""Plan a config before running it: per rule, the jobs, the memory and disk each job asks for (the bounds of
`resmem.bounds` plus the interpreter and slack) and the GPU hours; and how many SLURM submissions the run makes.

    python -m resmem.plan config/paper/cifar100.yaml [more configs] [--tflops 100] [--tflops-small 10]

Jobs and requests come from the workflow's own dry run (`snakemake -n`, offline: no data, network or GPU), so
they are what a cluster will be asked for; sizes that are not known before the data exists (the datastore's rows,
a model's width) are estimated from the config (`resmem.vision.sizes`, `resmem.lm.sizes`) and read from the
files once they exist. GPU hours are estimates, not measurements: FLOPs counted with torch.utils.flop_counter
on one example (training 3 forward passes per example and epoch, embedding and datastores one, the exact
search 2·d·N·Q, an upper bound for IVF-PQ), divided by an assumed sustained throughput: --tflops (100 TFLOP/s,
about a third of an H100's dense bf16 peak) for images above 64 px and language models, --tflops-small
(10 TFLOP/s) for 32×32 images, where narrow convolutions are bound by memory and kernel launches.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import defaultdict
from importlib import import_module
from pathlib import Path

from resmem.config import load

REPO = Path(__file__).resolve().parent.parent
SIZES = {"experiments": "resmem.vision.sizes", "lm_experiments": "resmem.lm.sizes"}  # config section: its sizes
SEARCH_GROUP = "run_search"  # the rules' group: each run's index → … → predict in one cluster job


def dry_run(config_path) -> str:
    """The job listing of `snakemake -n` on a config, run in an empty folder."""
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"), "--directory",
               workdir, "--cores", "1", "--configfile", str(Path(config_path).resolve())]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"snakemake -n failed on {config_path}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def job_listing(output: str) -> list[dict]:
    """Each job of a dry run's listing: {rule, group (listed, indented, in a group job), resources, wildcards}."""
    jobs = []
    for line in output.splitlines():
        stripped = line.strip()
        if stripped.startswith(("rule ", "localrule ")) and stripped.endswith(":"):
            jobs.append({"rule": stripped.split()[1].rstrip(":"), "group": line.startswith(" "), "resources": {},
                         "wildcards": {}})  # fmt: skip
        elif stripped.startswith(("resources:", "wildcards:")) and jobs:
            field, listed = stripped.split(":", 1)
            pairs = (item.split("=", 1) for item in listed.split(", "))
            jobs[-1][field] = {name.strip(): value.strip() for name, value in pairs}
    return jobs


def planned_jobs(output: str) -> dict[str, int]:
    """{rule: count} from the 'Job stats' table of a dry run."""
    jobs, in_table = {}, False
    for line in output.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if not parts or parts[0] == "total":
                break
            if parts[0].startswith("---"):
                continue
            jobs[parts[0]] = int(parts[1])
    return jobs


def local_rules() -> set[str]:
    """The Snakefile's localrules (run where snakemake runs, never submitted; a local dry run does not mark them)."""
    block = (REPO / "Snakefile").read_text().split("\nlocalrules:\n", 1)[1]
    names = []
    for line in block.splitlines():
        if not line.startswith(" "):
            break
        names.append(line.strip().rstrip(","))
    return set(names)


def submissions(output: str) -> tuple[int, int]:
    """(SLURM submissions with one job a step, with the run_search groups): every job but the local rules is
    submitted, a group once."""
    local = local_rules()
    cluster = [job for job in job_listing(output) if job["rule"] not in local]
    groups = output.count(f"Group job {SEARCH_GROUP}")
    return len(cluster), len(cluster) - sum(job["group"] for job in cluster) + groups


def _span(values) -> str:
    values = sorted(set(values))
    if not values:
        return "–"
    return f"{values[0]:,}" if len(values) == 1 else f"{values[0]:,}–{values[-1]:,}"


def rule_table(output: str, gpu_hours: dict[str, float]) -> list[str]:
    """A markdown table: per rule its jobs, the mem_mb and disk_mb a job asks for (a range over the jobs), the disk
    all its jobs write (their disk_mb: a streamed datastore's includes its scratch copy) and their GPU hours."""
    by_rule = defaultdict(list)
    for job in job_listing(output):
        by_rule[job["rule"]].append(job["resources"])
    lines = ["| rule | jobs | mem_mb a job | disk_mb a job | disk, all jobs (GB) | GPU | GPU hours, all jobs |",
             "|---|---:|---:|---:|---:|---|---:|"]  # fmt: skip
    for rule, jobs in by_rule.items():
        mem = [int(j["mem_mb"]) for j in jobs if j.get("mem_mb", "").isdigit()]
        disk = [int(j["disk_mb"]) for j in jobs if j.get("disk_mb", "").isdigit()]
        total = f"{sum(disk) / 1000:,.1f}" if disk else ""
        gpu = "yes" if any(j.get("gpu") == "1" for j in jobs) else ""
        hours = f"{gpu_hours[rule]:,.1f}" if rule in gpu_hours else ""
        lines.append(f"| {rule} | {len(jobs)} | {_span(mem)} | {_span(disk)} | {total} | {gpu} | {hours} |")
    return lines


def plan(config_path, tflops: float, tflops_small: float) -> list[str]:
    config = load(config_path)
    output = dry_run(config_path)
    hours, assumed = defaultdict(float), []
    for section, module in SIZES.items():  # each kind's estimate, named as the workflow names its stages
        sizes = import_module(module)
        for experiment in config[section].values():
            for rule, value in sizes.gpu_hours(experiment, tflops, tflops_small).items():
                hours[rule] += value
            assumed += sizes.assumptions(experiment)
    one_a_step, grouped = submissions(output)
    total = sum(hours.values())
    return [
        f"### `{config_path}`",
        "",
        *rule_table(output, hours),
        "",
        f"{sum(planned_jobs(output).values()):,} jobs; on SLURM {one_a_step:,} submissions one a step, "
        f"{grouped:,} with each run's search chain as one job; about {total:,.0f} GPU hours (estimate).",
        *(f"Assumed: {line}." for line in assumed),
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--tflops", type=float, default=100.0, help="assumed sustained TFLOP/s")
    parser.add_argument("--tflops-small", type=float, default=10.0, help="assumed sustained TFLOP/s, 32x32 images")
    args = parser.parse_args()
    for path in args.configs:
        print("\n".join(plan(path, args.tflops, args.tflops_small)))


if __name__ == "__main__":
    main()
