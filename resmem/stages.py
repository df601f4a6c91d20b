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
from resmem.data import Dataset, load_dataset, make_split, train_subset
from resmem.io import ArtifactError

log = logging.getLogger("resmem")


def split(out_path, dataset: dict) -> None:
    data = load_dataset(dataset)
    parts = make_split(data, dataset["test_fraction"], dataset["val_fraction"], dataset["split_seed"])
    log.info("%s: %s", dataset["name"], {k: len(v) for k, v in parts.items()})
    io.save_npz(out_path, train_pool=np.int64(len(data.train)), test_pool=np.int64(len(data.test)), **parts)


def load_split(path, data: Dataset, dataset: dict, fraction: float) -> dict[str, np.ndarray]:
    """The split's index arrays, checked against the dataset; train_idx cut to the training fraction."""
    parts = io.load_npz(path, [*SPLIT_KEYS, "train_pool", "test_pool"])
    for pool in ("train", "test"):
        if int(parts[f"{pool}_pool"]) != len(getattr(data, pool)):
            raise ArtifactError(
                f"{path}: written for a {pool} pool of {int(parts[f'{pool}_pool'])} examples but "
                f"the dataset has {len(getattr(data, pool))}; delete it and rerun"
            )
    parts["train_idx"] = train_subset(parts["train_idx"], data.train.labels, fraction, dataset["split_seed"])
    return parts


def _loaders(
    split_path,
    dataset: dict,
    fraction: float,
    batch_size: int,
    dev,
    num_workers: int,
    channels_last: bool = False,
    train_augment: str = "none",
):
    """Loaders of the train (at the training fraction, augmented with `train_augment`), val and test splits,
    and the dataset."""
    from resmem.loader import Loader

    data = load_dataset(dataset)
    parts = load_split(split_path, data, dataset, fraction)
    pools = {"train": data.train, "val": data.train, "test": data.test}
    loaders = {
        s: Loader(
            pools[s],
            parts[f"{s}_idx"],
            batch_size,
            dev,
            train_augment if s == "train" else "none",
            num_workers,
            channels_last,
        )
        for s in SPLITS
    }
    return loaders, data


def train(
    split_path,
    model_path,
    log_path,
    meta_path,
    dataset: dict,
    model_spec: dict,
    train_cfg: dict,
    fraction: float,
    seed: int,
    device: str,
    threads: int,
    config: dict,
) -> None:
    import torch

    from resmem.device import torch_device
    from resmem.models import build_model, count_parameters
    from resmem.train import seed_everything

    torch.set_num_threads(threads)
    dev = torch_device(device)
    loaders, data = _loaders(
        split_path,
        dataset,
        fraction,
        train_cfg["batch_size"],
        dev,
        train_cfg["num_workers"],
        train_cfg["channels_last"],
        train_cfg["augment"],
    )
    seed_everything(seed)
    model = build_model(model_spec, data.num_classes, data.train.channels)
    log.info(
        "model %s: %d parameters; %d training examples (fraction %g); training on %s",
        model_spec,
        count_parameters(model),
        len(loaders["train"]),
        fraction,
        dev,
    )
    meta = {
        "num_classes": data.num_classes,
        "in_channels": data.train.channels,
        "model": model_spec,
        "train_fraction": fraction,
        "train_examples": len(loaders["train"]),
        "config": config,
    }
    fit_and_save(model, loaders["train"], loaders["val"], train_cfg, seed, dev, model_path, log_path, meta_path, meta)


def fit_and_save(model, train_loader, val_loader, train_cfg, seed, dev, model_path, log_path, meta_path, meta) -> None:
    """Train (resuming from the checkpoint beside `model_path`), then write the model with its metadata, the
    per-epoch log and the metadata as JSON: parameters, device, recipe, seed, time, versions and `meta`."""
    import torch

    from resmem.models import count_parameters
    from resmem.train import train as fit

    checkpoint = Path(model_path).with_name("train_checkpoint.pt")  # not an output: survives a killed job
    start = time.perf_counter()
    history = fit(model, train_loader, val_loader, train_cfg, seed, dev, checkpoint)
    meta = {
        "parameters": count_parameters(model),
        "device": str(dev),
        "train": train_cfg,
        "seed": seed,
        "seconds": time.perf_counter() - start,
        "final": history[-1],
        "versions": io.package_versions(),
        **meta,
    }
    with io.atomic_path(model_path) as tmp:
        torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp)
    io.write_csv(log_path, pd.DataFrame(history, columns=["epoch", "loss", "train_acc", "val_acc", "seconds"]))
    io.write_json(meta_path, meta)
    checkpoint.unlink(missing_ok=True)


