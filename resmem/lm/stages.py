"""One function per stage of a language-model experiment (lm_experiments in the config):
corpus → train → datastore → index → neighbors → sweep → select → aggregate.

A datastore holds one entry per (strided, budgeted) training position; the datastore-size study indexes
nested random fractions of its rows (`resmem.stages.index`), so one datastore serves every fraction and
neighbor indices always refer to datastore rows.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from resmem import io
from resmem import stages as shared
from resmem.artifacts import GAIN_FIELDS, QUERY_SPLITS, SPLITS
from resmem.bounds import RunSizes
from resmem.io import ArtifactError
from resmem.lm.artifacts import (
    CORPUS_KEYS,
    DATASTORE_HIDDEN_KEYS,
    DATASTORE_KEYS,
    LM_METHOD_PREDICTION_KEYS,
    LM_METHODS,
    LM_PREDICTION_KEYS,
    LM_SUMMARY_COLUMNS,
)
from resmem.lm.sizes import datastore_disk_bytes
from resmem.stages import fit_and_save, read_json

log = logging.getLogger("resmem")


def corpus(npz_path, meta_path, corpus_cfg: dict, tokenizer_source: str | None = None) -> None:
    """The corpus's token arrays and metadata; `tokenizer_source`: the Hugging Face model (or tokenizer) whose
    tokenizer `corpus.tokenizer: model` means."""
    from resmem.lm.corpus import write_corpus

    io.write_json(meta_path, write_corpus(npz_path, corpus_cfg, tokenizer_source))


def load_tokens(path) -> dict[str, np.ndarray]:
    arrays = io.load_npz(path, CORPUS_KEYS, dict.fromkeys(CORPUS_KEYS, np.int32), mmap=True)
    return {s: arrays[f"{s}_tokens"] for s in SPLITS}


def train(
    corpus_path,
    corpus_meta_path,
    out: dict,
    spec: dict,
    recipe: dict,
    context: int,
    eval_tokens: int,
    seed: int,
    device: str,
    threads: int,
    config: dict,
    resume=None,
    stop_epoch: int | None = None,
) -> None:
    """Train the model `spec` with `recipe` (the experiment's train section; a Hugging Face model's own `epochs`)
    on the corpus: out["model"], out["train_log"], out["meta"]. A model not trained (epochs 0) is evaluated as it
    is, its train accuracy on the first eval_tokens training tokens; a Hugging Face model's file then records
    where its weights are instead of a copy of them. A segment of a long training (`stop_epoch`, out["segment"],
    `resume`: the previous segment's checkpoint) writes only its checkpoint (`resmem.stages.fit_and_save`)."""
    import torch

    from resmem.device import torch_device
    from resmem.lm.model import TokenWindows, build_lm, check_fits, hf_commit
    from resmem.train import seed_everything

    torch.set_num_threads(threads)
    dev = torch_device(device)
    tokens = load_tokens(corpus_path)
    vocab_size = read_json(corpus_meta_path)["vocab_size"]
    if "hf" in spec:
        recipe = {**recipe, "epochs": spec["epochs"]}
    train_tokens = tokens["train"] if recipe["epochs"] else tokens["train"][: eval_tokens + 1]
    train_loader = TokenWindows(train_tokens, context, recipe["batch_size"], dev)
    val_loader = TokenWindows(tokens["val"][: eval_tokens + 1], context, recipe["batch_size"], dev)
    seed_everything(seed)
    network = build_lm(spec, vocab_size, context)
    check_fits(network, vocab_size, context, spec)
    log.info("model %s: %d training tokens; training on %s", spec, len(tokens["train"]), dev)
    meta = {
        "model": spec,
        "vocab_size": vocab_size,
        "context": context,
        "train_tokens": len(tokens["train"]),
        "hf_commit": hf_commit(network),  # the hub commit of a Hugging Face model's weights (None: a folder)
        "config": config,
    }
    copy_weights = "hf" not in spec or recipe["epochs"] > 0
    fit_and_save(network, train_loader, val_loader, recipe, seed, dev, out, meta, copy_weights, resume, stop_epoch)


def load_lm(model_path, spec: dict | None = None):
    """(network, meta) of a language model trained for `spec` (the config's; None: the file's own)."""
    from resmem.lm.model import build_lm

    return shared.load_model(
        model_path, lambda meta: build_lm(meta["model"], meta["vocab_size"], meta["context"]), "lm_train", spec
    )


def datastore(
    corpus_path,
    model_path,
    out_path,
    report_path,
    store: dict,
    eval_tokens: int,
    eval_stride: int | None,
    amp: bool,
    device: str,
    threads: int,
    spec: dict | None = None,
) -> None:
    """Per split, the entries of its positions in sliding windows (`resmem.lm.model.sliding_windows`) of the model
    `model_path` holds (trained for `spec`, the config's model): keys
    (float16 for the training datastore, float32 for the val/test queries), the final hidden states where the
    key (store["key"]) is another state (not those of the training positions with store["train_hidden"] false:
    a study without ResMem), next tokens and positions; and the output layer, all streamed to disk. The report
    gives tokens/s."""
    import sys

    import torch
    from tqdm import tqdm

    from resmem.device import accelerated, torch_device
    from resmem.lm.model import datastore_entries, datastore_positions, output_layer, sliding_windows

    torch.set_num_threads(threads)
    dev = torch_device(device)
    model, meta = load_lm(model_path, spec)
    tokens = load_tokens(corpus_path)
    context, key = meta["context"], store["key"]
    amp = amp and accelerated(dev)
    positions = {
        "train": datastore_positions(len(tokens["train"]), store["stride"], store["max_tokens"]),
        **{s: datastore_positions(len(tokens[s]), 1, eval_tokens) for s in QUERY_SPLITS},
    }
    windows = {s: sliding_windows(len(tokens[s]), context, eval_stride) for s in SPLITS}
    key_dtype = {"train": np.float16, "val": np.float32, "test": np.float32}
    stored = {s: {"keys": "key", "hidden": "hidden"} if key != "final_hidden" else {"keys": "hidden"} for s in SPLITS}
    if not store.get("train_hidden", True):
        stored["train"].pop("hidden", None)
    widths = {}

    def blocks():
        for s in SPLITS:
            with tqdm(total=len(positions[s]), desc=f"datastore {s}", unit="tok", file=sys.stderr) as bar:
                for states, following in datastore_entries(
                    model, tokens[s], positions[s], windows[s], store["batch_size"], dev, key, amp
                ):
                    for name, state in stored[s].items():
                        widths[name] = states[state].shape[1]
                        yield f"{s}_{name}", finite(states[state].astype(key_dtype[s]), f"{s}_{name}", out_path)
                    yield f"{s}_next", following
                    bar.update(len(following))
            yield f"{s}_pos", positions[s]
        weight, bias = output_layer(model)
        yield "head_weight", weight
        yield "head_bias", bias

    vocab, hidden = model.get_output_embeddings().weight.shape
    rows = {f"{s}_{kind}": len(positions[s]) for s in SPLITS for kind in (*stored[s], "next", "pos")}
    rows.update(head_weight=vocab, head_bias=vocab)
    queries = sum(len(positions[s]) for s in QUERY_SPLITS)
    sizes = RunSizes(len(positions["train"]), len(positions["train"]), hidden, queries, vocab, 1, hidden)
    need = datastore_disk_bytes(sizes, key, "hidden" in stored["train"])  # every key is `hidden` wide
    io.require_free_space(out_path, need, "lm_datastore")
    start = time.perf_counter()
    io.save_npz_streaming(out_path, blocks(), rows)
    seconds = time.perf_counter() - start
    total = sum(len(p) for p in positions.values())
    report = {
        "entries": {s: len(positions[s]) for s in SPLITS},
        "key": key,
        "key_dim": widths.get("keys"),
        "key_dtype": {s: np.dtype(t).name for s, t in key_dtype.items()},
        "context": context,
        "eval_stride": eval_stride or context,
        "windows": {s: len(windows[s].starts) for s in SPLITS},
        "stride": store["stride"],
        "max_tokens": store["max_tokens"],
        "seconds": seconds,
        "tokens_per_second": total / max(seconds, 1e-9),
        "device": str(dev),
    }
    log.info("datastore: %s entries, %.0f tokens/s", report["entries"], report["tokens_per_second"])
    io.write_json(report_path, report)


# As the datastore stage writes them: float16 training keys and hidden states, float32 queries and output layer
DATASTORE_DTYPES = {
    **{f"{s}_{kind}": np.float16 if s == "train" else np.float32 for s in SPLITS for kind in ("keys", "hidden")},
    **{f"{s}_{kind}": np.int64 for s in SPLITS for kind in ("next", "pos")},
    "head_weight": np.float32,
    "head_bias": np.float32,
}


def finite(block: np.ndarray, key: str, path) -> np.ndarray:
    """A block of datastore states, refused if any value is inf or NaN: states beyond float16's ±65,504 overflow
    when the training keys are stored, and an inf key would make every distance to it inf."""
    if not np.isfinite(block).all():
        bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
        raise ArtifactError(
            f"{path}: {key} has {len(bad)} rows with inf or NaN in a block (a state above float16's 65,504 overflows "
            "when the training keys are stored): the model's states are out of range; check its weights, or choose "
            "another datastore.key"
        )
    return block


def load_datastore(path) -> dict[str, np.ndarray]:
    """datastore.npz as read-only memmaps, checked for its documented arrays and row counts (a split's final
    hidden states: `resmem.lm.tokens.final_hidden`)."""
    arrays = io.load_npz(path, DATASTORE_KEYS, DATASTORE_DTYPES, mmap=True, optional=DATASTORE_HIDDEN_KEYS)
    for s in SPLITS:
        n = {len(arrays[f"{s}_{kind}"]) for kind in ("keys", "next", "pos")}
        if len(n) != 1:
            raise ArtifactError(f"{path}: {s}_keys, {s}_next and {s}_pos differ in row count {sorted(n)}")
    from resmem.lm.tokens import final_hidden

    if arrays["head_weight"].shape[1] != final_hidden(arrays, "test").shape[1]:
        raise ArtifactError(
            f"{path}: the output layer's width differs from the final hidden states'; delete it and rerun"
        )
    return arrays


def index(datastore_path, out: dict, knn: dict, device: str, store_fraction: float = 1.0) -> None:
    """The index over a nested fraction of the datastore's keys (`resmem.stages.index`)."""
    shared.index(load_datastore(datastore_path)["train_keys"], out, knn, device, store_fraction)


def neighbors(index_path, rows_path, datastore_path, out: dict, knn: dict, device: str) -> None:
    """One search at the largest k for the val and test positions; indices refer to datastore rows."""
    arrays = load_datastore(datastore_path)
    queries = {s: arrays[f"{s}_keys"] for s in QUERY_SPLITS}
    shared.neighbors(index_path, rows_path, datastore_path, arrays["train_keys"], queries, out, knn, device)


def sweep(datastore_path, neighbors_path, out_path, knn: dict, device: str = "cpu") -> None:
    """Base, ResMem and kNN-LM over the grid from the one search; ResMem's sweep engine and the V-wide logits
    of the neighbors (`resmem.lm.tokens.KeyLogits`) run on `device`."""
    from resmem.lm.tokens import sweep_table

    arrays = load_datastore(datastore_path)
    queries = {s: arrays[f"{s}_keys"] for s in QUERY_SPLITS}
    found = shared.load_neighbors(neighbors_path, queries, max(knn["k"]), datastore_path, arrays["train_keys"])
    table = sweep_table(
        arrays, found, knn["k"], knn["sigma"], knn["temperature"], knn["lam"], int(knn["sweep_chunk_mb"] * 2**20),
        knn["knnlm_kernel"], knn["tau"], knn["resmem_k"], device, knn.get("methods", LM_METHODS),
    )  # fmt: skip
    io.write_csv(out_path, table)


def predict(datastore_path, neighbors_path, selected_path, out_path, knn: dict, device: str = "cpu") -> None:
    """Per test position, the predicted token of the base model, ResMem and kNN-LM at their selected points (the tie
    rule) and the losses −log p(y) of the base model and of kNN-LM at its point of lowest val perplexity, for the
    aggregate's tests (`LM_PREDICTION_KEYS`)."""
    from resmem.core import method_predict
    from resmem.lm.tokens import KeyLogits, base_predict, final_hidden, knnlm_predict

    arrays = load_datastore(datastore_path)
    chosen = read_json(selected_path)
    queries, k_needed = {s: arrays[f"{s}_keys"] for s in QUERY_SPLITS}, max(c["k"] for c in chosen.values())
    found = shared.load_neighbors(neighbors_path, queries, k_needed, datastore_path, arrays["train_keys"])
    head, chunk_bytes = (arrays["head_weight"], arrays["head_bias"]), int(knn["sweep_chunk_mb"] * 2**20)
    logits, labels = KeyLogits(final_hidden(arrays, "test"), *head, device), np.asarray(arrays["test_next"])
    dist, idx, train_next = found["test_dist"], found["test_idx"], arrays["train_next"]
    base, base_loss = base_predict(logits, labels, chunk_bytes, device)
    predicted = {"labels": labels, "base": base, "base_loss": base_loss}
    if "resmem" in chosen:  # the methods the study ran (knn.methods)
        point = chosen["resmem"]
        predicted["resmem"] = method_predict(
            "resmem", logits, dist[:, : point["k"]], idx[:, : point["k"]],
            KeyLogits(final_hidden(arrays, "train"), *head, device), train_next, point["sigma"],
            point["temperature"], chunk_bytes=chunk_bytes,
        )  # fmt: skip
    if "knnlm" in chosen:
        predicted["knnlm"] = knnlm_predict(logits, labels, dist, idx, train_next, chosen["knnlm"], chunk_bytes,
                                           device)[0]  # fmt: skip
        predicted["knnlm_loss"] = knnlm_predict(logits, labels, dist, idx, train_next, chosen["knnlm_perplexity"],
                                                chunk_bytes, device)[1]  # fmt: skip
    io.save_npz(out_path, **predicted)


def select(sweep_path, out_path) -> None:
    from resmem.lm.tokens import select as choose

    shared.select(sweep_path, out_path, choose)


def summarize(run: dict, stats: dict) -> tuple[dict, dict]:
    """One run's summary row, with each gain tested on the test positions' predictions by a t-test over the means
    of blocks of contiguous positions (`stats["block_positions"]`; auto: chosen from the data;
    `resmem.stages.gain_columns`), and its sweep (with the run's columns and selected values)."""
    from resmem.stats import mean_difference

    chosen, meta, store = read_json(run["selected"]), read_json(run["meta"]), read_json(run["datastore_report"])
    methods = [m for m in LM_METHODS if m in chosen]  # those the study ran (knn.methods); the others' columns NaN
    resmem, knnlm, ppl = (chosen.get(m, {}) for m in ("resmem", "knnlm", "knnlm_perplexity"))
    keys = (*LM_PREDICTION_KEYS, *(key for m in methods for key in LM_METHOD_PREDICTION_KEYS[m]))
    predicted = shared.load_predictions(run["predictions"], keys)
    block = None if stats["block_positions"] == "auto" else stats["block_positions"]
    right = {m: predicted[m] == predicted["labels"] for m in ("base", *methods)}
    nan = float("nan")
    loss = {key: nan for key in shared.VERDICT_KEYS}
    if "knnlm" in methods:
        loss = mean_difference(predicted["knnlm_loss"] - predicted["base_loss"], block=block)
    row = {
        "model": run["model"],
        "datastore_fraction": run["store_fraction"],
        "datastore_size": read_json(run["search"])["ntotal"],
        "seed": run["seed"],
        "parameters": meta["parameters"],
        "datastore_key": store["key"],  # the search key, for kNN-LM and ResMem alike
        "eval_stride": store["eval_stride"],
        "base_test_acc": float(right["base"].mean()),  # = every selected point's base_test_accuracy
        "base_test_ppl": ppl.get("base_test_perplexity", float(np.exp(predicted["base_loss"].mean()))),
        "resmem_k": resmem.get("k", nan),
        "resmem_sigma": resmem.get("sigma", nan),
        "resmem_temperature": resmem.get("temperature", nan),
        "knnlm_k": knnlm.get("k", nan),
        "knnlm_kernel": knnlm.get("kernel", nan),
        "knnlm_sigma": knnlm.get("sigma", nan),  # the l2 kernel's width
        "knnlm_tau": knnlm.get("tau", nan),  # the published squared_l2 kernel's temperature
        "knnlm_lam": knnlm.get("lam", nan),
        "knnlm_test_ppl": ppl.get("test_perplexity", nan),
        "knnlm_loss_change": loss["gain"],
        "knnlm_loss_change_ci_low": loss["gain_ci_low"],
        "knnlm_loss_change_ci_high": loss["gain_ci_high"],
        "knnlm_loss_change_p_value": loss["p_value"],
        "knnlm_loss_change_test": loss["test"],
        "device": meta["device"],
    }
    unknown = np.full(len(predicted["labels"]), nan)  # a method not run: no differences
    differences = {"block": block, "knnlm_loss_change": predicted["knnlm_loss"] - predicted["base_loss"]
                   if "knnlm" in methods else unknown}  # fmt: skip
    for m in LM_METHODS:
        if m in methods:
            row.update(shared.gain_columns(m, right["base"], right[m], chosen[m], block, run))
        else:
            row.update({f"{m}_{field}": nan for field in GAIN_FIELDS})
        differences[f"{m}_gain"] = right[m].astype(np.int8) - right["base"] if m in methods else unknown
    row["differences"] = differences  # per position, for the verdict over seeds (resmem.verdicts.with_seed_tests)
    sweep = pd.read_csv(run["sweep"]).assign(
        model=run["model"],
        seed=run["seed"],
        datastore_fraction=run["store_fraction"],
        selected_temperature=resmem.get("temperature", nan),
        selected_lam=knnlm.get("lam", nan),
    )
    return row, {"sweeps": sweep}


def aggregate(experiment: str, runs: list[dict], out: dict, config: dict, repo_dir, stats: dict) -> None:
    """runs: one dict per model × seed × datastore fraction with keys model, seed, store_fraction, tokenizer and
    the paths selected, meta, sweep, predictions, search, datastore_report and corpus_meta
    (`resmem.stages.run_records`); each corpus's corpus.json (by tokenizer) goes into the provenance; `stats`: the
    experiment's stats section."""
    from functools import partial

    from resmem.lm.report import write_report

    corpora = {
        tokenizer: {k: v for k, v in read_json(path).items() if k != "files"}
        for tokenizer, path in {run["tokenizer"]: run["corpus_meta"] for run in runs}.items()
    }
    shared.aggregate(experiment, runs, out, config, repo_dir, partial(summarize, stats=stats), LM_SUMMARY_COLUMNS,
                     write_report, corpora=corpora)  # fmt: skip
