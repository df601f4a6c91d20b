"""The one device switch: `auto` takes CUDA where torch sees it and the CPU elsewhere, a clear error when CUDA is
demanded but absent."""

import os
import subprocess
import sys

import faiss
import pytest
import torch

from resmem.device import CPU_KERNELS, faiss_gpu_count, pin_cpu_kernels, torch_device


def test_auto_takes_cuda_where_there_is_one_and_cpu_stays_on_the_cpu():
    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert torch_device("cpu").type == "cpu"
    assert faiss_gpu_count("auto") == faiss.get_num_gpus() and faiss_gpu_count("cpu") == 0


def without_gpus(monkeypatch):
    """This process made to see no GPU, as torch and faiss report it (on a machine with CUDA too)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)


def test_auto_without_a_gpu_runs_on_the_cpu(monkeypatch):
    without_gpus(monkeypatch)
    assert torch_device("auto").type == "cpu" and faiss_gpu_count("auto") == 0


def test_auto_with_a_gpu_takes_it(monkeypatch):
    """As torch and faiss report a GPU (on a machine without one too): auto and cuda take it, cpu does not."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    assert torch_device("auto").type == torch_device("cuda").type == "cuda" and torch_device("cpu").type == "cpu"
    assert faiss_gpu_count("auto") == faiss_gpu_count("cuda") == 1 and faiss_gpu_count("cpu") == 0


def test_demanding_cuda_without_a_gpu_says_what_to_do(monkeypatch):
    without_gpus(monkeypatch)
    with pytest.raises(RuntimeError, match="'device: cuda' but torch sees no CUDA GPU; set 'device: auto'"):
        torch_device("cuda")
    with pytest.raises(RuntimeError, match="'device: cuda' but faiss sees 0 GPUs"):
        faiss_gpu_count("cuda")


def test_unknown_device_names_the_key():
    with pytest.raises(ValueError, match="config key 'device' must be one of"):
        torch_device("tpu")


@pytest.fixture
def clean_kernel_settings(monkeypatch):
    """The CPU_KERNELS variables unset for the test and restored after it."""
    for name in CPU_KERNELS:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_cpu_runs_pin_every_library_to_avx2_kernels(clean_kernel_settings, monkeypatch):
    """Where the CPU has AVX2 and FMA, a CPU run's environment (which its jobs inherit) names AVX2 kernels for
    torch, oneDNN, MKL, faiss, numpy and OpenBLAS; a variable the user set stays; GPU runs pin nothing."""
    monkeypatch.setattr("resmem.device.cpu_flags", lambda: {"avx2", "fma", "avx512f"})
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Zen")
    monkeypatch.setenv("RESMEM_SIMULATED_GPUS", "1")
    assert pin_cpu_kernels("cuda") == {} and pin_cpu_kernels("auto") == {} and "FAISS_OPT_LEVEL" not in os.environ
    pinned = pin_cpu_kernels("cpu")
    assert pinned == {**CPU_KERNELS, "OPENBLAS_CORETYPE": "Zen"}
    assert os.environ["ATEN_CPU_CAPABILITY"] == "avx2" and os.environ["DNNL_MAX_CPU_ISA"] == "AVX2"
    monkeypatch.setattr("resmem.device.cpu_flags", lambda: {"sse4_2"})
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    assert pin_cpu_kernels("cpu") == {} and "ATEN_CPU_CAPABILITY" not in os.environ  # a CPU without AVX2


def test_pinned_kernels_reach_torch_faiss_and_numpy(clean_kernel_settings):
    """In a fresh process under the pins, each library reports its AVX2 code path."""
    code = (
        "import torch, numpy, faiss.loader\n"
        "print(torch.backends.cpu.get_cpu_capability(), faiss.loader.opt_level,"
        " 'X86_V4' in numpy._core._multiarray_umath.__cpu_features__ and"
        " numpy._core._multiarray_umath.__cpu_features__['X86_V4'])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **CPU_KERNELS}
    )
    assert proc.stdout.split() == ["AVX2", "avx2", "False"], proc.stderr[-2000:]
