"""Tables and figures of an image experiment: what people look at, so every figure says what it shows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from resmem import io
from resmem.core import METHODS
from resmem.plotting import (
    BASE_COLOR,
    KNN_COLOR,
    KNN_INTERP_COLOR,
    RESMEM_COLOR,
    accuracy_axis,
    errorbar_methods,
    interval_over_seeds,
    log_axis_at,
    panels,
    per_model,
    plot_sensitivity,
    plt,
    save,
)
from resmem.verdicts import gain_cell, holm_note, spread, verdict_lines, with_distinct_runs, with_seed_tests

RESMEM_SELECTION = "(k, σ, T) chosen by val accuracy"
SELECTION = "each method at its grid point of best val accuracy"
METHODS_SHOWN = (  # (label, summary column prefix, colour, marker)
    ("DeepNet (base)", "base", BASE_COLOR, "o"),
    ("ResMem", "resmem", RESMEM_COLOR, "s"),
    ("kNN", "knn", KNN_COLOR, "^"),
    ("kNN-interp", "knn_interp", KNN_INTERP_COLOR, "D"),
)
LABELS = {prefix: label for label, prefix, _, _ in METHODS_SHOWN}
MIN_BIN_COUNT = 10  # confidence bins with fewer test examples (pooled over seeds) are too noisy to draw
STATISTICS = ("base_test_acc", *(f"{m}_{c}" for m in METHODS for c in ("test_acc", "gain", "best_test_acc")))
RUN_GROUP = ("model", "train_fraction")  # the runs of one group differ by their seed
GAINS = tuple(f"{m}_gain" for m in METHODS)  # the gain cells of the summary table


def _per_model(summary: pd.DataFrame, by=("model",)) -> pd.DataFrame:
    """Mean, std and t-interval over seeds of every accuracy and gain per model (or `by` group), by parameter
    count, with the number of seeds whose own test of each gain is below 0.05 after Holm (`resmem.verdicts`)."""
    stats = per_model(summary, STATISTICS, by, ("parameters", "train_examples"))
    return with_distinct_runs(stats, summary, by, METHODS)


def _gains(summary: pd.DataFrame) -> pd.DataFrame:
    """Per model × train fraction: `_per_model` with each gain's verdict over seeds and test examples,
    Holm-adjusted over the table's cells (`resmem.verdicts.with_seed_tests`)."""
    return with_seed_tests(_per_model(summary, RUN_GROUP), summary, RUN_GROUP, GAINS)


TABLE_HEADER = ("model", "parameters", "train fraction", "train examples", "DeepNet", "ResMem", "gain [95 % CI]",
                "kNN", "gain [95 % CI]", "kNN-interp", "gain [95 % CI]")  # fmt: skip


def _table_rows(summary: pd.DataFrame, pm: str) -> list[list[str]]:
    """The summary table's cells per model × training fraction (accuracies in %, mean `pm` std over seeds; gains
    with their 95 % interval over seeds and test examples)."""
    rows = []
    for (model, fraction), r in _gains(summary).iterrows():
        row = [model, f"{int(r.parameters):,}", f"{fraction:g}", f"{int(r.train_examples):,}",
               spread(r, "base_test_acc", pm=pm)]  # fmt: skip
        for m in METHODS:
            row += [spread(r, f"{m}_test_acc", pm=pm), gain_cell(r, f"{m}_gain")]
        rows.append(row)
    return rows


def _caption(summary: pd.DataFrame, experiment: str) -> str:
    seeds = ", ".join(str(int(s)) for s in sorted(summary.seed.unique()))
    return (
        f"{experiment}: test accuracy (%) of the base network (DeepNet), ResMem, the soft kNN classifier on the same "
        f"neighbours and kNN interpolated with DeepNet, mean ± std over seeds {seeds}; {SELECTION} of each run. "
        "Gains over DeepNet in points. " + holm_note(_gains(summary), GAINS)
    )


def _weights(run: pd.Series) -> str:
    if run.epochs == 0:
        return f"{'pretrained weights' if run.pretrained else 'random initialization'}, not trained here"
    return f"{'fine-tuned from pretrained weights' if run.pretrained else 'trained from scratch'}, {run.epochs} epochs"


