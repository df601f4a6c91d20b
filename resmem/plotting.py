"""The plotting kit every kind's report uses: one matplotlib setup, the method colours, PNG+PDF saving, panel
grids, statistics over seeds and the sweep rows at each run's selected grid point."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from resmem.io import atomic_path  # noqa: E402

BASE_COLOR, RESMEM_COLOR, KNN_COLOR = "#4C72B0", "#DD8452", "#55A868"  # base model, ResMem, kNN (kNN-LM)
KNN_INTERP_COLOR = "#8172B3"  # kNN interpolated with the base model


def save(fig, png, pdf) -> None:
    """Write the figure as PNG and PDF, each atomically, and close it. Its layout (constrained, where it has one)
    is computed once for both: left on, each savefig would lay the figure out again, twice over the time of
    drawing it."""
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)
        fig.set_layout_engine("none")
    for path in (png, pdf):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=200, bbox_inches="tight")  # the temporary name keeps the suffix
    plt.close(fig)


def log_axis_at(ax, values, base: int = 10) -> None:
    """A log x axis with a tick at each of `values` (the swept ones), labelled as they are written in a config
    (0.3, 64), not as powers of the base."""
    ax.set_xscale("log", base=base)
    ax.set_xticks(list(values), [f"{value:g}" for value in values])
    ax.xaxis.set_minor_formatter(NullFormatter())


def accuracy_axis(ax) -> None:
    """An accuracy axis (%) that stops just above 100: matplotlib pads a flat line by ±5, past what can be."""
    low, high = ax.get_ylim()
    ax.set_ylim(low, min(high, 100.5))


def panels(n: int, width: float = 3.6, height: float = 3.2):
    """A figure with `n` axes in rows of at most three, and the axes as a list."""
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, constrained_layout=True)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def over_seeds(summary: pd.DataFrame) -> str:
    n = summary.seed.nunique()
    return f"{n} seed{'s' if n != 1 else ''}"


def interval_over_seeds(summary: pd.DataFrame) -> str:
    """What the error bars of `errorbar_methods` show, for a title."""
    n = summary.seed.nunique()
    return f"mean and 95 % t-interval over {n} seeds" if n > 1 else "one seed (no interval over seeds)"


def per_model(summary: pd.DataFrame, columns, by=("model",), first=("parameters",)):
    """Mean, std (0 for one seed) and Student's 95 % t-interval over seeds (`<column>_mean`, `_std`, `_low`,
    `_high`; the interval NaN for one seed) of `columns` per model (or per `by` group), with the `first` columns
    as they are and the number of seeds, ordered by parameter count."""
    from resmem.stats import t_interval

    grouped = summary.groupby(list(by))
    parts = {}
    for column in columns:
        values = grouped[column].apply(lambda v: pd.Series(t_interval(v), index=["mean", "std", "low", "high"]))
        parts.update({f"{column}_{s}": values.xs(s, level=-1) for s in ("mean", "std", "low", "high")})
    stats = pd.DataFrame(parts)
    for column in first:
        stats[column] = grouped[column].first()
    stats["seeds"] = grouped.seed.count()
    return stats.sort_values(["parameters", *by[1:]], kind="mergesort")


def selected_rows(summary: pd.DataFrame, sweeps: pd.DataFrame, fixed: tuple) -> pd.DataFrame:
    """Sweep rows (val and test) that share each run's selected values of the `fixed` columns."""
    chosen = summary[["model", "seed", *fixed]].rename(columns={c: f"chosen_{c}" for c in fixed})
    rows = sweeps[sweeps.k > 0].merge(chosen, on=["model", "seed"])
    for column in fixed:
        rows = rows[np.isclose(rows[column], rows[f"chosen_{column}"])]
    return rows


def errorbar_methods(ax, stats: pd.DataFrame, methods, x: str = "parameters") -> None:
    """One line per method, (label, column prefix, colour, marker): test accuracy in % (mean over seeds of
    `<prefix>_test_acc`, error bars its t-interval, none for one seed) against `x` on a log axis, each method
    shifted by 3.5 % of x so that overlapping bars stay apart."""
    for i, (label, prefix, color, marker) in enumerate(methods):
        mean = 100 * stats[f"{prefix}_test_acc_mean"]
        bars = [mean - 100 * stats[f"{prefix}_test_acc_low"], 100 * stats[f"{prefix}_test_acc_high"] - mean]
        shifted = stats[x] * 1.035 ** (i - (len(methods) - 1) / 2)
        ax.errorbar(shifted, mean, yerr=np.nan_to_num(np.array(bars)), label=label, color=color, marker=marker,
                    capsize=3, linewidth=1.8)  # fmt: skip


def plot_sensitivity(models, panel_specs, chosen: dict, grids: dict, base: pd.Series, title: str, png, pdf) -> None:
    """One row per model, one panel per (swept parameter, method, fixed parameters, x label, colour): accuracy
    against the swept parameter with the fixed ones at each run's selected values (`chosen[method]`: model,
    seed and the selected values; `grids[method]`: its sweep rows), mean over seeds, val dashed and test
    solid, and the base model's accuracy (`base[(model, split)]`) as horizontal lines."""
    width = 4.0 if len(panel_specs) <= 2 else 2.9  # inches per panel
    fig, axes = plt.subplots(len(models), len(panel_specs), figsize=(width * len(panel_specs), 2.6 * len(models)),
                             squeeze=False, constrained_layout=True)  # fmt: skip
    for row, model in zip(axes, models, strict=True):
        for ax, (swept, method, fixed, xlabel, color) in zip(row, panel_specs, strict=True):
            part = grids[method]
            rows = selected_rows(chosen[method][chosen[method].model == model], part[part.model == model], fixed)
            for split, style in (("val", "--"), ("test", "-")):
                line = rows[rows.split == split].groupby(swept).accuracy.mean()
                ax.plot(line.index, 100 * line.values, style, marker=".", color=color, label=split)
                ax.axhline(100 * base[(model, split)], linestyle=style, color=BASE_COLOR, linewidth=1)
            if swept in ("k", "sigma", "tau"):
                log_axis_at(ax, line.index, base=2 if swept == "k" else 10)
            ax.set_xlabel(xlabel)
            ax.grid(True, which="both", alpha=0.3)
            accuracy_axis(ax)
        row[0].set_ylabel(f"{model}\naccuracy (%)")
    axes[0][0].legend(fontsize=7, title="split (blue: base)", title_fontsize=7)
    fig.suptitle(title, fontsize=10)
    save(fig, png, pdf)
