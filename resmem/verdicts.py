"""How the reports of every kind say whether a gain is real: a gain cell with its interval over seeds and test
examples, starred where its test (`resmem.stats.gain_over_seeds`), Holm-adjusted over the gain cells of the
table, is below 0.05, and the per-run tests (paired interval and p-value, Holm-adjusted over every run and gain;
the optimistic oracle gap) as Markdown.
Summary columns per method m: m_gain, m_gain_ci_low/high, m_p_value, m_p_holm, m_test, m_test_acc,
m_best_test_acc (`resmem.stages.gain_columns`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from resmem.stats import LEVEL, gain_over_seeds, holm

SIGNIFICANT = 1.0 - LEVEL  # a Holm-adjusted p-value below it earns a star


def with_distinct_runs(stats: pd.DataFrame, summary: pd.DataFrame, by, methods) -> pd.DataFrame:
    """`stats` (statistics over seeds per `by` group) with `<m>_distinct`: the runs whose own test of m's gain,
    Holm-adjusted over the experiment, is below SIGNIFICANT."""
    grouped = summary.groupby(list(by))
    for m in methods:
        stats[f"{m}_distinct"] = grouped[f"{m}_p_holm"].apply(lambda p: int(np.sum(p < SIGNIFICANT)))
    return stats


def with_seed_tests(stats: pd.DataFrame, summary: pd.DataFrame, by, columns) -> pd.DataFrame:
    """`stats` (from `resmem.plotting.per_model`, per `by` group: one model × fraction, its runs the seeds) with,
    per gain column c, the verdict over seeds and test examples (`resmem.stats.gain_over_seeds` of the runs'
    per-example differences, summary's "differences" column: {c: array, "block": the stats block setting}):
    <c>_low/_high (its interval, in place of the t over the run gains alone), <c>_p, <c>_test and <c>_p_holm,
    Holm-adjusted over every row × column: the table's cells."""
    groups = summary.groupby(list(by))
    verdicts = {c: [] for c in columns}
    for key in stats.index:
        runs = groups.get_group(key if isinstance(key, tuple) else (key,)).differences
        lengths = {len(d[columns[0]]) for d in runs}
        if len(lengths) != 1:
            raise ValueError(f"the runs of {key} hold test sets of {sorted(lengths)} positions: the seeds of one "
                             "model and fraction must share one test set to be compared over it")  # fmt: skip
        for c in columns:
            verdicts[c].append(gain_over_seeds(np.stack([d[c] for d in runs]), block=runs.iloc[0]["block"]))
    p = {c: np.array([v["p_value"] for v in verdicts[c]], dtype=np.float64) for c in columns}
    adjusted = holm(np.concatenate([p[c] for c in columns])).reshape(len(columns), len(stats))
    fields = {"low": "gain_ci_low", "high": "gain_ci_high", "test": "test"}
    new = {f"{c}_{name}": [v[key] for v in verdicts[c]] for c in columns for name, key in fields.items()}
    new.update({f"{c}_p": p[c] for c in columns} | {f"{c}_p_holm": adjusted[i] for i, c in enumerate(columns)})
    return stats.assign(**new)


def spread(r: pd.Series, column: str, scale: float = 100.0, pm: str = "±", digits: int = 2) -> str:
    """Mean ± standard deviation over seeds; n/a for the deviation of one seed."""
    mean, std = scale * r[f"{column}_mean"], scale * r[f"{column}_std"]
    return f"{mean:.{digits}f} {pm} " + ("n/a" if np.isnan(std) else f"{std:.{digits}f}")


def gain_cell(r: pd.Series, column: str, scale: float = 100.0) -> str:
    """A gain over seeds (in points at the default scale) with its interval over seeds and test examples, marked *
    where its test, Holm-adjusted over the table (`with_seed_tests`), is below SIGNIFICANT; one seed: the gain
    alone."""
    mean, low, high = (scale * r[f"{column}_{s}"] for s in ("mean", "low", "high"))
    if np.isnan(low):
        return f"{mean:+.2f}"
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]{'*' if r[f'{column}_p_holm'] < SIGNIFICANT else ''}"


