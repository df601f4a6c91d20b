"""The grid sweep of ResMem and its baselines as a table, and the selection of each method's grid point by
validation accuracy."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from resmem.artifacts import QUERY_SPLITS, SWEEP_COLUMNS
from resmem.core import COUNT_AXES, METHODS
from resmem.engine import stack_splits, sweep_correct

# Each method's grid parameters, in the order the selection breaks ties on them.
TIE_ORDER = ("k", "sigma", "temperature", "lam")
PARAMETERS = {method: tuple(p for p in TIE_ORDER if p in axes) for method, axes in COUNT_AXES.items()}
# How a tie on val goes on each parameter: True = the smaller value (less memory for k, a smaller temperature or
# interpolation weight), False = the larger (a smoother kernel).
SMALLER_WINS = {"k": True, "sigma": False, "tau": False, "temperature": True, "lam": True}
SYMBOLS = {"k": "k", "sigma": "σ", "tau": "τ", "temperature": "T", "lam": "λ"}


def sweep_table(
    embeddings: dict,
    neighbors: dict,
    knn: dict,
    chunk_bytes: int,
    device: str = "cpu",
    methods: Sequence[str] = METHODS,
) -> pd.DataFrame:
    """Accuracy of each method at every point of its grid on val and test, plus one base-model row per split
    with k = 0: ResMem over (k, σ, T), the soft kNN classifier over (k, σ), kNN interpolation over (k, σ, T, λ),
    from `knn`'s grids (k, sigma, temperature, lam).

    `embeddings` holds train_logits/train_y and <split>_logits/<split>_y; `neighbors` holds
    <split>_dist/<split>_idx from one search at the largest k; the sweep engine runs on `device`, over both
    splits at once (the training rows they share are computed once)."""
    ks, sigmas, temperatures, lambdas = knn["k"], knn["sigma"], knn["temperature"], knn["lam"]
    labels = [np.asarray(embeddings[f"{split}_y"]) for split in QUERY_SPLITS]
    dist, idx, groups = stack_splits(neighbors, max(ks))
    bar = dict(desc="sweep " + " + ".join(QUERY_SPLITS), unit="query", file=sys.stderr, dynamic_ncols=True)
    with tqdm(total=len(groups) * len(temperatures), **bar) as progress:
        correct = sweep_correct(
            embeddings["train_logits"],
            embeddings["train_y"],
            np.concatenate([embeddings[f"{split}_logits"] for split in QUERY_SPLITS]),
            np.concatenate(labels),
            dist,
            idx,
            ks,
            sigmas,
            temperatures,
            chunk_bytes=chunk_bytes,
            progress=progress,
            device=device,
            groups=groups,
            lambdas=lambdas,
            methods=methods,
        )
    values = {"k": ks, "sigma": sigmas, "temperature": temperatures, "lam": lambdas}
    rows = []
    for g, split in enumerate(QUERY_SPLITS):
        base = float((embeddings[f"{split}_logits"].argmax(axis=1) == labels[g]).mean())
        rows.append({"method": "base", "split": split, "k": 0, "accuracy": base})
        for method in methods:
            names = COUNT_AXES[method]
            for point in np.ndindex(correct[method].shape[1:]):
                row = {name: float(values[name][i]) for name, i in zip(names, point, strict=True)}
                row["k"] = int(row["k"])
                rows.append({"method": method, "split": split, **row,
                             "accuracy": correct[method][(g, *point)] / len(labels[g])})  # fmt: skip
    return pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))


def best_point(
    grid: pd.DataFrame, parameters: Sequence[str], metric: str = "accuracy", higher_is_better: bool = True
) -> pd.Series:
    """The row of `grid` with the best `metric`; ties go, parameter by parameter in the order given, the way
    `SMALLER_WINS` says."""
    parameters = list(parameters)
    ascending = [not higher_is_better, *(SMALLER_WINS[p] for p in parameters)]
    return grid.sort_values([metric, *parameters], ascending=ascending, kind="mergesort").iloc[0]


def select(
    sweep: pd.DataFrame, parameters: Sequence[str], metric: str = "accuracy", higher_is_better: bool = True
) -> dict:
    """The grid point (values of `parameters`) with the best val `metric`, and the test value there; `sweep` holds
    one method's rows and the base model's (k = 0).

    Ties go, parameter by parameter in the order given, to the smaller k (less memory), the larger kernel width σ
    or τ (smoother weights), the smaller temperature T and the smaller interpolation weight λ (`SMALLER_WINS`).
    gain = test value − base test value; best_test_<metric> is the best test value anywhere on the grid, so
    that the cost of selecting on val shows."""
    parameters = list(parameters)
    grid = sweep[sweep.k > 0]
    best = best_point(grid[grid.split == "val"], parameters, metric, higher_is_better)
    at_best = np.logical_and.reduce([np.isclose(grid[p], best[p]) for p in parameters])
    test_grid = grid[grid.split == "test"][metric]
    test = grid[at_best & (grid.split == "test")][metric].iloc[0]
    base = sweep[sweep.k == 0].set_index("split")[metric]
    better = "best" if higher_is_better else "lowest"
    ties = ", then ".join(f"{'smaller' if SMALLER_WINS[p] else 'larger'} {SYMBOLS[p]}" for p in parameters)
    return {
        **{p: int(best[p]) if p == "k" else float(best[p]) for p in parameters},
        f"val_{metric}": float(best[metric]),
        f"test_{metric}": float(test),
        f"best_test_{metric}": float(test_grid.max() if higher_is_better else test_grid.min()),
        f"base_val_{metric}": float(base["val"]),
        f"base_test_{metric}": float(base["test"]),
        "gain": float(test - base["test"]),
        "rule": f"{better} val {metric}; ties: {ties}",
    }


def select_methods(sweep: pd.DataFrame) -> dict:
    """Each method's selected grid point ({method: `select`'s record}) from an image sweep table."""
    base = sweep[sweep.method == "base"]
    return {
        method: select(pd.concat([base, sweep[sweep.method == method]]), PARAMETERS[method])
        for method in METHODS
        if (sweep.method == method).any()
    }
