"""One function per workflow stage: read input files, call the library, write output files atomically.

The Snakemake scripts in workflow/scripts/ only unpack the `snakemake` object and call these, so every stage
also runs without Snakemake. torch is imported only by the stages that need it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from resmem import io
from resmem.artifacts import EMBEDDING_KEYS, NEIGHBOUR_KEYS, QUERY_SPLITS, SPLIT_KEYS, SPLITS, SUMMARY_COLUMNS
from resmem.config import ConfigError
from resmem.data import load_dataset, make_split
from resmem.io import ArtifactError

log = logging.getLogger("resmem")


def split(out_path, dataset: dict) -> None:
    _, labels = load_dataset(dataset["name"])
    parts = make_split(labels, dataset["test_fraction"], dataset["val_fraction"], dataset["split_seed"])
    log.info("%s: %s", dataset["name"], {k: len(v) for k, v in parts.items()})
    io.save_npz(out_path, num_examples=np.int64(len(labels)), **parts)


def load_split(path, num_examples: int) -> dict[str, np.ndarray]:
    parts = io.load_npz(path, [*SPLIT_KEYS, "num_examples"])
    if int(parts["num_examples"]) != num_examples:
        raise ArtifactError(
            f"{path}: written for {int(parts['num_examples'])} examples but the dataset has "
            f"{num_examples}; delete it and rerun"
        )
    return parts


def _split_data(split_path, dataset: dict):
    images, labels = load_dataset(dataset["name"])
    parts = load_split(split_path, len(labels))
    return {s: (images[parts[f"{s}_idx"]], labels[parts[f"{s}_idx"]]) for s in SPLITS}


def train(
    split_path,
    model_path,
    log_path,
    meta_path,
    dataset: dict,
    model_spec: dict,
    train_cfg: dict,
    seed: int,
    device: str,
    threads: int,
    config: dict,
) -> None:
    import torch

    from resmem.device import torch_device
    from resmem.models import build_model, count_parameters
    from resmem.train import seed_everything
    from resmem.train import train as fit

    torch.set_num_threads(threads)
    dev = torch_device(device)
    data = _split_data(split_path, dataset)
    (x_train, y_train), (x_val, y_val) = data["train"], data["val"]
    num_classes, in_channels = int(y_train.max()) + 1, x_train.shape[1]
    seed_everything(seed)
    model = build_model(model_spec, num_classes, in_channels)
    log.info("model %s: %d parameters, training on %s", model_spec, count_parameters(model), dev)
    checkpoint = Path(model_path).with_name("train_checkpoint.pt")  # not an output: survives a killed job
    start = time.perf_counter()
    history = fit(model, x_train, y_train, x_val, y_val, train_cfg, seed, dev, checkpoint)
    meta = {
        "parameters": count_parameters(model),
        "device": str(dev),
        "num_classes": num_classes,
        "in_channels": in_channels,
        "model": model_spec,
        "train": train_cfg,
        "seed": seed,
        "seconds": time.perf_counter() - start,
        "final": history[-1],
        "versions": io.package_versions(),
        "config": config,
    }
    with io.atomic_path(model_path) as tmp:
        torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp)
    io.write_csv(log_path, pd.DataFrame(history, columns=["epoch", "loss", "train_acc", "val_acc", "seconds"]))
    io.write_json(meta_path, meta)
    checkpoint.unlink(missing_ok=True)


def embed(split_path, model_path, out_path, dataset: dict, batch_size: int, device: str, threads: int) -> None:
    import torch

    from resmem.device import torch_device
    from resmem.models import build_model
    from resmem.train import extract

    torch.set_num_threads(threads)
    dev = torch_device(device)
    try:
        saved = torch.load(model_path, map_location="cpu", weights_only=False)
        meta = saved["meta"]
        model = build_model(meta["model"], meta["num_classes"], meta["in_channels"])
        model.load_state_dict(saved["state_dict"])
    except Exception as exc:
        raise ArtifactError(f"{model_path}: cannot load the model ({exc}); delete it and rerun train") from exc
    arrays = {}
    for name, (x, y) in _split_data(split_path, dataset).items():
        emb, logits = extract(model, x, batch_size, dev)
        arrays.update({f"{name}_emb": emb, f"{name}_logits": logits, f"{name}_y": y.astype(np.int64)})
        log.info("%s: %d examples, %d-dim embeddings", name, *emb.shape)
    io.save_npz(out_path, **arrays)


def load_embeddings(path, split_path=None) -> dict[str, np.ndarray]:
    """embeddings.npz, checked for its documented arrays, dtypes and, given the split, row counts."""
    dtypes = {k: (np.int64 if k.endswith("_y") else np.float32) for k in EMBEDDING_KEYS}
    arrays = io.load_npz(path, EMBEDDING_KEYS, dtypes)
    for s in SPLITS:
        n = {len(arrays[f"{s}_{kind}"]) for kind in ("emb", "logits", "y")}
        if len(n) != 1:
            raise ArtifactError(f"{path}: {s}_emb, {s}_logits and {s}_y differ in row count {sorted(n)}")
    if split_path is not None:
        parts = io.load_npz(split_path, SPLIT_KEYS)
        for s in SPLITS:
            if len(arrays[f"{s}_y"]) != len(parts[f"{s}_idx"]):
                raise ArtifactError(
                    f"{path}: {len(arrays[f'{s}_y'])} {s} rows but {split_path} has "
                    f"{len(parts[f'{s}_idx'])}; delete it and rerun embed"
                )
    return arrays


def index(embeddings_path, split_path, out_path, normalize: bool, device: str) -> None:
    import faiss

    from resmem.knn import build_index

    train_emb = load_embeddings(embeddings_path, split_path)["train_emb"]
    built = build_index(train_emb, normalize=normalize, device=device)
    log.info("flat L2 index: %d vectors of dim %d", built.ntotal, built.d)
    with io.atomic_path(out_path) as tmp:
        faiss.write_index(built, str(tmp))


def neighbours(
    index_path, embeddings_path, out_path, k_max: int, normalize: bool, device: str, query_chunk: int
) -> None:
    import sys

    import faiss
    from tqdm import tqdm

    from resmem.knn import search

    arrays = load_embeddings(embeddings_path)
    try:
        built = faiss.read_index(str(index_path))
    except RuntimeError as exc:
        raise ArtifactError(f"{index_path}: cannot be read ({exc}); delete it and rerun index") from exc
    n_train = len(arrays["train_y"])
    if built.ntotal != n_train:
        raise ArtifactError(
            f"{index_path} holds {built.ntotal} vectors but {embeddings_path} has {n_train} "
            "training rows; delete the index and rerun"
        )
    if k_max > n_train:
        raise ConfigError(
            f"config key knn.k: the largest k ({k_max}) exceeds the training split's {n_train} examples; lower it"
        )
    out = {}
    for s in QUERY_SPLITS:
        with tqdm(total=len(arrays[f"{s}_emb"]), desc=f"search {s}", unit="query", file=sys.stderr) as bar:
            out[f"{s}_dist"], out[f"{s}_idx"] = search(
                built,
                arrays[f"{s}_emb"],
                k_max,
                normalize=normalize,
                device=device,
                chunk_size=query_chunk,
                progress=bar,
            )
    io.save_npz(out_path, **out)


def sweep(embeddings_path, neighbours_path, out_path, ks, sigmas, temperatures, sweep_chunk_mb: float) -> None:
    from resmem.sweep import sweep_table

    arrays = load_embeddings(embeddings_path)
    found = io.load_npz(neighbours_path, NEIGHBOUR_KEYS)
    for s in QUERY_SPLITS:
        if len(found[f"{s}_idx"]) != len(arrays[f"{s}_y"]):
            raise ArtifactError(
                f"{neighbours_path}: {len(found[f'{s}_idx'])} {s} rows but {embeddings_path} "
                f"has {len(arrays[f'{s}_y'])}; delete it and rerun neighbors"
            )
        if found[f"{s}_idx"].shape[1] < max(ks):
            raise ArtifactError(
                f"{neighbours_path}: searched {found[f'{s}_idx'].shape[1]} neighbours, the grid "
                f"needs {max(ks)}; delete it and rerun neighbors"
            )
    table = sweep_table(arrays, found, ks, sigmas, temperatures, chunk_bytes=int(sweep_chunk_mb * 2**20))
    io.write_csv(out_path, table)


def select(sweep_path, out_path) -> None:
    from resmem.sweep import select as choose

    chosen = choose(pd.read_csv(sweep_path))
    log.info("selected %s", chosen)
    io.write_json(out_path, chosen)


def aggregate(experiment: str, runs: list[dict], out: dict, config: dict, repo_dir) -> None:
    """runs: one dict per model × seed with keys model, seed, selected, meta, sweep (paths)."""
    from resmem import report

    rows, sweeps = [], []
    for run in runs:
        chosen = json.loads(Path(run["selected"]).read_text())
        meta = json.loads(Path(run["meta"]).read_text())
        rows.append(
            {
                "experiment": experiment,
                "model": run["model"],
                "seed": run["seed"],
                "parameters": meta["parameters"],
                "base_test_acc": chosen["base_test_accuracy"],
                "k": chosen["k"],
                "sigma": chosen["sigma"],
                "temperature": chosen["temperature"],
                "resmem_test_acc": chosen["test_accuracy"],
                "gain": chosen["gain"],
                "device": meta["device"],
            }
        )
        table = pd.read_csv(run["sweep"]).assign(
            model=run["model"], seed=run["seed"], selected_temperature=chosen["temperature"]
        )
        sweeps.append(table)
    summary = pd.DataFrame(rows)
    io.write_csv(out["summary_csv"], summary[list(SUMMARY_COLUMNS)])
    io.write_text(out["summary_md"], report.summary_markdown(summary, experiment))
    report.plot_all(summary, pd.concat(sweeps, ignore_index=True), experiment, out)
    io.write_json(
        out["provenance"],
        {
            "experiment": experiment,
            "config": config,
            "git_commit": io.git_commit(repo_dir),
            "versions": io.package_versions(),
            "devices": sorted(summary.device.unique()),
            "runs": [{k: str(v) for k, v in run.items()} for run in runs],
        },
    )
