"""The ResMem grid sweep as a table, and the selection of the grid point by validation accuracy."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
from tqdm import tqdm

from resmem.artifacts import QUERY_SPLITS, SWEEP_COLUMNS
from resmem.engine import stack_splits, sweep_correct


def sweep_table(
    embeddings: dict, neighbors: dict, ks, sigmas, temperatures, chunk_bytes: int, device: str = "cpu"
) -> pd.DataFrame:
    """Accuracy at every (k, σ, T) on val and test, plus one base-model row per split with k = 0.

    `embeddings` holds train_logits/train_y and <split>_logits/<split>_y; `neighbors` holds
    <split>_dist/<split>_idx from one search at the largest k; the sweep engine runs on `device`, over both
    splits at once (the training rows they share are computed once)."""
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
        )
    rows = []
    for g, split in enumerate(QUERY_SPLITS):
        base = float((embeddings[f"{split}_logits"].argmax(axis=1) == labels[g]).mean())
        rows.append({"split": split, "k": 0, "sigma": np.nan, "temperature": np.nan, "accuracy": base})
        for t, temperature in enumerate(temperatures):
            for i, k in enumerate(ks):
                for s, sigma in enumerate(sigmas):
                    rows.append(
                        {
                            "split": split,
                            "k": int(k),
                            "sigma": float(sigma),
                            "temperature": float(temperature),
                            "accuracy": correct[g, t, i, s] / len(labels[g]),
                        }
                    )
    return pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))


def select(
    sweep: pd.DataFrame, third: str = "temperature", metric: str = "accuracy", higher_is_better=True, width="sigma"
) -> dict:
    """The (k, `width`, `third`) with the best val `metric`, and the test value there. `width` is the kernel's
    width parameter (σ; kNN-LM's published kernel has τ) and `third` the grid's third parameter: ResMem's
    temperature T, kNN-LM's interpolation weight λ.

    Ties go to the smaller k (less memory), then the larger width (smoother weights), then the smaller `third`.
    Base-model rows have k = 0; gain = test value − base test value."""
    grid = sweep[sweep.k > 0]
    val = grid[grid.split == "val"].copy()
    val["neg_width"] = -val[width]
    best = val.sort_values(
        [metric, "k", "neg_width", third], ascending=[not higher_is_better, True, True, True], kind="mergesort"
    ).iloc[0]
    key = (grid.k == best.k) & np.isclose(grid[width], best[width]) & np.isclose(grid[third], best[third])
    test = grid[key & (grid.split == "test")][metric].iloc[0]
    base = sweep[sweep.k == 0].set_index("split")[metric]
    better = "best" if higher_is_better else "lowest"
    return {
        "k": int(best.k),
        width: float(best[width]),
        third: float(best[third]),
        f"val_{metric}": float(best[metric]),
        f"test_{metric}": float(test),
        f"base_val_{metric}": float(base["val"]),
        f"base_test_{metric}": float(base["test"]),
        "gain": float(test - base["test"]),
        "rule": f"{better} val {metric}; ties: smaller k, then larger {width}, then smaller {third}",
    }
