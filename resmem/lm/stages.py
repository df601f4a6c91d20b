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
from resmem.artifacts import QUERY_SPLITS, SPLITS
from resmem.io import ArtifactError
from resmem.lm.artifacts import CORPUS_KEYS, DATASTORE_KEYS, LM_SUMMARY_COLUMNS
from resmem.stages import fit_and_save, read_json

log = logging.getLogger("resmem")


def corpus(npz_path, meta_path, corpus_cfg: dict) -> None:
    from resmem.lm.corpus import build_corpus

    tokens, meta = build_corpus(corpus_cfg)
    log.info("corpus %s: %s tokens", corpus_cfg["name"], {s: len(t) for s, t in tokens.items()})
    io.save_npz(npz_path, **{f"{s}_tokens": tokens[s] for s in SPLITS})
    io.write_json(meta_path, meta)


def load_tokens(path) -> dict[str, np.ndarray]:
    return {s: a for s, a in zip(SPLITS, io.load_npz(path, CORPUS_KEYS, mmap=True).values(), strict=True)}


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
) -> None:
    """Train the transformer `spec` with `recipe` (the experiment's train section) on the corpus:
    out["model"], out["train_log"], out["meta"]."""
    import torch

    from resmem.device import torch_device
    from resmem.lm.model import TokenWindows, build_lm
    from resmem.train import seed_everything

    torch.set_num_threads(threads)
    dev = torch_device(device)
    tokens = load_tokens(corpus_path)
    vocab_size = read_json(corpus_meta_path)["vocab_size"]
    train_loader = TokenWindows(tokens["train"], context, recipe["batch_size"], dev)
    val_loader = TokenWindows(tokens["val"][: eval_tokens + 1], context, recipe["batch_size"], dev)
    seed_everything(seed)
    network = build_lm(spec, vocab_size, context)
    log.info("model %s: %d training tokens; training on %s", spec, len(tokens["train"]), dev)
    meta = {
        "model": spec,
        "vocab_size": vocab_size,
        "context": context,
        "train_tokens": len(tokens["train"]),
        "config": config,
    }
    fit_and_save(network, train_loader, val_loader, recipe, seed, dev, out, meta)


def load_lm(model_path):
    from resmem.lm.model import build_lm

    return shared.load_model(
        model_path, lambda meta: build_lm(meta["model"], meta["vocab_size"], meta["context"]), "lm_train"
    )


def datastore(
    corpus_path, model_path, out_path, report_path, store: dict, eval_tokens: int, amp: bool, device: str, threads: int
) -> None:
    """Keys (final hidden states; float16 for the training datastore, float32 for the val/test queries), next
    tokens and positions, and the output layer, streamed to disk; the report gives tokens/s."""
    import sys

    import torch
    from tqdm import tqdm

    from resmem.device import torch_device
    from resmem.lm.model import datastore_positions, hidden_states

    torch.set_num_threads(threads)
    dev = torch_device(device)
    model, meta = load_lm(model_path)
    tokens = load_tokens(corpus_path)
    context = meta["context"]
    amp = amp and dev.type == "cuda"
    positions = {
        "train": datastore_positions(len(tokens["train"]), context, store["stride"], store["max_tokens"]),
        **{s: datastore_positions(len(tokens[s]), context, 1, eval_tokens) for s in QUERY_SPLITS},
    }
    key_dtype = {"train": np.float16, "val": np.float32, "test": np.float32}

    def blocks():
        for s in SPLITS:
            with tqdm(total=len(positions[s]), desc=f"datastore {s}", unit="tok", file=sys.stderr) as bar:
                for keys, following in hidden_states(
                    model, tokens[s], positions[s], context, store["batch_size"], dev, amp
                ):
                    yield f"{s}_keys", keys.astype(key_dtype[s])
                    yield f"{s}_next", following.astype(np.int64)
                    bar.update(len(keys))
            yield f"{s}_pos", positions[s]
        weight, bias = model.output_layer()
        yield "head_weight", weight
        yield "head_bias", bias

    rows = {f"{s}_{kind}": len(positions[s]) for s in SPLITS for kind in ("keys", "next", "pos")}
    rows.update(head_weight=model.head.weight.shape[0], head_bias=model.head.weight.shape[0])
    start = time.perf_counter()
    io.save_npz_streaming(out_path, blocks(), rows)
    seconds = time.perf_counter() - start
    total = sum(len(p) for p in positions.values())
    report = {
        "entries": {s: len(positions[s]) for s in SPLITS},
        "key_dim": int(model.head.weight.shape[1]),
        "key_dtype": {s: np.dtype(t).name for s, t in key_dtype.items()},
        "stride": store["stride"],
        "max_tokens": store["max_tokens"],
        "seconds": seconds,
        "tokens_per_second": total / max(seconds, 1e-9),
        "device": str(dev),
    }
    log.info("datastore: %s entries, %.0f tokens/s", report["entries"], report["tokens_per_second"])
    io.write_json(report_path, report)


