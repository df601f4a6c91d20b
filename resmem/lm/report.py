"""Tables and figures of a language-model experiment: base model, ResMem and kNN-LM on next-token accuracy."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter

from resmem import io
from resmem.plotting import (
    BASE_COLOR,
    KNN_COLOR,
    RESMEM_COLOR,
    errorbar_methods,
    interval_over_seeds,
    log_axis_at,
    over_seeds,
    per_model,
    plot_sensitivity,
    plt,
    save,
)
from resmem.verdicts import gain_cell, holm_note, spread, verdict_lines, with_distinct_runs, with_seed_tests

METHODS = (  # (label, summary column prefix, color, marker)
    ("base model", "base", BASE_COLOR, "o"),
    ("ResMem", "resmem", RESMEM_COLOR, "s"),
    ("kNN-LM", "knnlm", KNN_COLOR, "^"),
)


def ran(summary: pd.DataFrame) -> list[str]:
    """The methods the study ran (knn.methods): those with test accuracies in the summary."""
    return [m for m in METHOD_LABELS if summary[f"{m}_test_acc"].notna().any()]


def lm_selection(summary: pd.DataFrame) -> str:
    points = {"resmem": "ResMem's (k, σ, T)", "knnlm": f"kNN-LM's (k, {SYMBOLS[_knnlm_width(summary)]}, λ)"}
    return f"{' and '.join(points[m] for m in ran(summary))} chosen by val accuracy"


SYMBOLS = {"sigma": "σ", "tau": "τ"}


def _knnlm_width(summary: pd.DataFrame) -> str:
    """The column of kNN-LM's kernel width: tau of its published squared_l2 kernel, or sigma of the l2 kernel."""
    return "tau" if (summary.knnlm_kernel == "squared_l2").all() else "sigma"


NO_PERPLEXITY = (
    "ResMem has no perplexity: its score softmax(Wh/T) + Σ w_j r_j sums to 1 but can be negative, so it is not "
    "a distribution; it is compared on next-token accuracy."
)
STATISTICS = ("base_test_acc", "resmem_test_acc", "knnlm_test_acc", "resmem_gain", "knnlm_gain", "base_test_ppl",
              "knnlm_test_ppl", "resmem_best_test_acc", "knnlm_best_test_acc", "knnlm_loss_change")  # fmt: skip
METHOD_LABELS = {"resmem": "ResMem", "knnlm": "kNN-LM"}
RUN_GROUP = ("model", "datastore_fraction")  # the runs of one group differ by their seed
GAINS = ("resmem_gain", "knnlm_gain", "knnlm_loss_change")  # the gain cells of the summary table


def _per_model(summary: pd.DataFrame, by=("model",)) -> pd.DataFrame:
    """Mean, std and t-interval over seeds of every accuracy, gain, perplexity and loss change, ordered by
    parameter count, with the runs whose own test of each gain is below 0.05 after Holm (`resmem.verdicts`)."""
    stats = per_model(summary, STATISTICS, by, ("parameters", "datastore_size"))
    return with_distinct_runs(stats, summary, by, {m: METHOD_LABELS[m] for m in ran(summary)})


def _gains(summary: pd.DataFrame) -> pd.DataFrame:
    """Per model × datastore fraction: `_per_model` with each gain's verdict over seeds and test examples,
    Holm-adjusted over the table's cells (`resmem.verdicts.with_seed_tests`)."""
    return with_seed_tests(_per_model(summary, RUN_GROUP), summary, RUN_GROUP, GAINS)


def _knnlm_formulation(summary: pd.DataFrame) -> str:
    kernels = set(summary.knnlm_kernel)
    if kernels == {"squared_l2"}:
        weights = "softmax(−d²/τ) over squared L2 distances (as published)"
    elif kernels == {"l2"}:
        weights = "softmax(−d/σ), ResMem's kernel (not the published one)"
    else:
        weights = "kernels differ between runs (see summary.csv)"
    return f"kNN-LM: neighbour weights {weights}; log p = logsumexp(log(1−λ) + log p_LM, log λ + log p_kNN)."


