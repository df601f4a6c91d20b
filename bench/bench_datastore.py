"""Benchmark: a token datastore's index and search, flat vs IVF-PQ, through the workflow's own stage functions.

    .venv/bin/python bench/bench_datastore.py            # 1,000,000 keys (d = 64, float16) × 2 × 10,000 queries
    .venv/bin/python bench/bench_datastore.py --quick    # 100,000 keys, for a check in seconds
    .venv/bin/python bench/bench_datastore.py --datastore results/stdlib_lm/gpt_l3_d96/seed0/datastore.npz \
        --sweep-mb 64                                    # a real datastore of a workflow run, a smaller budget

Keys are clustered like hidden states (a mixture of Gaussians), with random next tokens: their queries share
few neighbors, unlike a real language model's (`--datastore` runs the same on a datastore.npz that the workflow
made; the script prints how many distinct rows the neighbor slots name). For each index kind the script builds the
index (`resmem.lm.stages.index`), runs the one search at k = 64 for val and test (`resmem.lm.stages.neighbors`:
IVF-PQ distances recomputed exactly, recall@64 against exact search on 1,000 test queries) and then the sweep
of ResMem and kNN-LM (`resmem.lm.stages.sweep`; V = 256 for the random data), each in its own process so that
peak memory is its own, and prints times, tokens/s, recall and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from resmem import io
from resmem.lm import stages as lm_stages

K = 64
VOCAB = 256


def make_datastore(path: Path, n: int, n_query: int, dim: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    centers = 3.0 * rng.normal(size=(4096, dim)).astype(np.float32)

    def draw(rows):
        return centers[rng.integers(0, len(centers), rows)] + rng.normal(size=(rows, dim)).astype(np.float32)

    arrays = {"train_keys": draw(n).astype(np.float16), "train_next": rng.integers(0, VOCAB, n)}
    arrays["train_pos"] = np.arange(n)
    for split in ("val", "test"):
        arrays.update({f"{split}_keys": draw(n_query), f"{split}_next": rng.integers(0, VOCAB, n_query)})
        arrays[f"{split}_pos"] = np.arange(n_query)
    weight = rng.normal(size=(VOCAB, dim)).astype(np.float32) / np.sqrt(dim)
    io.save_npz(path, **arrays, head_weight=weight, head_bias=np.zeros(VOCAB, np.float32))


def stage(name, *args) -> dict:
    """Run lm_stages.<name>(*args) (or make_datastore) in this child process; its wall time (after the imports of
    torch and faiss, which take about 1.5 s on the CI machine whatever the stage) and peak memory."""
    import faiss  # noqa: F401
    import torch  # noqa: F401

    start = time.perf_counter()
    (make_datastore if name == "make_datastore" else getattr(lm_stages, name))(*args)
    return {
        "seconds": time.perf_counter() - start,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def in_child(name, *args) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(stage, (name, *args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--datastore", type=Path, help="a datastore.npz of a workflow run instead of random data")
    parser.add_argument("--sweep-mb", type=float, default=256, help="knn.sweep_chunk_mb (MiB) of the sweep")
    args = parser.parse_args()
    n, n_query, dim = (100_000, 2_000, 64) if args.quick else (1_000_000, 10_000, 64)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.datastore is None:
            datastore = tmp / "ds.npz"
            in_child("make_datastore", datastore, n, n_query, dim)  # a child too: peak RSS survives fork + exec
        else:
            datastore = args.datastore.resolve()
        arrays = lm_stages.load_datastore(datastore)
        (n, dim), n_query = arrays["train_keys"].shape, len(arrays["val_next"])
        vocab = len(arrays["head_weight"])
        print(f"datastore: {n:,} keys of dim {dim}, 2 × {n_query:,} queries, k = {K}, V = {vocab:,}")
        del arrays
        for kind, nlist in (("flat", None), ("ivfpq", None)):
            knn = {
                "normalize": False,
                "index": kind,
                "nlist": nlist,
                "pq_m": 16,
                "pq_bits": 8,
                "k_max": K,
                "query_chunk": 16384,
                "nprobe": 16,
                "recall_sample": 1000,
                "k": [1, 4, 16, 64],
                "sigma": [0.3, 1.0, 3.0],
                "temperature": [1.0],
                "lam": [0.0, 0.25, 0.5],
                "knnlm_kernel": "squared_l2",
                "tau": [1.0, 10.0],
                "resmem_k": None,
                "sweep_chunk_mb": args.sweep_mb,
            }
            built = {"index": tmp / f"{kind}.faiss", "rows": tmp / f"{kind}_rows.npz"}
            index = in_child("index", datastore, built, knn, args.device)
            found = {"neighbors": tmp / f"{kind}.npz", "report": tmp / f"{kind}.json"}
            search = in_child("neighbors", built["index"], built["rows"], datastore, found, knn, args.device)
            sweep = in_child("sweep", datastore, found["neighbors"], tmp / f"{kind}.csv", knn, args.device)
            report = json.loads((tmp / f"{kind}.json").read_text())
            with np.load(found["neighbors"]) as neighbors:
                distinct = [len(np.unique(neighbors[f"{split}_idx"])) for split in ("val", "test")]
            print(
                f"{kind:>6}: index {index['seconds']:.1f} s ({index['peak_mib']:.0f} MiB) | search "
                f"{search['seconds']:.1f} s, {report['queries_per_second']:,.0f} queries/s, recall@{K} "
                f"{report['recall_at_k_max']:.3f} ({search['peak_mib']:.0f} MiB) | sweep {sweep['seconds']:.1f} s "
                f"({sweep['peak_mib']:.0f} MiB) | a split's {n_query * K:,} neighbor slots name "
                f"{min(distinct):,}–{max(distinct):,} distinct rows"
            )


if __name__ == "__main__":
    main()
