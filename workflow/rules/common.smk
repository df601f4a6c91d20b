import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from snakemake.exceptions import WorkflowError

# The workflow always uses the resmem package of its own checkout: here through sys.path, and in jobs
# (any environment: conda, cluster) through the link workflow/scripts/resmem, since Snakemake puts a
# script's folder on its sys.path.
REPO = Path(workflow.basedir)
sys.path.insert(0, str(REPO))

from resmem import bounds, timing
from resmem.artifacts import RESULTS
from resmem.config import (
    ConfigError,
    check_input_paths,
    experiment_names,
    validate as validate_config,
)
from resmem.device import pin_cpu_kernels, visible_gpus
from resmem.lm import hf
from resmem.lm import sizes as lm_sizes
from resmem.lm.artifacts import LM_FIGURES, LM_METHODS
from resmem.vision import pretrained
from resmem.vision.external import check_config_files as check_embedding_files
from resmem.vision.artifacts import FIGURES
from resmem.vision import sizes as vision_sizes

try:
    # against the schema shipped in the package: resmem/config.schema.yaml
    validate_config(config)
    # a CPU run's kernels pinned to AVX2's, inherited by every job: the same bytes on any x86-64 CPU with AVX2
    pin_cpu_kernels(config["device"], config["cpu_kernels"])
    pretrained.check_timm_names(config)
    if workflow.is_main_process:
        # the user's embeddings, array by array; pretrained weights and Hugging Face models, fetched here once
        # (jobs never need network) and checked against the config
        check_embedding_files(config)
        # (workflow.dryrun is still False while the Snakefile is read; the -n flag is in output_settings)
        if not workflow.output_settings.dryrun:
            check_input_paths(config)
            pretrained.fetch_missing(config)
            hf.fetch_missing(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None


# Where every result lives: one folder per experiment, below it one per run.
EXPERIMENT = f"{RESULTS}/{{experiment}}"
VISION_RUN = f"{EXPERIMENT}/{{model}}/frac{{train_fraction}}/seed{{seed}}"  # model × training fraction × seed
LM_RUN = f"{EXPERIMENT}/{{model}}/seed{{seed}}"  # model × seed: the model and its token datastore
LM_STORE = f"{LM_RUN}/store{{store_fraction}}"  # a datastore fraction's search
LM_CORPUS = f"{EXPERIMENT}/corpus/{{tokenizer}}"  # .npz/.json: the corpus tokenized by one tokenizer
DECODED_IMAGES = f"{EXPERIMENT}/images.npz"  # a folder dataset decoded into memory


def no_files(wildcards):
    return {}


def datastore_checks(wildcards):
    """Input of an image index: the split and the exact training rows that its embeddings must match (none for
    embeddings computed elsewhere)."""
    if "embeddings" in config["experiments"][wildcards.experiment]:
        return {}
    run = {
        key: wildcards[key] for key in ("experiment", "model", "train_fraction", "seed")
    }
    return {
        "split": f"{EXPERIMENT}/split.npz".format(**run),
        "train_rows": f"{VISION_RUN}/train_rows.npz".format(**run),
    }


@dataclass(frozen=True)
class Kind:
    """How one kind of experiment runs through the rules both kinds share (workflow/rules/shared.smk): index →
    neighbors → sweep → select → aggregate, each rule calling the kind's stage module of the same name.
    """

    section: str  # its config section
    prefix: str  # of its shared rules' names
    run: str  # the folder where a run's shared stages write
    datastore: str  # the file with the datastore keys and the val/test queries
    stages: str  # the module whose functions the shared scripts call
    grid: tuple  # the knn keys the sweep runs over
    figures: list
    summary_caption: str
    # (experiment name, run wildcards, the run's datastore file) -> resmem.bounds.RunSizes
    sizes: Callable
    # input function: the files the index checks the datastore against
    index_checks: Callable = no_files
    # each run's files that the aggregate reads besides its sweep and selection
    run_files: dict = field(default_factory=dict)
    # the experiment's files that the aggregate reads
    experiment_files: dict = field(default_factory=dict)
    # what the aggregate writes besides summary.csv, summary.md, the provenance and the figures
    tables: dict = field(default_factory=dict)


def vision_run_sizes(name, run, datastore):
    return vision_sizes.run_sizes(config["experiments"][name], run, datastore)


def lm_run_sizes(name, run, datastore):
    corpus = f"{lm_corpus_file(name, run)}.npz"
    return lm_sizes.run_sizes(config["lm_experiments"][name], run, datastore, corpus)


KINDS = [
    Kind(
        section="experiments",
        prefix="",
        run=VISION_RUN,
        datastore=f"{VISION_RUN}/embeddings.npz",
        stages="resmem.vision.stages",
        grid=("k", "sigma", "temperature", "lam"),  # lam: the knn_interp baseline's
        figures=FIGURES,
        summary_caption="../report/summary.rst",
        sizes=vision_run_sizes,
        index_checks=datastore_checks,
        run_files={
            "meta": f"{VISION_RUN}/train_meta.json",
            "predictions": f"{VISION_RUN}/predictions.npz",
            "confidence": f"{VISION_RUN}/confidence.csv",
        },
        tables={"summary_tex": f"{EXPERIMENT}/summary.tex"},
    ),
    Kind(
        section="lm_experiments",
        prefix="lm_",
        run=LM_STORE,
        datastore=f"{LM_RUN}/datastore.npz",
        stages="resmem.lm.stages",
        # kNN-LM's interpolation weight lam, its kernel and that kernel's temperatures tau; ResMem's own k
        grid=(
            "k",
            "sigma",
            "temperature",
            "lam",
            "knnlm_kernel",
            "tau",
            "resmem_k",
            "methods",
        ),
        figures=LM_FIGURES,
        summary_caption="../report/lm_summary.rst",
        sizes=lm_run_sizes,
        run_files={
            "meta": f"{LM_RUN}/train_meta.json",
            "predictions": f"{LM_STORE}/predictions.npz",
            "search": f"{LM_STORE}/search.json",
            "datastore_report": f"{LM_RUN}/datastore.json",
            "corpus_meta": f"{LM_CORPUS}.json",
        },
    ),
]

IMAGES, LANGUAGE_MODELS = KINDS


wildcard_constraints:
    experiment=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    train_fraction=r"[0-9.e-]+",
    store_fraction=r"[0-9.e-]+",
    seed=r"\d+",
    epoch=r"\d+",
    tokenizer=r"[A-Za-z0-9_.-]+",


def names_regex(kind, imported=None):
    """A wildcard constraint that admits only the experiment names of one kind (a top-level config section),
    so that rules of different kinds writing the same file names never compete for an output; `imported`
    True/False admits only the image experiments with/without embeddings computed elsewhere.
    """
    names = [
        name
        for name in experiment_names(config, kind)
        if imported is None or imported == ("embeddings" in config[kind][name])
    ]
    return "|".join(re.escape(name) for name in names) if names else "(?!)"


def section(kind, name):
    """Params: a whole config section of the wildcards' experiment (`experiments`, `lm_experiments`)."""
    return lookup(dpath=f"{kind}/{{experiment}}/{name}", within=config)


# Keys added after results existed: passed to a job only when set otherwise, so that those results stay up to date.
PASSED_UNLESS = {"methods": list(LM_METHODS)}


def settings(kind, name, *keys):
    """Params: only `keys` of a config section, so that a job reruns only when they change; `k_max` stands for
    the largest k of the knn section (one search at it serves the whole grid)."""

    def values(wildcards):
        part = config[kind][wildcards.experiment][name]
        return {
            key: max(part["k"]) if key == "k_max" else part[key]
            for key in keys
            if key not in PASSED_UNLESS or part[key] != PASSED_UNLESS[key]
        }

    return values


def lm_datastore_settings(wildcards):
    """Params of lm_datastore: its section's settings, and train_hidden false where the final hidden states are
    not the keys and knn.methods runs no ResMem (kNN-LM needs none of the training positions').
    """
    experiment = config["lm_experiments"][wildcards.experiment]
    store = settings(
        "lm_experiments", "datastore", "key", "stride", "max_tokens", "batch_size"
    )(wildcards)
    if store["key"] != "final_hidden" and "resmem" not in experiment["knn"]["methods"]:
        store["train_hidden"] = False
    return store


# Whether the jobs run on this machine: not submitted to a cluster (an executor such as slurm, whose --jobs sets
# the nodes; the executor itself is not known yet while the Snakefile is read), and not the one job a cluster
# allocation was made for (remote_exec).
RUNS_HERE = workflow.resource_settings.nodes is None and not workflow.remote_exec
# A run here starts at most one GPU job per visible GPU (each takes its own with resmem.device.claim_gpu), so none
# waits on a lock; --resources gpu=N sets another bound.
LOCAL_GPUS = visible_gpus() if RUNS_HERE else []
if RUNS_HERE and not workflow.output_settings.dryrun:
    if config["device"] == "cuda" and not LOCAL_GPUS:
        raise WorkflowError(
            "config device: cuda, but no GPU is visible here (CUDA_VISIBLE_DEVICES, nvidia-smi): "
            "run on a GPU machine, submit with --profile profiles/slurm, or set device: auto or cpu"
        )
    if "gpu" not in workflow.global_resources:
        workflow.register_resource("gpu", len(LOCAL_GPUS))


def gpu_request(wildcards):
    """GPU rules ask for one GPU (so that the gpu resource bounds them) unless the device switch says cpu, or says
    auto where a local run sees no GPU (on a cluster, auto asks for one)."""
    if config["device"] == "cpu" or (
        config["device"] == "auto" and RUNS_HERE and not LOCAL_GPUS
    ):
        return 0
    return 1


SIZES = {
    "experiments": vision_sizes,
    "lm_experiments": lm_sizes,
}  # each kind's sizes and time model
# Where SLURM jobs go (the executor plugin's slurm_partition and slurm_account), from the environment: jobs that
# take a GPU to RESMEM_SLURM_GPU_PARTITION, the others to RESMEM_SLURM_PARTITION, all under RESMEM_SLURM_ACCOUNT.
# Unset, the plugin's own choice stands (--default-resources, or the cluster's default partition).
SLURM_ENV = {
    "slurm_account": "RESMEM_SLURM_ACCOUNT",
    "cpu": "RESMEM_SLURM_PARTITION",
    "gpu": "RESMEM_SLURM_GPU_PARTITION",
}


def estimated_seconds(section, step, wildcards, gpu_rule):
    """A job's estimated seconds (resmem.timing through the kind's job_seconds), on the GPU class of
    config requests.gpu where the job takes a GPU."""
    gpu = config["requests"]["gpu"] if gpu_rule and gpu_request(wildcards) else None
    experiment = config[section][wildcards.experiment]
    return sum(
        SIZES[section].job_seconds(step, experiment, dict(wildcards), gpu).values()
    )


def train_epochs(section, wildcards):
    """The epochs a run's training makes (a Hugging Face model's own epochs)."""
    experiment = config[section][wildcards.experiment]
    spec = experiment.get("models", {}).get(wildcards.model, {})
    return spec.get("epochs", experiment["train"]["epochs"])


def job_requests(section, step, gpu_rule, wildcards):
    """The job's runtime request and segments (resmem.timing.requests_for): training splits into whole epochs."""
    seconds = estimated_seconds(section, step, wildcards, gpu_rule)
    splittable = (
        train_epochs(section, wildcards) if step in ("train", "lm_train") else 1
    )
    return timing.requests_for(seconds, config["requests"]["max_hours"], splittable)


def job_resources(section, step, gpu=False, partition=None):
    """Resources every submitted step declares: its runtime in minutes from the time model (a training segment's
    for segmented training), gpu for GPU rules, and the SLURM partition and account of SLURM_ENV; `partition`
    "gpu" also sends a CPU step of a GPU group job (run_search) where its group goes."""

    def runtime(wildcards):
        return job_requests(section, step, gpu, wildcards).runtime_minutes

    resources = {"runtime": runtime}
    if gpu:
        resources["gpu"] = gpu_request
    if os.environ.get(SLURM_ENV["slurm_account"]):
        resources["slurm_account"] = os.environ[SLURM_ENV["slurm_account"]]
    cpu_partition = os.environ.get(SLURM_ENV["cpu"])
    gpu_partition = os.environ.get(SLURM_ENV["gpu"]) or cpu_partition
    if gpu_partition:
        takes_gpu = gpu or partition == "gpu"
        resources["slurm_partition"] = (
            lambda wildcards: (
                gpu_partition if takes_gpu and gpu_request(wildcards) else cpu_partition
            )
            or ""
        )
    return resources


def training_segments(section, wildcards):
    """The epochs after which a run's training segments end, the last one its final epoch: one segment unless
    its runtime request exceeds config requests.max_hours (resmem.timing.training_segment_ends).
    """
    step = "train" if section == "experiments" else "lm_train"
    seconds = estimated_seconds(section, step, wildcards, True)
    max_hours = config["requests"]["max_hours"]
    return timing.training_segment_ends(
        seconds, max_hours, train_epochs(section, wildcards)
    )


def previous_segment(section, run):
    """Input of a training job: the checkpoint the run's previous segment ended with, if it has one (a segment's
    own stop epoch is its wildcard `epoch`; the final job's is the last epoch)."""

    def files(wildcards):
        ends = training_segments(section, wildcards)
        stop = int(wildcards.get("epoch", ends[-1]))
        earlier = [end for end in ends if end < stop]
        if not earlier:
            return {}
        return {"resume": segment_file(run, earlier[-1]).format(**dict(wildcards))}

    return files


def segment_file(run, epoch="{epoch}"):
    """The checkpoint a training segment ends with."""
    return f"{run}/train_segments/epoch{epoch}.pt"


def stop_epoch(wildcards):
    """Params of a training segment: the epoch it trains up to."""
    return int(wildcards.epoch)


def store_fraction(wildcards):
    """Params: the datastore fraction a run indexes (the language models' datastore-size study; all of it for
    images)."""
    return float(wildcards.get("store_fraction", 1))


def decoded_images(wildcards):
    """Input of train and embed: the decoded images of a folder dataset that dataset.cache may keep in memory
    (none for in-memory datasets, cache none, or explicit random-resized-crop training).
    """
    experiment = config["experiments"][wildcards.experiment]
    dataset, augment = experiment["dataset"], experiment["train"]["augment"]
    folder = dataset["name"] in ("imagefolder", "imagenet")
    if not folder or dataset["cache"] == "none" or augment == "resized_crop_flip":
        return {}
    return {"images": DECODED_IMAGES.format(experiment=wildcards.experiment)}


def decode_threads(wildcards):
    """decode's processes, from the size of the folder (resmem.vision.sizes.decode_processes)."""
    return vision_sizes.decode_processes(
        config["experiments"][wildcards.experiment]["dataset"]
    )


def image_loader_threads(wildcards):
    """train's and embed's threads, their jobs' cpus_per_task (resmem.vision.sizes.train_threads)."""
    return vision_sizes.train_threads(config["experiments"][wildcards.experiment])


def memory_mb(base):
    """A rule's memory request, growing with each retry after a failure (profiles set `retries`)."""
    return lambda wildcards, attempt: base * attempt


def stage_memory_mb(kind, stage, datastore="datastore"):
    """A shared stage's memory request: its bound (resmem.bounds) at the run's sizes, read from its `datastore`
    input when the job runs (Snakemake evaluates requests again then) and estimated from the config when
    planning, growing with each retry after a failure."""

    def mb(wildcards, input, attempt):
        sizes = kind.sizes(wildcards.experiment, dict(wildcards), input.get(datastore))
        knn = config[kind.section][wildcards.experiment]["knn"]
        return bounds.stage_request_mb(stage, sizes, knn, attempt)

    return mb


def stage_disk_mb(kind, stage):
    """A shared stage's disk request: what it writes (resmem.bounds) at the run's sizes."""

    def mb(wildcards, input):
        sizes = kind.sizes(
            wildcards.experiment, dict(wildcards), input.get("datastore")
        )
        knn = config[kind.section][wildcards.experiment]["knn"]
        return bounds.disk_mb(bounds.stage_disk_bytes(stage, sizes, knn))

    return mb


def image_model_memory_mb(stage):
    """train's or embed's memory request: the model, its batch and the images it holds (resmem.vision.sizes; with
    device: cuda the network's training state and activations are in GPU memory), a folder dataset's decoded
    images where they are read from memory (the decoded file once it exists, else its planned size), growing
    with each retry."""

    def mb(wildcards, input, attempt):
        experiment = config["experiments"][wildcards.experiment]
        decoded = input.get("images")
        held = 0
        if decoded:
            held = (
                Path(decoded).stat().st_size
                if Path(decoded).exists()
                else vision_sizes.decoded_bytes(experiment["dataset"])
            )
        on_gpu = config["device"] == "cuda"
        peak = vision_sizes.model_memory_bytes(
            experiment, wildcards.model, stage, held, on_gpu
        )
        return bounds.request_mb(peak, "torch", attempt)

    return mb


def embeddings_disk_mb(wildcards):
    """embed's and embeddings_file's disk request: the embeddings file it streams."""
    sizes = vision_run_sizes(wildcards.experiment, dict(wildcards), None)
    return bounds.disk_mb(vision_sizes.embeddings_disk_bytes(sizes))


def lm_datastore_disk_mb(wildcards):
    """lm_datastore's disk request: the datastore it streams, at the corpus's size once it is tokenized."""
    sizes = lm_run_sizes(wildcards.experiment, {**wildcards, "store_fraction": 1}, None)
    store = lm_datastore_settings(wildcards)
    need = lm_sizes.datastore_disk_bytes(
        sizes, store["key"], store.get("train_hidden", True)
    )
    return bounds.disk_mb(need)


def lm_corpus_memory_mb(wildcards, attempt):
    """lm_corpus's memory request: one tokenize batch and the longest document (resmem.lm.sizes)."""
    experiment = config["lm_experiments"][wildcards.experiment]
    base = (
        "torch" if experiment["corpus"]["tokenizer"] == "model" else "numpy"
    )  # transformers loads torch
    return bounds.request_mb(lm_sizes.corpus_memory_bytes(experiment), base, attempt)


def lm_model_memory_mb(stage):
    """lm_train's or lm_datastore's memory request: its model and one batch of windows (resmem.lm.sizes; with
    device: cuda the training state and activations are in GPU memory)."""

    def mb(wildcards, attempt):
        experiment = config["lm_experiments"][wildcards.experiment]
        spec = experiment["models"][wildcards.model]
        training = stage == "train" and ("hf" not in spec or spec["epochs"] > 0)
        batch = experiment[stage]["batch_size"]
        on_gpu = config["device"] == "cuda"
        peak = lm_sizes.model_memory_bytes(
            experiment, wildcards.model, batch, training, on_gpu
        )
        return bounds.request_mb(peak, "torch", attempt)

    return mb


def fraction_label(fraction):
    """How a training or datastore fraction appears in paths: frac1, frac0.25, store0.5."""
    return f"{fraction:g}"


def runs(kind, name):
    """The wildcards of every run of an experiment, in config order: model, train_fraction, seed for images;
    model, seed, store_fraction for language models."""
    exp = config[kind][name]
    if kind == "experiments":
        return [
            {"model": m, "train_fraction": fraction_label(f), "seed": s}
            for m in exp.get("models") or exp["embeddings"]
            for f in exp["train_fractions"]
            for s in exp["seeds"]
        ]
    return [
        {
            "model": m,
            "seed": s,
            "store_fraction": fraction_label(f),
            "tokenizer": corpus_tokenizer(exp, m),
        }
        for m in exp["models"]
        for s in exp["seeds"]
        for f in exp["datastore"]["fractions"]
    ]


def corpus_tokenizer(experiment, model):
    """The tokenizer a language model reads, as named in its corpus's path: bytes, bpe, or for
    `corpus.tokenizer: model` its Hugging Face tokenizer's source (models that share it share the corpus).
    """
    tokenizer = experiment["corpus"]["tokenizer"]
    if tokenizer != "model":
        return tokenizer
    return hf.source_label(hf.tokenizer_source(experiment["models"][model]))


def lm_corpus_file(name, run):
    """The corpus a run of the language-model experiment `name` reads (path without its .npz/.json suffix)."""
    experiment = config["lm_experiments"][name]
    return LM_CORPUS.format(
        experiment=name, tokenizer=corpus_tokenizer(experiment, run["model"])
    )


def model_corpus(wildcards):
    """Input of lm_train and lm_datastore: the corpus tokenized for the wildcards' model."""
    path = lm_corpus_file(wildcards.experiment, wildcards)
    return {"corpus": f"{path}.npz", "corpus_meta": f"{path}.json"}


def tokenizer_source(wildcards):
    """Params of lm_corpus: the Hugging Face source of the wildcards' tokenizer (None for bytes and bpe)."""
    experiment = config["lm_experiments"][wildcards.experiment]
    for model, spec in experiment["models"].items():
        if corpus_tokenizer(experiment, model) == wildcards.tokenizer and "hf" in spec:
            return hf.tokenizer_source(spec)
    return None


def run_files(kind, pattern):
    """Input function: `pattern` (a path with run wildcards) for every run of the wildcards' experiment."""

    def files(wildcards):
        return [
            pattern.format(experiment=wildcards.experiment, **run)
            for run in runs(kind, wildcards.experiment)
        ]

    return files


def experiment_runs(kind):
    """Params: the runs of the wildcards' experiment, lined up with run_files."""
    return lambda wildcards: runs(kind, wildcards.experiment)


def figure_outputs(figures):
    """Outputs `<figure>_png` (in the report, captioned by workflow/report/<figure>.rst) and `<figure>_pdf`."""
    outputs = {}
    for fig in figures:
        outputs[f"{fig}_png"] = report(
            f"{EXPERIMENT}/figures/{fig}.png",
            caption=f"../report/{fig}.rst",
            category="{experiment}",
            subcategory="figures",
            labels={"figure": fig},
        )
        outputs[f"{fig}_pdf"] = f"{EXPERIMENT}/figures/{fig}.pdf"
    return outputs


def summary_table(caption):
    return report(
        f"{EXPERIMENT}/summary.csv",
        caption=caption,
        category="{experiment}",
        subcategory="tables",
        labels={"table": "summary (per run)"},
    )


def final_outputs():
    outputs = []
    for kind, figures in (
        ("experiments", FIGURES),
        ("lm_experiments", LM_FIGURES),
        ("regression", ["risk_vs_n"]),
    ):
        for name in config[kind]:
            base = EXPERIMENT.format(experiment=name)
            outputs += [f"{base}/summary.md", f"{base}/provenance.json"]
            outputs += [
                f"{base}/figures/{fig}.{ext}"
                for fig in figures
                for ext in ("png", "pdf")
            ]
            outputs.append(
                f"{base}/risk.csv" if kind == "regression" else f"{base}/summary.csv"
            )
    return outputs


def check_largest_k():
    """Every run's sizes once before any job is planned: a k above a run's datastore rows is named here (a
    ConfigError from RunSizes) instead of surfacing from a memory request of petabytes.
    """
    for kind, sizes_of in (
        ("experiments", vision_run_sizes),
        ("lm_experiments", lm_run_sizes),
    ):
        for name in config.get(kind) or {}:
            seen = set()
            for run in runs(kind, name):
                key = tuple(v for k, v in run.items() if k != "seed")
                if key not in seen:
                    seen.add(key)
                    sizes_of(name, run, None)


try:
    if workflow.is_main_process:
        check_largest_k()
except ConfigError as error:
    raise WorkflowError(str(error)) from None