def _how_seen(summary: pd.DataFrame) -> str:
    """The view and weights every model shared, for a figure title (summary.md lists them per model)."""
    firsts = summary.groupby("model", sort=False).first()
    views, weights = set(firsts.view), {_weights(r) for _, r in firsts.iterrows()}
    view = views.pop() if len(views) == 1 else "views differ (summary.md)"
    return f"{view}; {weights.pop() if len(weights) == 1 else 'weights differ (summary.md)'}"


def summary_markdown(summary: pd.DataFrame, experiment: str) -> str:
    lines = [
        f"# {experiment}: ResMem vs the base network (DeepNet)",
        "",
        _caption(summary, experiment),
        "",
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|---|" + "---:|" * (len(TABLE_HEADER) - 1),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _table_rows(summary, "±")]
    per = _gains(summary)
    lines += ["", *verdict_lines(summary, per, "train_fraction", {m: LABELS[m] for m in METHODS}), "",
              "How each model saw the images:", ""]  # fmt: skip
    for model, first in summary.groupby("model", sort=False).first().iterrows():
        evaluated = " (evaluated as loaded)" if first.epochs == 0 else ""
        lines.append(f"- {model}: {first.view}; {_weights(first)}{evaluated}")
    return "\n".join(lines) + "\n"


def summary_latex(summary: pd.DataFrame, experiment: str) -> str:
    """A booktabs table for papers (\\usepackage{booktabs})."""

    def escape(text: str) -> str:
        return (text.replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$").replace("σ", r"$\sigma$")
                .replace("*", r"$^{*}$"))  # fmt: skip

    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{escape(_caption(summary, experiment))}}}",
        rf"\label{{tab:resmem-{experiment}}}",
        r"\begin{tabular}{l" + "r" * (len(TABLE_HEADER) - 1) + "}",
        r"\toprule",
        " & ".join(escape(h) for h in TABLE_HEADER) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(escape(cell) for cell in row) + r" \\" for row in _table_rows(summary, "±")]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_size(summary: pd.DataFrame, experiment: str, png, pdf) -> None:
    stats = _per_model(summary)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    errorbar_methods(ax, stats, METHODS_SHOWN)
    tops = np.nanmax([100 * stats[f"{prefix}_test_acc_{s}"] for _, prefix, _, _ in METHODS_SHOWN
                      for s in ("mean", "high")], axis=0)  # fmt: skip
    top = tops.max()
    for (model, r), above in zip(stats.iterrows(), tops, strict=True):
        ax.annotate(
            f"{model}\nResMem {100 * r.resmem_gain_mean:+.1f}",
            (r.parameters, above),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            va="bottom",
            fontsize=8,
            color="0.3",
        )
    ax.set_ylim(top=top + 0.12 * (top - ax.get_ylim()[0]))  # room for the labels
    ax.set_xscale("log")
    ax.set_xlabel("parameters of the base network (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        f"{experiment}: test accuracy vs model size\n{interval_over_seeds(summary)}; {SELECTION}\n{_how_seen(summary)}",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    save(fig, png, pdf)


def _at_selected_temperature(sweeps: pd.DataFrame) -> pd.DataFrame:
    """Test rows of the grid at each run's selected T, averaged over seeds per (model, k, σ)."""
    grid = sweeps[(sweeps.k > 0) & (sweeps.split == "test")]
    grid = grid[np.isclose(grid.temperature, grid.selected_temperature)]
    base = sweeps[(sweeps.k == 0) & (sweeps.split == "test")][["model", "seed", "accuracy"]]
    grid = grid.merge(base.rename(columns={"accuracy": "base"}), on=["model", "seed"])
    grid = grid.assign(gain=grid.accuracy - grid.base)
    return grid.groupby(["model", "k", "sigma"], as_index=False)[["accuracy", "base", "gain"]].mean()


def _model_order(summary: pd.DataFrame) -> list[str]:
    return list(_per_model(summary).index)


def plot_accuracy_vs_k(summary: pd.DataFrame, sweeps: pd.DataFrame, experiment: str, png, pdf) -> None:
    grid = _at_selected_temperature(sweeps)
    models = _model_order(summary)
    sigmas = sorted(grid.sigma.unique())
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(sigmas)))
    fig, axes = panels(len(models))
    for ax, model in zip(axes, models, strict=False):
        part = grid[grid.model == model]
        for sigma, color in zip(sigmas, colors, strict=True):
            line = part[np.isclose(part.sigma, sigma)].sort_values("k")
            ax.plot(line.k, 100 * line.accuracy, marker=".", color=color, label=f"σ = {sigma:g}")
        ax.axhline(100 * part.base.iloc[0], color="k", linestyle="--", linewidth=1, label="DeepNet")
        log_axis_at(ax, sorted(part.k.unique()), base=2)
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("k (neighbors)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, alpha=0.3)
        accuracy_axis(ax)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(
        f"{experiment}: ResMem test accuracy vs k, one line per σ (mean over "
        f"{summary.seed.nunique()} seeds, at each run's selected T)",
        fontsize=10,
    )
    save(fig, png, pdf)


def plot_gain_heatmap(summary: pd.DataFrame, sweeps: pd.DataFrame, experiment: str, png, pdf) -> None:
    grid = _at_selected_temperature(sweeps)
    models = _model_order(summary)
    limit = max(100 * grid.gain.abs().max(), 0.5)
    fig, axes = panels(len(models), width=3.8, height=3.4)
    image = None
    for ax, model in zip(axes, models, strict=False):
        table = grid[grid.model == model].pivot(index="k", columns="sigma", values="gain") * 100
        image = ax.imshow(table.values, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto", origin="lower")
        ax.set_xticks(range(table.shape[1]), [f"{s:g}" for s in table.columns], fontsize=7)
        ax.set_yticks(range(table.shape[0]), table.index, fontsize=7)
        for (i, j), value in np.ndenumerate(table.values):
            ax.text(
                j,
                i,
                f"{value:+.1f}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if abs(value) > 0.6 * limit else "black",
            )
        chosen = summary[summary.model == model][["k", "sigma"]].drop_duplicates().set_index(["k", "sigma"])
        for k, sigma in chosen.index:  # the runs' selected cells
            i, j = list(table.index).index(k), int(np.argmin(np.abs(table.columns.values - sigma)))
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="k", linewidth=1.5))
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("σ")
        ax.set_ylabel("k")
    fig.colorbar(image, ax=axes, shrink=0.8, label="test accuracy gain over DeepNet (points)")
    fig.suptitle(
        f"{experiment}: ResMem gain over k × σ (mean over {summary.seed.nunique()} seeds, at each "
        "run's selected T; boxes: cells selected by val accuracy)",
        fontsize=10,
    )
    save(fig, png, pdf)


