"""The smoke workflow through a real SLURM controller (.ci/run starts a one-node cluster on localhost)."""

import re
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
    # A damaged CIFAR-100 archive: planning only sees that it is there, and the first job (split) fails on the
    # cluster when it checks the archive's md5 before extracting it.
    (tmp_path / "cifar").mkdir()
    (tmp_path / "cifar" / "cifar-100-python.tar.gz").write_bytes(b"not the archive" * 64)

    def broken(config):
        config["experiments"]["smoke"]["dataset"] = {"name": "cifar100", "root": str(tmp_path / "cifar")}

    config = write_config(tmp_path / "broken.yaml", broken)
    proc = snakemake(tmp_path, *SLURM, "--retries", "1", configfile=config, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    split_requests = [line for line in output.splitlines() if "resources:" in line and "mem_mb=" in line]
    assert any("mem_mb=1000," in line for line in split_requests)  # first attempt
    assert any("mem_mb=2000," in line for line in split_requests)  # the retry asks for twice as much
    assert "Error in rule split" in output and "results/smoke/logs/split.log" in output
    log = (tmp_path / "results" / "smoke" / "logs" / "split.log").read_text()
    assert "cifar-100-python.tar.gz: md5 " in log and "is not the published eb9058c3a382ffc7106e4002c42a8d85" in log


def test_gpu_jobs_reach_the_gpu_partition_and_the_rest_the_default_one_under_the_account(tmp_path):
    """The CI cluster's default partition is cpu, its other one gpu (.ci/local-slurm.sh, with stand-in GPUs). With
    RESMEM_SLURM_GPU_PARTITION and RESMEM_SLURM_ACCOUNT set, the jobs that ask for a GPU (device auto: train, embed)
    land in gpu and split in the default partition, each under the account, as scontrol reads them back; train
    asks for its threads as cores and its planned runtime."""
    target = "results/smoke/cnn_w1/frac0.5/seed0/embeddings.npz"
    env = {"RESMEM_SLURM_GPU_PARTITION": "gpu", "RESMEM_SLURM_ACCOUNT": "resmem-ci"}
    options = [option for option in SLURM if option not in ("--config", "device=cpu", "--slurm-no-account")]
    proc = snakemake(tmp_path, target, *options, "--config", "device=auto",
                     configfile=REPO / "config" / "smoke.yaml", env=env)  # fmt: skip
    output = proc.stdout + proc.stderr
    job_ids = re.findall(r"has been submitted with SLURM jobid (\d+)", output)
    seen = {}
    for job_id in job_ids:
        shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
        fields = dict(re.findall(r"(\w+)=(\S*)", shown))
        rule = re.match(r"rule_(\w+?)_wildcards", fields["Comment"]).group(1)  # the plugin's --comment
        seen[rule] = fields
    assert set(seen) == {"split", "train", "embed"}, output[-3000:]
    for rule, fields in seen.items():
        takes_gpu = rule != "split"
        assert fields["Partition"] == ("gpu" if takes_gpu else "cpu"), (rule, fields)
        assert fields["Account"] == "resmem-ci", (rule, fields)
        assert ("gres/gpu" in fields.get("TRES", "") or "gpu" in fields.get("TresPerJob", "")) == takes_gpu, fields


def test_a_training_cut_by_its_time_limit_resumes_from_its_checkpoint_when_retried(tmp_path):
    """A training of 3,000 digits epochs (a few minutes) under a 1-minute SLURM time limit: SLURM cuts an attempt
    (TIMEOUT), Snakemake retries it, and a retry resumes after the last epoch its checkpoint holds until the
    training is done: the last attempt starts after an epoch > 0, not over."""
    epochs = 3000

    def slow(config):
        smoke = config["experiments"]["smoke"]
        smoke.update(models={"cnn_w1": {"arch": "small_cnn", "width": 1}}, train_fractions=[0.5])
        smoke["train"]["epochs"] = epochs
        config["regression"] = {}

    config = write_config(tmp_path / "slow.yaml", slow)
    run = tmp_path / "results" / "smoke" / "cnn_w1" / "frac0.5" / "seed0"
    target = str((run / "model.pt").relative_to(tmp_path))
    limit = ["--retries", "6", "--set-resources", "train:runtime=1"]  # minutes
    proc = snakemake(tmp_path, target, *SLURM, *limit, configfile=config)
    output = proc.stdout + proc.stderr
    states = []
    for job_id in re.findall(r"has been submitted with SLURM jobid (\d+)", output):
        shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
        states.append(dict(re.findall(r"(\w+)=(\S*)", shown))["JobState"])
    assert "TIMEOUT" in states, (states, output[-3000:])
    log = (run / "logs" / "train.log").read_text()  # the last attempt's (Snakemake clears a failed job's log)
    resumed = [int(epoch) for epoch in re.findall(r"resuming from \S+ after epoch (\d+)", log)]
    assert len(resumed) == 1 and 0 < resumed[0] < epochs, log[:2000]
    assert f"epoch {resumed[0] + 1}: loss" in log and "epoch 1: loss" not in log  # it went on, not over
    assert f"epoch {epochs}: loss" in log and (run / "model.pt").exists()
