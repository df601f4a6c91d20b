"""One function per stage of a language-model experiment (lm_experiments in the config):
corpus → train → datastore → index → neighbours → sweep → select → aggregate.

A datastore holds one entry per (strided, budgeted) training position; the datastore-size study indexes
nested random fractions of its rows, so one datastore serves every fraction and neighbour indices always
refer to datastore rows.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from resmem import io
from resmem.artifacts import CORPUS_KEYS, DATASTORE_KEYS, LM_SUMMARY_COLUMNS, NEIGHBOUR_KEYS, QUERY_SPLITS, SPLITS
from resmem.io import ArtifactError

log = logging.getLogger("resmem")


def corpus(npz_path, meta_path, corpus_cfg: dict) -> None:
    from resmem.corpus import build_corpus

    tokens, meta = build_corpus(corpus_cfg)
    log.info("corpus %s: %s tokens", corpus_cfg["name"], {s: len(t) for s, t in tokens.items()})
    io.save_npz(npz_path, **{f"{s}_tokens": tokens[s] for s in SPLITS})
    io.write_json(meta_path, meta)


def load_tokens(path) -> dict[str, np.ndarray]:
    return {s: a for s, a in zip(SPLITS, io.load_npz(path, CORPUS_KEYS, mmap=True).values(), strict=True)}


def train(
    corpus_path,
    corpus_meta_path,
    model_path,
    log_path,
    meta_path,
    model_spec: dict,
    train_cfg: dict,
    context: int,
    eval_tokens: int,
    seed: int,
    device: str,
    threads: int,
    config: dict,
) -> None:
    import torch

    from resmem.device import torch_device
    from resmem.lm import TokenWindows, build_lm
    from resmem.stages import fit_and_save
    from resmem.train import seed_everything

    torch.set_num_threads(threads)
    dev = torch_device(device)
    tokens = load_tokens(corpus_path)
    vocab_size = json.loads(Path(corpus_meta_path).read_text())["vocab_size"]
    train_loader = TokenWindows(tokens["train"], context, train_cfg["batch_size"], dev)
    val_loader = TokenWindows(tokens["val"][: eval_tokens + 1], context, train_cfg["batch_size"], dev)
    seed_everything(seed)
    model = build_lm(model_spec, vocab_size, context)
    log.info("model %s: %d training tokens; training on %s", model_spec, len(tokens["train"]), dev)
    meta = {
        "model": model_spec,
        "vocab_size": vocab_size,
        "context": context,
        "train_tokens": len(tokens["train"]),
        "config": config,
    }
    fit_and_save(model, train_loader, val_loader, train_cfg, seed, dev, model_path, log_path, meta_path, meta)


def load_lm(model_path):
    import torch

    from resmem.lm import build_lm

    try:
        saved = torch.load(model_path, map_location="cpu", weights_only=False)
        meta = saved["meta"]
        model = build_lm(meta["model"], meta["vocab_size"], meta["context"])
        model.load_state_dict(saved["state_dict"])
    except Exception as exc:
        raise ArtifactError(f"{model_path}: cannot load the model ({exc}); delete it and rerun lm_train") from exc
    return model, meta


def datastore(
    corpus_path,
    model_path,
    out_path,
    report_path,
    stride: int,
    max_tokens: int | None,
    eval_tokens: int,
    batch_size: int,
    amp: bool,
    device: str,
    threads: int,
) -> None:
    """Keys (final hidden states; float16 for the training datastore, float32 for the val/test queries), next
    tokens and positions, and the output layer, streamed to disk; the report gives tokens/s."""
    import sys

    import torch
    from tqdm import tqdm

    from resmem.device import torch_device
    from resmem.lm import datastore_positions, hidden_states

    torch.set_num_threads(threads)
    dev = torch_device(device)
    model, meta = load_lm(model_path)
    tokens = load_tokens(corpus_path)
    context = meta["context"]
    positions = {
        "train": datastore_positions(len(tokens["train"]), context, stride, max_tokens),
        **{s: datastore_positions(len(tokens[s]), context, 1, eval_tokens) for s in QUERY_SPLITS},
    }
    key_dtype = {"train": np.float16, "val": np.float32, "test": np.float32}

    def blocks():
        for s in SPLITS:
            with tqdm(total=len(positions[s]), desc=f"datastore {s}", unit="tok", file=sys.stderr) as bar:
                for keys, following in hidden_states(
                    model, tokens[s], positions[s], context, batch_size, dev, amp and dev.type == "cuda"
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
        "stride": stride,
        "max_tokens": max_tokens,
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


def datastore_rows(n: int, fraction: float, seed: int = 0) -> np.ndarray:
    """The sorted datastore rows of a fraction: a prefix of one fixed permutation, so fractions are nested."""
    return np.sort(np.random.default_rng(seed).permutation(n)[: max(1, round(fraction * n))])


class RowSubset:
    """Rows `rows` of an array (a memmap), read only when indexed: a datastore fraction without a copy."""

    def __init__(self, array: np.ndarray, rows: np.ndarray):
        self.array, self.rows = array, rows
        self.shape = (len(rows), *array.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return self.array[self.rows[i]]


def index(
    datastore_path, out_path, fraction: float, normalize: bool, kind: str, nlist, pq_m: int, pq_bits: int, device: str
) -> None:
    import faiss

    from resmem.knn import build_index

    keys = load_datastore(datastore_path)["train_keys"]
    subset = RowSubset(keys, datastore_rows(len(keys), fraction))
    built = build_index(subset, normalize, device, kind=kind, nlist=nlist, pq_m=pq_m, pq_bits=pq_bits)
    log.info("%s index over %d of %d datastore entries (fraction %g)", kind, built.ntotal, len(keys), fraction)
    with io.atomic_path(out_path) as tmp:
        faiss.write_index(built, str(tmp))


def neighbours(
    index_path,
    datastore_path,
    out_path,
    report_path,
    fraction: float,
    k_max: int,
    normalize: bool,
    device: str,
    query_chunk: int,
    nprobe: int,
    recall_sample: int,
) -> None:
    """One search at k_max for the val and test positions; indices refer to datastore rows."""
    from resmem.config import ConfigError
    from resmem.stages import read_index, search_splits

    arrays = load_datastore(datastore_path)
    rows = datastore_rows(len(arrays["train_keys"]), fraction)
    built = read_index(index_path, datastore_path, len(rows))
    if k_max > len(rows):
        raise ConfigError(f"config key knn.k: the largest k ({k_max}) exceeds the {len(rows)} datastore entries")
    queries = {s: arrays[f"{s}_keys"] for s in QUERY_SPLITS}
    subset = RowSubset(arrays["train_keys"], rows)
    out, report = search_splits(built, subset, queries, k_max, normalize, device, query_chunk, nprobe, recall_sample)
    for s in QUERY_SPLITS:
        out[f"{s}_idx"] = rows[out[f"{s}_idx"]]
    report.update(datastore_fraction=fraction, tokens_per_second=report["queries_per_second"])
    io.save_npz(out_path, **out)
    io.write_json(report_path, report)


def sweep(datastore_path, neighbours_path, out_path, ks, sigmas, temperatures, lambdas, sweep_chunk_mb) -> None:
    from resmem.tokens import sweep_table

    arrays = load_datastore(datastore_path)
    found = io.load_npz(neighbours_path, NEIGHBOUR_KEYS)
    for s in QUERY_SPLITS:
        rows, searched = found[f"{s}_idx"].shape
        if rows != len(arrays[f"{s}_next"]) or searched < max(ks):
            raise ArtifactError(
                f"{neighbours_path}: {rows} × {searched} {s} neighbours do not fit {datastore_path} "
                f"({len(arrays[f'{s}_next'])} queries) and k up to {max(ks)}; delete it and rerun lm_neighbors"
            )
    table = sweep_table(arrays, found, ks, sigmas, temperatures, lambdas, int(sweep_chunk_mb * 2**20))
    io.write_csv(out_path, table)


def select(sweep_path, out_path) -> None:
    from resmem.tokens import select as choose

    chosen = choose(pd.read_csv(sweep_path))
    log.info("selected %s", chosen)
    io.write_json(out_path, chosen)


def aggregate(experiment: str, runs: list[dict], out: dict, corpus_meta_path, config: dict, repo_dir) -> None:
    """runs: one dict per model × seed × datastore fraction with keys model, seed, datastore_fraction and the
    paths selected, meta, sweep, search."""
    from resmem import lm_report

    rows, sweeps = [], []
    for run in runs:
        chosen = json.loads(Path(run["selected"]).read_text())
        meta = json.loads(Path(run["meta"]).read_text())
        resmem, knnlm, ppl = chosen["resmem"], chosen["knnlm"], chosen["knnlm_perplexity"]
        rows.append(
            {
                "experiment": experiment,
                "model": run["model"],
                "datastore_fraction": run["datastore_fraction"],
                "datastore_size": json.loads(Path(run["search"]).read_text())["ntotal"],
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
                "knnlm_sigma": knnlm["sigma"],
                "knnlm_lam": knnlm["lam"],
                "knnlm_test_acc": knnlm["test_accuracy"],
                "knnlm_gain": knnlm["gain"],
                "knnlm_test_ppl": ppl["test_perplexity"],
                "device": meta["device"],
            }
        )
        sweeps.append(
            pd.read_csv(run["sweep"]).assign(
                model=run["model"],
                seed=run["seed"],
                datastore_fraction=run["datastore_fraction"],
                selected_temperature=resmem["temperature"],
                selected_lam=knnlm["lam"],
            )
        )
    summary = pd.DataFrame(rows)
    corpus_meta = json.loads(Path(corpus_meta_path).read_text())
    io.write_csv(out["summary_csv"], summary[list(LM_SUMMARY_COLUMNS)])
    io.write_text(out["summary_md"], lm_report.summary_markdown(summary, experiment))
    lm_report.plot_all(summary, pd.concat(sweeps, ignore_index=True), experiment, out)
    io.write_json(
        out["provenance"],
        {
            "experiment": experiment,
            "config": config,
            "corpus": {k: v for k, v in corpus_meta.items() if k != "files"},
            "git_commit": io.git_commit(repo_dir),
            "versions": io.package_versions(),
            "devices": sorted(summary.device.unique()),
            "runs": [{k: str(v) for k, v in run.items()} for run in runs],
        },
    )
