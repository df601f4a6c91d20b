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
    options = faiss.GpuClonerOptions()
    # An IVF-PQ index's lookup tables of 64 codes × 8 bits exceed a GPU's 48 KiB of shared memory in float32
    # (faiss issue 1178); float16 tables only touch the approximate distances, which `exact_distances` replaces.
    options.useFloat16 = isinstance(index, faiss.IndexIVFPQ)
    gpu_index = faiss.index_cpu_to_gpu(resources, 0, index, options)
    gpu_index.referenced_resources = resources  # keep the resources alive as long as the index
    return gpu_index


def default_nlist(n: int) -> int:
    """faiss's rule of thumb for IVF lists: about 4·sqrt(N)."""
    return max(1, int(4 * np.sqrt(n)))


def build_index(
    train_embeddings: np.ndarray,
    normalize: bool = False,
    device: str = "auto",
    chunk_size: int = DEFAULT_QUERY_CHUNK,
    kind: str = "flat",
    nlist: int | None = None,
    seed: int = 0,
    pq_m: int = 8,
    pq_bits: int = 8,
):
    """An L2 index over the training embeddings, returned on the CPU (ready for faiss.write_index).

    kind "flat" is exact; "ivf" (IndexIVFFlat, for large datastores) clusters the vectors into `nlist` lists,
    trained on a sample of at most 256 per list, and searches `nprobe` of them; "ivfpq" (IndexIVFPQ, kNN-LM's
    choice for 100M-entry stores) also compresses each vector to `pq_m` codes of `pq_bits` bits, so its
    distances are approximate (see `exact_distances`). Built on the GPU when faiss sees one and `device`
    allows; `log` says which."""
    import faiss

    n, dim = train_embeddings.shape
    if kind in ("ivf", "ivfpq"):
        nlist = nlist or default_nlist(n)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
        elif dim % pq_m:
            raise ValueError(f"pq_m = {pq_m} must divide the key dimension {dim}")
        else:
            index = faiss.IndexIVFPQ(faiss.IndexFlatL2(dim), dim, nlist, pq_m, pq_bits)
        sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, 256 * nlist), replace=False))
        index.train(prepare(train_embeddings[sample], normalize))
        log.info("%s index: %d lists trained on %d vectors", kind, nlist, len(sample))
    else:
        index = faiss.IndexFlatL2(dim)
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
    nprobe: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest training examples of every query: (Euclidean distances, indices), both Q×k, sorted.
    For an IVF index, `nprobe` lists are searched per query."""
    if k > index.ntotal:
        raise ValueError(f"k = {k} neighbours asked for, but the index holds only {index.ntotal} vectors")
    import faiss

    if isinstance(index, faiss.IndexIVF):
        index.nprobe = nprobe
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


def exact_distances(
    train_embeddings: np.ndarray, queries: np.ndarray, idx: np.ndarray, normalize: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean distances to neighbours that an approximate (PQ) index found, rows re-sorted by them:
    (distances, indices). Costs Q×k×d, nothing next to the search."""
    q = prepare(queries, normalize)
    neighbours = prepare(train_embeddings[idx.ravel()], normalize).reshape(*idx.shape, -1)
    dist = np.sqrt(((neighbours - q[:, None, :]) ** 2).sum(axis=2))
    order = np.argsort(dist, axis=1, kind="stable")
    return np.take_along_axis(dist, order, axis=1), np.take_along_axis(idx, order, axis=1)


def exact_search(
    train_embeddings: np.ndarray, queries: np.ndarray, k: int, normalize: bool = False, chunk_size: int = 262_144
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by brute force over the datastore in chunks (it may be a memmap larger than
    memory), merged in a heap: the reference that an approximate index's recall is measured against."""
    import faiss

    q = prepare(queries, normalize)
    heap = faiss.ResultHeap(len(q), k)
    for start in range(0, len(train_embeddings), chunk_size):
        block = prepare(train_embeddings[start : start + chunk_size], normalize)
        sq, idx = faiss.knn(q, block, min(k, len(block)))
        if sq.shape[1] < k:  # a last block smaller than k: pad with empty results
            sq = np.pad(sq, ((0, 0), (0, k - sq.shape[1])), constant_values=np.inf)
            idx = np.pad(idx, ((0, 0), (0, k - idx.shape[1])), constant_values=-1)
        heap.add_result(np.ascontiguousarray(sq), np.ascontiguousarray(np.where(idx >= 0, idx + start, -1)))
    heap.finalize()
    return np.sqrt(np.maximum(heap.D, 0.0)), heap.I


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each query's exact k neighbours that the index also returned."""
    k = exact.shape[1]
    return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(found, exact, strict=True)]))
