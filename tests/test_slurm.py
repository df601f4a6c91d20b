"""The smoke workflow through a real SLURM controller (.ci/run starts a one-node cluster on localhost)."""

import shutil
import subprocess

import pandas as pd
import pytest

from resmem.plan import planned_jobs
from tests.conftest import REPO, snakemake, write_config


def slurm_is_up() -> bool:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return states.returncode == 0 and any(s in ("idle", "mixed") for s in states.stdout.split())


pytestmark = pytest.mark.skipif(
    not slurm_is_up(), reason="no SLURM controller with an idle node here; .ci/run starts one (.ci/local-slurm.sh)"
)

# No accounting database in the CI cluster: job status comes from squeue. The CI node has no GPU: device cpu.
SLURM = [
    "--profile",
    str(REPO / "profiles" / "slurm"),
    "--config",
    "device=cpu",
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "1",
    "--slurm-no-account",
    "--seconds-between-status-checks",
    "2",
]


LOCAL_RULES = ("all", "aggregate", "lm_aggregate", "regression_report")  # the Snakefile's localrules
SEARCH_CHAIN = ("index", "neighbors", "sweep", "select", "predict")  # one group job per run on a cluster


def test_smoke_through_slurm_equals_the_local_run_in_fewer_submissions(smoke_run, tmp_path):
    """Each run's index → neighbors → sweep → select → predict is one SLURM job (group run_search): the four
    runs of the smoke config submit 4 jobs where one a step would submit 20, and give the local run's tables."""
    planned = planned_jobs(snakemake(tmp_path, "-n", *SLURM, configfile=smoke_run["config"]).stdout)
    one_per_step = sum(count for rule, count in planned.items() if rule not in LOCAL_RULES)
    runs = planned["index"]
    assert runs == 4 and all(planned[rule] == runs for rule in SEARCH_CHAIN)
    proc = snakemake(tmp_path, *SLURM, configfile=smoke_run["config"])
    output = proc.stdout + proc.stderr
    submissions = output.count("has been submitted with SLURM jobid")
    assert submissions == one_per_step - (len(SEARCH_CHAIN) - 1) * runs, output[-3000:]
    results = tmp_path / "results" / "smoke"
    pd.testing.assert_frame_equal(
        pd.read_csv(results / "summary.csv"), pd.read_csv(smoke_run["results"] / "summary.csv")
    )
    for sweep in sorted(smoke_run["results"].glob("*/frac*/seed*/sweep.csv")):
        relative = sweep.relative_to(smoke_run["results"])
        pd.testing.assert_frame_equal(pd.read_csv(results / relative), pd.read_csv(sweep))


def test_a_failing_slurm_job_is_retried_with_more_memory_then_fails_the_run_naming_its_log(tmp_path):
    # Class folders without an image file: they pass the checks made before any job, and the first job (split)
    # fails on the cluster when it lists the images.
    for split in ("train", "test"):
        (tmp_path / "no_images" / split / "cat").mkdir(parents=True)
        (tmp_path / "no_images" / split / "cat" / "notes.txt").write_text("not an image")

    def broken(config):
        config["experiments"]["smoke"]["dataset"] = {"name": "imagefolder", "root": str(tmp_path / "no_images")}

    config = write_config(tmp_path / "broken.yaml", broken)
    proc = snakemake(tmp_path, *SLURM, "--retries", "1", configfile=config, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    split_requests = [line for line in output.splitlines() if "resources:" in line and "mem_mb=" in line]
    assert any("mem_mb=1000," in line for line in split_requests)  # first attempt
    assert any("mem_mb=2000," in line for line in split_requests)  # the retry asks for twice as much
    assert "Error in rule split" in output and "results/smoke/logs/split.log" in output
    log = (tmp_path / "results" / "smoke" / "logs" / "split.log").read_text()
    assert "dataset imagefolder: no image file (.jpg, " in log and "in the class folders cat of " in log
