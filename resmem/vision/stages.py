"""The stages of an image experiment (`experiments` in the config): split (and decode, for folder datasets that
fit in memory) → train → embed → index → neighbors → sweep → select → predict → aggregate. Each reads its
input files, calls the library (the shared stages of `resmem.stages` where the kinds share them) and writes its
outputs atomically.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from resmem import io
from resmem import stages as shared
from resmem.artifacts import QUERY_SPLITS, SPLITS
from resmem.bounds import RunSizes
from resmem.config import check_image_cache
from resmem.core import METHODS
from resmem.io import ArtifactError
from resmem.stages import fit_and_save, read_json
from resmem.sweep import PARAMETERS
from resmem.vision.artifacts import EMBEDDING_KEYS, PREDICTION_KEYS, SPLIT_KEYS, SUMMARY_COLUMNS
from resmem.vision.data import Dataset, check_no_copies, load_dataset, make_split, train_subset
from resmem.vision.sizes import embeddings_disk_bytes, feature_width, network_threads

log = logging.getLogger("resmem")


def split(out_path, dataset: dict) -> None:
    data = load_dataset(dataset)
    check_no_copies(data)
    parts = make_split(data, dataset["test_fraction"], dataset["val_fraction"], dataset["split_seed"])
    log.info("%s: %s", dataset["name"], {k: len(v) for k, v in parts.items()})
    io.save_npz(out_path, train_pool=np.int64(len(data.train)), test_pool=np.int64(len(data.test)), **parts)


def decode(out_path, dataset: dict, augment: str, threads: int, at: str = "experiments.<name>") -> None:
    """A folder dataset's train and test pools decoded once, by `threads` processes (one: this one), into uint8
    arrays at image_size (`resmem.vision.loader.decode`), which train and embed then serve from memory with tensor-op
    augmentation. dataset.cache = memory always decodes; auto decodes when the arrays fit dataset.cache_mb and
    training needs no random-resized crops of the full images, else writes no images (training streams the
    files). Either way the file records a digest of each pool's file list, which its readers check. `at` is the
    experiment's config key, for messages."""
    import sys

    from tqdm import tqdm

    from resmem.vision.data import file_digest
    from resmem.vision.loader import decode as decode_pool
    from resmem.vision.loader import resolve_augment

    data = load_dataset(dataset)
    pools, size = {"train": data.train, "test": data.test}, dataset["image_size"]
    needed_mb = sum(len(pool) for pool in pools.values()) * 3 * size**2 / 2**20
    resolved = resolve_augment(augment, data.train)
    check_image_cache(at, dataset["cache"], resolved)
    resized_crops = resolved == "resized_crop_flip"
    digests = {f"{s}_digest": np.array([file_digest(pool)]) for s, pool in pools.items()}
    if dataset["cache"] == "auto" and (resized_crops or needed_mb > dataset["cache_mb"]):
        why = "training crops the full images" if resized_crops else f"over dataset.cache_mb = {dataset['cache_mb']}"
        log.info("not decoding into memory (%.0f MB; %s): training streams the files", needed_mb, why)
        empty = np.zeros((0, 3, size, size), np.uint8)
        io.save_npz(out_path, train_images=empty, test_images=empty, **digests)
        return

    def blocks():
        yield from digests.items()
        for s, pool in pools.items():
            with tqdm(total=len(pool), desc=f"decode {s}", unit="img", file=sys.stderr) as bar:
                for block in decode_pool(pool, threads):
                    yield f"{s}_images", block
                    bar.update(len(block))

    counts = {f"{s}_images": len(pool) for s, pool in pools.items()}
    log.info("decoding %s into memory (%.0f MB) with %d processes", counts, needed_mb, threads)
    io.save_npz_streaming(out_path, blocks(), {**dict.fromkeys(digests, 1), **counts})


