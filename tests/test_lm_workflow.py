"""A tiny language-model experiment end to end: artifacts, the datastore-size study, caching and reruns."""

import json
import shutil

import faiss
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import ttest_1samp

from resmem.artifacts import NEIGHBOR_KEYS
from resmem.io import ArtifactError
from resmem.lm.artifacts import (
    DATASTORE_KEYS,
    LM_FIGURES,
    LM_METHOD_PREDICTION_KEYS,
    LM_PREDICTION_KEYS,
    LM_SUMMARY_COLUMNS,
    LM_SWEEP_COLUMNS,
)
from resmem.lm.tokens import final_hidden, select
from resmem.plan import planned_jobs
from tests.conftest import REPO, selected_by_hand, snakemake

MODELS = ("gpt_l1_d16", "gpt_l1_d32")  # experiment lm_smoke of the session's LM run (tests/runs.py)


def block_t_p_by_hand(differences, block: int) -> float:
    """scipy's one-sample t-test over the means of len // block contiguous blocks (each block's sum over the
    nominal length len / blocks, as resmem.stats.block_means documents)."""
    blocks = len(differences) // block
    edges = [len(differences) * i // blocks for i in range(blocks + 1)]
    means = [sum(differences[a:b]) * blocks / len(differences) for a, b in zip(edges, edges[1:], strict=False)]
    return float(ttest_1samp(means, 0.0).pvalue)


def test_corpus_and_datastore(lm_run):
    results = lm_run["results"]
    meta = json.loads((results / "corpus" / "bytes.json").read_text())
    assert meta["vocab_size"] == 256 and meta["python_version"]
    with np.load(results / "corpus" / "bytes.npz") as corpus:
        train_tokens = corpus["train_tokens"]
        for split, budget in (("train", 40_000), ("val", 6_000), ("test", 6_000)):
            # Byte tokens: the budget's bytes plus a two-byte separator after each file.
            tokens = len(corpus[f"{split}_tokens"])
            assert tokens == meta["splits"][split]["tokens"] and budget - 3 <= meta["splits"][split]["bytes"] <= budget
            assert tokens == meta["splits"][split]["bytes"] + 2 * meta["splits"][split]["documents"]
    with np.load(results / "gpt_l1_d16" / "seed0" / "datastore.npz") as store:
        assert sorted(store.files) == sorted(DATASTORE_KEYS)
        assert store["train_keys"].dtype == np.float16 and store["train_keys"].shape == (20_000, 16)
        assert store["val_keys"].shape == (1_000, 16) and store["head_weight"].shape == (256, 16)
        assert np.array_equal(store["train_next"], train_tokens[store["train_pos"] + 1])
    report = json.loads((results / "gpt_l1_d16" / "seed0" / "datastore.json").read_text())
    assert report["entries"] == {"train": 20_000, "val": 1_000, "test": 1_000} and report["tokens_per_second"] > 0


@pytest.mark.parametrize("fraction", ["0.5", "1"])
def test_store_artifacts(lm_run, fraction):
    run = lm_run["results"] / "gpt_l1_d32" / "seed0" / f"store{fraction}"
    entries = 20_000 * float(fraction)
    assert faiss.read_index(str(run / "index.faiss")).ntotal == entries
    with np.load(run / "neighbors.npz") as found:
        assert sorted(found.files) == sorted([*NEIGHBOR_KEYS, "normalize"]) and found["test_idx"].shape == (1_000, 8)
        rows = np.unique(found["test_idx"])
    if fraction == "0.5":  # indices refer to datastore rows of the nested subset
        from resmem.stages import datastore_rows

        assert set(rows) <= set(datastore_rows(20_000, 0.5))
    search = json.loads((run / "search.json").read_text())
    assert search["ntotal"] == entries and search["queries_per_second"] > 0
    sweep = pd.read_csv(run / "sweep.csv")
    assert list(sweep.columns) == list(LM_SWEEP_COLUMNS)
    per_split = 1 + 3 * 2 * 2 + 3 * 2 * 2  # base + ResMem k×σ×T + kNN-LM k×τ×λ (the published kernel)
    assert len(sweep) == 2 * per_split
    chosen = json.loads((run / "selected.json").read_text())
    assert chosen == select(sweep)
    # The selection rule, written out independently of resmem on the sweep's rows: ResMem over (k, σ, T), kNN-LM
    # over (k, τ, λ) with the published kernel, by val accuracy and by val perplexity.
    assert set(sweep[sweep.method == "knnlm"].kernel) == {"squared_l2"}
    by_perplexity = selected_by_hand(sweep, "knnlm", ("k", "tau", "lam"), "perplexity", higher_is_better=False)
    assert chosen == {
        "resmem": selected_by_hand(sweep, "resmem", ("k", "sigma", "temperature")),
        "knnlm": {**selected_by_hand(sweep, "knnlm", ("k", "tau", "lam")), "kernel": "squared_l2"},
        "knnlm_perplexity": {**by_perplexity, "kernel": "squared_l2"},
    }
    # Per test position, each method's prediction at its selected point: what the sweep counted there.
    with np.load(run / "predictions.npz") as predicted:
        every_key = [*LM_PREDICTION_KEYS, *(key for keys in LM_METHOD_PREDICTION_KEYS.values() for key in keys)]
        assert sorted(predicted.files) == sorted(every_key) and len(predicted["labels"]) == 1_000
        for method, accuracy in (("base", chosen["resmem"]["base_test_accuracy"]),
                                 ("resmem", chosen["resmem"]["test_accuracy"]),
                                 ("knnlm", chosen["knnlm"]["test_accuracy"])):  # fmt: skip
            assert (predicted[method] == predicted["labels"]).mean() == pytest.approx(accuracy, abs=1e-12), method
        ppl = chosen["knnlm_perplexity"]
        assert np.exp(predicted["base_loss"].mean()) == pytest.approx(ppl["base_test_perplexity"], rel=1e-9)
        assert np.exp(predicted["knnlm_loss"].mean()) == pytest.approx(ppl["test_perplexity"], rel=1e-9)


def test_summary_figures_and_provenance(lm_run):
    results = lm_run["results"]
    summary = pd.read_csv(results / "summary.csv")
    assert list(summary.columns) == list(LM_SUMMARY_COLUMNS)
    assert len(summary) == 4 and sorted(summary.datastore_size.unique()) == [10_000, 20_000]
    assert np.allclose(summary.resmem_gain, summary.resmem_test_acc - summary.base_test_acc)
    for method in ("resmem", "knnlm"):
        assert (summary[f"{method}_gain_ci_low"] <= summary[f"{method}_gain"]).all()
        assert (summary[f"{method}_gain"] <= summary[f"{method}_gain_ci_high"]).all()
        assert (summary[f"{method}_best_test_acc"] >= summary[f"{method}_test_acc"]).all()
        assert summary[f"{method}_p_value"].between(0, 1).all()
        assert (summary[f"{method}_test"] == "block t (31 blocks of 32 positions)").all()
    for row in summary.itertuples():
        with np.load(
            results / row.model / f"seed{row.seed}" / f"store{row.datastore_fraction:g}" / "predictions.npz"
        ) as p:
            base, knnlm = p["base"] == p["labels"], p["knnlm"] == p["labels"]
            assert row.knnlm_p_value == pytest.approx(block_t_p_by_hand(knnlm.astype(float) - base, 32), rel=1e-9)
            loss_change = p["knnlm_loss"].astype(np.float64) - p["base_loss"]
            assert row.knnlm_loss_change == pytest.approx(loss_change.mean())
            assert row.knnlm_loss_change_p_value == pytest.approx(block_t_p_by_hand(loss_change, 32), rel=1e-6)
        assert row.knnlm_loss_change_ci_low <= row.knnlm_loss_change <= row.knnlm_loss_change_ci_high
    params = summary.groupby("model").parameters.first()
    assert params["gpt_l1_d16"] < params["gpt_l1_d32"]
    markdown = (results / "summary.md").read_text()
    assert "| gpt_l1_d32 |" in markdown and "ResMem has no perplexity" in markdown
    assert "## Is the gain real?" in markdown and "| gpt_l1_d16 | 0.5 | kNN-LM |" in markdown
    assert "- gpt_l1_d16: key final_hidden, 32 new tokens per window" in markdown  # context 32, no eval_stride
    for figure in LM_FIGURES:
        assert (results / "figures" / f"{figure}.png").stat().st_size > 10_000
        assert (results / "figures" / f"{figure}.pdf").exists()
    provenance = json.loads((results / "provenance.json").read_text())
    assert provenance["corpora"]["bytes"]["python_version"] and provenance["corpora"]["bytes"]["sha256"]
    assert provenance["config"]["lm_experiments"]["lm_smoke"]["context"] == 32
    assert "torch" in provenance["versions"]


def test_rerun_is_a_no_op_and_a_lambda_change_reruns_only_the_sweep(lm_run):
    proc = snakemake(lm_run["workdir"], "-n", configfile=lm_run["config"])
    assert "Nothing to be done" in proc.stdout + proc.stderr
    config = yaml.safe_load(lm_run["config"].read_text())
    config["lm_experiments"]["lm_smoke"]["knn"]["lam"] = [0.0, 0.25]
    changed = lm_run["workdir"] / "lambda.yaml"
    changed.write_text(yaml.safe_dump(config, sort_keys=False))
    planned = planned_jobs(snakemake(lm_run["workdir"], "-n", configfile=changed).stdout)
    assert planned == {"lm_sweep": 4, "lm_select": 4, "lm_predict": 4, "lm_aggregate": 1, "all": 1}


def test_token_sweeps_ask_for_a_gpu_unless_the_device_switch_says_cpu(gpu_dry_runs):
    """The token sweep runs the sweep engine and its V-wide logits on the device (`KeyLogits`), so it asks for a
    GPU like the datastore and the search (as the image sweep does, tests/test_workflow.py; the session's dry runs
    of lm_smoke beside the image experiments, device auto and device cpu, tests/conftest.py)."""
    auto = gpu_dry_runs["auto"]
    assert auto["lm_datastore"] == auto["lm_sweep"] == auto["lm_neighbors"] == auto["lm_predict"] == {True}
    assert auto["lm_select"] == {False}
    assert gpu_dry_runs["cpu"]["lm_sweep"] == {False}


@pytest.mark.parametrize("name,models,corpora", [("lm", 4, 1), ("wikitext103_gpt2", 3, 1)])
def test_lm_paper_configs_dry_run_offline(paper_dry_run, name, models, corpora):
    """Every job is planned offline (no dataset, no Hugging Face model fetched; the session's one dry run of the
    paper configs, tests/conftest.py), the three GPT-2 models share one tokenized corpus, and README states the
    job count."""
    import re

    planned = paper_dry_run[name]
    stores = models * 4  # models × datastore fractions
    assert planned == {
        "lm_corpus": corpora, "lm_train": models, "lm_datastore": models, "lm_index": stores,
        "lm_neighbors": stores, "lm_sweep": stores, "lm_select": stores, "lm_predict": stores, "lm_aggregate": 1,
        "all": 1,
    }  # fmt: skip
    for page in (REPO / "README.md", REPO / "docs" / "paper.md"):  # a row `config`, (its study,) its jobs
        row = rf"\| `config/paper/{name}.yaml` \|( [^|\n]+ \|)? {sum(planned.values())} \|"
        assert re.search(row, page.read_text()), page.name


def test_report_holds_the_lm_figures_with_captions(lm_run):
    proc = snakemake(lm_run["workdir"], "--report", "results/report.html", configfile=lm_run["config"])
    assert "Report created" in proc.stdout + proc.stderr
    html = (lm_run["workdir"] / "results" / "report.html").read_text()
    for figure in LM_FIGURES:
        assert f"{figure}.png" in html
    assert "gpt_l1_d16, gpt_l1_d32" in html and "datastore fractions 0.5, 1.0" in html and "corpus stdlib" in html


def test_a_knnlm_only_study_stores_no_training_hidden_states(lm_run, tmp_path):
    """knn.methods [knnlm] with kNN-LM's key (last_ffn_input): the datastore keeps the keys and next tokens of the
    training positions but not their final hidden states (the val/test ones stay: the base model's logits), the
    sweep and the summary hold the base model and kNN-LM only, ResMem's columns empty."""
    workdir = tmp_path / "knnlm"
    shutil.copytree(lm_run["workdir"], workdir, symlinks=True)
    config = yaml.safe_load(lm_run["config"].read_text())
    experiment = config["lm_experiments"]["lm_smoke"]
    experiment["models"] = {"gpt_l1_d16": experiment["models"]["gpt_l1_d16"]}
    experiment["datastore"].update(key="last_ffn_input", fractions=[1.0])
    experiment["knn"]["methods"] = ["knnlm"]
    changed = workdir / "knnlm.yaml"
    changed.write_text(yaml.safe_dump(config, sort_keys=False))
    planned = planned_jobs(snakemake(workdir, "-n", configfile=changed).stdout)
    assert "lm_train" not in planned and planned["lm_datastore"] == 1  # the trained model is kept
    snakemake(workdir, configfile=changed)
    run = workdir / "results" / "lm_smoke" / "gpt_l1_d16" / "seed0"
    with np.load(run / "datastore.npz") as store:
        assert "train_hidden" not in store.files and {"train_keys", "val_hidden", "test_hidden"} <= set(store.files)
        assert store["train_keys"].shape == (20_000, 16)
    sweep = pd.read_csv(run / "store1" / "sweep.csv")
    assert set(sweep.method) == {"base", "knnlm"}
    with np.load(run / "store1" / "predictions.npz") as p:
        assert sorted(p.files) == sorted(["labels", "base", "base_loss", "knnlm", "knnlm_loss"])
        base, knnlm = p["base"] == p["labels"], p["knnlm"] == p["labels"]
    summary = pd.read_csv(workdir / "results" / "lm_smoke" / "summary.csv")
    row = summary.iloc[0]
    assert len(summary) == 1 and summary.filter(like="resmem_").isna().all().all()
    assert row.knnlm_gain == pytest.approx(knnlm.mean() - base.mean())
    assert row.knnlm_p_value == pytest.approx(block_t_p_by_hand(knnlm.astype(float) - base, 32), rel=1e-9)
    markdown = (workdir / "results" / "lm_smoke" / "summary.md").read_text()
    assert "| gpt_l1_d16 | 0.5 |" not in markdown and "| – | – |" in markdown  # ResMem's acc and gain: not run
    assert "ResMem has no perplexity" not in markdown and "| gpt_l1_d16 | 1 | kNN-LM |" in markdown
    for figure in LM_FIGURES:
        assert (workdir / "results" / "lm_smoke" / "figures" / f"{figure}.png").stat().st_size > 10_000


def test_resmem_on_a_datastore_without_training_hidden_states_fails_naming_the_fix():
    arrays = {f"{s}_keys": np.zeros((3, 4), np.float16) for s in ("train", "val", "test")}
    arrays.update(val_hidden=np.zeros((3, 4)), test_hidden=np.zeros((3, 4)))
    with pytest.raises(ArtifactError, match="no final hidden states of its train positions.*add resmem to knn.methods"):
        final_hidden(arrays, "train")
    assert final_hidden(arrays, "test") is arrays["test_hidden"]
