"""Exact Euclidean nearest neighbors with faiss, on the GPU when faiss sees one and the device allows."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from resmem.device import faiss_gpu_count, gpu_number
from resmem.digests import sha256
from resmem.io import ArtifactError, hashed_atomic_file

log = logging.getLogger(__name__)

DEFAULT_QUERY_CHUNK = 16384  # queries per search call: bounds the Q×k result blocks and shows progress
RERANK_CHUNK_BYTES = 64 * 2**20  # working memory of the exact steps: PQ re-ranking, brute-force recall reference


def prepare(embeddings: np.ndarray, normalize: bool) -> np.ndarray:
    """float32, C-contiguous (what faiss takes), optionally L2-normalized rows."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if normalize:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.maximum(norms, np.finfo(np.float32).tiny)
    return x


def _to_gpu(index, device: str = "cuda"):
    """A GPU copy of a CPU index, on the GPU that `device` names ("cuda:N"; else the first)."""
    import faiss

    resources = faiss.StandardGpuResources()
    options = faiss.GpuClonerOptions()
    # An IVF-PQ index's lookup tables of 64 codes × 8 bits exceed a GPU's 48 KiB of shared memory in float32
    # (faiss issue 1178); float16 tables only touch the approximate distances, which `exact_distances` replaces.
    options.useFloat16 = isinstance(index, faiss.IndexIVFPQ)
    gpu_index = faiss.index_cpu_to_gpu(resources, gpu_number(device), index, options)
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
) -> Any:
    """An L2 index over the training embeddings, returned on the CPU (ready for faiss.write_index).

    kind "flat" is exact; "ivf" (IndexIVFFlat, for large datastores) clusters the vectors into `nlist` lists,
    trained on a sample of at most 256 per list, and searches `nprobe` of them; "ivfpq" (IndexIVFPQ, kNN-LM's
    choice for 100M-entry stores) also compresses each vector to `pq_m` codes of `pq_bits` bits, so its
    distances are approximate (see `exact_distances`). Built on the GPU when faiss sees one and `device`
    allows; `log` says which."""
    import faiss

    n, dim = train_embeddings.shape
    on_gpu = faiss_gpu_count(device) > 0
    if kind in ("ivf", "ivfpq"):
        nlist = nlist or default_nlist(n)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
        elif dim % pq_m:
            raise ValueError(f"pq_m = {pq_m} must divide the key dimension {dim}")
        else:
            index = faiss.IndexIVFPQ(faiss.IndexFlatL2(dim), dim, nlist, pq_m, pq_bits)
        sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, 256 * nlist), replace=False))
        if on_gpu:  # the k-means of the lists' centroids on the GPU: its assignment step is a large GEMM
            index.clustering_index = _to_gpu(faiss.IndexFlatL2(dim), device)
        index.train(prepare(train_embeddings[sample], normalize))
        index.clustering_index = None
        log.info("%s index: %d lists trained on %d vectors on the %s", kind, nlist, len(sample),
                 "GPU" if on_gpu else "CPU")  # fmt: skip
    else:
        index = faiss.IndexFlatL2(dim)
    log.info("building the index on the %s", "GPU" if on_gpu else "CPU")
    target = _to_gpu(index, device) if on_gpu else index
    for start in range(0, len(train_embeddings), chunk_size):  # chunks: a memmapped datastore is read once
        target.add(prepare(train_embeddings[start : start + chunk_size], normalize))
    return faiss.index_gpu_to_cpu(target) if on_gpu else index


def search(
    index: Any,
    queries: np.ndarray,
    k: int,
    normalize: bool = False,
    device: str = "auto",
    chunk_size: int = DEFAULT_QUERY_CHUNK,
    progress: Any = None,
    nprobe: int = 16,
    rerank: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest training examples of every query: (Euclidean distances, indices), both Q×k, sorted.
    For an IVF index, `nprobe` lists are searched per query. `rerank`: the vectors a PQ index holds; each chunk's
    neighbors then get exact distances (`exact_distances`) before the next chunk is searched.

    Memory: the Q×k results (12 bytes a neighbor) plus one chunk of `chunk_size` queries: its float32 vectors,
    its faiss results and, with `rerank`, the re-ranking's RERANK_CHUNK_BYTES. Queries may be a memmap."""
    if k > index.ntotal:
        raise ValueError(f"k = {k} neighbors asked for, but the index holds only {index.ntotal} vectors")
    import faiss

    if isinstance(index, faiss.IndexIVF):
        index.nprobe = nprobe
    if faiss_gpu_count(device):
        log.info("searching on the GPU")
        index = _to_gpu(index, device)
    else:
        log.info("searching on the CPU")
    dist = np.empty((len(queries), k), dtype=np.float32)
    idx = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk_size):
        stop = min(start + chunk_size, len(queries))
        sq, found = index.search(prepare(queries[start:stop], normalize), k)
        if rerank is None:
            # faiss returns squared L2; rounding can leave tiny negatives for exact matches.
            dist[start:stop], idx[start:stop] = np.sqrt(np.maximum(sq, 0.0)), found
        else:
            dist[start:stop], idx[start:stop] = exact_distances(rerank, queries[start:stop], found, normalize)
        if progress is not None:
            progress.update(stop - start)
    return dist, idx


