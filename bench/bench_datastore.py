"""Benchmark: a token datastore's index and search, flat vs IVF-PQ, through the workflow's own stage functions.

    .venv/bin/python bench/bench_datastore.py            # 1,000,000 keys (d = 64, float16) × 2 × 10,000 queries
    .venv/bin/python bench/bench_datastore.py --quick    # 100,000 keys, for a check in seconds
    .venv/bin/python bench/bench_datastore.py --datastore results/stdlib_lm/gpt_l3_d96/seed0/datastore.npz \
        --sweep-mb 64                                    # a real datastore of a workflow run, a smaller budget
    git worktree add /tmp/pre-engine 21c6b27             # the project before the sweep engine, then:
    .venv/bin/python bench/bench_datastore.py --baseline /tmp/pre-engine   # its sweep stage against this one's

Keys are clustered like hidden states (a mixture of Gaussians), with random next tokens: their queries share
few neighbors, unlike a real language model's (`--datastore` runs the same on a datastore.npz that the workflow
made; the script prints how many distinct rows the neighbor slots name). For each index kind the script builds the
index (`resmem.lm.stages.index`), runs the one search at k = 64 for val and test (`resmem.lm.stages.neighbors`:
IVF-PQ distances recomputed exactly, recall@64 against exact search on 1,000 test queries) and then the sweep
of ResMem and kNN-LM (`resmem.lm.stages.sweep`; V = 256 for the random data), each in its own process so that
peak memory is its own, and prints times, tokens/s, recall and peak RSS. Beside the sweep it prints ResMem's
arithmetic — each distinct neighbor row's logits (2·d·V flops) and the weighted sums (2·Q·S·k_max·V) — and the
fraction of the machine's float32 matmul throughput that the sweep stage achieves on it.

The figures and the machine record (`bench_record.py`) go to bench/results/bench_datastore.json for the default
random datastore (--quick or --datastore: only with --out), which bench/render_tables.py renders into the docs.

With --baseline PATH (another checkout of this project) the sweep stage of that checkout and of this one run
alternately on the flat search, --repeats times each, each run in a fresh interpreter timed after its imports (a
machine whose speed drifts between runs then drifts for both): it prints both times, the speed-up, and whether the
two tables agree.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from bench_record import RESULTS, machine, machine_line, write

from resmem import io
from resmem.lm import stages as lm_stages

K = 64
VOCAB = 256
REPO = Path(__file__).resolve().parents[1]


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
    weight = (rng.normal(size=(VOCAB, dim)) / np.sqrt(dim)).astype(np.float32)
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


SWEEP_OF_A_TREE = """
import json, os, resource, sys, time
import faiss, torch  # imported before the clock starts, as in `stage`
from resmem.lm import stages
assert stages.__file__.startswith(os.getcwd() + os.sep), f"{stages.__file__} is not the checkout's"
start = time.perf_counter()
stages.sweep(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), sys.argv[5])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": time.perf_counter() - start, "peak_mib": peak}))
"""


def sweep_of_tree(tree: Path, datastore, neighbors, out, knn, device) -> dict:
    """The sweep stage of the checkout `tree` in a fresh interpreter started there (`python -c` puts the working
    folder first on the path, so its resmem is the one imported)."""
    args = [str(datastore), str(neighbors), str(out), json.dumps(knn), device]
    proc = subprocess.run([sys.executable, "-c", SWEEP_OF_A_TREE, *args], cwd=tree, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"the sweep stage of {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def compare_with(baseline: Path, repeats: int, datastore, neighbors, knn, device, tmp: Path) -> dict:
    """The sweep stage of `baseline` and of this checkout, alternately: times, speed-up, and the tables' agreement."""
    runs = {"baseline": [], "this tree": []}
    for _ in range(repeats):
        for name, tree in (("baseline", baseline), ("this tree", REPO)):
            runs[name].append(sweep_of_tree(tree, datastore, neighbors, tmp / f"{name}.csv", knn, device))
    seconds = {name: np.array([run["seconds"] for run in done]) for name, done in runs.items()}
    for name, done in runs.items():
        print(f"  sweep stage, {name}: {' '.join(f'{s:.2f}' for s in seconds[name])} s (min "
              f"{seconds[name].min():.2f}, median {np.median(seconds[name]):.2f}), peak "
              f"{max(run['peak_mib'] for run in done):.0f} MiB")  # fmt: skip
    ratio_min = seconds["baseline"].min() / seconds["this tree"].min()
    ratio_median = np.median(seconds["baseline"]) / np.median(seconds["this tree"])
    ours, theirs = (pd.read_csv(tmp / f"{name}.csv") for name in ("this tree", "baseline"))
    same_accuracy = ours.accuracy.to_numpy().tolist() == theirs.accuracy.to_numpy().tolist()
    loss = float(np.nanmax(np.abs(ours.loss - theirs.loss) / np.abs(theirs.loss)))
    print(
        f"  {ratio_min:.2f}× faster by the minima, {ratio_median:.2f}× by the medians ({repeats} runs each, "
        f"alternated); accuracies {'identical' if same_accuracy else 'DIFFER'}, losses within {loss:.0e} relative"
    )
    return {"checkout": str(baseline), "repeats": repeats, "seconds": {k: v.tolist() for k, v in seconds.items()},
            "speedup_of_minima": ratio_min, "speedup_of_medians": ratio_median, "identical_accuracies": same_accuracy,
            "largest_relative_loss_difference": loss}  # fmt: skip