def with_decoded(data: Dataset, images_path) -> Dataset:
    """The dataset with the images that decode wrote into `images_path` in place of its files (where it wrote
    any), each pool checked to be decoded from the same file list."""
    from dataclasses import replace

    from resmem.vision.data import file_digest

    digests = io.load_npz(images_path, ["train_digest", "test_digest"])
    keys = ["train_images", "test_images"]
    images = io.load_npz(images_path, keys, dict.fromkeys(keys, np.uint8), mmap=True)
    for s in ("train", "test"):
        pool = getattr(data, s)
        if str(digests[f"{s}_digest"][0]) != file_digest(pool):
            raise ArtifactError(
                f"{images_path}: decoded from other {s} files than the dataset holds now; delete it and rerun decode"
            )
        if len(images[f"{s}_images"]):
            setattr(data, s, replace(pool, images=images[f"{s}_images"]))
    return data


def normalized(data: Dataset, constants) -> Dataset:
    """The dataset with inputs normalized by `constants` = (mean, std) where given (a pretrained model's)."""
    from dataclasses import replace

    if constants is None:
        return data
    mean, std = constants
    return replace(data, train=replace(data.train, mean=mean, std=std), test=replace(data.test, mean=mean, std=std))


def _view(data: Dataset, augment: str) -> str:
    """How the network sees the images, for the record: the augmentation it trains with and the view it is
    evaluated on."""
    from resmem.vision.loader import resolve_augment

    resolved = resolve_augment(augment, data.train)
    evaluated = "8/7 resize, center crop" if resolved == "resized_crop_flip" else "whole image"
    size = data.train.image_size if data.train.paths is not None else data.train.images.shape[-1]
    return f"augment {resolved} at {size} px, evaluated on the {evaluated}"


def _dataset(dataset: dict, images_path) -> Dataset:
    data = load_dataset(dataset)
    return data if images_path is None else with_decoded(data, images_path)


def load_split(path, data: Dataset) -> dict[str, np.ndarray]:
    """The split's index arrays, checked against the dataset."""
    parts = io.load_npz(path, [*SPLIT_KEYS, "train_pool", "test_pool"])
    for pool in ("train", "test"):
        if int(parts[f"{pool}_pool"]) != len(getattr(data, pool)):
            raise ArtifactError(
                f"{path}: written for a {pool} pool of {int(parts[f'{pool}_pool'])} examples but "
                f"the dataset has {len(getattr(data, pool))}; delete it and rerun"
            )
    return parts


def _loaders(data: Dataset, parts: dict, recipe: dict, dev, batch_size: int, channels_last=False) -> dict:
    """Loaders of the rows `parts` names (train_idx, val_idx, test_idx) with the recipe's augmentation: its
    random part when an epoch is given a seed (training), its evaluation view otherwise."""
    from resmem.vision.loader import Loader

    pools = {"train": data.train, "val": data.train, "test": data.test}
    return {
        s: Loader(pools[s], parts[f"{s}_idx"], batch_size, dev, recipe["augment"], recipe["num_workers"],
                  channels_last)
        for s in SPLITS
    }  # fmt: skip


