"""The workflow end to end on config/smoke.yaml: artifacts, caching, and what a config change reruns."""

import json
import os

import faiss
import numpy as np
import pandas as pd
import pytest
import torch

from resmem.artifacts import NEIGHBOR_KEYS, SWEEP_COLUMNS
from resmem.core import METHODS
from resmem.device import AVX2_CPU_EMULATION, CPU_KERNELS, cpu_flags
from resmem.plan import planned_jobs
from resmem.sweep import select_methods
from resmem.vision.artifacts import EMBEDDING_KEYS, FIGURES, PREDICTION_KEYS, SPLIT_KEYS, SUMMARY_COLUMNS
from tests.conftest import REPO, exact_mcnemar, gpu_requests, snakemake, write_config

MODELS = ("cnn_w1", "cnn_w4")


def run_dir(smoke_run, model, fraction="1"):
    return smoke_run["results"] / model / f"frac{fraction}" / "seed0"


def test_split_is_disjoint_and_complete(smoke_run):
    with np.load(smoke_run["results"] / "split.npz") as split:
        parts = [split[k] for k in SPLIT_KEYS]
        assert int(split["train_pool"]) == int(split["test_pool"]) == 1797  # digits: one pool
    joined = np.concatenate(parts)
    assert len(joined) == 1797 and len(np.unique(joined)) == 1797


@pytest.mark.parametrize("model", MODELS)
def test_run_artifacts(smoke_run, model):
    run = run_dir(smoke_run, model)
    log = pd.read_csv(run / "train_log.csv")
    assert list(log.columns) == ["epoch", "loss", "train_acc", "val_acc", "seconds"]
    assert log.epoch.tolist() == [1, 2]
    assert not (run / "train_checkpoint.pt").exists()  # removed once training finished

    saved = torch.load(run / "model.pt", weights_only=False)
    assert saved["meta"]["model"]["arch"] == "small_cnn"

    with np.load(run / "embeddings.npz") as emb:
        assert sorted(emb.files) == sorted(EMBEDDING_KEYS)
        with np.load(smoke_run["results"] / "split.npz") as split:
            for s in ("train", "val", "test"):
                assert len(emb[f"{s}_emb"]) == len(emb[f"{s}_logits"]) == len(split[f"{s}_idx"]) > 0
                assert emb[f"{s}_emb"].dtype == np.float32 and emb[f"{s}_logits"].dtype == np.float32
                assert emb[f"{s}_y"].dtype == np.int64
        train_emb, val_emb, test_rows = emb["train_emb"], emb["val_emb"], len(emb["test_y"])

    index = faiss.read_index(str(run / "index.faiss"))
    assert index.ntotal == len(train_emb)

    with np.load(run / "neighbors.npz") as nb:
        assert sorted(nb.files) == sorted(NEIGHBOR_KEYS)
        assert nb["val_idx"].shape == (len(val_emb), 4)  # k_max of the smoke grid
        # Euclidean, not squared: the first distance equals the direct norm.
        direct = np.linalg.norm(val_emb[:20] - train_emb[nb["val_idx"][:20, 0]], axis=1)
        np.testing.assert_allclose(nb["val_dist"][:20, 0], direct, rtol=1e-4, atol=1e-5)

    report = json.loads((run / "search.json").read_text())
    assert report["index"] == "IndexFlatL2" and report["ntotal"] == len(train_emb) and report["k_max"] == 4
    assert report["recall_at_k_max"] == 1.0 and report["queries"] == len(val_emb) + test_rows

    sweep = pd.read_csv(run / "sweep.csv")
    assert list(sweep.columns) == list(SWEEP_COLUMNS)
    # (val, test) × (base row + ResMem's k × σ × T + kNN's k × σ + kNN-interp's k × σ × T × λ)
    assert len(sweep) == 2 * (1 + 3 * 2 * 1 + 3 * 2 + 3 * 2 * 1 * 5)
    assert sweep.groupby("method").size().to_dict() == {"base": 2, "resmem": 12, "knn": 12, "knn_interp": 60}
    assert set(sweep[sweep.k == 0].split) == {"val", "test"} and set(sweep[sweep.k == 0].method) == {"base"}
    assert sweep[sweep.method == "knn"][["temperature", "lam"]].isna().all().all()

    everything = json.loads((run / "selected.json").read_text())
    assert everything == select_methods(sweep) and set(everything) == set(METHODS)
    for method, chosen in everything.items():
        best_val = sweep[(sweep.split == "val") & (sweep.method == method)].accuracy.max()
        assert chosen["val_accuracy"] == pytest.approx(best_val)
        assert chosen["best_test_accuracy"] == sweep[(sweep.split == "test") & (sweep.method == method)].accuracy.max()
    chosen = everything["resmem"]

    # Each method's test predictions at its selected point count what the sweep counted there.
    with np.load(run / "predictions.npz") as predictions:
        assert sorted(predictions.files) == sorted(PREDICTION_KEYS) and len(predictions["labels"]) == test_rows
        for method in ("base", *METHODS):
            accuracy = (predictions[method] == predictions["labels"]).mean()
            assert accuracy == everything["resmem" if method == "base" else method][
                "base_test_accuracy" if method == "base" else "test_accuracy"]  # fmt: skip

    for rule in ("train", "embed", "index", "neighbors", "sweep"):
        assert (run / "benchmarks" / f"{rule}.tsv").exists()

    table = pd.read_csv(run / "confidence.csv")
    assert list(table.columns) == ["bin_lo", "bin_hi", "count", "base_correct", "resmem_correct"] and len(table) == 10
    assert table["count"].sum() == test_rows
    assert (table.base_correct <= table["count"]).all() and (table.resmem_correct <= table["count"]).all()
    test_acc = sweep[
        (sweep.split == "test")
        & (sweep.method == "resmem")
        & (sweep.k == chosen["k"])
        & np.isclose(sweep.sigma, chosen["sigma"])
        & np.isclose(sweep.temperature, chosen["temperature"])
    ].accuracy.iloc[0]
    assert table.resmem_correct.sum() / test_rows == pytest.approx(test_acc)  # agrees with the sweep
    assert table.base_correct.sum() / test_rows == pytest.approx(chosen["base_test_accuracy"])


