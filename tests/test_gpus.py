"""GPU placement: concurrent GPU jobs get distinct devices, simulated here with RESMEM_SIMULATED_GPUS."""

import os
import signal
import subprocess
import sys
import time

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


def test_cpu_and_slurm_jobs_claim_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("RESMEM_SIMULATED_GPUS", "2")
    monkeypatch.setenv("RESMEM_GPU_LOCK_DIR", str(tmp_path))
    with claim_gpu("cpu") as gpu:
        assert gpu is None
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    with claim_gpu("auto") as gpu:
        assert gpu is None
    monkeypatch.delenv("SLURM_JOB_ID")
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    with claim_gpu("auto") as gpu:
        assert gpu == "0" and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == before
