"""The workflow end to end on config/smoke.yaml: artifacts, caching, and what a config change reruns."""

import json
import os
import re

import faiss
import numpy as np
import pandas as pd
import pytest
import torch

from resmem.artifacts import NEIGHBOR_KEYS, SWEEP_COLUMNS
from resmem.core import METHODS
from resmem.device import CPU_KERNELS, cpu_flags
from resmem.plan import planned_jobs
from resmem.sweep import select_methods
from resmem.vision.artifacts import EMBEDDING_KEYS, FIGURES, PREDICTION_KEYS, SPLIT_KEYS, SUMMARY_COLUMNS
from tests.conftest import (
    REPO,
    confidence_bins_by_hand,
    holm_by_hand,
    paired_p_by_hand,
    seeds_and_examples_by_hand,
    selected_by_hand,
    snakemake,
    two_seed_statistics,
    write_config,
)

MODELS = ("cnn_w1", "cnn_w4")
GRIDS = {
    "resmem": ("k", "sigma", "temperature"),
    "knn": ("k", "sigma"),
    "knn_interp": ("k", "sigma", "temperature", "lam"),
}


@pytest.mark.parametrize("recorded", [False, True], ids=["edited", "edited and re-recorded"])
def test_edited_predictions_are_refused_by_the_aggregate(smoke_run, tmp_path, monkeypatch, recorded):
    """predictions.npz rewritten so that ResMem is always right (a +78-point gain over a base model whose sweep
    says otherwise, in the issue's case): its custody record names the edit; and where the record was rewritten
    too (a predict stage that miscounts), the aggregate compares its counts with the sweep's at the selected point
    and names both files instead of writing that table."""
    import shutil

    from resmem import custody

    workdir = tmp_path / "copy"
    shutil.copytree(smoke_run["workdir"], workdir)
    run = workdir / "results" / "smoke" / "cnn_w1" / "frac1" / "seed0"
    with np.load(run / "predictions.npz") as predictions:
        arrays = dict(predictions)
    np.savez(run / "predictions.npz", **{**arrays, "resmem": arrays["labels"]})
    message = (r"results/smoke/cnn_w1/frac1/seed0/predictions.npz is not the file its rule wrote \(.+ where rule "
               r"predict wrote .+\): it was edited or replaced since; rewrite it and what was computed from it: "
               r"snakemake --forcerun results/smoke/cnn_w1/frac1/seed0/predictions.npz")  # fmt: skip
    if recorded:
        monkeypatch.chdir(workdir)
        name = "results/smoke/cnn_w1/frac1/seed0/predictions.npz"
        custody.write_record(name, "predict", json.loads(custody.record_path(name).read_text())["inputs"])
        message = (r"predictions.npz and .*selected.json disagree: resmem's test accuracy is 1.000000 in the "
                   r"predictions but 0\.\d+ in the sweep at its selected point")  # fmt: skip
    proc = snakemake(workdir, "results/smoke/summary.csv", "--forcerun", "aggregate", configfile=smoke_run["config"],
                     check=False)  # fmt: skip
    assert proc.returncode != 0
    assert re.search(message, proc.stdout + proc.stderr), proc.stderr[-3000:]


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
        assert sorted(nb.files) == sorted([*NEIGHBOR_KEYS, "normalize"]) and not nb["normalize"]
        assert nb["val_idx"].shape == (len(val_emb), 4)  # k_max of the smoke grid
        # Euclidean, not squared: the first distance equals the direct norm (here in float64). faiss forms
        # d² = |x|² + |y|² − 2·x·y in float32, sums of D terms that cancel where neighbours are close: within
        # (D + 4)·u·(|x| + |y|)² of the exact d² (u = 2⁻²⁴; its square root's rounding included), in whatever
        # order the CPU's kernels sum.
        x, y = val_emb[:20].astype(np.float64), train_emb[nb["val_idx"][:20, 0]].astype(np.float64)
        direct = np.linalg.norm(x - y, axis=1)
        bound = (x.shape[1] + 4) * 2.0**-24 * (np.linalg.norm(x, axis=1) + np.linalg.norm(y, axis=1)) ** 2
        assert (np.abs(nb["val_dist"][:20, 0].astype(np.float64) ** 2 - direct**2) <= bound).all()

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
    # The selection rule, written out independently of resmem on the sweep's rows.
    for method, parameters in GRIDS.items():
        assert everything[method] == selected_by_hand(sweep, method, parameters), method
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
    # Each bin recomputed from the base model's test logits and ResMem's test predictions.
    np.testing.assert_allclose(table.bin_lo, np.arange(10) / 10, atol=1e-12)
    np.testing.assert_allclose(table.bin_hi, np.arange(1, 11) / 10, atol=1e-12)
    with np.load(run / "embeddings.npz") as emb, np.load(run / "predictions.npz") as predictions:
        assert np.array_equal(predictions["labels"], emb["test_y"])
        assert np.array_equal(predictions["base"], emb["test_logits"].argmax(axis=1))
        by_hand = confidence_bins_by_hand(emb["test_logits"], emb["test_y"], predictions["resmem"])
    assert {column: table[column].tolist() for column in by_hand} == by_hand  # (test_confidence_bins_… below)


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
                assert row[f"{method}_p_value"] == pytest.approx(paired_p_by_hand(b, c), rel=1e-9)
                p, low, high = row[f"{method}_p_value"], row[f"{method}_gain_ci_low"], row[f"{method}_gain_ci_high"]
                assert (low > 0 or high < 0) == (p < 0.05), row  # the interval and the p-value agree
    params = summary.groupby("model").parameters.first()
    assert params["cnn_w1"] < params["cnn_w4"]
    examples = summary.groupby("train_fraction").train_examples.unique()
    assert examples[1.0][0] == 1078 and abs(examples[0.5][0] - 539) <= 10  # stratified half of the train split

    markdown = (results / "summary.md").read_text()
    assert "| cnn_w1 |" in markdown and "±" in markdown and "## Is the gain real?" in markdown
    assert "| cnn_w4 | 1 | kNN-interp |" in markdown
    assert "with one seed, its run's own Holm-adjusted test is below 0.05" in markdown
    latex = (results / "summary.tex").read_text()
    assert r"\begin{tabular}" in latex and r"cnn\_w4 & 438 & 0.5 &" in latex and r"\pm" in latex

    for figure in FIGURES:
        assert (results / "figures" / f"{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (results / "figures" / f"{figure}.pdf").read_bytes()[:5] == b"%PDF-"

    provenance = json.loads((results / "provenance.json").read_text())
    assert provenance["config"]["experiments"]["smoke"]["knn"]["k"] == [1, 2, 4]
    assert set(provenance["versions"]) >= {"torch", "torchvision", "faiss", "snakemake", "numpy"}
    assert all(provenance["versions"][p] for p in ("torch", "faiss", "snakemake", "numpy"))
    assert provenance["devices"] == ["cpu"]  # the session's run pins device: cpu (conftest.smoke_run)
    assert "git_commit" in provenance
    pinned = {name: os.environ.get(name, value) for name, value in CPU_KERNELS.items()}
    assert provenance["cpu_kernels"] == (pinned if {"avx2", "fma"} <= cpu_flags() else {})


def test_confidence_bins_equal_those_computed_by_hand(folder_run):
    """Every run of the folder run: confidence.csv's count and the base model's and ResMem's correct test examples
    per bin of the base model's confidence, recomputed from the run's test logits and ResMem's test predictions.
    (The smoke run's networks, two epochs on 8-px digits, put every test example into one bin; these spread.)"""
    tables = sorted((folder_run["workdir"] / "results").glob("*/*/frac*/seed*/confidence.csv"))
    assert len(tables) == sum(len(summary) for summary in folder_run["summaries"].values())
    filled = []
    for path in tables:
        table = pd.read_csv(path)
        with np.load(path.parent / "embeddings.npz") as emb, np.load(path.parent / "predictions.npz") as predictions:
            assert np.array_equal(predictions["labels"], emb["test_y"])
            assert np.array_equal(predictions["base"], emb["test_logits"].argmax(axis=1))
            by_hand = confidence_bins_by_hand(emb["test_logits"], emb["test_y"], predictions["resmem"])
        assert {column: table[column].tolist() for column in by_hand} == by_hand, path
        filled.append(sum(count > 0 for count in by_hand["count"]))
    assert max(filled) >= 5, filled  # the trained networks' confidences span the bins


NUMBER = r"[+-]?\d+\.\d\d"  # a cell's value in % or points, two decimals
PRINTED = 0.005 + 1e-9  # what rounding to two decimals may move a value by
LABELS = {"resmem": "ResMem", "knn": "kNN", "knn_interp": "kNN-interp"}


def test_a_two_seed_summary_equals_the_statistics_computed_by_hand(folder_run):
    """Experiment two_seeds of the folder run (one model, seeds 0 and 1): summary.md's mean ± std of every test
    accuracy, every gain's 95 % interval over seeds and test examples and its Holm-adjusted star, the runs whose
    own test survives Holm, the Holm-adjusted p per run and the oracle gap equal what is computed here by hand from
    each run's test predictions and sweep."""
    results = folder_run["workdir"] / "results" / "two_seeds"
    summary = folder_run["summaries"]["two_seeds"].sort_values("seed")
    assert summary.seed.tolist() == [0, 1] and set(summary.model) == {"cnn"}
    accuracy, best, logits, p_values = {m: [] for m in ("base", *METHODS)}, {m: [] for m in METHODS}, [], {}
    differences = {m: [] for m in METHODS}
    for seed in (0, 1):
        run = results / "cnn" / "frac1" / f"seed{seed}"
        with np.load(run / "predictions.npz") as predictions:
            right = {m: predictions[m] == predictions["labels"] for m in accuracy}
        for m in accuracy:
            accuracy[m].append(float(right[m].mean()))
        for m in METHODS:
            b, c = int((right[m] & ~right["base"]).sum()), int((right["base"] & ~right[m]).sum())
            differences[m].append(right[m].astype(int) - right["base"])
            p_values.setdefault(m, {})[seed] = paired_p_by_hand(b, c)
        with np.load(run / "embeddings.npz") as emb:
            logits.append(emb["test_logits"])
        sweep = pd.read_csv(run / "sweep.csv")
        for m in METHODS:
            best[m].append(float(sweep[(sweep.split == "test") & (sweep.method == m)].accuracy.max()))
        row = summary[summary.seed == seed].iloc[0]
        assert row.base_test_acc == pytest.approx(accuracy["base"][-1])
        assert all(row[f"{m}_test_acc"] == pytest.approx(accuracy[m][-1]) for m in METHODS)
    assert not np.array_equal(*logits)  # two seeds, two networks
    assert any(seed0 != seed1 for seed0, seed1 in accuracy.values())  # and a spread to compute

    def mean_std(cell, values):
        printed = re.fullmatch(rf"({NUMBER}) ± ({NUMBER})", cell)
        by_hand = two_seed_statistics(*values)
        assert float(printed[1]) == pytest.approx(100 * by_hand["mean"], abs=PRINTED), cell
        assert float(printed[2]) == pytest.approx(100 * by_hand["std"], abs=PRINTED), cell

    markdown = (results / "summary.md").read_text()
    lines = markdown.splitlines()
    assert "mean ± std over seeds 0, 1" in markdown
    [table_row] = [line for line in lines if line.startswith("| cnn |") and line.count("±") == 1 + len(METHODS)]
    cells = [cell.strip() for cell in table_row.strip("|").split("|")]
    assert cells[2:4] == ["1", f"{summary.train_examples.iloc[0]:,}"]
    mean_std(cells[4], accuracy["base"])
    listed = folder_run["summaries"]["two_seeds"].seed  # the runs in summary.csv's order
    run_holm = holm_by_hand([p_values[m][seed] for seed in listed for m in METHODS])  # every run and gain
    run_holm = {(seed, m): run_holm[i * len(METHODS) + j] for i, seed in enumerate(listed)
                for j, m in enumerate(METHODS)}  # fmt: skip
    gain_by_seed = {m: [a - b for a, b in zip(accuracy[m], accuracy["base"], strict=True)] for m in METHODS}
    over_seeds = {m: seeds_and_examples_by_hand(differences[m]) for m in METHODS}
    cell_holm = dict(zip(METHODS, holm_by_hand([over_seeds[m]["p"] for m in METHODS]), strict=True))  # 3 cells
    assert "Holm-adjusted over the 3 gain cells of this table" in markdown
    for i, m in enumerate(METHODS):
        mean_std(cells[5 + 2 * i], accuracy[m])
        gains = over_seeds[m]
        assert gains["mean"] == pytest.approx(two_seed_statistics(*gain_by_seed[m])["mean"])
        printed = re.fullmatch(rf"({NUMBER}) \[({NUMBER}), ({NUMBER})\](\*?)", cells[6 + 2 * i])
        for value, statistic in zip(printed.groups()[:3], ("mean", "low", "high"), strict=True):
            assert float(value) == pytest.approx(100 * gains[statistic], abs=PRINTED), (m, statistic)
        assert printed[4] == ("*" if cell_holm[m] < 0.05 else ""), m
        # The verdict table: the same gain cell, the runs whose Holm-adjusted test is below 0.05, p per run, the gap.
        [verdict] = [line for line in lines if line.startswith(f"| cnn | 1 | {LABELS[m]} |")]
        verdict = [cell.strip() for cell in verdict.strip("|").split("|")]
        distinct = sum(run_holm[(seed, m)] < 0.05 for seed in listed)
        assert verdict[3] == cells[6 + 2 * i] and verdict[4] == f"{distinct} of 2"
        assert verdict[5] == ", ".join(f"{run_holm[(seed, m)]:.2g}" for seed in listed)
        assert summary.sort_values("seed")[f"{m}_p_holm"].tolist() == pytest.approx(
            [run_holm[(0, m)], run_holm[(1, m)]]
        )
        cost = 100 * (sum(best[m]) / 2 - sum(accuracy[m]) / 2)
        assert float(verdict[6]) == pytest.approx(cost, abs=PRINTED), m
        excluding = "cnn (train fraction 1)" if cell_holm[m] < 0.05 else "no model"
        said = f"its Holm-adjusted test over seeds and test examples is below 0.05 for {excluding}; elsewhere"
        sentence = f"- {LABELS[m]}: {said}"
        assert sentence in markdown


def test_the_smoke_run_writes_the_bytes_of_an_avx2_only_cpu(smoke_run, avx2_smoke_run):
    """The smoke run's tables and arrays, made under the kernels a CPU run pins by default, equal those of the
    same run on this machine made to behave like an AVX2-only CPU (every library limited, glibc too): an AVX-512
    machine writes what an AVX2 one does. (On an AVX2 machine the two runs are the same run.)"""
    if not {"avx2", "fma"} <= cpu_flags():
        pytest.skip("a CPU without AVX2 pins nothing")
    for folder in (smoke_run["workdir"] / "results", avx2_smoke_run / "results"):
        assert (folder / "smoke" / "summary.csv").exists()
    compared = [p.relative_to(smoke_run["workdir"]) for p in (smoke_run["workdir"] / "results").rglob("*")
                if p.suffix in (".csv", ".npz", ".md") and p.name != "train_log.csv"]  # fmt: skip
    names = {p.name for p in compared}
    assert {"summary.csv", "risk.csv", "sweep.csv", "embeddings.npz", "neighbors.npz", "rows.npz"} <= names
    differing = [str(p) for p in compared
                 if (smoke_run["workdir"] / p).read_bytes() != (avx2_smoke_run / p).read_bytes()]  # fmt: skip
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


def test_imagefolder_study_end_to_end(folder_run):
    """A generated ImageFolder dataset through the whole workflow, with the training-fraction study (experiment
    folders of the session's folder run, tests/runs.py)."""
    results = folder_run["workdir"] / "results" / "folders"
    summary = pd.read_csv(results / "summary.csv")
    assert sorted(zip(summary.model, summary.train_fraction, strict=True)) == [("resnet8", 0.5), ("resnet8", 1.0)]
    # val carves 20 % of the 30 training images, stratified: 24 remain, 12 at half
    assert sorted(summary.train_examples.unique()) == [12, 24]
    with np.load(results / "resnet8" / "frac0.5" / "seed0" / "embeddings.npz") as emb:
        assert emb["train_emb"].shape == (12, 16) and emb["test_emb"].shape == (12, 16)  # 64 × 0.25 channels
    for figure in FIGURES:
        assert (results / "figures" / f"{figure}.png").stat().st_size > 10_000


@pytest.mark.parametrize("name", ["cifar100", "imagenet"])
def test_paper_configs_dry_run_offline(name, paper_dry_run):
    """Every job of a paper config is planned without data, network or GPU (the session's one dry run of the paper
    configs, tests/conftest.py), and README and docs/paper.md say how many."""
    import yaml

    config = yaml.safe_load((REPO / "config" / "paper" / f"{name}.yaml").read_text())
    experiment = config["experiments"][name]
    runs = len(experiment["models"]) * len(experiment["train_fractions"]) * len(experiment["seeds"])
    per_run = {rule: runs for rule in ("train", "embed", "index", "neighbors", "sweep", "select", "predict")}
    planned = paper_dry_run[name]
    assert planned == {"split": 1, **per_run, "aggregate": 1, "all": 1}
    for page in (REPO / "README.md", REPO / "docs" / "paper.md"):  # a row `config`, (its study,) its jobs
        row = rf"\| `config/paper/{name}.yaml` \|( [^|\n]+ \|)? {sum(planned.values())} \|"
        assert re.search(row, page.read_text()), page.name


def test_swept_axes_are_ticked_at_their_values_and_accuracy_stops_at_100():
    """A log axis of swept values is labelled with those values as a config writes them (not 2^k or 3×10^-1, with
    no minor labels), and a flat accuracy line at 99.55 % does not pad the axis past 100.5 %."""
    from resmem.plotting import accuracy_axis, log_axis_at, plt

    fig, (by_k, by_sigma) = plt.subplots(1, 2)
    for ax, values, base in ((by_k, [1, 4, 16, 64], 2), (by_sigma, [0.3, 1.0, 3.0], 10)):
        ax.plot(values, [99.55] * len(values))
        log_axis_at(ax, values, base)
        accuracy_axis(ax)
    fig.canvas.draw()
    assert [t.get_text() for t in by_k.get_xticklabels()] == ["1", "4", "16", "64"]
    assert [t.get_text() for t in by_sigma.get_xticklabels()] == ["0.3", "1", "3"]
    assert all(t.get_text() == "" for ax in (by_k, by_sigma) for t in ax.get_xticklabels(minor=True))
    assert by_k.get_ylim()[1] == 100.5 and by_k.get_ylim()[0] < 99.55
    plt.close(fig)


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


def test_gpu_rules_request_a_gpu_unless_the_device_switch_says_cpu(gpu_dry_runs):
    """The session's dry runs of config/smoke.yaml's experiments (with an LM one) under device auto, config/
    smoke.yaml's switch, and device cpu (tests/conftest.py)."""
    auto = gpu_dry_runs["auto"]
    assert auto["train"] == auto["embed"] == auto["index"] == auto["neighbors"] == auto["sweep"] == {True}
    assert auto["select"] == auto["aggregate"] == {False}
    on_cpu = gpu_dry_runs["cpu"]
    assert on_cpu["train"] == on_cpu["sweep"] == {False}
