"""Benchmark: the whole grid of ResMem and its baselines (soft kNN, kNN interpolation; the base model) from one faiss
search, against the float64 reference on the same neighbours and a scikit-learn search for every ResMem grid point.

    .venv/bin/python bench/bench_sweep.py            # 50,000 train × 10,000 queries, d = 256, C = 100, 8 k × 8 σ
    .venv/bin/python bench/bench_sweep.py --quick    # a 10× smaller problem, for a check in seconds
    .venv/bin/python bench/bench_sweep.py --device cuda --engine-only   # on a GPU box

Each side runs in its own process, so that its peak resident memory (ru_maxrss) is its own. The engine's search
and sweep are each timed as the best of three runs. The script prints the machine, its threads, its measured
float32 matmul throughput and the fraction of it the sweep achieves (its arithmetic is 2·Q·S·k_max·C
multiply-adds, the kernel-weighted sums of the residuals), checks the goals (sweep ≤ 0.3 × search, ≥ 100× faster than
the baseline, peak RSS ≤ 1 GiB) and that both sides give identical accuracies at every grid point. It writes all
of it with the machine record (`bench_record.py`) to bench/results/bench_sweep[_cuda][_engine_only].json (named by
the device the engine ran on; --quick: only with --out), which bench/render_tables.py renders into the docs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time
from pathlib import Path

import numpy as np
from bench_record import RESULTS, machine, machine_line, write

KS = [1, 2, 4, 8, 16, 32, 64, 128]
SIGMAS = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
TEMPERATURE = 1.0
LAMBDAS = [0.1, 0.25, 0.5, 0.75, 0.9]  # knn_interp's, the config's default
REPEATS = 3  # the engine's search and sweep: best of REPEATS


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


def best_of(function, repeats: int = REPEATS):
    """(the smallest wall time of `repeats` calls, the last call's result)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def engine(size: dict, device_name: str, queue) -> None:
    import faiss  # noqa: F401  (counted in data_mib, as the libraries the engine runs on)
    import torch  # noqa: F401

    from resmem.core import METHODS
    from resmem.engine import sweep_correct
    from resmem.knn import build_index, search

    train_emb, train_logits, train_y, query_emb, query_logits, query_y = make_problem(**size)
    data_mib = peak_rss_mib()
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
            "accuracy": correct["resmem"][0] / len(query_y),
            "counts": correct,
            "peak_mib": peak_rss_mib(),
            "data_mib": data_mib,
            "machine": machine(device_name),  # here: the engine's threads and device
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


def results_of(size: dict, fast: dict, exact: dict, slow: dict | None) -> dict:
    """The JSON's results: the problem, each side's times and peaks, the agreement and the goals."""
    search, sweep = fast["search_seconds"], fast["sweep_seconds"]
    achieved = fast["sweep_flops"] / sweep / 1e9
    differ = {m: int((fast["counts"][m] != exact["counts"][m]).sum()) for m in exact["counts"]}
    goals = {"sweep <= 0.3 x search": sweep <= 0.3 * search, "peak RSS <= 1 GiB": fast["peak_mib"] <= 1024,
             "identical to the float64 reference": not any(differ.values())}  # fmt: skip
    engine = {"search_seconds": search, "sweep_seconds": sweep, "sweep_over_search": sweep / search,
              "peak_mib": fast["peak_mib"], "data_mib": fast["data_mib"], "sweep_flops": fast["sweep_flops"],
              "sweep_gflops": achieved, "sweep_of_matmul": achieved / fast["machine"]["matmul_gflops"],
              "resmem_accuracy": [float(fast["accuracy"].min()), float(fast["accuracy"].max())]}  # fmt: skip
    results = {"problem": size, "grid": {"k": KS, "sigma": SIGMAS, "temperature": [TEMPERATURE], "lambda": LAMBDAS},
               "repeats": REPEATS, "engine": engine, "baseline": None,
               "reference": {"seconds": exact["seconds"], "grid_points_differing": differ}}  # fmt: skip
    if slow is not None:
        mismatch = float(np.abs(fast["accuracy"] - slow["accuracy"]).max())
        speedup = slow["seconds"] / (search + sweep)
        results["baseline"] = {"seconds": slow["seconds"], "peak_mib": slow["peak_mib"], "speedup": speedup,
                               "largest_accuracy_difference": mismatch}  # fmt: skip
        goals["identical to the baseline"] = mismatch == 0
        goals["speed-up >= 100x"] = speedup >= 100
    results["goals"] = goals
    return results


def table(runs: list[tuple[str, dict | None]]) -> str:
    """The docs' table of (label, report) runs, as bench/render_tables.py writes it (a run without a report: a row
    that says so)."""
    problems = {json.dumps(r["results"]["problem"]): r["results"] for _, r in runs if r}
    lines = []
    for results in problems.values():
        p, g = results["problem"], results["grid"]
        lines.append(f"{p['n_train']:,} training × {p['n_query']:,} query embeddings, d = {p['dim']}, C = "
                     f"{p['n_classes']}; ResMem and the soft kNN over {len(g['k'])} k × {len(g['sigma'])} σ, kNN "
                     f"interpolation over the same × {len(g['lambda'])} λ. Seconds of wall time: the engine's search "
                     f"(one faiss search at k = {max(g['k'])}) and sweep (the whole grid, every method) best of "
                     f"{results['repeats']} runs each, the float64 reference and the scikit-learn baseline (a search "
                     f"for every (k, σ)) one run each; peak RSS in MiB, each side in its own process; the sweep's "
                     f"arithmetic in GFLOP/s and as a share of the machine's float32 matmul.")  # fmt: skip
    lines += ["", "| run | search s | sweep s | sweep ÷ search | engine peak RSS MiB | sweep GFLOP/s (of matmul) | "
              "float64 reference s | grid points ≠ reference | baseline s | baseline peak RSS MiB | speed-up | goals |",
              "|---|" + "---:|" * 10 + "---|"]  # fmt: skip
    for label, report in runs:
        if report is None:
            lines.append(f"| {label} | not run yet |" + " |" * 10)
            continue
        r = report["results"]
        e, b = r["engine"], r["baseline"]
        missed = [goal for goal, met in r["goals"].items() if not met]
        base = f"{b['seconds']:,.1f} | {b['peak_mib']:,.0f} | {b['speedup']:,.0f}×" if b else "– | – | –"
        lines.append(f"| {label} | {e['search_seconds']:.2f} | {e['sweep_seconds']:.2f} | "
                     f"{e['sweep_over_search']:.2f} | {e['peak_mib']:,.0f} | {e['sweep_gflops']:.1f} "
                     f"({e['sweep_of_matmul']:.0%}) | {r['reference']['seconds']:.1f} | "
                     f"{sum(r['reference']['grid_points_differing'].values())} | {base} | "
                     f"{'MISSED: ' + '; '.join(missed) if missed else 'all met'} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 10x smaller problem (writes no JSON unless --out)")
    parser.add_argument("--engine-only", action="store_true", help="skip the (slow) baseline")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="the engine's device")
    parser.add_argument("--out", type=Path, help="the JSON (default: bench/results/bench_sweep[_cuda][_engine_only]"
                        ".json, by the device the engine ran on)")  # fmt: skip
    args = parser.parse_args()
    size = {"n_train": 50_000, "n_query": 10_000, "dim": 256, "n_classes": 100}
    if args.quick:
        size.update(n_train=5_000, n_query=1_000)
    print(f"problem: {size}; ResMem {len(KS)} k x {len(SIGMAS)} sigma, T = {TEMPERATURE}; kNN {len(KS)} k x "
          f"{len(SIGMAS)} sigma; kNN-interp the same x {len(LAMBDAS)} lambda", flush=True)  # fmt: skip

    fast = run_isolated(engine, size, args.device)
    search, sweep = fast["search_seconds"], fast["sweep_seconds"]
    host = fast["machine"]
    print(
        f"machine:  {host['cpu']}, {host['torch_threads']} torch threads, {host['faiss_threads']} faiss threads, "
        f"torch on {host['gpu'] or host['device']}, faiss on {'GPU' if host['faiss_gpus'] else 'CPU'}; float32 "
        f"matmul {host['matmul_gflops']:.0f} GFLOP/s\n"
        f"engine:   {search + sweep:8.2f} s (search {search:.2f} s, sweep {sweep:.2f} s = {sweep / search:.2f} x "
        f"search; best of {REPEATS} each), peak RSS {fast['peak_mib']:.0f} MiB ({fast['data_mib']:.0f} MiB of it "
        f"before the timed work: interpreter, libraries, the data)",
        flush=True,
    )
    exact = run_isolated(reference, size, args.device)
    print(f"float64 reference: {exact['seconds']:.1f} s", flush=True)
    slow = None
    if not args.engine_only:
        slow = run_isolated(baseline, size, args.device)
        print(f"baseline: {slow['seconds']:8.1f} s, peak RSS {slow['peak_mib']:.0f} MiB", flush=True)
    results = results_of(size, fast, exact, slow)
    name = "bench_sweep" + ("" if host["device"] == "cpu" else f"_{host['device']}") + "_engine_only" * args.engine_only
    out = args.out or (None if args.quick else RESULTS / f"{name}.json")
    report = {"machine": host, "results": results}
    if out is not None:
        report = write(out, args, host, results)
    label = f"{host['device'].upper()}, {'engine only' if args.engine_only else 'with the baseline'}"
    print("\n" + table([(label, report)]) + "\n\n" + machine_line(report))
    print(f"grid points that differ from the float64 reference: {results['reference']['grid_points_differing']}")
    if slow is not None:
        b = results["baseline"]
        print(f"speed-up: {b['speedup']:.1f}x; largest accuracy difference {b['largest_accuracy_difference']:.2e}; "
              f"ResMem accuracy {fast['accuracy'].min():.3f}..{fast['accuracy'].max():.3f}")  # fmt: skip
    goals = results["goals"]
    print("goals:    " + "; ".join(f"{goal}: {'met' if met else 'MISSED'}" for goal, met in goals.items()))
    print(f"wrote {out}" if out else "no JSON written (--quick without --out)")
    # Identical at every grid point, up to neighbors at tied distances (none in continuous random data).
    if not goals.get("identical to the baseline", True):
        raise SystemExit("accuracies differ between the engine and the baseline")


if __name__ == "__main__":
    main()