def load_datastore(path) -> dict[str, np.ndarray]:
    """datastore.npz as read-only memmaps, checked for its documented arrays and row counts."""
    arrays = io.load_npz(path, DATASTORE_KEYS, mmap=True)
    for s in SPLITS:
        n = {len(arrays[f"{s}_{kind}"]) for kind in ("keys", "next", "pos")}
        if len(n) != 1:
            raise ArtifactError(f"{path}: {s}_keys, {s}_next and {s}_pos differ in row count {sorted(n)}")
    if arrays["head_weight"].shape[1] != arrays["train_keys"].shape[1]:
        raise ArtifactError(f"{path}: the output layer's width differs from the keys'; delete it and rerun")
    return arrays


def index(datastore_path, out: dict, knn: dict, device: str, store_fraction: float = 1.0) -> None:
    """The index over a nested fraction of the datastore's keys (`resmem.stages.index`)."""
    shared.index(load_datastore(datastore_path)["train_keys"], out, knn, device, store_fraction)


def neighbors(index_path, rows_path, datastore_path, out: dict, knn: dict, device: str) -> None:
    """One search at the largest k for the val and test positions; indices refer to datastore rows."""
    arrays = load_datastore(datastore_path)
    queries = {s: arrays[f"{s}_keys"] for s in QUERY_SPLITS}
    shared.neighbors(index_path, rows_path, datastore_path, arrays["train_keys"], queries, out, knn, device)


def sweep(datastore_path, neighbors_path, out_path, knn: dict) -> None:
    from resmem.lm.tokens import sweep_table

    arrays = load_datastore(datastore_path)
    query_rows = {s: len(arrays[f"{s}_next"]) for s in QUERY_SPLITS}
    found = shared.load_neighbors(neighbors_path, query_rows, max(knn["k"]), datastore_path)
    table = sweep_table(
        arrays, found, knn["k"], knn["sigma"], knn["temperature"], knn["lam"], int(knn["sweep_chunk_mb"] * 2**20),
        knn["knnlm_kernel"], knn["tau"],
    )  # fmt: skip
    io.write_csv(out_path, table)


def select(sweep_path, out_path) -> None:
    from resmem.lm.tokens import select as choose

    shared.select(sweep_path, out_path, choose)


def summarize(run: dict) -> tuple[dict, dict]:
    """One run's summary row and its sweep (with the run's columns and selected values)."""
    chosen, meta = read_json(run["selected"]), read_json(run["meta"])
    resmem, knnlm, ppl = chosen["resmem"], chosen["knnlm"], chosen["knnlm_perplexity"]
    row = {
        "model": run["model"],
        "datastore_fraction": run["store_fraction"],
        "datastore_size": read_json(run["search"])["ntotal"],
        "seed": run["seed"],
        "parameters": meta["parameters"],
        "base_test_acc": resmem["base_test_accuracy"],
        "base_test_ppl": ppl["base_test_perplexity"],
        "resmem_k": resmem["k"],
        "resmem_sigma": resmem["sigma"],
        "resmem_temperature": resmem["temperature"],
        "resmem_test_acc": resmem["test_accuracy"],
        "resmem_gain": resmem["gain"],
        "knnlm_k": knnlm["k"],
        "knnlm_kernel": knnlm["kernel"],
        "knnlm_sigma": knnlm.get("sigma", float("nan")),  # the l2 kernel's width
        "knnlm_tau": knnlm.get("tau", float("nan")),  # the published squared_l2 kernel's temperature
        "knnlm_lam": knnlm["lam"],
        "knnlm_test_acc": knnlm["test_accuracy"],
        "knnlm_gain": knnlm["gain"],
        "knnlm_test_ppl": ppl["test_perplexity"],
        "device": meta["device"],
    }
    sweep = pd.read_csv(run["sweep"]).assign(
        model=run["model"],
        seed=run["seed"],
        datastore_fraction=run["store_fraction"],
        selected_temperature=resmem["temperature"],
        selected_lam=knnlm["lam"],
    )
    return row, {"sweeps": sweep}


def aggregate(experiment: str, runs: list[dict], out: dict, config: dict, repo_dir, corpus_meta) -> None:
    """runs: one dict per model × seed × datastore fraction with keys model, seed, store_fraction and the
    paths selected, meta, sweep, search (`resmem.stages.run_records`); corpus_meta: the corpus's corpus.json,
    recorded in the provenance."""
    from resmem.lm.report import write_report

    corpus = {k: v for k, v in read_json(corpus_meta).items() if k != "files"}
    shared.aggregate(experiment, runs, out, config, repo_dir, summarize, LM_SUMMARY_COLUMNS, write_report,
                     corpus=corpus)  # fmt: skip