def train(
    split_path,
    out: dict,
    dataset: dict,
    spec: dict,
    recipe: dict,
    train_fraction: float,
    seed: int,
    device: str,
    threads: int,
    config: dict,
    images_path=None,
    resume=None,
    stop_epoch: int | None = None,
) -> None:
    """Train the network `spec` with `recipe` (the experiment's train section) on the training fraction of the
    `dataset` section: out["model"], out["train_log"], out["meta"], and the exact training rows it saw,
    out["train_rows"], which embed reads back as the datastore. `images_path`: a folder dataset's decoded
    images (the decode stage), served from memory. A segment of a long training (`stop_epoch`, out["segment"],
    `resume`: the previous segment's checkpoint) writes only its checkpoint (`resmem.stages.fit_and_save`)."""
    import torch

    from resmem.device import torch_device
    from resmem.train import count_parameters, seed_everything
    from resmem.vision.models import build_model

    dev = torch_device(device)
    data = _dataset(dataset, images_path)
    torch.set_num_threads(network_threads(threads, recipe, data.train.images is None))
    parts = load_split(split_path, data)
    rows = train_subset(parts["train_idx"], data.train.labels, train_fraction, dataset["split_seed"])
    parts["train_idx"] = rows
    seed_everything(seed)
    network = build_model(spec, data.num_classes, data.train.channels)
    data = normalized(data, getattr(network, "normalization", None))  # a pretrained model's own constants
    loaders = _loaders(data, parts, recipe, dev, recipe["batch_size"], recipe["channels_last"])
    log.info(
        "model %s: %d parameters; %d training examples (fraction %g); training on %s",
        spec, count_parameters(network), len(rows), train_fraction, dev,
    )  # fmt: skip
    meta = {
        "num_classes": data.num_classes,
        "in_channels": data.train.channels,
        "model": spec,
        "train_fraction": train_fraction,
        "train_examples": len(rows),
        "classes": data.classes,  # label i is classes[i]: the folder names of an image-folder dataset
        "normalization": {"mean": list(data.train.mean), "std": list(data.train.std)},
        "view": _view(data, recipe["augment"]),
        "config": config,
    }
    if recipe["epochs"] == 0:
        log.info("train.epochs is 0: the model is evaluated as built (pretrained weights as loaded), not trained")
    if "train_rows" in out:
        io.save_npz(out["train_rows"], train_idx=rows)  # before training: the checkpoint is deleted last
    fit_and_save(network, loaders["train"], loaders["val"], recipe, seed, dev, out, meta, True, resume, stop_epoch)


def load_train_rows(path) -> np.ndarray:
    return io.load_npz(path, ["train_idx"], {"train_idx": np.int64})["train_idx"]


def load_model(model_path, spec: dict | None = None):
    """(network, meta) of a checkpoint trained for the model `spec` (the config's; None: the file's own);
    pretrained weights are not fetched again, the checkpoint has them."""
    from resmem.vision.models import build_model

    def build(meta):
        spec = {**meta["model"], "pretrained": False} if "pretrained" in meta["model"] else meta["model"]
        return build_model(spec, meta["num_classes"], meta["in_channels"])

    return shared.load_model(model_path, build, "train", spec)


def embed(
    split_path,
    model_path,
    train_rows_path,
    out_path,
    dataset: dict,
    recipe: dict,
    batch_size: int,
    device: str,
    threads: int,
    images_path=None,
    spec: dict | None = None,
) -> None:
    """Features and logits of the datastore (exactly the training rows the model saw, with their row numbers)
    and of val and test, streamed to disk batch by batch, by the model `model_path` holds (trained for `spec`,
    the config's model)."""
    import torch

    from resmem.device import torch_device
    from resmem.train import use_amp
    from resmem.vision.models import extract

    dev = torch_device(device)
    model, meta = load_model(model_path, spec)
    data = _dataset(dataset, images_path)
    torch.set_num_threads(network_threads(threads, recipe, data.train.images is None))
    norm = meta.get("normalization")  # what the model was trained with
    data = normalized(data, norm and (tuple(norm["mean"]), tuple(norm["std"])))
    rows = load_train_rows(train_rows_path)
    loaders = _loaders(data, {**load_split(split_path, data), "train_idx": rows}, recipe, dev, batch_size)
    amp = use_amp(recipe, dev)

    def blocks():
        yield "train_idx", rows
        for name, loader in loaders.items():
            for emb, logits in extract(model, loader, amp=amp):
                yield f"{name}_emb", emb
                yield f"{name}_logits", logits
            yield f"{name}_y", loader.pool.labels.astype(np.int64)
            log.info("%s: %d examples embedded", name, len(loader))

    counts = {f"{s}_{kind}": len(loader) for s, loader in loaders.items() for kind in ("emb", "logits", "y")}
    queries = sum(len(loader) for s, loader in loaders.items() if s != "train")
    width = feature_width(meta["model"], data.num_classes, data.train.channels)
    sizes = RunSizes(len(rows), len(rows), width, queries, data.num_classes, 1)
    io.require_free_space(out_path, embeddings_disk_bytes(sizes), "embed")
    io.save_npz_streaming(out_path, blocks(), {"train_idx": len(rows), **counts})