def embed(
    split_path,
    model_path,
    out_path,
    dataset: dict,
    fraction: float,
    batch_size: int,
    amp: bool,
    device: str,
    threads: int,
    num_workers: int = 0,
) -> None:
    """Features and logits of the datastore (the training examples the model saw) and of val and test,
    streamed to disk batch by batch."""
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
    except ConfigError:
        raise
    except Exception as exc:
        raise ArtifactError(f"{model_path}: cannot load the model ({exc}); delete it and rerun train") from exc
    loaders, _ = _loaders(split_path, dataset, fraction, batch_size, dev, num_workers)

    def blocks():
        for name, loader in loaders.items():
            for emb, logits in extract(model, loader, amp=amp and dev.type == "cuda"):
                yield f"{name}_emb", emb
                yield f"{name}_logits", logits
            yield f"{name}_y", loader.pool.labels.astype(np.int64)
            log.info("%s: %d examples embedded", name, len(loader))

    rows = {f"{s}_{kind}": len(loader) for s, loader in loaders.items() for kind in ("emb", "logits", "y")}
    io.save_npz_streaming(out_path, blocks(), rows)


def load_embeddings(path, split_path=None) -> dict[str, np.ndarray]:
    """embeddings.npz as read-only memmaps, checked for its documented arrays, dtypes and, given the split,
    row counts (the datastore may be a training fraction of the split's train rows)."""
    dtypes = {k: (np.int64 if k.endswith("_y") else np.float32) for k in EMBEDDING_KEYS}
    arrays = io.load_npz(path, EMBEDDING_KEYS, dtypes, mmap=True)
    for s in SPLITS:
        n = {len(arrays[f"{s}_{kind}"]) for kind in ("emb", "logits", "y")}
        if len(n) != 1:
            raise ArtifactError(f"{path}: {s}_emb, {s}_logits and {s}_y differ in row count {sorted(n)}")
    if split_path is not None:
        parts = io.load_npz(split_path, SPLIT_KEYS)
        for s in SPLITS:
            rows, expected = len(arrays[f"{s}_y"]), len(parts[f"{s}_idx"])
            if rows > expected if s == "train" else rows != expected:
                raise ArtifactError(
                    f"{path}: {rows} {s} rows but {split_path} has {expected}; delete it and rerun embed"
                )
    return arrays


def index(
    embeddings_path,
    split_path,
    out_path,
    normalize: bool,
    device: str,
    kind: str = "flat",
    nlist: int | None = None,
    pq_m: int = 8,
    pq_bits: int = 8,
) -> None:
    import faiss

    from resmem.knn import build_index

    train_emb = load_embeddings(embeddings_path, split_path)["train_emb"]
    built = build_index(train_emb, normalize, device, kind=kind, nlist=nlist, pq_m=pq_m, pq_bits=pq_bits)
    log.info("%s L2 index: %d vectors of dim %d", kind, built.ntotal, built.d)
    with io.atomic_path(out_path) as tmp:
        faiss.write_index(built, str(tmp))


def read_index(index_path, datastore_path, n_train: int):
    """A faiss index file, checked to hold the datastore's `n_train` vectors."""
    import faiss

    try:
        built = faiss.read_index(str(index_path))
    except RuntimeError as exc:
        raise ArtifactError(f"{index_path}: cannot be read ({exc}); delete it and rerun index") from exc
    if built.ntotal != n_train:
        raise ArtifactError(
            f"{index_path} holds {built.ntotal} vectors but {datastore_path} has {n_train} "
            "training rows; delete the index and rerun"
        )
    return built


def search_splits(
    built, train, queries: dict, k_max: int, normalize: bool, device: str, query_chunk: int, nprobe: int,
    recall_sample: int,
) -> tuple[dict, dict]:  # fmt: skip
    """One search at k_max for each query split ({split: vectors}) → ({<split>_dist, <split>_idx}, report).

    The report records the index, the search speed and, for an approximate index, its recall@k_max against
    exact search over `train` on a fixed sample of the test queries. A PQ index's distances are replaced by
    exact ones (and rows re-sorted by them), so the kernel weights never see quantization error."""
    import sys

    import faiss
    from tqdm import tqdm

    from resmem.knn import exact_distances, exact_search, recall_at_k, search

    out = {}
    start = time.perf_counter()
    for s, vectors in queries.items():
        with tqdm(total=len(vectors), desc=f"search {s}", unit="query", file=sys.stderr) as bar:
            dist, idx = search(
                built, vectors, k_max, normalize=normalize, device=device, chunk_size=query_chunk, progress=bar,
                nprobe=nprobe,
            )  # fmt: skip
        if isinstance(built, faiss.IndexIVFPQ):
            dist, idx = exact_distances(train, vectors, idx, normalize)
        out[f"{s}_dist"], out[f"{s}_idx"] = dist, idx
    seconds = time.perf_counter() - start
    n_queries = sum(len(v) for v in queries.values())
    approximate = isinstance(built, faiss.IndexIVF)
    report = {
        "index": type(built).__name__,
        "ntotal": int(built.ntotal),
        "dim": int(built.d),
        "k_max": k_max,
        "queries": n_queries,
        "seconds": seconds,
        "queries_per_second": n_queries / max(seconds, 1e-9),
        "nlist": int(built.nlist) if approximate else None,
        "nprobe": nprobe if approximate else None,
        "recall_at_k_max": 1.0,
        "recall_sample": 0,
    }
    if approximate:  # measure what the approximation costs, on a fixed sample of the test queries
        test = queries["test"]
        sample = np.sort(np.random.default_rng(0).permutation(len(test))[:recall_sample])
        _, exact = exact_search(train, test[sample], k_max, normalize)
        report.update(recall_at_k_max=recall_at_k(out["test_idx"][sample], exact), recall_sample=len(sample))
        log.info("recall@%d on %d test queries: %.4f", k_max, len(sample), report["recall_at_k_max"])
    return out, report


