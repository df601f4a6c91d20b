"""Checks of what a library user passes in (`resmem.ResMem` and the scikit-learn estimators), made before any
search: each failure is a ValueError or TypeError that names the argument and what was given.

Arrays may be numpy arrays, nested lists or torch tensors on any device and of any dtype (bfloat16 and float16
included, requiring grad or not): tensors are detached and copied to the CPU, as float32 where numpy has no
such dtype.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable

import numpy as np

DEVICE_NAMES = ("auto", "cpu", "cuda")


def to_numpy(value: object, name: str) -> np.ndarray:
    """`value` as a numpy array (no copy of a numpy array); a torch tensor detached, on the CPU, and as float32
    where its dtype has no numpy twin (bfloat16)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        tensor = value.detach().cpu()
        if tensor.is_floating_point() and str(tensor.dtype) in ("torch.bfloat16", "torch.float16"):
            tensor = tensor.float()
        return tensor.numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be an array of numbers; got {type(value).__name__} ({exc})") from exc


def check_matrix(value: object, name: str, *, columns: int | None = None, what: str = "features") -> np.ndarray:
    """A 2-D array of finite real numbers with at least one row (and `columns` columns), as float32 or float64."""
    array = to_numpy(value, name)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"{name} must hold real numbers; got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"{name} must hold real numbers; got complex dtype {array.dtype}")
    if array.ndim != 2:
        hint = " (one sample: reshape it with array.reshape(1, -1))" if array.ndim == 1 else ""
        raise ValueError(f"{name} must be a 2-D array (samples × {what}); got shape {array.shape}{hint}")
    if len(array) == 0:
        raise ValueError(f"{name} has no rows (shape {array.shape}); at least one sample is needed")
    if columns is not None and array.shape[1] != columns:
        raise ValueError(f"{name} has {array.shape[1]} {what}, but the model was fitted with {columns}")
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} holds {int(bad.sum())} NaN or infinite values (the first at row {row}, column "
                         f"{column}); ResMem needs finite inputs")  # fmt: skip
    return array


def check_rows(name: str, expected: int, got: int, of: str) -> None:
    if got != expected:
        raise ValueError(f"{name} has {got} rows but {of} has {expected}: one row per sample in both")


def check_positive_int(value: object, name: str) -> int:
    """A positive integer (Python or numpy, not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer; got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def check_positive_number(value: object, name: str) -> float:
    """A finite real number > 0 (Python or numpy, not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number; got {value!r} ({type(value).__name__})")
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)


TEMPERATURE_RANGE = (1e-30, 1e30)  # the sweep engine divides by T in float32, where 1e-300 rounds to 0


def check_temperature(value: object, name: str) -> float:
    """A temperature within TEMPERATURE_RANGE (the config's `knn.temperature` bounds)."""
    value = check_positive_number(value, name)
    low, high = TEMPERATURE_RANGE
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low:g}, {high:g}] (the sweep divides by it in float32, where "
                         f"{value:g} {'rounds to 0' if value < low else 'overflows'}); got {value!r}")  # fmt: skip
    return value


def check_grid(values: object, name: str, check: Callable[[object, str], object]) -> list:
    """A non-empty list of distinct values, each passing `check` (e.g. `check_positive_int`), in the order given."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        values = [values]
    checked = [check(v, f"{name}[{i}]") for i, v in enumerate(values)]
    if not checked:
        raise ValueError(f"{name} is empty; give at least one value")
    if len(set(checked)) != len(checked):
        raise ValueError(f"{name} repeats a value: {checked}")
    return checked


def check_device(device: object) -> str:
    """The search and sweep device: "auto" (a GPU when one is visible), "cpu", "cuda", "cuda:N" or a
    torch.device; returned as one of those strings."""
    if type(device).__name__ == "device" and hasattr(device, "type"):  # a torch.device
        device = device.type if device.index is None else f"{device.type}:{device.index}"
    if isinstance(device, str) and (device in DEVICE_NAMES or re.fullmatch(r"cuda:\d+", device)):
        return device
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device; got {device!r}")


def check_labels(value: object, name: str, rows: int, of: str = "embeddings") -> np.ndarray:
    """A 1-D array of `rows` labels (as many as `of` has) of one sortable kind (numbers, strings, booleans)."""
    labels = to_numpy(value, name)
    if labels.ndim == 2 and labels.shape[1] == 1:
        raise ValueError(f"{name} must be 1-D; got shape {labels.shape} (use labels.ravel())")
    if labels.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of labels; got shape {labels.shape}")
    check_rows(name, rows, len(labels), of)
    if labels.dtype == object:
        kinds = {type(v) for v in labels}
        if len(kinds) > 1:
            raise TypeError(f"{name} mixes kinds of labels ({sorted(k.__name__ for k in kinds)}); use one kind")
    if np.issubdtype(labels.dtype, np.floating) and np.isnan(labels).any():
        raise ValueError(f"{name} holds NaN")
    return labels


def encode_labels(labels: np.ndarray, classes: np.ndarray, name: str) -> np.ndarray:
    """Each label's position in the sorted `classes`; a label not among them is an error that names it."""
    codes = np.searchsorted(classes, labels)
    inside = codes < len(classes)
    known = inside.copy()
    known[inside] = classes[codes[inside]] == labels[inside]
    if not known.all():
        unknown = np.unique(labels[~known])
        raise ValueError(f"{name} holds labels the model was not fitted with: {unknown[:10].tolist()} (fitted "
                         f"classes: {classes[:10].tolist()}{' …' if len(classes) > 10 else ''})")  # fmt: skip
    return codes.astype(np.int64)