def plot_gain_vs_train_fraction(summary: pd.DataFrame, experiment: str, png, pdf) -> None:
    stats = _per_model(summary, RUN_GROUP).reset_index()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    models = list(dict.fromkeys(stats.model))  # by parameter count
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(models)))
    for model, color in zip(models, colors, strict=True):
        line = stats[stats.model == model].sort_values("train_fraction")
        ax.errorbar(
            line.train_fraction,
            100 * line.resmem_gain_mean,
            yerr=100 * line.resmem_gain_std,
            marker="o",
            capsize=3,
            color=color,
            label=f"{model} ({int(line.parameters.iloc[0]):,} params)",
        )
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xscale("log")
    fractions = sorted(stats.train_fraction.unique())
    ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
    ax.set_xlabel("fraction of the training split used for training and as the datastore (log scale)")
    ax.set_ylabel("ResMem test accuracy gain (points)")
    ax.set_title(
        f"{experiment}: ResMem gain vs training-set size\nmean ± std over {summary.seed.nunique()} "
        f"seeds; ResMem at the {RESMEM_SELECTION}",
        fontsize=10,
    )
    if len(fractions) == 1:  # say so rather than leave a reader puzzling over one column of points
        ax.text(
            0.02,
            0.97,
            "one training fraction in this config:\nlist several in train_fractions for the study",
            transform=ax.transAxes,
            va="top",
            fontsize=8,
            color="0.35",
        )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, png, pdf)