def summary_markdown(summary: pd.DataFrame, experiment: str) -> str:
    seeds = ", ".join(str(int(s)) for s in sorted(summary.seed.unique()))
    width = SYMBOLS[_knnlm_width(summary)]
    lines = [
        f"# {experiment}: next-token prediction",
        "",
        f"Test next-token accuracy (%) and perplexity, mean ± std over seeds {seeds}; {lm_selection(summary)} "
        f"(kNN-LM's perplexity at its (k, {width}, λ) of lowest val perplexity). {_knnlm_formulation(summary)} "
        "Gains in points and kNN-LM's change of the test loss (nats per token; negative: better). "
        + holm_note(_gains(summary), GAINS),
        "",
        "| model | parameters | datastore fraction | datastore entries | base acc | ResMem acc | ResMem gain "
        "| kNN-LM acc | kNN-LM gain | base ppl | kNN-LM ppl | kNN-LM Δ loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    per = _gains(summary)
    for (model, fraction), r in per.iterrows():

        def cell(column, scale=100.0, r=r):  # "–": a method the study did not run
            mean = r[f"{column}_mean"]
            return "–" if np.isnan(mean) else spread(r, column, scale)

        def gain(column, scale=100.0, r=r):
            return "–" if np.isnan(r[f"{column}_mean"]) else gain_cell(r, column, scale)

        lines.append(
            f"| {model} | {int(r.parameters):,} | {fraction:g} | {int(r.datastore_size):,} | {cell('base_test_acc')} "
            f"| {cell('resmem_test_acc')} | {gain('resmem_gain')} | {cell('knnlm_test_acc')} "
            f"| {gain('knnlm_gain')} | {cell('base_test_ppl', 1)} | {cell('knnlm_test_ppl', 1)} "
            f"| {gain('knnlm_loss_change', 1.0)} |"
        )
    methods = {m: METHOD_LABELS[m] for m in ran(summary)}
    lines += ["", *verdict_lines(summary, per, "datastore_fraction", methods), ""]
    if "knnlm" in methods:
        lines += [
            "kNN-LM's change of the test loss per run (nats per token; 95 % block-t interval, p-value "
            "Holm-adjusted over every run and gain, the procedure):",
            "",
        ]
        lines += [
            f"- {r.model} (datastore fraction {r.datastore_fraction:g}, seed {r.seed}): {r.knnlm_loss_change:+.4f} "
            f"[{r.knnlm_loss_change_ci_low:+.4f}, {r.knnlm_loss_change_ci_high:+.4f}], Holm p "
            f"{r.knnlm_loss_change_p_holm:.2g}; {r.knnlm_loss_change_test}"
            for r in summary.itertuples()
        ]
    protocols = summary.groupby("model", sort=False)[["datastore_key", "eval_stride"]].first()
    used = [
        f"- {model}: key {r.datastore_key}, {r.eval_stride} new tokens per window" for model, r in protocols.iterrows()
    ]
    keys = ["", "Search keys (for ResMem and kNN-LM alike) and evaluation windows:", *used]
    return "\n".join([*lines, "", *([NO_PERPLEXITY] if "resmem" in methods else []), *keys, ""])


def plot_accuracy_vs_size(summary: pd.DataFrame, experiment: str, png, pdf) -> None:
    stats = _per_model(summary)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    methods = ran(summary)
    errorbar_methods(ax, stats, [m for m in METHODS if m[1] in ("base", *methods)])
    for model, r in stats.iterrows():
        gains = "".join(f"\n{METHOD_LABELS[m]} {100 * r[f'{m}_gain_mean']:+.2f}" for m in methods)
        ax.annotate(
            f"{model}{gains}",
            (r.parameters, 100 * r.base_test_acc_mean),
            textcoords="offset points",
            xytext=(0, -10),
            ha="center",
            va="top",
            fontsize=7,
            color="0.3",
        )
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # the few sizes are labelled by their annotations
    ax.set_xlabel("parameters of the language model (log scale)")
    ax.set_ylabel("test next-token accuracy (%)")
    ax.margins(x=0.15, y=0.25)
    ax.set_title(
        f"{experiment}: next-token accuracy vs model size (full datastore)\n"
        f"{interval_over_seeds(summary)}; {lm_selection(summary)}",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    save(fig, png, pdf)


def plot_gain_vs_datastore(summary: pd.DataFrame, experiment: str, png, pdf) -> None:
    """Gain over the base model vs the datastore's share of the training positions, per model."""
    stats = _per_model(summary, RUN_GROUP).reset_index()
    models = list(_per_model(summary).index)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(models)))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for model, color in zip(models, colors, strict=True):
        part = stats[stats.model == model].sort_values("datastore_fraction")
        for col, style, marker in (c for c in (("resmem", "-", "s"), ("knnlm", "--", "^")) if c[0] in ran(summary)):
            ax.errorbar(
                part.datastore_fraction,
                100 * part[f"{col}_gain_mean"],
                yerr=100 * part[f"{col}_gain_std"],
                linestyle=style,
                marker=marker,
                color=color,
                capsize=3,
                label=f"{model}, {'ResMem' if col == 'resmem' else 'kNN-LM'}",
            )
    ax.axhline(0, color="k", linewidth=0.8)
    log_axis_at(ax, sorted(stats.datastore_fraction.unique()), base=2)
    ax.set_xlabel("datastore size (fraction of the training positions, log scale)")
    ax.set_ylabel("test accuracy gain over the base model (points)")
    ax.set_title(
        f"{experiment}: gain vs datastore size\nmean ± std over {over_seeds(summary)}; {lm_selection(summary)}",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    save(fig, png, pdf)


def sensitivity_panels(knnlm_width: str) -> tuple:
    """Panels of the sensitivity figure: (swept parameter, method, the other parameters held at their selected
    values); kNN-LM's kernel width is τ (its published squared_l2 kernel) or σ (l2)."""
    return (
        ("k", "resmem", ("sigma", "temperature")),
        ("sigma", "resmem", ("k", "temperature")),
        ("temperature", "resmem", ("k", "sigma")),
        ("k", "knnlm", (knnlm_width, "lam")),
        (knnlm_width, "knnlm", ("k", "lam")),
        ("lam", "knnlm", ("k", knnlm_width)),
    )


LABELS = {"k": "k (neighbors)", "sigma": "σ", "tau": "τ (d² kernel)", "temperature": "T", "lam": "λ"}


def plot_lm_sensitivity(summary: pd.DataFrame, sweeps: pd.DataFrame, experiment: str, png, pdf) -> None:
    """Accuracy of ResMem vs k, σ, T and of kNN-LM vs k, τ (or σ), λ, val and test, one row per model; the
    other parameters at each run's val-selected values."""
    knnlm_width = _knnlm_width(summary)
    specs = [
        (swept, method, fixed, f"{LABELS[swept]}, {'ResMem' if method == 'resmem' else 'kNN-LM'}",
         RESMEM_COLOR if method == "resmem" else KNN_COLOR)
        for swept, method, fixed in sensitivity_panels(knnlm_width)
        if method in ran(summary)
    ]  # fmt: skip
    chosen = {
        method: summary.rename(columns={f"{method}_{p}": p for p in ("k", "sigma", "tau", "temperature", "lam")})
        for method in ran(summary)
    }
    grids = {method: sweeps[sweeps.method == method] for method in chosen}
    base = sweeps[sweeps.method == "base"].groupby(["model", "split"]).accuracy.mean()
    swept = {"resmem": "ResMem (k, σ, T)", "knnlm": f"kNN-LM (k, {LABELS[knnlm_width][0]}, λ)"}
    title = (
        f"{experiment}: sensitivity of {' and '.join(swept[m] for m in chosen)}, val dashed and test solid, full "
        f"datastore\n(mean over {over_seeds(summary)}; other parameters at each run's val-selected values)"
    )
    plot_sensitivity(list(_per_model(summary).index), specs, chosen, grids, base, title, png, pdf)


def write_report(summary: pd.DataFrame, tables: dict, experiment: str, out: dict) -> None:
    """The summary as Markdown (out["summary_md"]) and every figure: out maps '<figure>_png'/'<figure>_pdf' for
    every name in artifacts.LM_FIGURES. `tables` holds the runs' "sweeps". Figures over model size and the
    sensitivity use the largest datastore fraction; the gain figure spans all fractions."""
    sweeps = tables["sweeps"]
    io.write_text(out["summary_md"], summary_markdown(summary, experiment))
    largest = summary.datastore_fraction.max()
    full, full_sweeps = summary[summary.datastore_fraction == largest], sweeps[sweeps.datastore_fraction == largest]
    plot_accuracy_vs_size(full, experiment, out["lm_accuracy_vs_size_png"], out["lm_accuracy_vs_size_pdf"])
    plot_gain_vs_datastore(summary, experiment, out["lm_gain_vs_datastore_png"], out["lm_gain_vs_datastore_pdf"])
    plot_lm_sensitivity(full, full_sweeps, experiment, out["lm_sensitivity_png"], out["lm_sensitivity_pdf"])
