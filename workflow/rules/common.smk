import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

# The workflow always uses the resmem package of its own checkout: here through sys.path, and in jobs
# (any environment: conda, cluster) through the link workflow/scripts/resmem, since Snakemake puts a
# script's folder on its sys.path.
REPO = Path(workflow.basedir)
sys.path.insert(0, str(REPO))

from resmem.config import ConfigError, experiment_names, validate as validate_config
from resmem.artifacts import FIGURES, LM_FIGURES

try:
    validate_config(config, REPO / "workflow" / "schemas" / "config.schema.yaml")
except ConfigError as error:
    raise WorkflowError(str(error)) from None


wildcard_constraints:
    experiment=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    fraction=r"[0-9.e-]+",
    seed=r"\d+",


def names_regex(kind):
    """A wildcard constraint that admits only the experiment names of one kind (a top-level config section),
    so that rules of different kinds writing the same file names never compete for an output.
    """
    names = experiment_names(config, kind)
    return "|".join(re.escape(name) for name in names) if names else "(?!)"


def gpu_request(wildcards):
    """GPU rules ask for one GPU (so that --resources gpu=N bounds them) unless the device switch says cpu."""
    return 0 if config["device"] == "cpu" else 1


def memory_mb(base):
    """A rule's memory request, growing with each retry after a failure (profiles set `retries`)."""
    return lambda wildcards, attempt: base * attempt


def experiment(wildcards):
    return config["experiments"][wildcards.experiment]


def fraction_label(fraction):
    """How a training fraction appears in paths: frac1, frac0.25."""
    return f"{fraction:g}"


def runs(name):
    """(model, fraction label, seed) of every run of an experiment, in config order."""
    exp = config["experiments"][name]
    return [
        (model, fraction_label(fraction), seed)
        for model in exp["models"]
        for fraction in exp["train_fractions"]
        for seed in exp["seeds"]
    ]


def run_files(filename):
    """Input function: `filename` of every run of the wildcards' experiment."""

    def files(wildcards):
        return [
            f"results/{wildcards.experiment}/{model}/frac{fraction}/seed{seed}/{filename}"
            for model, fraction, seed in runs(wildcards.experiment)
        ]

    return files


def experiment_outputs(name):
    base = f"results/{name}"
    figures = [
        f"{base}/figures/{fig}.{ext}" for fig in FIGURES for ext in ("png", "pdf")
    ]
    return [
        f"{base}/summary.csv",
        f"{base}/summary.md",
        f"{base}/provenance.json",
    ] + figures


def final_outputs():
    outputs = [
        path for name in config["experiments"] for path in experiment_outputs(name)
    ]
    outputs += [
        path
        for name in config["lm_experiments"]
        for path in lm_experiment_outputs(name)
    ]
    for name in config["regression"]:
        base = f"results/{name}"
        outputs += [f"{base}/risk.csv", f"{base}/summary.md", f"{base}/provenance.json"]
        outputs += [f"{base}/figures/risk_vs_n.{ext}" for ext in ("png", "pdf")]
    return outputs


def lm_experiment(wildcards):
    return config["lm_experiments"][wildcards.experiment]


def lm_runs(name):
    """(model, seed, datastore fraction label) of every run of a language-model experiment, in config order."""
    exp = config["lm_experiments"][name]
    return [
        (model, seed, fraction_label(fraction))
        for model in exp["models"]
        for seed in exp["seeds"]
        for fraction in exp["datastore"]["fractions"]
    ]


def lm_run_files(filename):
    """Input function: `filename` of every run (model × seed × datastore fraction) of the wildcards' experiment."""

    def files(wildcards):
        return [
            f"results/{wildcards.experiment}/{model}/seed{seed}/store{fraction}/{filename}"
            for model, seed, fraction in lm_runs(wildcards.experiment)
        ]

    return files


def lm_model_files(filename):
    """Input function: `filename` of every run of the wildcards' experiment, at the model level (one per
    model × seed, repeated for each datastore fraction so that it lines up with lm_run_files).
    """

    def files(wildcards):
        return [
            f"results/{wildcards.experiment}/{model}/seed{seed}/{filename}"
            for model, seed, _ in lm_runs(wildcards.experiment)
        ]

    return files


def lm_experiment_outputs(name):
    base = f"results/{name}"
    figures = [
        f"{base}/figures/{fig}.{ext}" for fig in LM_FIGURES for ext in ("png", "pdf")
    ]
    return [
        f"{base}/summary.csv",
        f"{base}/summary.md",
        f"{base}/provenance.json",
    ] + figures
