"""Benchmark: the whole k × σ grid from one faiss search vs a scikit-learn search for every grid point.

    .venv/bin/python bench/bench_sweep.py            # 50,000 train × 10,000 queries, d = 256, C = 100, 8 k × 8 σ
    .venv/bin/python bench/bench_sweep.py --quick    # a 10× smaller problem, for a check in seconds

Each side runs in its own process, so that its peak resident memory (ru_maxrss) is its own. The script checks
that both give identical accuracies at every grid point and prints both times, their ratio and peak memory.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time

import numpy as np

KS = [1, 2, 4, 8, 16, 32, 64, 128]
SIGMAS = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
TEMPERATURE = 1.0


def make_problem(n_train: int, n_query: int, dim: int, n_classes: int, seed: int = 0):
    """Clustered embeddings and a weak base model's logits, so that ResMem's accuracy varies over the grid."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim)).astype(np.float32)
    train_y = rng.integers(0, n_classes, n_train)
    query_y = rng.integers(0, n_classes, n_query)
    train_emb = centers[train_y] + 2.0 * rng.normal(size=(n_train, dim)).astype(np.float32)
    query_emb = centers[query_y] + 2.0 * rng.normal(size=(n_query, dim)).astype(np.float32)
    onehot = np.eye(n_classes, dtype=np.float32)
    train_logits = 3.0 * rng.normal(size=(n_train, n_classes)).astype(np.float32) + 3.0 * onehot[train_y]
    query_logits = 3.0 * rng.normal(size=(n_query, n_classes)).astype(np.float32) + 3.0 * onehot[query_y]
    return train_emb, train_logits, train_y, query_emb, query_logits, query_y


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def engine(size: dict, queue) -> None:
    from resmem.core import sweep_correct
    from resmem.knn import build_index, search

    train_emb, train_logits, train_y, query_emb, query_logits, query_y = make_problem(**size)
    data_mib = peak_rss_mib()
    start = time.perf_counter()
    index = build_index(train_emb, device="cpu")
    dist, idx = search(index, query_emb, max(KS), device="cpu")
    searched = time.perf_counter()
    correct = sweep_correct(train_logits, train_y, query_logits, query_y, dist, idx, KS, SIGMAS, [TEMPERATURE])[0]
    done = time.perf_counter()
    queue.put(
        {
            "seconds": done - start,
            "search_seconds": searched - start,
            "sweep_seconds": done - searched,
            "accuracy": correct / len(query_y),
            "peak_mib": peak_rss_mib(),
            "data_mib": data_mib,
        }
    )


def baseline(size: dict, queue) -> None:
    """What one does without the engine: refit and search with scikit-learn for every (k, σ)."""
    from scipy.special import softmax
    from sklearn.neighbors import NearestNeighbors

    train_emb, train_logits, train_y, query_emb, query_logits, query_y = make_problem(**size)
    start = time.perf_counter()
    residuals = np.eye(train_logits.shape[1])[train_y] - softmax(train_logits.astype(np.float64) / TEMPERATURE, 1)
    base = softmax(query_logits.astype(np.float64) / TEMPERATURE, axis=1)
    accuracy = np.zeros((len(KS), len(SIGMAS)))
    for i, k in enumerate(KS):
        for s, sigma in enumerate(SIGMAS):
            dist, idx = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(train_emb).kneighbors(query_emb)
            weights = softmax(-dist / sigma, axis=1)
            scores = base + np.einsum("qk,qkc->qc", weights, residuals[idx])
            accuracy[i, s] = (scores.argmax(1) == query_y).mean()
    queue.put({"seconds": time.perf_counter() - start, "accuracy": accuracy, "peak_mib": peak_rss_mib()})


def run_isolated(target, size: dict) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(size, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 10x smaller problem")
    parser.add_argument("--engine-only", action="store_true", help="skip the (slow) baseline")
    args = parser.parse_args()
    size = {"n_train": 50_000, "n_query": 10_000, "dim": 256, "n_classes": 100}
    if args.quick:
        size.update(n_train=5_000, n_query=1_000)
    print(f"problem: {size}, {len(KS)} k x {len(SIGMAS)} sigma, T = {TEMPERATURE}", flush=True)

    fast = run_isolated(engine, size)
    print(
        f"engine:   {fast['seconds']:8.1f} s (search {fast['search_seconds']:.1f} s, sweep "
        f"{fast['sweep_seconds']:.1f} s), peak RSS {fast['peak_mib']:.0f} MiB "
        f"({fast['data_mib']:.0f} MiB of it before the timed work: interpreter, libraries, the data)",
        flush=True,
    )
    if args.engine_only:
        return
    slow = run_isolated(baseline, size)
    print(f"baseline: {slow['seconds']:8.1f} s, peak RSS {slow['peak_mib']:.0f} MiB", flush=True)

    # Identical at every grid point, up to neighbors at tied distances (none in continuous random data).
    mismatch = np.abs(fast["accuracy"] - slow["accuracy"]).max()
    print(
        f"speed-up: {slow['seconds'] / fast['seconds']:.1f}x; largest accuracy difference {mismatch:.2e}; "
        f"ResMem accuracy {fast['accuracy'].min():.3f}..{fast['accuracy'].max():.3f}"
    )
    if mismatch > 0:
        raise SystemExit("accuracies differ between the engine and the baseline")


if __name__ == "__main__":
    main()
