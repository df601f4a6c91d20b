"""Digests computed once (resmem.digests): what a writer hashed while writing is the file's sha256 as hashlib
reads it back, the zips it wrote read as usual, and inside a workflow job no file is read only to be hashed
twice, while outside one every check reads the file."""

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from resmem import custody, digests, io

ARRAYS = {"keys": np.arange(24, dtype=np.float16).reshape(6, 4), "rows": np.arange(6, dtype=np.int64)}


def hashlib_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_all(folder: Path) -> dict[str, str]:
    """An .npz by np.savez, a streamed .npz and a faiss index, each through the hashing writer; returns the
    sha256 the writers knew of each, as `digests.sha256` gives it inside a job."""
    import faiss

    from resmem.knn import write_index

    blocks = [("keys", ARRAYS["keys"][:4]), ("keys", ARRAYS["keys"][4:]), ("rows", ARRAYS["rows"])]
    index = faiss.IndexFlatL2(4)
    index.add(ARRAYS["keys"].astype(np.float32))
    with digests.remembering():
        io.save_npz(folder / "plain.npz", **ARRAYS)
        io.save_npz_streaming(folder / "streamed.npz", iter(blocks), {"keys": 6})
        record = write_index(index, folder / "index.faiss")
        known = {name: digests.sha256(folder / name) for name in ("plain.npz", "streamed.npz", "index.faiss")}
    assert record["sha256"] == known["index.faiss"] and record["bytes"] == os.path.getsize(folder / "index.faiss")
    return known


def test_what_the_writers_hashed_is_what_hashlib_reads_back_and_the_zips_load_as_usual(tmp_path):
    known = write_all(tmp_path)
    assert known == {name: hashlib_sha256(tmp_path / name) for name in known}
    for name in ("plain.npz", "streamed.npz"):
        with zipfile.ZipFile(tmp_path / name) as archive:
            assert archive.testzip() is None  # every member's CRC-32 holds
        with np.load(tmp_path / name, allow_pickle=False) as loaded:
            assert {key: loaded[key].tolist() for key in ARRAYS} == {key: a.tolist() for key, a in ARRAYS.items()}
        np.testing.assert_array_equal(io.npz_memmap(tmp_path / name, "keys"), ARRAYS["keys"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.faiss", "plain.npz", "streamed.npz"]  # no temp


@pytest.fixture
def reads(monkeypatch):
    """The names of the files read to be hashed, in order."""
    read, real = [], digests.file_hash

    def counted(path, algorithm="sha256"):
        read.append(Path(path).name)
        return real(path, algorithm)

    monkeypatch.setattr(digests, "file_hash", counted)
    return read


def test_in_a_job_a_file_is_hashed_once_and_outside_one_every_check_reads_it(tmp_path, monkeypatch, reads):
    monkeypatch.chdir(tmp_path)
    with custody.job([], ["results/a.npz"], "make"):
        io.save_npz("results/a.npz", **ARRAYS)
    assert reads == []  # its record took the digest its writer computed
    assert custody.read_record("results/a.npz")["sha256"] == hashlib_sha256("results/a.npz")
    with custody.job(["results/a.npz"], ["results/b.json"], "use"):
        assert digests.sha256("results/a.npz") == hashlib_sha256("results/a.npz")  # a reader's own check
        io.write_json("results/b.json", {"read": True})
    assert reads == ["a.npz", "b.json"]  # the input once, for its check and its reader; the small JSON once
    for _ in range(2):
        digests.sha256("results/a.npz")
    assert reads[2:] == ["a.npz", "a.npz"]  # outside a job, each check reads the file


def test_a_file_changed_in_place_within_a_timestamp_tick_is_seen_outside_a_job(tmp_path):
    """Outside a job nothing is remembered: an edit of the same size right after a check (its mtime may not
    have moved) is hashed anew. Inside one, a file rewritten under the same name is a new file to the OS."""
    path = tmp_path / "a.bin"
    path.write_bytes(b"first")
    before = digests.sha256(path)
    with open(path, "r+b") as file:
        file.write(b"F")
    assert digests.sha256(path) == hashlib_sha256(path) != before
    with digests.remembering():
        digests.sha256(path)
        (tmp_path / "new.bin").write_bytes(b"other bytes")
        os.replace(tmp_path / "new.bin", path)
        assert digests.sha256(path) == hashlib_sha256(path)
