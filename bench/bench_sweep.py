"""Benchmark: the whole grid of ResMem and its baselines (soft kNN, kNN interpolation; the base model) from one faiss
search, against the float64 reference on the same neighbours and a scikit-learn search for every ResMem grid point.

    .venv/bin/python bench/bench_sweep.py            # 50,000 train × 10,000 queries, d = 256, C = 100, 8 k × 8 σ
    .venv/bin/python bench/bench_sweep.py --quick    # a 10× smaller problem, for a check in seconds
    .venv/bin/python bench/bench_sweep.py --device cuda --engine-only   # on a GPU box

Each side runs in its own process, so that its peak resident memory (ru_maxrss) is its own. The engine's search
and sweep are each timed as the best of three runs. The script prints the machine, its threads, its measured
float32 matmul throughput and the fraction of it the sweep achieves (its arithmetic is 2·Q·S·k_max·C
multiply-adds, the kernel-weighted sums of the residuals), checks the goals (sweep ≤ 0.3 × search, ≥ 100× faster than
the baseline, peak RSS ≤ 1 GiB) and that both sides give identical accuracies at every grid point.
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import resource
import time

import numpy as np

KS = [1, 2, 4, 8, 16, 32, 64, 128]
SIGMAS = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
TEMPERATURE = 1.0
LAMBDAS = [0.1, 0.25, 0.5, 0.75, 0.9]  # knn_interp's, the config's default


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


def best_of(function, repeats: int = 3):
    """(the smallest wall time of `repeats` calls, the last call's result)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def matmul_gflops(device, size: int = 2048, min_seconds: float = 1.0) -> float:
    """The device's float32 matmul throughput (GFLOP/s): square products repeated for at least `min_seconds`."""
    import torch

    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        torch.mm(a, b)
        count += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e9


def engine(size: dict, device_name: str, queue) -> None:
    import faiss
    import torch

    from resmem.core import METHODS
    from resmem.device import faiss_gpu_count, torch_device
    from resmem.engine import sweep_correct
    from resmem.knn import build_index, search

    train_emb, train_logits, train_y, query_emb, query_logits, query_y = make_problem(**size)
    data_mib = peak_rss_mib()
    device = torch_device(device_name)
    search_seconds, (dist, idx) = best_of(
        lambda: search(build_index(train_emb, device=device_name), query_emb, max(KS), device=device_name)
    )
    sweep_seconds, correct = best_of(
        lambda: sweep_correct(
            train_logits,
            train_y,
            query_logits,
            query_y,
            dist,
            idx,
            KS,
            SIGMAS,
            [TEMPERATURE],
            device=device_name,
            lambdas=LAMBDAS,
            methods=METHODS,
        )  # fmt: skip
    )
    queue.put(
        {
            "search_seconds": search_seconds,
            "sweep_seconds": sweep_seconds,
            "sweep_flops": 2 * len(query_y) * len(SIGMAS) * max(KS) * train_logits.shape[1],
            "matmul_gflops": matmul_gflops(device),
            "accuracy": correct["resmem"][0] / len(query_y),
            "counts": correct,
            "peak_mib": peak_rss_mib(),
            "data_mib": data_mib,
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"{faiss.omp_get_max_threads()} faiss threads, torch on {device}, faiss on "
            f"{'GPU' if faiss_gpu_count(device_name) else 'CPU'}",
        }
    )


def reference(size: dict, device_name: str, queue) -> None:
    """The float64 numpy reference of every method on the same search (flat faiss is deterministic)."""
    from resmem.core import METHODS, sweep_correct_float64
    from resmem.knn import build_index, search

    train_emb, train_logits, train_y, query_emb, query_logits, query_y = make_problem(**size)
    dist, idx = search(build_index(train_emb, device="cpu"), query_emb, max(KS), device="cpu")
    start = time.perf_counter()
    counts = sweep_correct_float64(train_logits, train_y, query_logits, query_y, dist, idx, KS, SIGMAS,
                                   [TEMPERATURE], lambdas=LAMBDAS, methods=METHODS)  # fmt: skip
    queue.put({"seconds": time.perf_counter() - start, "counts": counts})


def baseline(size: dict, device_name: str, queue) -> None:
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


def run_isolated(target, size: dict, device_name: str) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(size, device_name, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 10x smaller problem")
    parser.add_argument("--engine-only", action="store_true", help="skip the (slow) baseline")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="the engine's device")
    args = parser.parse_args()
    size = {"n_train": 50_000, "n_query": 10_000, "dim": 256, "n_classes": 100}
    if args.quick:
        size.update(n_train=5_000, n_query=1_000)
    print(f"problem: {size}; ResMem {len(KS)} k x {len(SIGMAS)} sigma, T = {TEMPERATURE}; kNN {len(KS)} k x "
          f"{len(SIGMAS)} sigma; kNN-interp the same x {len(LAMBDAS)} lambda", flush=True)  # fmt: skip

    fast = run_isolated(engine, size, args.device)
    search, sweep = fast["search_seconds"], fast["sweep_seconds"]
    achieved = fast["sweep_flops"] / sweep / 1e9
    print(
        f"machine:  {fast['machine']}; float32 matmul {fast['matmul_gflops']:.0f} GFLOP/s\n"
        f"engine:   {search + sweep:8.2f} s (search {search:.2f} s, sweep {sweep:.2f} s = {sweep / search:.2f} x "
        f"search; best of 3 each), peak RSS {fast['peak_mib']:.0f} MiB ({fast['data_mib']:.0f} MiB of it before "
        f"the timed work: interpreter, libraries, the data)\n"
        f"sweep:    {achieved:.1f} GFLOP/s of weighted-sum arithmetic = {achieved / fast['matmul_gflops']:.0%} of the "
        f"machine's float32 matmul throughput",
        flush=True,
    )
    goals = {"sweep <= 0.3 x search": sweep <= 0.3 * search, "peak RSS <= 1 GiB": fast["peak_mib"] <= 1024}
    exact = run_isolated(reference, size, args.device)
    differ = {m: int((fast["counts"][m] != exact["counts"][m]).sum()) for m in exact["counts"]}
    print(f"float64 reference: {exact['seconds']:.1f} s; grid points that differ from the engine: {differ}", flush=True)
    goals["identical to the float64 reference"] = not any(differ.values())
    if not args.engine_only:
        slow = run_isolated(baseline, size, args.device)
        print(f"baseline: {slow['seconds']:8.1f} s, peak RSS {slow['peak_mib']:.0f} MiB", flush=True)
        # Identical at every grid point, up to neighbors at tied distances (none in continuous random data).
        mismatch = np.abs(fast["accuracy"] - slow["accuracy"]).max()
        speedup = slow["seconds"] / (search + sweep)
        print(
            f"speed-up: {speedup:.1f}x; largest accuracy difference {mismatch:.2e}; "
            f"ResMem accuracy {fast['accuracy'].min():.3f}..{fast['accuracy'].max():.3f}"
        )
        if mismatch > 0:
            raise SystemExit("accuracies differ between the engine and the baseline")
        goals["speed-up >= 100x"] = speedup >= 100
    print("goals:    " + "; ".join(f"{goal}: {'met' if met else 'MISSED'}" for goal, met in goals.items()))


if __name__ == "__main__":
    main()
