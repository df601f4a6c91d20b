"""How the reports of every kind say whether a gain is real: a gain cell with its interval over seeds, and the
per-run tests (bootstrap interval, McNemar's p-value, selection cost) as Markdown. Summary columns per method m:
m_gain, m_gain_ci_low/high, m_mcnemar_p, m_test_acc, m_best_test_acc (`resmem.stages.gain_columns`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from resmem.stats import excludes_zero


def with_distinct_runs(stats: pd.DataFrame, summary: pd.DataFrame, by, methods) -> pd.DataFrame:
    """`stats` (statistics over seeds per `by` group) with `<m>_distinct`: the runs whose own bootstrap interval of
    m's gain excludes 0."""
    grouped = summary.groupby(list(by))
    for m in methods:
        stats[f"{m}_distinct"] = grouped.apply(
            lambda g, m=m: sum(
                excludes_zero(lo, hi) for lo, hi in zip(g[f"{m}_gain_ci_low"], g[f"{m}_gain_ci_high"], strict=True)
            )  # fmt: skip
        )
    return stats


def gain_cell(r: pd.Series, column: str, scale: float = 100.0) -> str:
    """A statistic over seeds (`column`: a gain, in points at the default scale) with its t-interval, marked * where
    the interval excludes 0."""
    mean, low, high = (scale * r[f"{column}_{s}"] for s in ("mean", "low", "high"))
    if np.isnan(low):
        return f"{mean:+.2f}"
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]{'*' if excludes_zero(low, high) else ''}"


def verdict_lines(summary: pd.DataFrame, per: pd.DataFrame, fraction: str, labels: dict) -> list[str]:
    """The per-run tests of each gain, as Markdown: a table row per model × fraction × method, and a sentence per
    method saying where its gain is distinguishable from noise. `per`: the statistics over seeds per (model,
    `fraction`) with the distinct runs (`with_distinct_runs`); `labels`: {method: its name in the table}."""
    lines = [
        "## Is the gain real?",
        "",
        "Per run, each method's test predictions at its selected point are compared with the base model's on the same "
        "test examples: a paired bootstrap 95 % interval of the accuracy gain (for language models a block bootstrap "
        "of contiguous test positions, `stats.block_tokens`) and McNemar's exact p-value. "
        "'Selection cost': the best test accuracy anywhere on the method's grid minus the test accuracy at the "
        "point val selected (mean over seeds), what choosing on a small val split costs.",
        "",
        f"| model | {fraction.replace('_', ' ')} | method | gain (points) | runs whose CI excludes 0 "
        "| McNemar p per run | selection cost (points) |",
        "|---|---:|---|---:|---:|---|---:|",
    ]
    for (model, value), r in per.iterrows():
        runs = summary[(summary.model == model) & (summary[fraction] == value)]
        for m, label in labels.items():
            p_values = ", ".join(f"{p:.2g}" for p in runs[f"{m}_mcnemar_p"])
            cost = 100 * (r[f"{m}_best_test_acc_mean"] - r[f"{m}_test_acc_mean"])
            gain = gain_cell(r, f"{m}_gain")
            lines.append(f"| {model} | {value:g} | {label} | {gain} | {int(r[f'{m}_distinct'])} of "
                         f"{int(r.seeds)} | {p_values} | {cost:.2f} |")  # fmt: skip
    lines.append("")
    single = per.seeds < 2
    name = {key: f"{key[0]} ({fraction.replace('_', ' ')} {key[1]:g})" for key in per.index}
    for m, label in labels.items():
        excluding = [name[key] for key, r in per[~single].iterrows()
                     if excludes_zero(r[f"{m}_gain_low"], r[f"{m}_gain_high"])]  # fmt: skip
        by_run = [name[key] for key, r in per[single].iterrows() if r[f"{m}_distinct"]]
        said = []
        if (~single).any():
            said.append(f"its 95 % interval over seeds excludes 0 for {', '.join(excluding) or 'no model'}")
        if single.any():
            said.append(f"with one seed, its run's own interval excludes 0 for {', '.join(by_run) or 'no model'}")
        lines.append(f"- {label}: " + "; ".join(said) + "; elsewhere the gain is within the noise.")
    return lines