def holm_note(stats: pd.DataFrame, columns) -> str:
    """The sentence under a table of gain cells: what its intervals and stars mean."""
    cells = int(sum(stats[f"{c}_p"].notna().sum() for c in columns))
    return (
        "Intervals: 95 % over seeds and test examples (the spread of the runs' gains plus the share of the test "
        "set that every seed has in common, so that they hold for a fresh test set too: "
        "`resmem.stats.gain_over_seeds`). "
        f"*: its test, Holm-adjusted over the {cells} gain cells of this table that have one, is below 0.05; one "
        "seed: no interval and no star."
    )


def verdict_lines(summary: pd.DataFrame, per: pd.DataFrame, fraction: str, labels: dict) -> list[str]:
    """The per-run tests of each gain, as Markdown: a table row per model × fraction × method, and a sentence per
    method saying where its gain is distinguishable from noise. `per`: the statistics over seeds per (model,
    `fraction`) with the distinct runs (`with_distinct_runs`); `labels`: {method: its name in the table}."""
    lines = [
        "## Is the gain real?",
        "",
        "Per run, each method's test predictions at its selected point are compared with the base model's on the same "
        "test examples by one paired procedure whose 95 % interval excludes 0 exactly when its p-value is below 0.05 "
        "(images: Tango's score test, McNemar's mid-p with fewer than 25 discordant examples; language models: a "
        "t-test over the means of blocks of contiguous test positions, `stats.block_positions`; the procedure of "
        "each run is `<method>_test` in summary.csv). p-values are Holm-adjusted over every run and method of "
        "this table. 'Oracle gap': the best test accuracy anywhere on the method's grid minus the test accuracy "
        "at the point val selected (mean over seeds); the best of many noisy test accuracies, it overstates what "
        "choosing on val costs.",
        "",
        f"| model | {fraction.replace('_', ' ')} | method | gain (points) | runs with Holm p < 0.05 "
        "| Holm p per run | oracle gap, optimistic (points) |",
        "|---|---:|---|---:|---:|---|---:|",
    ]
    for (model, value), r in per.iterrows():
        runs = summary[(summary.model == model) & (summary[fraction] == value)]
        for m, label in labels.items():
            p_values = ", ".join("n/a" if np.isnan(p) else f"{p:.2g}" for p in runs[f"{m}_p_holm"])
            cost = 100 * (r[f"{m}_best_test_acc_mean"] - r[f"{m}_test_acc_mean"])
            gain = gain_cell(r, f"{m}_gain")
            lines.append(f"| {model} | {value:g} | {label} | {gain} | {int(r[f'{m}_distinct'])} of "
                         f"{int(r.seeds)} | {p_values} | {cost:.2f} |")  # fmt: skip
    lines.append("")
    single = per.seeds < 2
    name = {key: f"{key[0]} ({fraction.replace('_', ' ')} {key[1]:g})" for key in per.index}
    for m, label in labels.items():
        excluding = [name[key] for key, r in per[~single].iterrows()
                     if r[f"{m}_gain_p_holm"] < SIGNIFICANT]  # fmt: skip
        by_run = [name[key] for key, r in per[single].iterrows() if r[f"{m}_distinct"]]
        said = []
        if (~single).any():
            models = ", ".join(excluding) or "no model"
            said.append(f"its Holm-adjusted test over seeds and test examples is below 0.05 for {models}")
        if single.any():
            runs = ", ".join(by_run) or "no model"
            said.append(f"with one seed, its run's own Holm-adjusted test is below 0.05 for {runs}")
        lines.append(f"- {label}: " + "; ".join(said) + "; elsewhere the gain is within the noise.")
    return lines