def search_queries(index, vectors, queries: dict, k_max: int, knn: dict, device: str = "auto") -> tuple[dict, dict]:
    """One search at k_max for each query split ({split: query vectors}) over `index`, which holds `vectors`:
    ({<split>_dist, <split>_idx}, report). `knn` is an experiment's knn section (normalize, query_chunk,
    nprobe, recall_sample).

    The report records the index, the search speed and, for an approximate index, its recall@k_max against
    exact search over `vectors` on a fixed sample of the test queries. A PQ index's distances are replaced by
    exact ones (and rows re-sorted by them), chunk by chunk, so the kernel weights never see quantization error."""
    import sys
    import time

    import faiss
    from tqdm import tqdm

    normalize = knn["normalize"]
    rerank = vectors if isinstance(index, faiss.IndexIVFPQ) else None
    found = {}
    start = time.perf_counter()
    for split, q in queries.items():
        with tqdm(total=len(q), desc=f"search {split}", unit="query", file=sys.stderr) as bar:
            found[f"{split}_dist"], found[f"{split}_idx"] = search(
                index, q, k_max, normalize, device, knn["query_chunk"], bar, knn["nprobe"], rerank
            )
    seconds = time.perf_counter() - start
    n_queries = sum(len(q) for q in queries.values())
    approximate = isinstance(index, faiss.IndexIVF)
    report = {
        "index": type(index).__name__,
        "ntotal": int(index.ntotal),
        "dim": int(index.d),
        "k_max": k_max,
        "queries": n_queries,
        "seconds": seconds,
        "queries_per_second": n_queries / max(seconds, 1e-9),
        "nlist": int(index.nlist) if approximate else None,
        "nprobe": knn["nprobe"] if approximate else None,
        "recall_at_k_max": 1.0,
        "recall_sample": 0,
        # the exact re-ranking's reads of the neighbours' key rows (resmem.timing counts their pages)
        "rerank_bytes": n_queries * k_max * np.asarray(vectors[:1]).nbytes if rerank is not None else 0,
    }
    if approximate:  # measure what the approximation costs, on a fixed sample of the test queries
        test = queries["test"]
        sample = np.sort(np.random.default_rng(0).permutation(len(test))[: knn["recall_sample"]])
        _, exact = exact_search(vectors, test[sample], k_max, normalize, device)
        report.update(recall_at_k_max=recall_at_k(found["test_idx"][sample], exact), recall_sample=len(sample))
        log.info("recall@%d on %d test queries: %.4f", k_max, len(sample), report["recall_at_k_max"])
    return found, report


