"""Datasets by name, and the deterministic train/val/test split that every later stage uses."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

DATASETS = ("digits",)


def _digits_file() -> Path:
    """scikit-learn's bundled copy of the UCI handwritten digits, found without importing scikit-learn
    (whose import costs seconds in every job)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("dataset 'digits' needs scikit-learn installed (it ships the data file)")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N×C×H×W float32 in [0, 1]) and labels (N, int64)."""
    if name == "digits":
        table = np.loadtxt(_digits_file(), delimiter=",", dtype=np.float32)  # 64 pixels (0..16), then the label
        images = (table[:, :-1] / 16.0).reshape(-1, 1, 8, 8)
        return np.ascontiguousarray(images), table[:, -1].astype(np.int64)
    raise ValueError(f"config key dataset.name: unknown dataset {name!r}; known: {list(DATASETS)}")


def _stratified_take(labels: np.ndarray, candidates: np.ndarray, fraction: float, rng) -> np.ndarray:
    """About `fraction` of `candidates` from every class (at least one of each class with two or more)."""
    taken = []
    for cls in np.unique(labels[candidates]):
        members = rng.permutation(candidates[labels[candidates] == cls])
        count = int(round(fraction * len(members)))
        taken.append(members[: min(max(count, 1), len(members) - 1) if len(members) > 1 else 0])
    return np.sort(np.concatenate(taken))


def make_split(labels: np.ndarray, test_fraction: float, val_fraction: float, seed: int) -> dict:
    """Stratified, disjoint index arrays train_idx/val_idx/test_idx covering every example, each sorted.

    val is carved from the non-test part, so val_fraction is a fraction of the training data."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    everything = np.arange(len(labels))
    test = _stratified_take(labels, everything, test_fraction, rng)
    rest = np.setdiff1d(everything, test)
    val = _stratified_take(labels, rest, val_fraction, rng)
    return {"train_idx": np.setdiff1d(rest, val), "val_idx": val, "test_idx": test}
