"""What each stage holds at its peak and writes, from the sizes of its data: the one place where the workflow's
memory bounds are stated. The rules' requests (`mem_mb`, `disk_mb` in workflow/rules/common.smk), the planner
(`python -m resmem.plan CONFIG`) and bench/bench_scale.py (which measures them) all read them from here.

A run's sizes (`RunSizes`): N datastore rows of which `index_rows` are indexed, keys of width d, Q = val + test
queries searched at k = k_max, C classes (the vocabulary V for tokens) and, for language models, the final hidden
width h. Peak memory, in bytes, beyond the interpreter (BASE_MB):

- index: twice the index (`index_bytes`: faiss grows its arrays by reallocation while vectors are added, old and
  new side by side) and twice its training sample of min(N, 256·nlist)·d·4 (IVF: k-means and the product
  quantizer each copy it), one added chunk of 16,384·d·4 and the row list, N·8.
- neighbors: the index (an IVF-PQ index read back also builds its precomputed table, nlist·pq_m·2^pq_bits·4),
  the row list N·8, the results, Q·k·12, one query chunk's vectors and results, query_chunk·(d·4 + k·36), the
  exact re-ranking's RERANK_CHUNK_BYTES and faiss's SEARCH_BUFFERS.
- sweep, predict: the neighbours twice, Q·k·24 (as loaded, and val and test stacked), the query logits of
  images, Q·C·4, and three sweep budgets, 3·sweep_chunk_mb (the engine's residual table and chunk, the float64
  re-decisions).
- corpus (language models): one tokenize batch and its ids, and the longest document (`resmem.lm.sizes`).

Memmapped inputs are read in chunks and count as page cache, not as the job's own memory. Stages that run a
model (train, embed, datastore) hold it (`model_bytes`), a batch and their data: `model_memory_bytes` in
`resmem.vision.sizes` and `resmem.lm.sizes`.
"""

from __future__ import annotations

from dataclasses import dataclass

from resmem.config import ConfigError
from resmem.knn import DEFAULT_QUERY_CHUNK, RERANK_CHUNK_BYTES

MB = 10**6  # Snakemake's and SLURM's mem_mb are megabytes
# The interpreter and what a stage imports, in MB: numpy alone, faiss (its GPU build loads CUDA libraries), torch
# (with CUDA's libraries and context on a GPU node). Measured on the CPU (bench/bench_requests.py): 80, 320, 1,000.
BASE_MB = {"numpy": 300, "faiss": 800, "torch": 2000}
SEARCH_BUFFERS = 128 * 2**20  # faiss's result heaps and scratch: ~100 MB whatever the size (bench/bench_scale.py)
STAGE_BASE = {"index": "faiss", "neighbors": "faiss", "sweep": "torch", "predict": "torch"}


@dataclass(frozen=True)
class RunSizes:
    datastore_rows: int  # N: rows of the datastore file
    index_rows: int  # rows the index holds (a datastore fraction of N)
    dim: int  # d: key width
    queries: int  # Q: val + test
    classes: int  # C, or the vocabulary V
    k_max: int
    hidden: int = 0  # h: a token datastore's final hidden width (0 for images)
    query_logits: bool = True  # images: the sweep reads the queries' logits; tokens compute them per block

    def __post_init__(self) -> None:  # before any memory request is planned from a k no search could serve
        if self.k_max > self.index_rows:
            raise ConfigError(f"config key knn.k: the largest k ({self.k_max:,}) exceeds the {self.index_rows:,} "
                              "rows this run's datastore indexes; lower it")  # fmt: skip


def index_bytes(sizes: RunSizes, knn: dict) -> int:
    """The index in memory: flat and IVF hold the float32 vectors, IVF-PQ pq_m codes of pq_bits; each IVF entry
    also holds its int64 id, each list a float32 centroid."""
    n, d = sizes.index_rows, sizes.dim
    if knn["index"] == "flat":
        return n * d * 4
    nlist = knn["nlist"] or max(1, int(4 * n**0.5))
    code = d * 4 if knn["index"] == "ivf" else -(-knn["pq_m"] * knn["pq_bits"] // 8)
    return n * (code + 8) + nlist * d * 4


def stage_bytes(stage: str, sizes: RunSizes, knn: dict) -> int:
    """Peak memory of a shared stage (index, neighbors, sweep, predict) beyond BASE_MB: the table above."""
    n, d, q, k = sizes.index_rows, sizes.dim, sizes.queries, sizes.k_max
    nlist = knn["nlist"] or max(1, int(4 * n**0.5))
    if stage == "index":
        sample = min(n, 256 * nlist) * d * 4 if knn["index"] != "flat" else 0
        return 2 * (index_bytes(sizes, knn) + sample) + DEFAULT_QUERY_CHUNK * d * 4 + sizes.datastore_rows * 8
    if stage == "neighbors":
        chunk = min(q, knn["query_chunk"])
        table = nlist * knn["pq_m"] * 2 ** knn["pq_bits"] * 4 if knn["index"] == "ivfpq" else 0
        held = index_bytes(sizes, knn) + table + sizes.index_rows * 8
        return held + q * k * 12 + chunk * (d * 4 + k * 36) + RERANK_CHUNK_BYTES + SEARCH_BUFFERS
    if stage in ("sweep", "predict"):
        logits = q * sizes.classes * 4 if sizes.query_logits else 0
        return q * k * 24 + logits + 3 * knn["sweep_chunk_mb"] * 2**20
    raise ValueError(f"no bound for stage {stage!r}")


def model_bytes(parameters: int, training: bool) -> int:
    """A model in float32 (weights; training adds gradients and Adam's two moments: 16 bytes a parameter)."""
    return parameters * (16 if training else 4)


def round_up_mb(mb: float) -> int:
    """A request in MB, rounded up to 100 MB (at least 100)."""
    return max(100, int(-(-mb // 100) * 100))


def request_mb(peak_bytes: int, base: str, attempt: int = 1) -> int:
    """A job's mem_mb: the bound plus the interpreter (BASE_MB[base]) and a quarter for the allocator's slack,
    rounded up to 100 MB; each retry after a failure asks for one more such amount (profiles set `retries`)."""
    return round_up_mb(peak_bytes * 1.25 / MB + BASE_MB[base]) * attempt


def stage_request_mb(stage: str, sizes: RunSizes, knn: dict, attempt: int = 1) -> int:
    """The mem_mb of a shared stage's job at a run's sizes."""
    return request_mb(stage_bytes(stage, sizes, knn), STAGE_BASE[stage], attempt)


def stage_disk_bytes(stage: str, sizes: RunSizes, knn: dict) -> int:
    """What a shared stage writes: the index file and its row list, or the neighbours."""
    if stage == "index":
        return index_bytes(sizes, knn) + sizes.index_rows * 8
    if stage == "neighbors":
        return sizes.queries * sizes.k_max * 12
    raise ValueError(f"no disk bound for stage {stage!r}")


def streamed_disk_bytes(arrays: dict[str, tuple[int, int, int]]) -> int:
    """A streamed datastore write at its largest: the final file plus the scratch copy of its largest array
    (`resmem.io.save_npz_streaming` deletes each scratch file once copied); `arrays` maps each array to its
    (rows, width, bytes a value)."""
    sizes = [rows * width * itemsize for rows, width, itemsize in arrays.values()]
    return sum(sizes) + max(sizes, default=0)


def disk_mb(nbytes: int) -> int:
    """A disk_mb request: the bytes rounded up to 100 MB."""
    return round_up_mb(nbytes / MB)
