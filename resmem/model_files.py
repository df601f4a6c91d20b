"""A fitted `resmem.ResMem` on disk, without pickle: a folder of three files, each checked before it is parsed.

    arrays.npz    the training logits and the labels as column numbers (read by the hardened `resmem.io.load_npz`)
    index.faiss   the faiss index (read by `resmem.knn.read_index` once its size and sha256 match)
    resmem.json   format and version, the hyperparameters, the classes, each file's bytes and sha256, and the
                  sha256 of its own content; written last, so a folder without it holds no complete model

Loading reads nothing but these three names inside the folder: no path in the JSON is followed, and nothing in
any of the files can execute. A changed byte in any of them is refused with the file named.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from resmem.digests import sha256
from resmem.io import ArtifactError, load_npz, save_npz, write_json

if TYPE_CHECKING:
    from resmem.estimator import ResMem

FORMAT, VERSION = "resmem-model", 1
ARRAYS, INDEX, METADATA = "arrays.npz", "index.faiss", "resmem.json"
REMEDY = "save the model again with ResMem.save"


def _content_hash(metadata: dict) -> str:
    """sha256 of the metadata's canonical JSON, its own `sha256` entry left out."""
    content = {key: value for key, value in metadata.items() if key != "sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def save_model(model: ResMem, folder: str | Path) -> None:
    """Write `model` (fitted) into `folder` (created if missing; these three files replaced atomically)."""
    import resmem
    from resmem.checks import check_device
    from resmem.knn import write_index

    if not hasattr(model, "index_"):
        raise AttributeError(f"this {type(model).__name__} is not fitted yet; fit it before saving")
    try:
        classes = json.loads(json.dumps(model.classes_.tolist()))
    except TypeError as exc:
        raise TypeError(f"classes_ of kind {model.classes_.dtype} cannot be saved as JSON ({exc}); use numbers, "
                        "strings or booleans as labels") from exc  # fmt: skip
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_npz(folder / ARRAYS, train_logits=model.train_logits_, train_codes=model.train_codes_)
    params = {**model.get_params(), "device": check_device(model.device)}
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "class": type(model).__name__,
        "resmem_version": resmem.__version__,
        "params": params,
        "classes": classes,
        "classes_dtype": model.classes_.dtype.str,
        "n_features_in": int(model.n_features_in_),
        "files": {
            ARRAYS: {"bytes": os.path.getsize(folder / ARRAYS), "sha256": sha256(folder / ARRAYS)},
            INDEX: write_index(model.index_, folder / INDEX),
        },  # fmt: skip
    }
    write_json(folder / METADATA, {**metadata, "sha256": _content_hash(metadata)})


def _metadata(folder: Path) -> dict:
    path = folder / METADATA
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved model here (ResMem.save writes {METADATA}, {ARRAYS} and {INDEX})")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc}); {REMEDY}") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a saved ResMem model (no format {FORMAT!r})")
    if metadata.get("version") != VERSION:
        raise ArtifactError(f"{path}: format version {metadata.get('version')!r}; this resmem reads version "
                            f"{VERSION}")  # fmt: skip
    if metadata.get("sha256") != _content_hash(metadata):
        raise ArtifactError(f"{path}: its content does not match its recorded sha256 (changed since it was "
                            f"saved); {REMEDY}")  # fmt: skip
    return metadata


def load_model(cls: type[ResMem], folder: str | Path) -> ResMem:
    """The model `save_model` wrote into `folder`, as an instance of `cls`."""
    from resmem.knn import read_index

    folder = Path(folder)
    metadata = _metadata(folder)
    arrays_path, record = folder / ARRAYS, metadata["files"][ARRAYS]
    if (
        not arrays_path.is_file()
        or os.path.getsize(arrays_path) != record["bytes"]
        or (sha256(arrays_path) != record["sha256"])
    ):
        raise ArtifactError(f"{arrays_path}: missing, or not the file ResMem.save wrote (size or sha256 differ "
                            f"from {METADATA}'s record); {REMEDY}")  # fmt: skip
    arrays = load_npz(arrays_path, ["train_logits", "train_codes"], dtypes={"train_codes": np.int64})
    if not (folder / INDEX).is_file():
        raise ArtifactError(f"{folder / INDEX}: missing; {REMEDY}")
    index = read_index(folder / INDEX, metadata["files"][INDEX], remedy=REMEDY)
    model = cls(**metadata["params"])
    model.classes_ = np.array(metadata["classes"], dtype=np.dtype(metadata["classes_dtype"]))
    model.train_logits_, model.train_codes_ = arrays["train_logits"], arrays["train_codes"]
    model.index_, model.n_features_in_ = index, metadata["n_features_in"]
    rows, columns = model.train_logits_.shape
    if not (rows == len(model.train_codes_) == index.ntotal and columns == len(model.classes_)):
        raise ArtifactError(f"{folder}: its parts disagree ({rows} × {columns} logits, {len(model.train_codes_)} "
                            f"labels, {index.ntotal} indexed, {len(model.classes_)} classes); {REMEDY}")  # fmt: skip
    return model
