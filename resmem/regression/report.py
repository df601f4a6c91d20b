"""The figure and summary of a regression study: test risk of least squares, kNN and ResMem against n."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter

from resmem.plotting import BASE_COLOR, KNN_COLOR, RESMEM_COLOR, plt, save
from resmem.regression.study import METHODS


def summary_markdown(table: pd.DataFrame, experiment: str, cfg: dict, linear_risk: float) -> str:
    stats = table.groupby(["n", "method"]).agg(mse=("test_mse", "mean"), std=("test_mse", "std"), k=("k", "median"))
    seeds = ", ".join(str(s) for s in sorted(table.seed.unique()))
    lines = [
        f"# {experiment}: test risk vs training-set size",
        "",
        f"Test MSE, mean ± std over seeds {seeds}; k chosen by validation MSE (median over seeds in brackets). "
        f"Noise floor {cfg['noise'] ** 2:.4g}; risk of the best linear predictor {linear_risk:.4g}.",
        "",
        "| n | base (OLS) | kNN | ResMem |",
        "|---:|---:|---:|---:|",
    ]
    for n in sorted(table.n.unique()):
        cells = []
        for method in METHODS:
            r = stats.loc[(n, method)]
            k = f" [k={r.k:g}]" if method != "base" else ""
            cells.append(f"{r.mse:.4f} ± {0.0 if np.isnan(r['std']) else r['std']:.4f}{k}")
        lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_risk(table: pd.DataFrame, experiment: str, cfg: dict, linear_risk: float, png, pdf) -> None:
    """Test MSE (left) and excess risk over the noise floor (right) vs n, log-log, mean ± std over seeds."""
    styles = {
        "base": ("base (OLS)", BASE_COLOR, "o"),
        "knn": ("kNN", KNN_COLOR, "^"),
        "resmem": ("ResMem", RESMEM_COLOR, "s"),
    }
    noise = cfg["noise"] ** 2
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.4), constrained_layout=True)
    for ax, excess in zip(axes, (False, True), strict=True):
        for method in METHODS:
            part = table[table.method == method]
            risk = part.test_mse - (noise if excess else 0.0)
            stats = risk.groupby(part.n).agg(["mean", "std"]).fillna(0.0)
            label, color, marker = styles[method]
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], label=label, color=color, marker=marker,
                        capsize=3, linewidth=1.8)  # fmt: skip
        ax.axhline(linear_risk - (noise if excess else 0.0), color=BASE_COLOR, linestyle=":", linewidth=1.2,
                   label="best linear predictor (noise² + approximation error)")  # fmt: skip
        if not excess:  # the excess risk's floor is 0, off a log axis
            ax.axhline(noise, color="k", linestyle="--", linewidth=1, label="noise floor (noise²)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        # Ticks at the sizes actually run, compact (500, 2k, 20k): log-axis minor labels collide on short ranges.
        sizes = sorted(table.n.unique())
        ax.set_xticks(sizes, [f"{n / 1000:g}k" if n >= 1000 else f"{n}" for n in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training-set size n (log scale)")
        ax.set_ylabel("excess test risk, MSE − noise²" if excess else "test risk (MSE)")
        ax.grid(True, which="both", alpha=0.3)
    # One legend for both panels, below them, where it hides no curve: the methods, then the reference lines.
    handles, labels = axes[0].get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i] not in [style[0] for style in styles.values()])
    fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside lower center", ncol=5,
               fontsize=8, frameon=False)  # fmt: skip
    seeds = table.seed.nunique()
    omega = "" if cfg["frequency"] == 1 else f"{cfg['frequency']:g}"
    fig.suptitle(
        f"{experiment}: test risk vs n on y = βᵀx + {cfg['nonlinear_scale']:g}·Π_j sin({omega}π·x_j) + ε, "
        f"|β| = {cfg['linear_scale']:g} (d = {cfg['dim']}, noise σ = {cfg['noise']:g})\n"
        f"mean ± std over {seeds} seed{'s' if seeds != 1 else ''}; k of kNN and ResMem chosen from "
        f"{', '.join(str(k) for k in sorted(cfg['k']))} by validation MSE "
        f"({cfg['val_fraction']:g} of each n held out; ties: smaller k)",
        fontsize=10,
    )
    save(fig, png, pdf)
