"""Embeddings computed elsewhere (`embeddings:` in an image experiment): the user's file checked array by array
before any job runs, then written as the embeddings.npz that index, neighbors, sweep and confidence read, with
a stratified val split carved from train where the file has none."""

from __future__ import annotations

import logging
import math
import zipfile

import numpy as np

from resmem import io, provenance
from resmem.artifacts import SPLITS
from resmem.config import ConfigError
from resmem.vision.artifacts import EMBEDDING_KEYS
from resmem.vision.data import stratified_take

log = logging.getLogger("resmem")

REQUIRED = tuple(f"{split}_{kind}" for split in ("train", "test") for kind in ("emb", "logits", "y"))
VAL = tuple(f"val_{kind}" for kind in ("emb", "logits", "y"))
CHECK_ROWS = 65_536  # rows read at a time for the NaN/inf check: memory stays bounded for any file


KIND_OVERFLOWS = {"emb": "their squared distances overflow", "logits": "they overflow"}


def float32_limit(kind: str, width: int) -> float:
    """The largest magnitude float32 holds for an array: embeddings so that a squared distance, at most
    width × (2·max)², stays finite; logits so that their cast does."""
    largest = float(np.finfo(np.float32).max)
    return math.sqrt(largest / (4 * width)) if kind == "emb" else largest


def _array(path, key: str) -> np.ndarray:
    """A memmap of an array of an uncompressed .npz; an array of a compressed one (np.savez_compressed) is read.
    Either is checked by `resmem.io.load_npz` (a plain, native dtype that fits its own member)."""
    with zipfile.ZipFile(path) as archive:
        stored = archive.getinfo(f"{key}.npy").compress_type == zipfile.ZIP_STORED
    return io.load_npz(path, [key], mmap=stored)[key]


def check_file(path, at: str) -> dict[str, np.ndarray]:
    """The arrays of a user's embeddings file (memmaps), checked: the required arrays present, 2-D float
    embeddings and logits and 1-D integer labels, one row count per split, one embedding width and one logit
    width (the number of classes) across splits, labels in [0, classes), no NaN or inf. A failure is a
    ConfigError naming `at` (the config key), the file and the array."""
    try:
        with np.load(path, allow_pickle=False) as data:
            names = set(data.files)
    except FileNotFoundError:
        raise ConfigError(f"invalid config at {at}.path: {path} does not exist") from None
    except Exception as exc:
        raise ConfigError(f"invalid config at {at}.path: {path} is not a readable .npz file ({exc})") from None
    missing = [k for k in REQUIRED if k not in names]
    has_val = [k for k in VAL if k in names]
    if has_val and len(has_val) != len(VAL):
        missing += [k for k in VAL if k not in names]
    if missing:
        raise ConfigError(f"invalid config at {at}: {path} lacks the arrays {missing} (has {sorted(names)})")
    splits = ("train", "val", "test") if has_val else ("train", "test")
    try:
        arrays = {f"{s}_{kind}": _array(path, f"{s}_{kind}") for s in splits for kind in ("emb", "logits", "y")}
    except io.ArtifactError as exc:
        raise ConfigError(f"invalid config at {at}: {exc}") from None

    def fail(name: str, problem: str):
        raise ConfigError(f"invalid config at {at}: {path}, array {name}: {problem}")

    for name, array in arrays.items():
        label = name.endswith("_y")
        if array.ndim != (1 if label else 2):
            fail(name, f"has shape {array.shape}; expected {'(rows,)' if label else '(rows, width)'}")
        if label != np.issubdtype(array.dtype, np.integer) or not (label or np.issubdtype(array.dtype, np.floating)):
            fail(name, f"has dtype {array.dtype}; expected {'integers' if label else 'floats'}")
        if not label and array.shape[1] == 0:
            fail(name, f"has shape {array.shape}: no {'features' if name.endswith('_emb') else 'classes'}")
    for s in splits:
        rows = {k: len(arrays[f"{s}_{k}"]) for k in ("emb", "logits", "y")}
        if len(set(rows.values())) != 1:
            fail(f"{s}_emb/{s}_logits/{s}_y", f"row counts differ {rows}")
        if rows["y"] == 0:
            fail(f"{s}_y", "has no rows")
    for kind in ("emb", "logits"):
        widths = {s: arrays[f"{s}_{kind}"].shape[1] for s in splits}
        if len(set(widths.values())) != 1:
            fail(f"*_{kind}", f"widths differ across splits {widths}")
    classes = arrays["train_logits"].shape[1]
    for s in splits:
        labels = arrays[f"{s}_y"]
        if labels.min() < 0 or labels.max() >= classes:
            fail(f"{s}_y", f"labels span [{labels.min()}, {labels.max()}] but the logits have {classes} classes "
                           f"(labels must lie in [0, {classes}))")  # fmt: skip
        for kind in ("emb", "logits"):
            array = arrays[f"{s}_{kind}"]
            largest = float32_limit(kind, array.shape[1])
            for start in range(0, len(array), CHECK_ROWS):
                block = array[start : start + CHECK_ROWS]
                if not np.isfinite(block).all():
                    fail(f"{s}_{kind}", "holds NaN or inf values")
                peak = float(np.abs(block).max()) if block.size else 0.0
                if peak > largest:
                    fail(f"{s}_{kind}", f"holds values up to {peak:.3g}, above {largest:.3g}: in float32 (the index "
                                        f"and the sweep) {KIND_OVERFLOWS[kind]}; rescale them")  # fmt: skip
    return arrays