def neighbours(
    index_path,
    embeddings_path,
    out_path,
    report_path,
    k_max: int,
    normalize: bool,
    device: str,
    query_chunk: int,
    nprobe: int = 16,
    recall_sample: int = 1000,
) -> None:
    """One search at k_max for val and test (see `search_splits`)."""
    arrays = load_embeddings(embeddings_path)
    n_train = len(arrays["train_y"])
    built = read_index(index_path, embeddings_path, n_train)
    if k_max > n_train:
        raise ConfigError(
            f"config key knn.k: the largest k ({k_max}) exceeds the training split's {n_train} examples; lower it"
        )
    queries = {s: arrays[f"{s}_emb"] for s in QUERY_SPLITS}
    out, report = search_splits(
        built, arrays["train_emb"], queries, k_max, normalize, device, query_chunk, nprobe, recall_sample
    )
    io.save_npz(out_path, **out)
    io.write_json(report_path, report)


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


def confidence(embeddings_path, neighbours_path, selected_path, out_path, bins: int = 10) -> None:
    """Where ResMem helps: test accuracy of the base model and of ResMem (at the selected k, σ, T) in
    equal-width bins of the base model's confidence, its largest softmax probability."""
    from resmem.core import resmem_predict, softmax

    arrays = load_embeddings(embeddings_path)
    found = io.load_npz(neighbours_path, ["test_dist", "test_idx"])
    chosen = json.loads(Path(selected_path).read_text())
    k = chosen["k"]
    if found["test_idx"].shape[1] < k or len(found["test_idx"]) != len(arrays["test_y"]):
        raise ArtifactError(f"{neighbours_path} does not match {embeddings_path} and {selected_path}; rerun")
    labels, logits = arrays["test_y"], arrays["test_logits"]
    resmem = resmem_predict(
        logits,
        found["test_dist"][:, :k],
        found["test_idx"][:, :k],
        arrays["train_logits"],
        arrays["train_y"],
        chosen["sigma"],
        chosen["temperature"],
    )
    confidence_of = softmax(logits).max(axis=1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence_of, edges[1:-1]), 0, bins - 1)
    table = pd.DataFrame(
        {
            "bin_lo": edges[:-1],
            "bin_hi": edges[1:],
            "count": np.bincount(which, minlength=bins),
            "base_correct": np.bincount(which, weights=logits.argmax(1) == labels, minlength=bins).astype(int),
            "resmem_correct": np.bincount(which, weights=resmem == labels, minlength=bins).astype(int),
        }
    )
    io.write_csv(out_path, table)


def select(sweep_path, out_path) -> None:
    from resmem.sweep import select as choose

    chosen = choose(pd.read_csv(sweep_path))
    log.info("selected %s", chosen)
    io.write_json(out_path, chosen)


def aggregate(experiment: str, runs: list[dict], out: dict, config: dict, repo_dir) -> None:
    """runs: one dict per model × training fraction × seed with keys model, train_fraction, seed and the
    paths selected, meta, sweep."""
    from resmem import report

    rows, sweeps, confidences = [], [], []
    for run in runs:
        chosen = json.loads(Path(run["selected"]).read_text())
        meta = json.loads(Path(run["meta"]).read_text())
        rows.append(
            {
                "experiment": experiment,
                "model": run["model"],
                "train_fraction": run["train_fraction"],
                "train_examples": meta["train_examples"],
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
            model=run["model"],
            train_fraction=run["train_fraction"],
            seed=run["seed"],
            selected_temperature=chosen["temperature"],
        )
        sweeps.append(table)
        confidences.append(
            pd.read_csv(run["confidence"]).assign(
                model=run["model"], seed=run["seed"], train_fraction=run["train_fraction"]
            )
        )
    summary = pd.DataFrame(rows)
    io.write_csv(out["summary_csv"], summary[list(SUMMARY_COLUMNS)])
    io.write_text(out["summary_md"], report.summary_markdown(summary, experiment))
    io.write_text(out["summary_tex"], report.summary_latex(summary, experiment))
    report.plot_all(
        summary, pd.concat(sweeps, ignore_index=True), pd.concat(confidences, ignore_index=True), experiment, out
    )
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