def test_experiment_outputs(smoke_run):
    results = smoke_run["results"]
    summary = pd.read_csv(results / "summary.csv")
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert sorted(summary.model) == sorted(MODELS * 2)
    assert sorted(summary.train_fraction) == [0.5, 0.5, 1.0, 1.0]
    for _, row in summary.iterrows():
        run = run_dir(smoke_run, row.model, f"{row.train_fraction:g}")
        everything = json.loads((run / "selected.json").read_text())
        with np.load(run / "predictions.npz") as predictions:
            base_correct = predictions["base"] == predictions["labels"]
            for method in METHODS:
                assert row[f"{method}_test_acc"] == pytest.approx(everything[method]["test_accuracy"])
                assert row[f"{method}_gain"] == pytest.approx(row[f"{method}_test_acc"] - row.base_test_acc)
                assert row[f"{method}_gain_ci_low"] <= row[f"{method}_gain"] <= row[f"{method}_gain_ci_high"]
                assert row[f"{method}_best_test_acc"] >= row[f"{method}_test_acc"]
                right = predictions[method] == predictions["labels"]
                b, c = int((right & ~base_correct).sum()), int((base_correct & ~right).sum())
                assert row[f"{method}_mcnemar_p"] == pytest.approx(exact_mcnemar(b, c))
    params = summary.groupby("model").parameters.first()
    assert params["cnn_w1"] < params["cnn_w4"]
    examples = summary.groupby("train_fraction").train_examples.unique()
    assert examples[1.0][0] == 1078 and abs(examples[0.5][0] - 539) <= 10  # stratified half of the train split

    markdown = (results / "summary.md").read_text()
    assert "| cnn_w1 |" in markdown and "±" in markdown and "## Is the gain real?" in markdown
    assert "| cnn_w4 | 1 | kNN-interp |" in markdown and "with one seed, its run's own interval" in markdown
    latex = (results / "summary.tex").read_text()
    assert r"\begin{tabular}" in latex and r"cnn\_w4 & 438 & 0.5 &" in latex and r"\pm" in latex

    for figure in FIGURES:
        assert (results / "figures" / f"{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (results / "figures" / f"{figure}.pdf").read_bytes()[:5] == b"%PDF-"

    provenance = json.loads((results / "provenance.json").read_text())
    assert provenance["config"]["experiments"]["smoke"]["knn"]["k"] == [1, 2, 4]
    assert set(provenance["versions"]) >= {"torch", "torchvision", "faiss", "snakemake", "numpy"}
    assert all(provenance["versions"][p] for p in ("torch", "faiss", "snakemake", "numpy"))
    assert provenance["devices"] == ["cpu"]
    assert "git_commit" in provenance
    pinned = {name: os.environ.get(name, value) for name, value in CPU_KERNELS.items()}
    assert provenance["cpu_kernels"] == (pinned if {"avx2", "fma"} <= cpu_flags() else {})


def test_the_smoke_run_writes_the_bytes_of_an_avx2_only_cpu(smoke_run, tmp_path):
    """The smoke run's tables and arrays, made under the kernels a CPU run pins by default, equal those of the
    same run on this machine made to behave like an AVX2-only CPU (every library limited, glibc too): an AVX-512
    machine writes what an AVX2 one does. (On an AVX2 machine the two runs are the same run.)"""
    if not {"avx2", "fma"} <= cpu_flags():
        pytest.skip("a CPU without AVX2 pins nothing")
    snakemake(tmp_path, configfile=smoke_run["config"], env=AVX2_CPU_EMULATION)
    for folder in (smoke_run["workdir"] / "results", tmp_path / "results"):
        assert (folder / "smoke" / "summary.csv").exists()
    compared = [p.relative_to(smoke_run["workdir"]) for p in (smoke_run["workdir"] / "results").rglob("*")
                if p.suffix in (".csv", ".npz", ".md") and p.name != "train_log.csv"]  # fmt: skip
    names = {p.name for p in compared}
    assert {"summary.csv", "risk.csv", "sweep.csv", "embeddings.npz", "neighbors.npz", "rows.npz"} <= names
    differing = [str(p) for p in compared if (smoke_run["workdir"] / p).read_bytes() != (tmp_path / p).read_bytes()]
    assert differing == []


def test_rerun_is_a_no_op(smoke_run):
    proc = snakemake(smoke_run["workdir"], "-n", configfile=smoke_run["config"])
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_changing_only_sigma_reruns_only_sweep_and_after(smoke_run, tmp_path):
    config = write_config(tmp_path / "sigma.yaml", lambda c: c["experiments"]["smoke"]["knn"].update(sigma=[0.5]))
    proc = snakemake(smoke_run["workdir"], "-n", configfile=config)
    assert planned_jobs(proc.stdout) == {"sweep": 4, "select": 4, "predict": 4, "aggregate": 1, "all": 1}


def test_changing_the_largest_k_reruns_the_search_not_the_training(smoke_run, tmp_path):
    config = write_config(tmp_path / "k.yaml", lambda c: c["experiments"]["smoke"]["knn"].update(k=[1, 8]))
    proc = snakemake(smoke_run["workdir"], "-n", configfile=config)
    planned = {"neighbors": 4, "sweep": 4, "select": 4, "predict": 4, "aggregate": 1, "all": 1}
    assert planned_jobs(proc.stdout) == planned


def test_a_truncated_artifact_fails_naming_the_file(smoke_run, tmp_path):
    import shutil

    workdir = tmp_path / "copy"
    shutil.copytree(smoke_run["workdir"], workdir)
    embeddings = workdir / "results" / "smoke" / "cnn_w1" / "frac1" / "seed0" / "embeddings.npz"
    embeddings.write_bytes(embeddings.read_bytes()[:200])
    target = "results/smoke/cnn_w1/frac1/seed0/index.faiss"
    proc = snakemake(workdir, target, "--forcerun", "index", configfile=smoke_run["config"], check=False)
    assert proc.returncode != 0
    assert "embeddings.npz: cannot be read" in proc.stdout + proc.stderr


def test_imagefolder_study_end_to_end(tmp_path):
    """A generated ImageFolder dataset through the whole workflow, with the training-fraction study."""
    from tests.test_data import make_image_folders

    make_image_folders(tmp_path / "images", per_class=(10, 4))
    config = {
        "device": "cpu",
        "experiments": {
            "folders": {
                "dataset": {"name": "imagefolder", "root": str(tmp_path / "images"), "image_size": 8},
                "models": {
                    "cnn": {"arch": "small_cnn", "width": 2},
                    "resnet8": {"arch": "cifar_resnet", "depth": 8, "width_multiplier": 0.25},
                },
                "train_fractions": [0.5, 1.0],
                "train": {"epochs": 2, "batch_size": 8, "num_workers": 0},
                "embed": {"batch_size": 16},
                "knn": {"k": [1, 2, 4], "sigma": [1.0], "temperature": [1.0]},
            }
        },
    }
    path = tmp_path / "folders.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    snakemake(tmp_path, configfile=path)
    results = tmp_path / "results" / "folders"
    summary = pd.read_csv(results / "summary.csv")
    assert sorted(zip(summary.model, summary.train_fraction, strict=True)) == [
        ("cnn", 0.5),
        ("cnn", 1.0),
        ("resnet8", 0.5),
        ("resnet8", 1.0),
    ]
    # val carves 20 % of the 30 training images, stratified: 24 remain, 12 at half
    assert sorted(summary.train_examples.unique()) == [12, 24]
    with np.load(results / "resnet8" / "frac0.5" / "seed0" / "embeddings.npz") as emb:
        assert emb["train_emb"].shape == (12, 16) and emb["test_emb"].shape == (12, 16)  # 64 × 0.25 channels
    for figure in FIGURES:
        assert (results / "figures" / f"{figure}.png").stat().st_size > 10_000


@pytest.mark.parametrize("name", ["cifar100", "imagenet"])
def test_paper_configs_dry_run_offline(name, tmp_path):
    """Every job of a paper config is planned without data, network or GPU, and README says how many."""
    import re

    import yaml

    config = yaml.safe_load((REPO / "config" / "paper" / f"{name}.yaml").read_text())
    experiment = config["experiments"][name]
    runs = len(experiment["models"]) * len(experiment["train_fractions"]) * len(experiment["seeds"])
    proc = snakemake(tmp_path, "-n", configfile=REPO / "config" / "paper" / f"{name}.yaml")
    per_run = {rule: runs for rule in ("train", "embed", "index", "neighbors", "sweep", "select", "predict")}
    planned = planned_jobs(proc.stdout)
    assert planned == {"split": 1, **per_run, "aggregate": 1, "all": 1}
    readme = (REPO / "README.md").read_text()
    assert re.search(rf"\| `config/paper/{name}.yaml` \| {sum(planned.values())} \|", readme)


def test_report_holds_every_figure_with_its_caption(smoke_run):
    proc = snakemake(smoke_run["workdir"], "--report", "results/report.html", configfile=smoke_run["config"])
    assert "Report created" in proc.stdout + proc.stderr
    html = (smoke_run["workdir"] / "results" / "report.html").read_text()
    for figure in FIGURES:
        assert f"{figure}.png" in html
    assert "summary.csv" in html
    # Captions are rendered with the run's own experiment, models and seeds, and state the selection rule.
    assert "cnn_w1, cnn_w4" in html and "training fractions 0.5, 1.0" in html
    assert "the best validation accuracy" in html


def test_gpu_rules_request_a_gpu_unless_the_device_switch_says_cpu(smoke_run):
    def requests(*extra):
        proc = snakemake(smoke_run["workdir"], "-n", "--forcerun", "train", *extra, configfile=smoke_run["config"])
        return gpu_requests(proc.stdout)

    auto = requests()
    assert auto["train"] == auto["embed"] == auto["index"] == auto["neighbors"] == auto["sweep"] == {True}
    assert auto["select"] == auto["aggregate"] == {False}
    on_cpu = requests("--config", "device=cpu")
    assert on_cpu["train"] == on_cpu["sweep"] == {False}
