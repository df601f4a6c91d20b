"""What a result records about the code that made it: the installed versions, the git commit, and a hash of the
package's source that does not depend on where it lies."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import platform
import subprocess
from pathlib import Path

PROVENANCE_PACKAGES = ("torch", "torchvision", "faiss", "snakemake", "numpy")


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


def source_hash(package_dir=None) -> str:
    """sha256 of the package's source: every *.py and *.yaml file below `package_dir` (default: the installed
    resmem package), __pycache__ skipped, as sorted relative POSIX paths and bytes. Beside a '-dirty' commit it
    tells which uncommitted code a result came from; it does not depend on where the package lies."""
    if package_dir is None:
        import resmem

        package_dir = Path(resmem.__file__).parent
    root = Path(package_dir)
    files = sorted(
        (path.relative_to(root).as_posix(), path)
        for path in root.rglob("*")
        if path.suffix in (".py", ".yaml") and "__pycache__" not in path.relative_to(root).parts and path.is_file()
    )
    digest = hashlib.sha256()
    for name, path in files:
        data = path.read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())  # the length delimits a file from the next
        digest.update(data)
    return digest.hexdigest()
