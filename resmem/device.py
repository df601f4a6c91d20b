"""The one device switch: config `device` is `auto` (CUDA when present), `cpu` or `cuda`.

Every GPU path (torch training and embedding, faiss index and search) asks here, so the CPU path that CI
tests is the same code with the switch off.
"""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda")


def _check(device: str) -> None:
    if device not in DEVICES:
        raise ValueError(f"config key 'device' must be one of {DEVICES}, got {device!r}")


def torch_device(device: str = "auto"):
    import torch

    _check(device)
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config 'device: cuda' but torch sees no CUDA GPU; set 'device: auto' or 'cpu'")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def faiss_gpu_count(device: str = "auto") -> int:
    """GPUs that faiss may use under this switch (0 means the CPU path)."""
    import faiss

    _check(device)
    if device == "cpu" or not hasattr(faiss, "get_num_gpus"):
        return 0
    count = faiss.get_num_gpus()
    if device == "cuda" and count == 0:
        raise RuntimeError("config 'device: cuda' but faiss sees no GPU; set 'device: auto' or 'cpu'")
    return count
