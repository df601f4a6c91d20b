"""File digests, each computed once per workflow job: while a file is written, or on its first read.

An artifact's sha256 is checked by its job before the job runs (`resmem.custody`) and again by the reader that
loads it (`resmem.knn.read_index`, `resmem.model_files`), and recorded after it is written. At paper size (a
180 GB datastore) each of those passes would cost minutes, so a digest is computed once and remembered for the
file as the operating system sees it (device, inode, size, modification time), as git's index does: a file
written or changed since then is hashed anew. Writers hash what they write as they write it
(`HashingWriter`), so that no file is read back only to be hashed.

Digests are remembered only inside a workflow job (`remembering`, entered by `resmem.custody.job`), where each
file has one writer and is not edited while the job runs. Anywhere else (the library, a stage called from
Python) every check reads the file: an edit within the file system's timestamp tick (milliseconds) would keep
the identity a remembered digest is looked up by.
"""

from __future__ import annotations

import contextlib
import hashlib
import os

_known: dict[tuple, str] | None = None  # in a job: the file's `_identity` -> its sha256


def file_hash(path, algorithm: str = "sha256") -> str:
    """The hex digest of a file, read in 16 MiB pieces (always read: see `sha256` for the remembered one)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while piece := f.read(16 << 20):
            digest.update(piece)
    return digest.hexdigest()


def _identity(path) -> tuple:
    status = os.stat(path)
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


@contextlib.contextmanager
def remembering():
    """Within this block, each file is hashed once (`sha256`, `remember`)."""
    global _known
    _known = {}
    try:
        yield
    finally:
        _known = None


def sha256(path) -> str:
    """The sha256 of a file: within `remembering`, computed on the first call for this version of the file or
    noted while it was written (`remember`); elsewhere, read every time."""
    if _known is None:
        return file_hash(path)
    identity = _identity(path)
    if identity not in _known:
        _known[identity] = file_hash(path)
    return _known[identity]


def remember(path, hexdigest: str) -> None:
    """Note the sha256 of the file now at `path`, computed while it was written (within `remembering`)."""
    if _known is not None:
        _known[_identity(path)] = hexdigest


class HashingWriter:
    """A binary file that writes only forward and hashes what it writes, so that its sha256 and size are known
    once it is written, without reading it back. Each piece is hashed by a second thread while this one writes
    it (hashlib and file writes both release the GIL), so the two overlap. It has no seek: zipfile then puts
    each member's sizes after its data (a data descriptor) instead of seeking back to patch its header, which
    every zip reader and `resmem.io.npz_memmap` read as usual. Use it as a context manager."""

    def __init__(self, file):
        from concurrent.futures import ThreadPoolExecutor

        self.file, self.size, self._digest = file, 0, hashlib.sha256()
        self._hasher, self._hashing = ThreadPoolExecutor(1, thread_name_prefix="sha256"), None

    def write(self, data) -> int:
        data = bytes(data)  # the caller may reuse its buffer once this returns, while the hash still reads it
        self._wait()
        self._hashing = self._hasher.submit(self._digest.update, data)
        self.file.write(data)  # a buffered file writes all of it, or raises
        self.size += len(data)
        return len(data)

    def _wait(self) -> None:
        if self._hashing is not None:
            self._hashing.result()

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.file.flush()

    def hexdigest(self) -> str:
        self._wait()
        return self._digest.hexdigest()

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._hasher.shutdown()
