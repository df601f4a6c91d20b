"""Local text for the corpora (`resmem.lm.corpus`): files listed by glob, split by a stable hash, read as UTF-8
under a budget; and the three ways a stdlib or text corpus takes its splits from them (each source returns
({split: its documents (name, bytes or FileRange), lazily}, source metadata)):

  folder_source       one folder, split by file: each file goes to val, test or train by a stable hash of
                      (split_seed, relative path), so adding or removing a file never moves another between
                      splits. Within a split, files are taken in the order of that same hash (a seeded shuffle,
                      not alphabetical: a byte budget then samples the whole library rather than the modules
                      starting with "a").
  single_file_source  one file, split into contiguous line ranges (train first, then val, then test) at
                      val_fraction and test_fraction of its bytes.
  split_paths_source  the published splits, corpus.path = {train, val, test}: each split's own file (one
                      document, the whole file, read in pieces) or folder (its files listed as in a folder
                      corpus, each a document, in the order of the split_seed hash). val_fraction and
                      test_fraction have nothing to split and are refused.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import itertools
import mmap
import os
import re
from functools import partial
from pathlib import Path

from resmem.artifacts import SPLITS
from resmem.config import ConfigError
from resmem.lm.tokenizers import utf8_cut

DEFAULT_INCLUDE = {"stdlib": ("**/*.py",), "text": ("**/*",)}
# Folders never read, at any depth. stdlib: third-party packages, bytecode and the stdlib's own test suites
# (test/, tests/, idlelib/idle_test/, lib2to3/tests/, tkinter/test/, ...: generated, repetitive, and some
# deliberately not UTF-8). text: version-control metadata, which is never corpus text.
PRUNE_DIRS = {
    "stdlib": frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}),
    "text": frozenset({".git", ".hg", ".svn", "__pycache__"}),
}
READ_PIECE_BYTES = 8 << 20  # what a single-file corpus is read in, to check and hash it
FRACTIONS = ("val_fraction", "test_fraction")


# ---------------------------------------------------------------------------------------------------------------
# Files: listing, splitting by hash, reading under a budget


def glob_regex(pattern: str) -> re.Pattern:
    """A glob on POSIX relative paths as a regex: ** = any number of folders, * and ? stay within one folder.
    (fnmatch lets * cross '/', and PurePath.full_match needs Python 3.13.)"""
    pattern, out, i = pattern.removeprefix("./"), [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body[0] == "!" else body).replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def list_files(root: Path, include, exclude, prune=frozenset()) -> list[str]:
    """Relative POSIX paths of the files under root matching include and not exclude, sorted."""
    includes, excludes = [glob_regex(p) for p in include], [glob_regex(p) for p in exclude]
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in prune]  # prune: never descend into them
        rel_folder = Path(folder).relative_to(root).as_posix()
        for name in files:
            rel = name if rel_folder == "." else f"{rel_folder}/{name}"
            if any(r.fullmatch(rel) for r in includes) and not any(r.fullmatch(rel) for r in excludes):
                found.append(rel)
    return sorted(found)


def corpus_files(cfg: dict, root: Path, kind: str) -> list[str]:
    """The files of a folder that a corpus reads: its include (or the kind's default), less its exclude and the
    pruned folders."""
    return list_files(root, cfg.get("include") or DEFAULT_INCLUDE[kind], cfg.get("exclude") or (), PRUNE_DIRS[kind])


def split_key(seed: int, rel: str) -> float:
    """A stable uniform number in [0, 1) for (seed, path): the file's split and its place within the split."""
    digest = hashlib.sha256(f"{seed}\0{rel}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_files(files, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
    """Each file to val (key < val_fraction), test (next test_fraction) or train; each split in key order."""
    keyed = sorted((split_key(seed, rel), rel) for rel in files)
    out = {split: [] for split in SPLITS}
    for key, rel in keyed:
        split = "val" if key < val_fraction else "test" if key < val_fraction + test_fraction else "train"
        out[split].append(rel)
    return out


def utf8_prefix(data, limit: int):
    """The longest prefix of at most `limit` bytes that does not cut a UTF-8 character."""
    return data[: utf8_cut(data, limit)]


def check_utf8(pieces, where: str) -> None:
    """Raise a ConfigError naming `where` and the offset of the first byte that is not UTF-8 in `pieces`
    (consecutive bytes: a file read in pieces, a character possibly cut between two)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    offset = 0
    for piece in itertools.chain(pieces, [b""]):  # b"": the end, where no character may be left open
        pending = decoder.getstate()[0]  # the start of a character that the previous piece left open
        try:
            decoder.decode(piece, final=not piece)
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"corpus: {where} is not UTF-8 (byte {offset - len(pending) + exc.start}: "
                f"{exc.object[exc.start : exc.start + 4]!r}); convert it, or leave it out with corpus.exclude"
            ) from None
        offset += len(piece)


def read_files(root: Path, rels):
    """(relative path, bytes) of each file in order, reading lazily: a budget stops the reads."""
    for rel in rels:
        try:
            data = (root / rel).read_bytes()
        except OSError as exc:  # a broken link, a file without read permission
            raise ConfigError(f"corpus: cannot read {root / rel} ({exc}); leave it out with corpus.exclude") from exc
        check_utf8([data], str(root / rel))
        yield rel, data


class FileRange:
    """Bytes [start, stop) of a file, read only when asked: a single-file corpus's split is one document as large
    as its share of the file, taken and tokenized in pieces. Like bytes: len(data), data[i] (an int), data[a:b]
    (again a FileRange, nothing read); bytes(data) reads it."""

    def __init__(self, path: Path, start: int, stop: int):
        self.path, self.start, self.stop = path, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, _ = index.indices(len(self))
            return FileRange(self.path, self.start + start, self.start + max(start, stop))
        return bytes(self[index : index + 1])[0]

    def __bytes__(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.start)
            return f.read(len(self))


def byte_pieces(data, size: int):
    """data (bytes or a FileRange) as consecutive bytes of at most `size` each: a FileRange is never read whole."""
    for start in range(0, len(data), size):
        yield bytes(data[start : start + size])


def line_cut(data, target: int) -> int:
    """The first line boundary at or after `target` in data (bytes or an mmap, of which only the bytes from target
    to the next newline are read); a character boundary at target when no newline follows."""
    if target <= 0 or target >= len(data) or data[target - 1 : target] == b"\n":
        return max(0, min(target, len(data)))
    newline = data.find(b"\n", target)
    return newline + 1 if newline >= 0 else utf8_cut(data, target)


def checked_file(path: Path, key: str) -> tuple[int, str]:
    """A file's size and sha256, read once in pieces, which must be UTF-8; `key` names it in errors."""
    digest, size = hashlib.sha256(), 0

    def pieces(f):
        nonlocal size
        for piece in iter(partial(f.read, READ_PIECE_BYTES), b""):
            digest.update(piece)
            size += len(piece)
            yield piece

    try:
        with open(path, "rb") as f:
            check_utf8(pieces(f), str(path))
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path} ({exc})") from exc
    return size, digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Sources


def fractions(cfg: dict) -> tuple[float, float]:
    val, test = cfg.get("val_fraction", 0.1), cfg.get("test_fraction", 0.1)
    if val + test >= 1:
        raise ConfigError(
            f"corpus.val_fraction + corpus.test_fraction = {val} + {test} leaves no training data; make it < 1"
        )
    return val, test


def folder_source(cfg: dict, root: Path, kind: str) -> tuple[dict, dict]:
    files = corpus_files(cfg, root, kind)
    if not files:
        include = list(cfg.get("include") or DEFAULT_INCLUDE[kind])
        raise ConfigError(f"corpus.include: no file under {root} matches {include} (minus corpus.exclude)")
    val, test = fractions(cfg)
    splits = split_files(files, val, test, cfg.get("split_seed", 0))
    docs = {split: read_files(root, splits[split]) for split in SPLITS}
    return docs, {"root": str(root.resolve()), "files_listed": len(files)}


def single_file_source(cfg: dict, path: Path) -> tuple[dict, dict]:
    with open(path, "rb") as f:
        check_utf8(iter(partial(f.read, READ_PIECE_BYTES), b""), str(path))
        val, test = fractions(cfg)
        size = os.fstat(f.fileno()).st_size
        # Through an mmap, the cuts read the few bytes after each target, not the file (an empty one has no map).
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else contextlib.nullcontext(b"") as data:
            cut1 = line_cut(data, round(size * (1 - val - test)))
            cut2 = max(cut1, line_cut(data, round(size * (1 - test))))
    ranges = dict(zip(SPLITS, ((0, cut1), (cut1, cut2), (cut2, size)), strict=True))
    docs = {split: [(f"{path.name}[{a}:{b}]", FileRange(path, a, b))] for split, (a, b) in ranges.items()}
    return docs, {"root": str(path.resolve()), "byte_ranges": ranges}


def split_paths(paths: dict) -> dict[str, Path]:
    """corpus.path = {train, val, test} as existing paths, each key checked."""
    unknown = [key for key in paths if key not in SPLITS]
    if unknown:
        raise ConfigError(
            f"corpus.path.{unknown[0]}: not a split; per-split paths take exactly the keys train, val and test "
            "(each a UTF-8 file or a folder of them)"
        )
    for split in SPLITS:
        if not paths.get(split):
            raise ConfigError(
                f"corpus.path.{split}: missing; per-split paths need all of train, val and test (a UTF-8 file or "
                "a folder of them each), or give path as one file or folder to split by corpus.val_fraction and "
                "corpus.test_fraction"
            )
    out = {split: Path(str(paths[split])).expanduser() for split in SPLITS}
    for split, path in out.items():
        if not path.exists():
            raise ConfigError(
                f"corpus.path.{split}: {path} does not exist; point it at the {split} split's UTF-8 file or folder"
            )
    return out


def split_paths_source(cfg: dict, paths: dict) -> tuple[dict, dict]:
    """Each split from its own file or folder (see the module's docstring); no file in two splits."""
    given = [key for key in FRACTIONS if cfg.get(key) is not None]
    if given:
        raise ConfigError(
            f"corpus.{given[0]}: corpus.path gives the train, val and test splits their own files, so there is "
            f"nothing to split by {given[0]}; remove it (or give path as one file or folder to split)"
        )
    docs, record, owner = {}, {}, {}
    for split, root in split_paths(paths).items():
        if root.is_dir():
            files = corpus_files(cfg, root, "text")
            if not files:
                include = list(cfg.get("include") or DEFAULT_INCLUDE["text"])
                raise ConfigError(
                    f"corpus.path.{split}: no file under {root} matches corpus.include {include} (minus "
                    "corpus.exclude); add the split's files or fix the globs"
                )
            files.sort(key=partial(split_key, cfg.get("split_seed", 0)))
            docs[split] = read_files(root, files)
            record[split] = {"path": str(root.resolve()), "files_listed": len(files)}
            resolved = [(root / rel).resolve() for rel in files]
        else:
            size, sha256 = checked_file(root, f"corpus.path.{split}")
            docs[split] = [(root.name, FileRange(root, 0, size))]
            record[split] = {"path": str(root.resolve()), "bytes": size, "sha256": sha256}
            resolved = [root.resolve()]
        for path in resolved:
            if path in owner:
                raise ConfigError(
                    f"corpus.path.{split}: {path} is also in corpus.path.{owner[path]}; a file belongs to one split "
                    "(exclude it from one with corpus.exclude, or separate the folders)"
                )
            owner[path] = split
    return docs, {"paths": record}
