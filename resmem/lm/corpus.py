"""Text corpora for the language-model experiments (their tokenizers: `resmem.lm.tokenizers`): a corpus config in,
token arrays per split and their provenance out.

    meta = write_corpus(npz_path, cfg)  # {split}_tokens int32 1-D arrays into npz_path; a JSON-serializable dict
    tokens, meta = build_corpus(cfg)    # the same arrays in memory, {"train"|"val"|"test": ...}, for small corpora

Corpora (cfg["name"]):
  stdlib       the source of the running Python's standard library (offline, ~12 MB of .py on CPython 3.11):
               its root, the Python version and a content hash go into the metadata, so a result names the
               exact text it was trained on.
  text         local UTF-8 files: a folder (split by file, like stdlib) or one file (split into contiguous
               line ranges: train first, then val, then test).
  c4           allenai/c4 "en" through Hugging Face `datasets`, streamed: train = its train split; val and test
               = alternate documents of its validation split (even → val, odd → test), so both come from
               the same distribution without knowing the split's length up front. Needs max_bytes per split.
  wikitext103  Salesforce/wikitext "wikitext-103-raw-v1" with its own train/validation/test splits; its
               records are lines, regrouped into articles at the " = Title = " headings.
               (These two: `resmem.lm.hf_corpora`.)

Folders are split by file: each file goes to val, test or train by a stable hash of (split_seed, relative
path), so adding or removing a file never moves another between splits. Within a split, files are taken in
the order of that same hash (a seeded shuffle, not alphabetical: a byte budget then samples the whole library
rather than the modules starting with "a") until the split's max_bytes is reached, the last one truncated at a
UTF-8 character boundary. Budgets count document bytes, not separators.

Documents are joined so that the model sees their boundaries: each document is followed by the separator,
"\\n\\n" for the byte tokenizer (two newlines: what ends a Python module or a paragraph anyway) and the EOS
token for a BPE tokenizer that has one ("\\n\\n" otherwise).

Documents stream from the source through the tokenizer into the file, so the stage's peak memory is about one
tokenize batch (TOKENIZE_CHUNK_BYTES of text and its ids) plus the largest document held whole (a folder's largest
file, a dataset's longest article; a single file is read in pieces) plus the tokenizer, whatever the corpus length.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import itertools
import json
import logging
import mmap
import os
import platform
import re
import sysconfig
import time
from functools import partial
from pathlib import Path

import numpy as np

from resmem import io
from resmem.artifacts import SPLITS
from resmem.config import ConfigError
from resmem.lm.hf_corpora import HF_DATASETS, hf_source
from resmem.lm.tokenizers import TOKENIZE_CHUNK_BYTES, encode_stream, make_tokenizer, utf8_cut

log = logging.getLogger("resmem")

CORPORA = ("stdlib", "text", "c4", "wikitext103")
DEFAULT_INCLUDE = {"stdlib": ("**/*.py",), "text": ("**/*",)}
# Folders never read, at any depth. stdlib: third-party packages, bytecode and the stdlib's own test suites
# (test/, tests/, idlelib/idle_test/, lib2to3/tests/, tkinter/test/, ...: generated, repetitive, and some
# deliberately not UTF-8). text: version-control metadata, which is never corpus text.
PRUNE_DIRS = {
    "stdlib": frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}),
    "text": frozenset({".git", ".hg", ".svn", "__pycache__"}),
}
READ_PIECE_BYTES = 8 << 20  # what a single-file corpus is read in, to check and hash it


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


class SplitRecord:
    """What the metadata says of a split, gathered by `take` as its documents stream past, and its token count."""

    def __init__(self):
        self.files: list[dict] = []  # {"path": name, "bytes": length} of each document
        self.truncated: str | None = None
        self.tokens = 0
        # Over (name, length, bytes) of each document in order: any change of text, order or split shows.
        self.digest = hashlib.sha256()

    def summary(self) -> dict:
        return {
            "documents": len(self.files),
            "bytes": sum(f["bytes"] for f in self.files),
            "tokens": self.tokens,
            "sha256": self.digest.hexdigest(),
            "truncated": self.truncated,
        }


def take(docs, budget: int | None, record: SplitRecord):
    """Documents (name, data) in order until `budget` bytes, the last one truncated, lazily: each is read only
    once the previous one is consumed. Empty documents are skipped (they would add a bare separator). Each one
    taken is recorded before it is yielded: its name and length, its bytes into the sha256, and whether it was
    the truncated one."""
    total = 0
    for name, data in docs:
        if budget is not None and total >= budget:
            return
        if not data:
            continue
        truncated = budget is not None and total + len(data) > budget
        if truncated:
            data = utf8_prefix(data, budget - total)
            if not data:
                return
            record.truncated = name
        record.files.append({"path": name, "bytes": len(data)})
        record.digest.update(name.encode("utf-8") + b"\0" + len(data).to_bytes(8, "little"))
        for piece in byte_pieces(data, READ_PIECE_BYTES):
            record.digest.update(piece)
        total += len(data)
        yield name, data
        if truncated:
            return


def line_cut(data, target: int) -> int:
    """The first line boundary at or after `target` in data (bytes or an mmap, of which only the bytes from target
    to the next newline are read); a character boundary at target when no newline follows."""
    if target <= 0 or target >= len(data) or data[target - 1 : target] == b"\n":
        return max(0, min(target, len(data)))
    newline = data.find(b"\n", target)
    return newline + 1 if newline >= 0 else utf8_cut(data, target)


# ---------------------------------------------------------------------------------------------------------------
# Sources: each returns ({split: its documents (name, bytes or FileRange), lazily}, source metadata)


def _budgets(cfg: dict) -> dict[str, int | None]:
    budgets = cfg.get("max_bytes") or {}
    return {split: budgets.get(split) for split in SPLITS}


def _fractions(cfg: dict) -> tuple[float, float]:
    val, test = cfg.get("val_fraction", 0.1), cfg.get("test_fraction", 0.1)
    if val + test >= 1:
        raise ConfigError(
            f"corpus.val_fraction + corpus.test_fraction = {val} + {test} leaves no training data; make it < 1"
        )
    return val, test


def _folder_source(cfg: dict, root: Path, kind: str) -> tuple[dict, dict]:
    include = cfg.get("include") or DEFAULT_INCLUDE[kind]
    files = list_files(root, include, cfg.get("exclude") or (), PRUNE_DIRS[kind])
    if not files:
        raise ConfigError(f"corpus.include: no file under {root} matches {list(include)} (minus corpus.exclude)")
    val, test = _fractions(cfg)
    splits = split_files(files, val, test, cfg.get("split_seed", 0))
    docs = {split: read_files(root, splits[split]) for split in SPLITS}
    return docs, {"root": str(root.resolve()), "files_listed": len(files)}


def _single_file_source(cfg: dict, path: Path) -> tuple[dict, dict]:
    with open(path, "rb") as f:
        check_utf8(iter(partial(f.read, READ_PIECE_BYTES), b""), str(path))
        val, test = _fractions(cfg)
        size = os.fstat(f.fileno()).st_size
        # Through an mmap, the cuts read the few bytes after each target, not the file (an empty one has no map).
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else contextlib.nullcontext(b"") as data:
            cut1 = line_cut(data, round(size * (1 - val - test)))
            cut2 = max(cut1, line_cut(data, round(size * (1 - test))))
    ranges = dict(zip(SPLITS, ((0, cut1), (cut1, cut2), (cut2, size)), strict=True))
    docs = {split: [(f"{path.name}[{a}:{b}]", FileRange(path, a, b))] for split, (a, b) in ranges.items()}
    return docs, {"root": str(path.resolve()), "byte_ranges": ranges}


def _source(cfg: dict) -> tuple[dict, dict]:
    name = cfg.get("name", "stdlib")
    if name not in CORPORA:
        raise ConfigError(f"corpus.name: {name!r} is not one of {list(CORPORA)}")
    if name != "text" and cfg.get("path") is not None:
        raise ConfigError(f"corpus.path ({cfg['path']}) is only used with name: text (name is {name})")
    if name in HF_DATASETS and (cfg.get("include") or cfg.get("exclude")):
        raise ConfigError(f"corpus.include/corpus.exclude select files; {name} has none: remove them")
    if name == "stdlib":
        return _folder_source(cfg, Path(sysconfig.get_paths()["stdlib"]), "stdlib")
    if name == "text":
        if cfg.get("path") is None:
            raise ConfigError("corpus.path: the text corpus needs path: a UTF-8 file or a folder of them")
        path = Path(cfg["path"]).expanduser()
        if not path.exists():
            raise ConfigError(f"corpus.path: {path} does not exist (a UTF-8 file or a folder of them)")
        return _folder_source(cfg, path, "text") if path.is_dir() else _single_file_source(cfg, path)
    return hf_source(name, _budgets(cfg))


# ---------------------------------------------------------------------------------------------------------------
# The corpus


def corpus_blocks(cfg: dict, meta: dict, tokenizer_source: str | None = None, chunk: int = TOKENIZE_CHUNK_BYTES):
    """(f"{split}_tokens", int32 block) of every split: its documents, each followed by the separator, tokenized
    `chunk` bytes of text at a time. Once exhausted, `meta` (filled in place) holds the JSON-serializable
    metadata. cfg is the corpus section of an lm experiment, `tokenizer_source` the Hugging Face model whose
    tokenizer `tokenizer: model` means."""
    start = time.perf_counter()
    tokenizer = make_tokenizer(cfg, tokenizer_source)
    docs, source = _source(cfg)
    budgets = _budgets(cfg)
    records = {split: SplitRecord() for split in SPLITS}
    # The small splits first: an empty one stops the stage before the training split is tokenized.
    for split in reversed(SPLITS):
        for block in encode_stream(tokenizer, take(docs[split], budgets[split], records[split]), chunk):
            records[split].tokens += len(block)
            yield f"{split}_tokens", block
        if not records[split].files:
            raise ConfigError(
                f"corpus: the {split} split is empty: corpus.val_fraction / corpus.test_fraction (by file, of "
                f"{source.get('files_listed', 1)} file(s)) or corpus.max_bytes.{split} leave nothing for it; raise "
                "them, or add files (corpus.include/corpus.exclude, corpus.path)"
            )
    splits = {split: records[split].summary() for split in SPLITS}
    overall = hashlib.sha256("".join(f"{s}:{splits[s]['sha256']}\n" for s in SPLITS).encode()).hexdigest()
    meta.update(
        {
            "name": cfg.get("name", "stdlib"),
            **tokenizer.provenance(),
            "python_version": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            **source,
            "config": json.loads(json.dumps(cfg, default=str)),
            "splits": splits,
            "sha256": overall,
            # Large (one entry per document): kept apart so that summaries can drop it with one key.
            "files": {split: records[split].files for split in SPLITS},
        }
    )
    log.info(
        "corpus %s: %s bytes, %s tokens in %.1fs",
        meta["name"],
        {s: splits[s]["bytes"] for s in SPLITS},
        {s: splits[s]["tokens"] for s in SPLITS},
        time.perf_counter() - start,
    )


def write_corpus(npz_path, cfg: dict, tokenizer_source: str | None = None, chunk: int = TOKENIZE_CHUNK_BYTES) -> dict:
    """The corpus's token arrays into npz_path (f"{split}_tokens", int32 1-D), written as they are tokenized, and
    its metadata returned; see corpus_blocks."""
    meta = {}
    io.save_npz_streaming(npz_path, corpus_blocks(cfg, meta, tokenizer_source, chunk))
    return meta


def build_corpus(
    cfg: dict, tokenizer_source: str | None = None, chunk: int = TOKENIZE_CHUNK_BYTES
) -> tuple[dict[str, np.ndarray], dict]:
    """Token ids per split ({"train", "val", "test"}: int32 1-D arrays) and the metadata, in memory: for corpora
    that fit (tests, small experiments); see corpus_blocks."""
    meta, blocks = {}, {split: [] for split in SPLITS}
    for key, block in corpus_blocks(cfg, meta, tokenizer_source, chunk):
        blocks[key.removesuffix("_tokens")].append(block)
    return {split: np.concatenate(blocks[split]) for split in SPLITS}, meta