def load_embeddings(path, split_path=None, train_rows_path=None) -> dict[str, np.ndarray]:
    """embeddings.npz as read-only memmaps, checked for its documented arrays, dtypes and row counts; given the
    split, for its val and test rows; given the training rows that train wrote, for holding exactly those rows
    as its datastore."""
    dtypes = {k: (np.int64 if k.endswith(("_y", "_idx")) else np.float32) for k in EMBEDDING_KEYS}
    arrays = io.load_npz(path, EMBEDDING_KEYS, dtypes, mmap=True)
    for s in SPLITS:
        n = {len(arrays[f"{s}_{kind}"]) for kind in ("emb", "logits", "y")}
        if len(n) != 1:
            raise ArtifactError(f"{path}: {s}_emb, {s}_logits and {s}_y differ in row count {sorted(n)}")
    if split_path is not None:
        parts = io.load_npz(split_path, SPLIT_KEYS)
        for s in QUERY_SPLITS:
            rows, expected = len(arrays[f"{s}_y"]), len(parts[f"{s}_idx"])
            if rows != expected:
                raise ArtifactError(
                    f"{path}: {rows} {s} rows but {split_path} has {expected}; delete it and rerun embed"
                )
    if train_rows_path is not None and not np.array_equal(arrays["train_idx"], load_train_rows(train_rows_path)):
        raise ArtifactError(
            f"{path}: its datastore is not the training rows in {train_rows_path}; delete it and rerun embed"
        )
    return arrays


def index(embeddings_path, out: dict, knn: dict, device: str, store_fraction: float = 1.0, split=None,
          train_rows=None) -> None:  # fmt: skip
    """The index over (a fraction of) the datastore's embeddings, checked first against the `split` and the
    exact `train_rows` that train wrote, where given (`resmem.stages.index`)."""
    arrays = load_embeddings(embeddings_path, split, train_rows)
    shared.index(arrays["train_emb"], out, knn, device, store_fraction)


def neighbors(index_path, rows_path, embeddings_path, out: dict, knn: dict, device: str) -> None:
    """One search at the largest k for val and test (`resmem.stages.neighbors`)."""
    arrays = load_embeddings(embeddings_path)
    queries = {s: arrays[f"{s}_emb"] for s in QUERY_SPLITS}
    shared.neighbors(index_path, rows_path, embeddings_path, arrays["train_emb"], queries, out, knn, device)


def _neighbors_of(arrays: dict, neighbors_path, embeddings_path, k_needed: int) -> dict:
    queries = {s: arrays[f"{s}_emb"] for s in QUERY_SPLITS}
    return shared.load_neighbors(neighbors_path, queries, k_needed, embeddings_path, arrays["train_emb"])


def sweep(embeddings_path, neighbors_path, out_path, knn: dict, device: str = "cpu") -> None:
    """ResMem and its baselines (soft kNN, kNN interpolation) over their grids from the one search, by the sweep
    engine on `device` (`resmem.engine`)."""
    from resmem.sweep import sweep_table

    arrays = load_embeddings(embeddings_path)
    found = _neighbors_of(arrays, neighbors_path, embeddings_path, max(knn["k"]))
    table = sweep_table(arrays, found, knn, int(knn["sweep_chunk_mb"] * 2**20), device)
    io.write_csv(out_path, table)