def import_embeddings(path, out_path, at: str, val_fraction: float, split_seed: int) -> dict:
    """The user's file (checked) as an embeddings.npz: float32 embeddings and logits, int64 labels, `train_idx`
    = the rows of the file's train arrays that form the datastore (all of them, or those left after carving a
    stratified `val_fraction` out as val). Returns the row counts per split."""
    arrays = check_file(path, at)
    if "val_y" in arrays:
        train_rows, val_rows = np.arange(len(arrays["train_y"])), None
    else:
        labels = np.asarray(arrays["train_y"])
        everything = np.arange(len(labels))
        val_rows = stratified_take(labels, everything, val_fraction, np.random.default_rng(split_seed))
        train_rows = np.setdiff1d(everything, val_rows)
    sources = {"train": ("train", train_rows), "val": ("val", None) if val_rows is None else ("train", val_rows),
               "test": ("test", None)}  # fmt: skip

    def rows_of(split):
        source, rows = sources[split]
        n = len(arrays[f"{source}_y"])
        return np.arange(n) if rows is None else rows

    def blocks():
        yield "train_idx", train_rows
        for split, (source, _) in sources.items():
            rows = rows_of(split)
            for start in range(0, len(rows), CHECK_ROWS):
                chunk = rows[start : start + CHECK_ROWS]
                yield f"{split}_emb", np.asarray(arrays[f"{source}_emb"][chunk], np.float32)
                yield f"{split}_logits", np.asarray(arrays[f"{source}_logits"][chunk], np.float32)
                yield f"{split}_y", np.asarray(arrays[f"{source}_y"][chunk], np.int64)

    counts = {s: len(rows_of(s)) for s in SPLITS}
    rows = {k: counts[k.split("_")[0]] for k in EMBEDDING_KEYS if k != "train_idx"}
    io.save_npz_streaming(out_path, blocks(), {"train_idx": len(train_rows), **rows})
    return counts


def check_config_files(config: dict) -> None:
    """Every embeddings file of the config's image experiments, checked (`check_file`) before any job runs."""
    for name, experiment in (config.get("experiments") or {}).items():
        for model, entry in (experiment.get("embeddings") or {}).items():
            check_file(entry["path"], f"experiments.{name}.embeddings.{model}")


def embeddings_from_file(entry: dict, out: dict, at: str, dataset: dict, config: dict) -> None:
    """A model's embeddings computed elsewhere (the config's `embeddings.<model>` entry, key path `at`) as the
    run's embeddings.npz (out["embeddings"]) and the train_meta.json the aggregate reads (out["meta"])."""
    counts = import_embeddings(entry["path"], out["embeddings"], at, dataset["val_fraction"], dataset["split_seed"])
    log.info("%s: %s rows per split", entry["path"], counts)
    meta = {
        "parameters": entry["parameters"],
        "device": "elsewhere",
        "train": {"epochs": 0},
        "model": {"embeddings": entry["path"], "pretrained": True},
        "train_fraction": 1.0,
        "train_examples": counts["train"],
        "view": f"embeddings from {entry['path']}",
        "versions": provenance.package_versions(),
        "config": config,
    }
    io.write_json(out["meta"], meta)