def knn_of(kind: str, sweep_mb: float) -> dict:
    return {"normalize": False, "index": kind, "nlist": None, "pq_m": 16, "pq_bits": 8, "k_max": K,
            "query_chunk": 16384, "nprobe": 16, "recall_sample": 1000, "k": [1, 4, 16, 64], "sigma": [0.3, 1.0, 3.0],
            "temperature": [1.0], "lam": [0.0, 0.25, 0.5], "knnlm_kernel": "squared_l2", "tau": [1.0, 10.0],
            "resmem_k": None, "sweep_chunk_mb": sweep_mb}  # fmt: skip


def table(report: dict) -> str:
    """The docs' table of a report, as bench/render_tables.py writes it."""
    r = report["results"]
    d, knn = r["datastore"], r["kinds"][0]["knn"]
    lines = [f"{d['keys']:,} keys of d = {d['dim']} ({d['source']}), 2 × {d['queries_per_split']:,} queries, one "
             f"search at k = {d['k']}, V = {d['vocab']:,}; then the sweep of ResMem ({len(knn['k'])} k × "
             f"{len(knn['sigma'])} σ) and kNN-LM ({len(knn['k'])} k × {len(knn['tau'])} τ × {len(knn['lam'])} λ) "
             f"in a {knn['sweep_chunk_mb']:g} MiB budget. Each stage one run in its own process: seconds of wall "
             "time after importing torch and faiss; peak RSS (ru_maxrss) in MiB, those imports included; recall@k "
             "of the neighbours found against an exact search of a sample of test queries; the sweep's ResMem "
             "arithmetic (each distinct neighbour row's logits, 2·d·V flops, and the weighted sums) in GFLOP/s "
             "over the stage and as a share of the machine's float32 matmul.", "",
             "| index | build s | build peak MiB | search s | queries/s | recall@k (sample) | search peak MiB | "
             "sweep s | sweep peak MiB | sweep GFLOP/s (of matmul) | distinct rows the neighbours name |",
             "|---|" + "---:|" * 10]  # fmt: skip
    for row in r["kinds"]:
        s = row["search_report"]
        lists = f"IVF-PQ, {s['nlist']:,} lists, {s['nprobe']} probed" if s["nlist"] else "flat"
        sample = f"{s['recall_sample']:,}" if s["recall_sample"] else "exact"
        lines.append(f"| {lists} | {row['index']['seconds']:.1f} | {row['index']['peak_mib']:,.0f} | "
                     f"{row['search']['seconds']:.1f} | {s['queries_per_second']:,.0f} | {s['recall_at_k_max']:.3f} "
                     f"({sample}) | {row['search']['peak_mib']:,.0f} | {row['sweep']['seconds']:.2f} | "
                     f"{row['sweep']['peak_mib']:,.0f} | {row['sweep_gflops']:.1f} ({row['sweep_of_matmul']:.0%}) | "
                     f"{row['distinct_rows_per_split'][0]:,}–{row['distinct_rows_per_split'][1]:,} a split, "
                     f"{row['distinct_rows_both']:,} both |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100,000 keys (writes no JSON unless --out)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--datastore", type=Path, help="a datastore.npz of a workflow run instead of random data")
    parser.add_argument("--sweep-mb", type=float, default=256, help="knn.sweep_chunk_mb (MiB) of the sweep")
    parser.add_argument("--baseline", type=Path, help="another checkout whose sweep stage runs alternately with this")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each sweep stage with --baseline")
    parser.add_argument("--out", type=Path, help="the JSON (default: bench/results/bench_datastore.json, written "
                        "for the default random datastore only)")  # fmt: skip
    args = parser.parse_args()
    n, n_query, dim = (100_000, 2_000, 64) if args.quick else (1_000_000, 10_000, 64)
    kinds = []
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
        host = machine(args.device)
        matmul = host["matmul_gflops"]
        print(f"datastore: {n:,} keys of dim {dim}, 2 × {n_query:,} queries, k = {K}, V = {vocab:,}")
        del arrays
        for kind in ("flat", "ivfpq"):
            knn = knn_of(kind, args.sweep_mb)
            built = {"index": tmp / f"{kind}.faiss", "rows": tmp / f"{kind}_rows.npz"}
            index = in_child("index", datastore, built, knn, args.device)
            found = {"neighbors": tmp / f"{kind}.npz", "report": tmp / f"{kind}.json"}
            search = in_child("neighbors", built["index"], built["rows"], datastore, found, knn, args.device)
            sweep = sweep_of_tree(REPO, datastore, found["neighbors"], tmp / f"{kind}.csv", knn, args.device)
            report = json.loads((tmp / f"{kind}.json").read_text())
            with np.load(found["neighbors"]) as neighbors:
                idx = {split: neighbors[f"{split}_idx"][:, : max(knn["k"])] for split in ("val", "test")}
            distinct = [len(np.unique(rows)) for rows in idx.values()]
            both = len(np.unique(np.concatenate(list(idx.values()))))
            gflop = len(knn["temperature"]) * 2 * vocab * (both * dim + 2 * n_query * len(knn["sigma"]) * K) / 1e9
            print(
                f"{kind:>6}: index {index['seconds']:.1f} s ({index['peak_mib']:.0f} MiB) | search "
                f"{search['seconds']:.1f} s, {report['queries_per_second']:,.0f} queries/s, recall@{K} "
                f"{report['recall_at_k_max']:.3f} ({search['peak_mib']:.0f} MiB) | sweep {sweep['seconds']:.2f} s "
                f"({sweep['peak_mib']:.0f} MiB)\n        a split's {n_query * K:,} neighbor slots name "
                f"{min(distinct):,}–{max(distinct):,} distinct rows, both splits' {both:,}; ResMem's arithmetic on "
                f"them {gflop:.1f} GFLOP = {gflop / sweep['seconds']:.1f} GFLOP/s over the sweep stage, "
                f"{gflop / sweep['seconds'] / matmul:.0%} of the float32 matmul's {matmul:.0f} GFLOP/s",
                flush=True,
            )
            kinds.append({"kind": kind, "knn": knn, "index": index, "search": search, "search_report": report,
                          "sweep": sweep, "distinct_rows_per_split": [min(distinct), max(distinct)],
                          "distinct_rows_both": both, "resmem_gflop": gflop, "sweep_gflops": gflop / sweep["seconds"],
                          "sweep_of_matmul": gflop / sweep["seconds"] / matmul, "baseline": None})  # fmt: skip
            if args.baseline is not None and kind == "flat":
                baseline = args.baseline.resolve()
                kinds[-1]["baseline"] = compare_with(
                    baseline, args.repeats, datastore, found["neighbors"], knn, args.device, tmp
                )
    source = "clustered random float16 keys" if args.datastore is None else str(args.datastore)
    results = {"datastore": {"keys": n, "dim": dim, "queries_per_split": n_query, "k": K, "vocab": vocab,
                             "source": source}, "kinds": kinds}  # fmt: skip
    out = args.out or (None if args.quick or args.datastore else RESULTS / "bench_datastore.json")
    report = write(out, args, host, results) if out else {"machine": host, "results": results}
    print("\n" + table(report) + "\n\n" + machine_line(report))
    print(f"wrote {out}" if out else "no JSON written (--quick or --datastore without --out)")


if __name__ == "__main__":
    main()
