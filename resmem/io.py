"""Artifacts: atomic writes, checked loads, provenance."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import numpy as np

PROVENANCE_PACKAGES = ("torch", "torchvision", "faiss", "snakemake", "numpy")


class ArtifactError(ValueError):
    """An input file is missing, truncated or does not match what the stage expects."""


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds, so that a
    killed job never leaves a half-written artifact that looks finished."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_npz(path, **arrays) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_npz(path, keys, dtypes=None) -> dict[str, np.ndarray]:
    """Load the named arrays, failing with a message that names the file when one is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise ArtifactError(
                    f"{path}: missing arrays {missing} (has {sorted(data.files)}); rerun the stage that writes it"
                )
            arrays = {k: data[k] for k in keys}
    except ArtifactError:
        raise
    except Exception as exc:  # zipfile/pickle/IO errors of a truncated file
        raise ArtifactError(f"{path}: cannot be read ({exc}); delete it and rerun the stage that writes it") from exc
    for key, dtype in (dtypes or {}).items():
        if arrays[key].dtype != dtype:
            raise ArtifactError(f"{path}: array {key!r} has dtype {arrays[key].dtype}, expected {dtype}")
    return arrays


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def write_csv(path, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def package_versions(names=PROVENANCE_PACKAGES) -> dict[str, str | None]:
    """Installed versions, read from the package metadata (no import); faiss ships as faiss-gpu or faiss-cpu."""
    aliases = {"faiss": ("faiss-gpu", "faiss-cpu", "faiss")}
    versions = {}
    for name in names:
        versions[name] = None
        for dist in aliases.get(name, (name,)):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                versions[name] = (
                    f"{importlib.metadata.version(dist)} ({dist})" if dist != name else importlib.metadata.version(dist)
                )
                break
    versions["python"] = platform.python_version()
    return versions


def git_commit(repo_dir) -> str | None:
    """HEAD of the workflow's checkout, with '-dirty' when it has uncommitted changes; None outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo_dir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")