def exact_distances(
    train_embeddings: np.ndarray, queries: np.ndarray, idx: np.ndarray, normalize: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean distances to neighbors that an approximate (PQ) index found, rows re-sorted by them:
    (distances, indices). A -1 (no neighbor: an IVF probe found fewer than k) gets distance inf and sorts last.
    Gathers the neighbors' vectors in blocks of queries within RERANK_CHUNK_BYTES, so memory does not grow
    with Q×k×d, each block's rows in ascending order, so that a memmapped datastore is read forward, not at
    random."""
    q = prepare(queries, normalize)
    n, k = idx.shape
    dist = np.empty((n, k), dtype=np.float32)
    per_block = max(1, RERANK_CHUNK_BYTES // (2 * 4 * k * max(1, q.shape[1])))  # the gathered rows and their diff
    for start in range(0, n, per_block):
        block = idx[start : start + per_block]
        rows = np.maximum(block, 0).ravel()
        order = np.argsort(rows, kind="stable")  # read in file order: a memmapped datastore streams forward
        gathered = np.empty((len(rows), train_embeddings.shape[1]), dtype=np.float32)
        gathered[order] = prepare(train_embeddings[rows[order]], normalize)
        neighbors = gathered.reshape(*block.shape, -1)
        neighbors -= q[start : start + per_block, None, :]
        squared = np.square(neighbors, out=neighbors).sum(axis=2)
        dist[start : start + per_block] = np.where(block < 0, np.inf, np.sqrt(squared))
    order = np.argsort(dist, axis=1, kind="stable")
    return np.take_along_axis(dist, order, axis=1), np.take_along_axis(idx, order, axis=1)


def exact_search(
    train_embeddings: np.ndarray, queries: np.ndarray, k: int, normalize: bool = False, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbors by brute force over the datastore in blocks of RERANK_CHUNK_BYTES (it may be a
    memmap larger than memory), merged in a heap: the reference that an approximate index's recall is measured
    against. Each block's distances are computed on the GPU when faiss sees one and `device` allows."""
    import faiss

    q = prepare(queries, normalize)
    heap = faiss.ResultHeap(len(q), k)
    block_rows = max(k, RERANK_CHUNK_BYTES // (4 * max(1, q.shape[1])))
    resources = faiss.StandardGpuResources() if faiss_gpu_count(device) else None
    for start in range(0, len(train_embeddings), block_rows):
        block = prepare(train_embeddings[start : start + block_rows], normalize)
        if resources is not None:
            sq, idx = faiss.knn_gpu(resources, q, block, min(k, len(block)), device=gpu_number(device))
        else:
            sq, idx = faiss.knn(q, block, min(k, len(block)))
        if sq.shape[1] < k:  # a last block smaller than k: pad with empty results
            sq = np.pad(sq, ((0, 0), (0, k - sq.shape[1])), constant_values=np.inf)
            idx = np.pad(idx, ((0, 0), (0, k - idx.shape[1])), constant_values=-1)
        heap.add_result(np.ascontiguousarray(sq), np.ascontiguousarray(np.where(idx >= 0, idx + start, -1)))
    heap.finalize()
    return np.sqrt(np.maximum(heap.D, 0.0)), heap.I


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each query's exact k neighbors that the index also returned (distinct ids per row; a -1,
    no neighbor, in both rows counts once)."""
    import faiss

    if len(found) != len(exact):
        raise ValueError(f"recall_at_k: {len(found)} rows of found neighbors vs {len(exact)} exact ones")
    if not len(exact):
        return float("nan")
    # faiss drops -1 from a row before intersecting; shifting ids by one keeps it, as np.intersect1d did.
    found, exact = (np.ascontiguousarray(a, dtype=np.int64) + 1 for a in (found, exact))
    return faiss.eval_intersection(found, exact) / (exact.shape[0] * exact.shape[1])


def index_record(index) -> dict:
    """What an index file is checked against before and after it is read: its faiss type, dimension and
    vector count (the file's bytes and sha256 are added by `write_index`)."""
    import faiss

    return {"type": type(faiss.downcast_index(index)).__name__, "dim": int(index.d), "ntotal": int(index.ntotal)}


def write_index(index, path) -> dict:
    """Write a faiss index atomically and durably through a Python file, so that a failed write or final flush
    (a full disk) raises and leaves nothing under `path`; returns its `index_record` with bytes and sha256."""
    import faiss

    with hashed_atomic_file(path) as f:
        faiss.write_index(index, faiss.PyCallbackIOWriter(f.write))
        f.flush()
    return {**index_record(index), "bytes": f.size, "sha256": f.hexdigest()}


def read_index(path, record: dict, remedy: str = "delete it and rerun its index rule"):
    """A faiss index file, read only once its size and sha256 are those `write_index` recorded, and checked to be
    of the recorded type, dimension and vector count: a swapped, truncated or foreign file never reaches faiss's
    parser."""
    import faiss

    where = f"{path} (recorded: {record['type']}, d = {record['dim']}, {record['ntotal']} vectors)"
    if os.path.getsize(path) != record["bytes"] or sha256(path) != record["sha256"]:
        raise ArtifactError(f"{where}: the file is not the one that was written (size or sha256 differ); {remedy}")
    try:
        built = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise ArtifactError(f"{where}: cannot be read ({exc}); {remedy}") from exc
    if index_record(built) != {k: record[k] for k in ("type", "dim", "ntotal")}:
        raise ArtifactError(f"{where}: holds {index_record(built)}; {remedy}")
    return built