def predict(embeddings_path, neighbors_path, selected_path, out: dict, bins: int = 10) -> None:
    """Each method's test predictions at its selected point, by the tie rule (out["predictions"]: the labels, the
    base model's and each method's predicted class per test example), from which the aggregate tests every gain;
    and where ResMem helps: test accuracy of the base model and of ResMem per bin of the base model's confidence
    (out["confidence"], `resmem.core.accuracy_by_confidence`)."""
    from resmem.core import accuracy_by_confidence, method_predict

    arrays = load_embeddings(embeddings_path)
    chosen = read_json(selected_path)
    found = _neighbors_of(arrays, neighbors_path, embeddings_path, max(point["k"] for point in chosen.values()))
    logits, labels = arrays["test_logits"], np.asarray(arrays["test_y"])
    predicted = {"labels": labels, "base": logits.argmax(axis=1)}
    for method, point in chosen.items():
        k = point["k"]
        predicted[method] = method_predict(
            method, logits, found["test_dist"][:, :k], found["test_idx"][:, :k], arrays["train_logits"],
            arrays["train_y"], point["sigma"], point.get("temperature", 1.0), point.get("lam", 0.0),
        )  # fmt: skip
    io.save_npz(out["predictions"], **predicted)
    io.write_csv(out["confidence"], accuracy_by_confidence(logits, labels, predicted["resmem"], bins))


def select(sweep_path, out_path) -> None:
    from resmem.sweep import select_methods

    shared.select(sweep_path, out_path, select_methods)


def summarize(run: dict) -> tuple[dict, dict]:
    """One run's summary row (each method's selected point and its gain over the base model, tested on the test
    predictions: `resmem.stages.gain_columns`; per example, for the verdict over seeds, in "differences") and
    tables (its sweep and confidence bins, with the run's columns)."""
    chosen, meta = read_json(run["selected"]), read_json(run["meta"])
    predicted = shared.load_predictions(run["predictions"], PREDICTION_KEYS, dict.fromkeys(PREDICTION_KEYS, np.int64))
    row = {
        "model": run["model"],
        "train_fraction": run["train_fraction"],
        "train_examples": meta["train_examples"],
        "seed": run["seed"],
        "parameters": meta["parameters"],
        "base_test_acc": chosen["resmem"]["base_test_accuracy"],
        "epochs": meta["train"]["epochs"],
        "pretrained": bool(meta["model"].get("pretrained", False)),
        "view": meta.get("view", ""),
        "device": meta["device"],
    }
    differences = {"block": 1}
    for method in METHODS:
        prefix = "" if method == "resmem" else f"{method}_"  # ResMem's selected point: k, sigma, temperature
        row.update({f"{prefix}{p}": chosen[method][p] for p in PARAMETERS[method]})
        base, right = (predicted[m] == predicted["labels"] for m in ("base", method))
        row.update(shared.gain_columns(method, base, right, chosen[method], run=run))
        differences[f"{method}_gain"] = right.astype(np.int8) - base
    row["differences"] = differences  # resmem.verdicts.with_seed_tests
    run_columns = {"model": run["model"], "train_fraction": run["train_fraction"], "seed": run["seed"]}
    tables = {
        "sweeps": pd.read_csv(run["sweep"]).assign(**run_columns, selected_temperature=chosen["resmem"]["temperature"]),
        "confidences": pd.read_csv(run["confidence"]).assign(**run_columns),
    }
    return row, tables


def aggregate(experiment: str, runs: list[dict], out: dict, config: dict, repo_dir, stats: dict) -> None:
    """runs: one dict per model × training fraction × seed with keys model, train_fraction, seed and the
    paths selected, meta, sweep, predictions, confidence (`resmem.stages.run_records`); `stats`, the
    experiment's stats section, holds nothing for independent test examples."""
    from resmem.vision.report import write_report

    views = {run["model"]: read_json(run["meta"]).get("view") for run in runs}  # how each model saw the images
    shared.aggregate(experiment, runs, out, config, repo_dir, summarize, SUMMARY_COLUMNS, write_report, views=views)
