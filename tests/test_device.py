"""The one device switch: CPU here, a clear error when CUDA is demanded but absent."""

import faiss
import pytest
import torch

from resmem.device import faiss_gpu_count, torch_device


def test_auto_and_cpu_run_on_the_cpu_here():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    assert torch_device("auto").type == "cpu" and torch_device("cpu").type == "cpu"
    assert faiss_gpu_count("auto") == faiss.get_num_gpus() == 0
    assert faiss_gpu_count("cpu") == 0


def test_demanding_cuda_without_a_gpu_says_what_to_do():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    with pytest.raises(RuntimeError, match="'device: cuda' but torch sees no CUDA GPU; set 'device: auto'"):
        torch_device("cuda")
    with pytest.raises(RuntimeError, match="'device: cuda' but faiss sees no GPU"):
        faiss_gpu_count("cuda")


def test_unknown_device_names_the_key():
    with pytest.raises(ValueError, match="config key 'device' must be one of"):
        torch_device("tpu")
