"""Plan a config before running it: per rule and per job, the memory and disk each job asks for (the bounds of
`resmem.bounds` plus the interpreter and slack), its estimated hours on a GPU class (`resmem.timing`), the SLURM
runtime and cores it asks for and the segments a long training runs as; and how many SLURM submissions the run
makes.

    python -m resmem.plan config/paper/imagenet.yaml [more configs] [--gpu a100|h100] [--json]

Jobs and requests come from the workflow's own dry run (`snakemake -n`, offline: no data, network or GPU), so
they are what a cluster will be asked for; sizes that are not known before the data exists (the datastore's rows,
a model's width) are estimated from the config (`resmem.vision.sizes`, `resmem.lm.sizes`) and read from the
files once they exist. Hours are the time model's estimates (`resmem.timing`: counted FLOPs at shares of the GPU's
peak calibrated on published anchors, loader, disk and start-up terms), computed here apart from the requests, so
that a request shorter than its job's estimate shows. `--gpu` plans for that GPU class (default: the config's
requests.gpu); `--json` prints {"rules": {RULE: {"jobs": [...]}}, "total": {...}} instead of the tables.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from importlib import import_module
from pathlib import Path

from resmem import timing
from resmem.config import load

REPO = Path(__file__).resolve().parent.parent
SIZES = {"experiments": "resmem.vision.sizes", "lm_experiments": "resmem.lm.sizes"}  # config section: its sizes
SEGMENT_RULES = {"train_segment": "train", "lm_train_segment": "lm_train"}  # a segment: its training rule
SEARCH_GROUP = "run_search"  # the rules' group: each run's index → … → predict in one cluster job


def dry_run(config_path, gpu: str | None = None) -> str:
    """The job listing of `snakemake -n` on a config, run in an empty folder (requests planned for `gpu`)."""
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"), "--directory",
               workdir, "--cores", "1024", "--configfile", str(Path(config_path).resolve())]  # fmt: skip
        if gpu:
            cmd += ["--config", f"requests={{gpu: {gpu}}}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"snakemake -n failed on {config_path}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def job_listing(output: str) -> list[dict]:
    """Each job of a dry run's listing: {rule, group (listed, indented, in a group job), resources, wildcards,
    threads}."""
    jobs = []
    for line in output.splitlines():
        stripped = line.strip()
        if stripped.startswith(("rule ", "localrule ")) and stripped.endswith(":"):
            jobs.append({"rule": stripped.split()[1].rstrip(":"), "group": line.startswith(" "), "resources": {},
                         "wildcards": {}, "threads": 1})  # fmt: skip
        elif stripped.startswith("threads:") and jobs:
            jobs[-1]["threads"] = int(stripped.split(":", 1)[1])
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


def _number(resources: dict, name: str) -> int | None:
    value = resources.get(name, "")
    return int(value) if value.isdigit() else None


def job_plans(config: dict, output: str, gpu: str) -> dict[str, list[dict]]:
    """{rule: [job]} of a dry run's listing: each job's wildcards, its estimated hours (`resmem.timing`, on `gpu`
    where it takes one), its mem_mb, disk_gb, the SLURM runtime (minutes) and cpus_per_task it asks for, the
    segments of its run's training (1 for every other job) and whether it takes a GPU. Local rules run where
    snakemake runs and are left out."""
    local = local_rules()
    plans = defaultdict(list)
    for job in job_listing(output):
        rule, resources, wildcards = job["rule"], job["resources"], job["wildcards"]
        if rule in local or "experiment" not in wildcards:
            continue
        section = "lm_experiments" if rule.startswith("lm_") else "experiments"
        if wildcards["experiment"] not in config[section]:
            continue  # the stylized regression: a few CPU seconds
        experiment = config[section][wildcards["experiment"]]
        takes_gpu = resources.get("gpu") == "1"
        sizes = import_module(SIZES[section])
        step = SEGMENT_RULES.get(rule, rule)
        terms = sizes.job_seconds(step, experiment, wildcards, gpu if takes_gpu else None)
        seconds, segments = sum(terms.values()), 1
        if step in SEGMENT_RULES.values():
            spec = experiment.get("models", {}).get(wildcards["model"], {})
            epochs = spec.get("epochs", experiment["train"]["epochs"])
            ends = timing.training_segment_ends(seconds, config["requests"]["max_hours"], epochs)
            segments = len(ends)
            last = int(wildcards.get("epoch", ends[-1]))
            first = max([0, *(end for end in ends if end < last)])
            seconds = timing.segment_seconds(terms, epochs, first, last)
        disk = _number(resources, "disk_mb")
        plans[rule].append({
            "wildcards": wildcards,
            "hours": seconds / 3600,
            "mem_mb": _number(resources, "mem_mb"),
            "disk_gb": disk / 1000 if disk is not None else 0.0,
            "runtime": _number(resources, "runtime"),
            "cpus_per_task": job["threads"],
            "segments": segments,
            "gpu": takes_gpu,
        })  # fmt: skip
    return dict(plans)


def rule_table(plans: dict[str, list[dict]]) -> list[str]:
    """A markdown table: per rule its jobs, the mem_mb, disk_mb, runtime and cores a job asks for (ranges over the
    jobs), the disk all its jobs write (their disk_mb: a streamed datastore's includes its scratch copy), whether
    it takes a GPU, its jobs' estimated hours together and the most segments a training of it runs as."""
    lines = ["| rule | jobs | mem_mb a job | disk_mb a job | disk, all jobs (GB) | runtime a job (min) | cores a job "
             "| GPU | hours, all jobs | segments |", "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]  # fmt: skip
    for rule, jobs in plans.items():
        mem = [j["mem_mb"] for j in jobs if j["mem_mb"] is not None]
        disk = [round(j["disk_gb"] * 1000) for j in jobs if j["disk_gb"]]
        total = f"{sum(j['disk_gb'] for j in jobs):,.1f}" if disk else ""
        runtime = [j["runtime"] for j in jobs if j["runtime"] is not None]
        cores = [j["cpus_per_task"] for j in jobs]
        gpu = "yes" if any(j["gpu"] for j in jobs) else ""
        hours = sum(j["hours"] for j in jobs)
        segments = max(j["segments"] for j in jobs)
        lines.append(f"| {rule} | {len(jobs)} | {_span(mem)} | {_span(disk)} | {total} | {_span(runtime)} | "
                     f"{_span(cores)} | {gpu} | {hours:,.1f} | {segments if segments > 1 else ''} |")  # fmt: skip
    return lines


def totals(plans: dict[str, list[dict]]) -> dict:
    """GPU hours (the estimated hours of the jobs that take a GPU), all jobs' hours, and their disk requests."""
    jobs = [job for rule_jobs in plans.values() for job in rule_jobs]
    return {"gpu_hours": sum(j["hours"] for j in jobs if j["gpu"]), "hours": sum(j["hours"] for j in jobs),
            "disk_gb": sum(j["disk_gb"] for j in jobs), "jobs": len(jobs)}  # fmt: skip


def plan(config_path, gpu: str | None = None) -> dict:
    """The plan of one config: {"config", "gpu", "rules": {RULE: {"jobs": [...]}}, "total", "submissions",
    "planned_jobs", "assumed"}."""
    config = load(config_path)
    gpu = gpu or config["requests"]["gpu"]
    output = dry_run(config_path, gpu)
    plans = job_plans(config, output, gpu)
    assumed = []
    for section, module in SIZES.items():
        sizes = import_module(module)
        for experiment in config[section].values():
            assumed += sizes.assumptions(experiment)
    one_a_step, grouped = submissions(output)
    return {
        "config": str(config_path),
        "gpu": gpu,
        "rules": {rule: {"jobs": jobs} for rule, jobs in plans.items()},
        "total": totals(plans),
        "submissions": {"one_a_step": one_a_step, "grouped": grouped},
        "planned_jobs": sum(planned_jobs(output).values()),
        "assumed": assumed,
    }


def markdown(report: dict) -> list[str]:
    """The plan as the tables docs/scale.md shows."""
    plans = {rule: entry["jobs"] for rule, entry in report["rules"].items()}
    total, sub = report["total"], report["submissions"]
    return [
        f"### `{report['config']}` on {timing.GPUS[report['gpu']].label}",
        "",
        *rule_table(plans),
        "",
        f"{report['planned_jobs']:,} jobs; on SLURM {sub['one_a_step']:,} submissions one a step, "
        f"{sub['grouped']:,} with each run's search chain as one job; about {total['gpu_hours']:,.0f} GPU hours "
        f"and {total['disk_gb']:,.0f} GB of disk (estimates).",
        *(f"Assumed: {line}." for line in report["assumed"]),
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+")
    parser.add_argument(
        "--gpu",
        choices=sorted(timing.GPUS),
        default=None,
        help="GPU class to plan for (default: the config's requests.gpu, a100 unless set)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = parser.parse_args()
    reports = [plan(path, args.gpu) for path in args.configs]
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=1))
        return
    for report in reports:
        print("\n".join(markdown(report)))


if __name__ == "__main__":
    main()
