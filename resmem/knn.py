"""Exact Euclidean nearest neighbours with faiss, on the GPU when faiss sees one and the device allows."""

from __future__ import annotations

import logging

import numpy as np

from resmem.device import faiss_gpu_count

log = logging.getLogger(__name__)

DEFAULT_QUERY_CHUNK = 16384  # queries per search call: bounds the Q×k result blocks and shows progress


def prepare(embeddings: np.ndarray, normalize: bool) -> np.ndarray:
    """float32, C-contiguous (what faiss takes), optionally L2-normalized rows."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if normalize:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.maximum(norms, np.finfo(np.float32).tiny)
    return x


def _to_gpu(index):
    import faiss

    resources = faiss.StandardGpuResources()
    gpu_index = faiss.index_cpu_to_gpu(resources, 0, index)
    gpu_index.referenced_resources = resources  # keep the resources alive as long as the index
    return gpu_index


def build_index(
    train_embeddings: np.ndarray, normalize: bool = False, device: str = "auto", chunk_size: int = DEFAULT_QUERY_CHUNK
):
    """A flat L2 index over the training embeddings, returned on the CPU (ready for faiss.write_index).

    Built on the GPU when faiss sees one and `device` allows; `log` says which."""
    import faiss

    index = faiss.IndexFlatL2(train_embeddings.shape[1])
    on_gpu = faiss_gpu_count(device) > 0
    log.info("building the index on the %s", "GPU" if on_gpu else "CPU")
    target = _to_gpu(index) if on_gpu else index
    for start in range(0, len(train_embeddings), chunk_size):  # chunks: a memmapped datastore is read once
        target.add(prepare(train_embeddings[start : start + chunk_size], normalize))
    return faiss.index_gpu_to_cpu(target) if on_gpu else index


def search(
    index,
    queries: np.ndarray,
    k: int,
    normalize: bool = False,
    device: str = "auto",
    chunk_size: int = DEFAULT_QUERY_CHUNK,
    progress=None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest training examples of every query: (Euclidean distances, indices), both Q×k, sorted."""
    if k > index.ntotal:
        raise ValueError(f"k = {k} neighbours asked for, but the index holds only {index.ntotal} vectors")
    if faiss_gpu_count(device):
        log.info("searching on the GPU")
        index = _to_gpu(index)
    else:
        log.info("searching on the CPU")
    q = prepare(queries, normalize)
    dist = np.empty((len(q), k), dtype=np.float32)
    idx = np.empty((len(q), k), dtype=np.int64)
    for start in range(0, len(q), chunk_size):
        stop = min(start + chunk_size, len(q))
        sq, idx[start:stop] = index.search(q[start:stop], k)
        # faiss returns squared L2; rounding can leave tiny negatives for exact matches.
        dist[start:stop] = np.sqrt(np.maximum(sq, 0.0))
        if progress is not None:
            progress.update(stop - start)
    return dist, idx
