"""Benchmark: `ResMem.select` (one search at the largest k, the sweep engine over the whole grid) against what a
user would write without it, `ResMem.predict` looped over the same grid; each accuracy of the grid compared.

    .venv/bin/python bench/bench_select.py            # writes bench/results/bench_select.json (about a minute)
    .venv/bin/python bench/bench_select.py --quick    # the small case only (writes only with --out)

Goal (issue 35): select at least 20× faster than the loop, with the same accuracy at every grid point. Each time
is the fastest of repeats that add up to at least MIN_SECONDS (the first call, which loads torch's kernels, is
left out).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from bench_record import RESULTS, machine, machine_line, write

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from resmem import ResMem  # noqa: E402

GRID = {"k": [1, 2, 4, 8, 16, 32, 64], "sigma": [0.1, 0.3, 1.0, 3.0, 10.0], "temperature": [0.5, 1.0, 2.0]}  # 105
CASES = [(20_000, 64, 10, 2_000), (20_000, 64, 100, 2_000), (200_000, 64, 100, 2_000)]  # (train, width, classes, val)
MIN_SECONDS = 2.0
GOAL = 20.0


def problem(n: int, dim: int, classes: int, queries: int, seed: int = 0) -> dict:
    """Gaussian classes in `dim` dimensions and a weak base model's logits: train and validation splits."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dim)) * 0.5

    def split(rows):
        y = rng.integers(0, classes, rows)
        emb = (centers[y] + rng.normal(size=(rows, dim))).astype(np.float32)
        return emb, (rng.normal(size=(rows, classes)) + 1.5 * np.eye(classes)[y]).astype(np.float32), y

    return {"train": split(n), "val": split(queries)}


def fastest(run) -> tuple[float, object]:
    """The fastest of repeated calls (at least MIN_SECONDS in all, at least twice) and the last call's result."""
    run()  # warm-up
    times, start = [], time.perf_counter()
    while len(times) < 2 or time.perf_counter() - start < MIN_SECONDS:
        begin = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - begin)
    return min(times), result


def case(n: int, dim: int, classes: int, queries: int) -> dict:
    data = problem(n, dim, classes, queries)
    model = ResMem(device="cpu").fit(*data["train"])

    def looped():
        accuracy = {}
        for t in GRID["temperature"]:
            for k in GRID["k"]:
                for s in GRID["sigma"]:
                    accuracy[k, s, t] = model.set_params(k=k, sigma=s, temperature=t).score(*data["val"])
        return accuracy

    loop_seconds, accuracy = fastest(looped)
    select_seconds, grid = fastest(lambda: model.select(*data["val"], **GRID))
    differ = sum(row.accuracy != accuracy[row.k, row.sigma, row.temperature] for row in grid.itertuples())
    result = {"train": n, "width": dim, "classes": classes, "queries": queries, "grid_points": len(grid),
              "loop_seconds": loop_seconds, "select_seconds": select_seconds,
              "speedup": loop_seconds / select_seconds, "points_that_differ": int(differ)}  # fmt: skip
    print(result, flush=True)
    return result


def table(results: dict) -> str:
    lines = ["| training examples × width, classes, val queries | grid points | predict looped (s) | select (s) "
             "| speed-up | grid points whose accuracy differs | within goal (≥ 20×) |",
             "|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for c in results["cases"]:
        ok = "yes" if c["speedup"] >= GOAL and c["points_that_differ"] == 0 else "**no**"
        lines.append(f"| {c['train']:,} × {c['width']}, {c['classes']}, {c['queries']:,} | {c['grid_points']} "
                     f"| {c['loop_seconds']:.2f} | {c['select_seconds']:.3f} | {c['speedup']:.0f}× "
                     f"| {c['points_that_differ']} | {ok} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the first case only (writes only with --out)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = {"grid": GRID, "cases": [case(*c) for c in (CASES[:1] if args.quick else CASES)]}
    print(table(results))
    out = args.out or (None if args.quick else RESULTS / "bench_select.json")
    if out is not None:
        print(machine_line(write(out, args, machine("cpu"), results)))


if __name__ == "__main__":
    main()