def plot_resmem_sensitivity(summary: pd.DataFrame, sweeps: pd.DataFrame, experiment: str, png, pdf) -> None:
    """Accuracy vs k at each run's selected σ and T, and vs σ at its selected k and T, on val and test."""
    specs = (
        ("k", "resmem", ("sigma", "temperature"), "k (at the selected σ, T)", RESMEM_COLOR),
        ("sigma", "resmem", ("k", "temperature"), "σ (at the selected k, T)", RESMEM_COLOR),
    )
    base = sweeps[sweeps.k == 0].groupby(["model", "split"]).accuracy.mean()
    title = (
        f"{experiment}: sensitivity of ResMem to k and σ, val and test (mean over {summary.seed.nunique()} seeds; "
        "the other parameters at each run's val-selected values)"
    )
    plot_sensitivity(_model_order(summary), specs, {"resmem": summary}, {"resmem": sweeps}, base, title, png, pdf)


def plot_gain_by_confidence(summary: pd.DataFrame, confidences: pd.DataFrame, experiment: str, png, pdf) -> None:
    """Where ResMem helps: test accuracy gain per bin of the base model's confidence (largest softmax
    probability), pooled over seeds, and how many test examples fall in each bin."""
    models = _model_order(summary)
    pooled = confidences.groupby(["model", "bin_lo", "bin_hi"], as_index=False)[
        ["count", "base_correct", "resmem_correct"]
    ].sum()
    pooled = pooled.assign(
        center=(pooled.bin_lo + pooled.bin_hi) / 2,
        gain=(pooled.resmem_correct - pooled.base_correct) / pooled["count"].where(pooled["count"] >= MIN_BIN_COUNT),
    )
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(6.4, 6.0), sharex=True, height_ratios=(2, 1), constrained_layout=True
    )
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(models)))
    for model, color in zip(models, colors, strict=True):
        part = pooled[pooled.model == model]
        top.plot(part.center, 100 * part.gain, marker="o", color=color, label=model)
        bottom.plot(part.center, part["count"] / part["count"].sum(), marker=".", color=color)
    top.axhline(0, color="k", linewidth=0.8)
    top.set_ylabel(f"ResMem − DeepNet test accuracy\n(points; bins of ≥ {MIN_BIN_COUNT} examples)")
    bottom.set_ylabel("share of test examples")
    bottom.set_xlabel("base model's confidence (largest softmax probability), bins of 0.1")
    top.grid(True, alpha=0.3)
    bottom.grid(True, alpha=0.3)
    top.legend(fontsize=8)
    top.set_title(
        f"{experiment}: where ResMem helps, by the base model's confidence\n(pooled over "
        f"{summary.seed.nunique()} seeds; ResMem at the {RESMEM_SELECTION})",
        fontsize=10,
    )
    save(fig, png, pdf)


def write_report(summary: pd.DataFrame, tables: dict, experiment: str, out: dict) -> None:
    """The summary as Markdown (out["summary_md"]) and LaTeX (out["summary_tex"]) and every figure: out maps
    '<figure>_png' and '<figure>_pdf' for every name in artifacts.FIGURES. `tables` holds the runs' "sweeps"
    and "confidences". The figures over model size, k and σ use the largest training fraction; the last one
    spans all fractions."""
    confidences = tables["confidences"]
    sweeps = tables["sweeps"][tables["sweeps"].method.isin(["base", "resmem"])]  # the ResMem figures' grid
    io.write_text(out["summary_md"], summary_markdown(summary, experiment))
    io.write_text(out["summary_tex"], summary_latex(summary, experiment))
    largest = summary.train_fraction.max()
    full, full_sweeps = summary[summary.train_fraction == largest], sweeps[sweeps.train_fraction == largest]
    plot_resmem_sensitivity(full, full_sweeps, experiment, out["sensitivity_png"], out["sensitivity_pdf"])
    plot_gain_by_confidence(
        full,
        confidences[confidences.train_fraction == largest],
        experiment,
        out["gain_by_confidence_png"],
        out["gain_by_confidence_pdf"],
    )
    plot_accuracy_vs_size(full, experiment, out["accuracy_vs_size_png"], out["accuracy_vs_size_pdf"])
    plot_accuracy_vs_k(full, full_sweeps, experiment, out["accuracy_vs_k_png"], out["accuracy_vs_k_pdf"])
    plot_gain_heatmap(full, full_sweeps, experiment, out["gain_heatmap_png"], out["gain_heatmap_pdf"])
    plot_gain_vs_train_fraction(
        summary, experiment, out["gain_vs_train_fraction_png"], out["gain_vs_train_fraction_pdf"]
    )
