"""GPU placement: concurrent GPU jobs get distinct devices, simulated here with RESMEM_SIMULATED_GPUS."""

import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from resmem.device import claim_gpu

HOLDER = """
import sys, time
from resmem.device import claim_gpu
with claim_gpu("auto") as gpu:
    import os
    print(f"{time.time():.3f} {gpu} {os.environ['CUDA_VISIBLE_DEVICES']}", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def start(tmp_path, hold_seconds, gpus=2):
    env = {**os.environ, "RESMEM_SIMULATED_GPUS": str(gpus), "RESMEM_GPU_LOCK_DIR": str(tmp_path)}
    env.pop("SLURM_JOB_ID", None)
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(hold_seconds)], stdout=subprocess.PIPE, text=True, env=env
    )


def test_concurrent_jobs_get_distinct_gpus_and_wait_when_all_are_taken(tmp_path):
    started = time.time()
    jobs = [start(tmp_path, 2.0) for _ in range(3)]
    lines = [job.communicate(timeout=60)[0].split() for job in jobs]
    claims = sorted((float(t) - started, gpu, visible) for t, gpu, visible in lines)
    assert all(gpu == visible for _, gpu, visible in claims)  # CUDA_VISIBLE_DEVICES names the claimed GPU
    assert {claims[0][1], claims[1][1]} == {"0", "1"}  # the first two run at once, on different GPUs
    assert claims[2][0] - claims[0][0] > 1.5  # the third waited until a GPU was released


def test_a_killed_job_releases_its_gpu(tmp_path):
    holder = start(tmp_path, 60.0, gpus=1)
    assert holder.stdout.readline().split()[1] == "0"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    started = time.time()
    follower = start(tmp_path, 0.0, gpus=1)
    assert follower.communicate(timeout=30)[0].split()[1] == "0"
    assert time.time() - started < 10  # the lock died with the killed job: no waiting


def test_cpu_jobs_and_slurm_jobs_of_one_gpu_claim_nothing(monkeypatch, tmp_path):
    """A SLURM job that sees one GPU was given it by the scheduler; one that sees several (salloc, the workflow
    run locally inside the allocation) takes a lock like any local job."""
    monkeypatch.setenv("RESMEM_SIMULATED_GPUS", "2")
    monkeypatch.setenv("RESMEM_GPU_LOCK_DIR", str(tmp_path))
    with claim_gpu("cpu") as gpu:
        assert gpu is None
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    with claim_gpu("auto") as gpu:
        assert gpu == "0" and (tmp_path / "gpu0.lock").exists()
    monkeypatch.setenv("RESMEM_SIMULATED_GPUS", "1")
    with claim_gpu("auto") as gpu:
        assert gpu is None
    monkeypatch.delenv("SLURM_JOB_ID")
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    with claim_gpu("auto") as gpu:
        assert gpu == "0" and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == before


def one_local_gpu(monkeypatch, folder):
    """One simulated GPU outside SLURM, its locks in `folder`."""
    monkeypatch.setenv("RESMEM_SIMULATED_GPUS", "1")
    monkeypatch.setenv("RESMEM_GPU_LOCK_DIR", str(folder))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)


def test_a_planted_lock_link_is_refused_and_its_target_untouched(monkeypatch, tmp_path):
    folder, target = tmp_path / "locks", tmp_path / "precious.txt"
    folder.mkdir(mode=0o700)
    target.write_text("results")
    (folder / "gpu0.lock").symlink_to(target)
    one_local_gpu(monkeypatch, folder)
    with pytest.raises(RuntimeError, match=r"GPU lock file .*gpu0.lock cannot be opened .*a link\?\): remove it"):
        with claim_gpu("auto"):
            pass
    assert target.read_text() == "results"


@pytest.mark.parametrize("mode", [0o777, 0o755])
def test_a_lock_folder_others_may_use_is_refused(monkeypatch, tmp_path, mode):
    folder = tmp_path / "locks"
    folder.mkdir()
    folder.chmod(mode)
    one_local_gpu(monkeypatch, folder)
    with pytest.raises(RuntimeError, match=rf"GPU lock folder {folder} is not a private folder .*mode "):
        with claim_gpu("auto"):
            pass


def test_a_job_waiting_for_a_gpu_says_so_and_gives_up_with_a_clear_error(monkeypatch, tmp_path, caplog):
    holder = start(tmp_path, 60.0, gpus=1)
    assert holder.stdout.readline().split()[1] == "0"
    one_local_gpu(monkeypatch, tmp_path)
    try:
        with caplog.at_level(logging.INFO, logger="resmem"), pytest.raises(
            RuntimeError, match=r"no GPU free after 1 s: other jobs hold the locks of GPUs 0 in .*--resources gpu=N"
        ):  # fmt: skip
            with claim_gpu("auto", poll_seconds=0.1, timeout_seconds=1.0):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert "every GPU (0) is taken by another job" in caplog.text


def test_a_local_run_starts_one_gpu_job_per_gpu_so_none_waits_on_a_lock(tmp_path):
    """Two training jobs that each take a GPU, two cores and one (simulated) GPU: the workflow bounds its GPU jobs
    by the GPUs it sees (no --resources gpu=N given), so the second starts when the first is done and neither
    log says it waited for a GPU; with --resources gpu=2 both start at once and one of them waits."""
    from tests.conftest import snakemake, write_config

    targets = [f"results/smoke/{m}/frac1/seed0/model.pt" for m in ("cnn_w1", "cnn_w4")]
    config = write_config(tmp_path / "config.yaml", lambda c: c.update(regression={}))
    env = {"RESMEM_SIMULATED_GPUS": "1", "RESMEM_GPU_LOCK_DIR": str(tmp_path / "locks")}
    (tmp_path / "locks").mkdir(mode=0o700)
    waited = {}
    for name, extra in (("bounded", []), ("unbounded", ["--resources", "gpu=2"])):
        workdir = tmp_path / name
        workdir.mkdir()
        snakemake(workdir, *targets, "--cores", "2", *extra, configfile=config, env=env)
        logs = [(workdir / t).parent.joinpath("logs", "train.log").read_text() for t in targets]
        waited[name] = sum("every GPU (0) is taken by another job" in log for log in logs)
    assert waited == {"bounded": 0, "unbounded": 1}
