import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from resmem.plan import job_listing

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(workdir, *args, configfile=None, check=True, env=None):
    """Run the repository's workflow in `workdir` (results land there), with `env` added to the environment,
    returning the CompletedProcess."""
    # Targets first: options such as --configfile and --forcerun take every word after them.
    cmd = [*SNAKEMAKE, *args, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2"]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    env = {**os.environ, "PYTHONHASHSEED": "0", **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def write_config(path, edit=None, base="smoke.yaml"):
    """A copy of config/<base> with `edit(config)` applied, written to `path`."""
    config = yaml.safe_load((REPO / "config" / base).read_text())
    if edit is not None:
        edit(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def job_resources(output: str) -> dict[str, list[dict[str, str]]]:
    """{rule: [each job's resources as {name: value}]} from the job listing of a dry run."""
    jobs = {}
    for job in job_listing(output):
        jobs.setdefault(job["rule"], []).append(job["resources"])
    return jobs


def gpu_requests(output: str) -> dict[str, set[bool]]:
    """{rule: {whether a job asked for a GPU}} from the job listing of a dry run."""
    return {rule: {job.get("gpu") == "1" for job in jobs} for rule, jobs in job_resources(output).items()}


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The workflow on config/smoke.yaml, run once for the whole session."""
    workdir = tmp_path_factory.mktemp("smoke")
    config = write_config(workdir / "smoke.yaml")
    proc = snakemake(workdir, configfile=config)
    return {"workdir": workdir, "config": config, "results": workdir / "results" / "smoke", "proc": proc}


def exact_mcnemar(b: int, c: int) -> float:
    """McNemar's exact two-sided p-value from exact fractions of binomial coefficients: 2·P(X ≤ min(b, c)) for
    X ~ Binomial(b + c, 1/2), at most 1."""
    from fractions import Fraction
    from math import comb

    n = b + c
    return float(min(Fraction(1), 2 * sum(Fraction(comb(n, i), 2**n) for i in range(min(b, c) + 1))))
