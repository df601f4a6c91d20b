"""Text corpora for the language-model experiments (their tokenizers: `resmem.lm.tokenizers`): a corpus config in,
token arrays per split and their provenance out.

    tokens, meta = build_corpus(cfg)    # {"train"|"val"|"test": int32 1-D array}, JSON-serializable dict

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

Folders are split by file: each file goes to val, test or train by a stable hash of (split_seed, relative
path), so adding or removing a file never moves another between splits. Within a split, files are taken in
the order of that same hash (a seeded shuffle, not alphabetical: a byte budget then samples the whole library
rather than the modules starting with "a") until the split's max_bytes is reached, the last one truncated at a
UTF-8 character boundary. Budgets count document bytes, not separators.

Documents are joined so that the model sees their boundaries: each document is followed by the separator,
"\\n\\n" for the byte tokenizer (two newlines: what ends a Python module or a paragraph anyway) and the EOS
token for a BPE tokenizer that has one ("\\n\\n" otherwise).
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import logging
import os
import platform
import re
import sysconfig
import time
from pathlib import Path

import numpy as np

from resmem.artifacts import SPLITS
from resmem.config import ConfigError
from resmem.lm.tokenizers import make_tokenizer

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
HF_DATASETS = {
    # corpus name: (dataset, config, its split for each of ours, streaming)
    "c4": ("allenai/c4", "en", {"train": "train", "val": "validation", "test": "validation"}, True),
    "wikitext103": (
        "Salesforce/wikitext",
        "wikitext-103-raw-v1",
        {"train": "train", "val": "validation", "test": "test"},
        False,  # 0.5 GB: downloaded once into the HF cache, then reusable offline (HF_DATASETS_OFFLINE=1)
    ),
}
# c4: val and test share its validation split, every other document each (even indices → val, odd → test).
C4_CARVE = {"val": 0, "test": 1}
WIKITEXT_TITLE = re.compile(r" = [^=].* = \n?")  # " = Title = " (sections are " = = Section = = ")


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


def utf8_prefix(data: bytes, limit: int) -> bytes:
    """The longest prefix of at most `limit` bytes that does not cut a UTF-8 character."""
    if len(data) <= limit:
        return data
    cut = limit
    while cut > 0 and data[cut] & 0xC0 == 0x80:  # 10xxxxxx: a continuation byte, not a character start
        cut -= 1
    return data[:cut]


def check_utf8(data: bytes, where: str) -> None:
    try:
        data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"corpus: {where} is not UTF-8 (byte {exc.start}: {data[exc.start : exc.start + 4]!r}); "
            "convert it, or leave it out with corpus.exclude"
        ) from None


def read_files(root: Path, rels):
    """(relative path, bytes) of each file in order, reading lazily: a budget stops the reads."""
    for rel in rels:
        try:
            data = (root / rel).read_bytes()
        except OSError as exc:  # a broken link, a file without read permission
            raise ConfigError(f"corpus: cannot read {root / rel} ({exc}); leave it out with corpus.exclude") from exc
        check_utf8(data, str(root / rel))
        yield rel, data


def take(docs, budget: int | None) -> tuple[list[tuple[str, bytes]], str | None]:
    """Documents (name, bytes) in order until `budget` bytes, the last one truncated; empty documents are
    skipped (they would add a bare separator). Returns (taken, the name of the truncated document or None)."""
    taken, total = [], 0
    for name, data in docs:
        if budget is not None and total >= budget:
            break
        if not data:
            continue
        if budget is not None and total + len(data) > budget:
            data = utf8_prefix(data, budget - total)
            if data:
                taken.append((name, data))
            return taken, name if data else None
        taken.append((name, data))
        total += len(data)
    return taken, None


def line_cut(data: bytes, target: int) -> int:
    """The first line boundary at or after `target`; a character boundary at target when no newline follows."""
    if target <= 0 or target >= len(data) or data[target - 1 : target] == b"\n":
        return max(0, min(target, len(data)))
    newline = data.find(b"\n", target)
    return newline + 1 if newline >= 0 else len(utf8_prefix(data, target))


# ---------------------------------------------------------------------------------------------------------------
# Sources: each returns ({split: ([(name, bytes)], truncated)}, source metadata)


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
    budgets = _budgets(cfg)
    docs = {split: take(read_files(root, splits[split]), budgets[split]) for split in SPLITS}
    return docs, {"root": str(root.resolve()), "files_listed": len(files)}


def _single_file_source(cfg: dict, path: Path) -> tuple[dict, dict]:
    data = path.read_bytes()
    check_utf8(data, str(path))
    val, test = _fractions(cfg)
    cut1 = line_cut(data, round(len(data) * (1 - val - test)))
    cut2 = max(cut1, line_cut(data, round(len(data) * (1 - test))))
    ranges = dict(zip(SPLITS, ((0, cut1), (cut1, cut2), (cut2, len(data))), strict=True))
    budgets = _budgets(cfg)
    docs = {split: take([(f"{path.name}[{a}:{b}]", data[a:b])], budgets[split]) for split, (a, b) in ranges.items()}
    return docs, {"root": str(path.resolve()), "byte_ranges": ranges}


def _hf_documents(corpus: str, split: str):
    """(name, bytes) of the documents of our `split` of a Hugging Face corpus, in the dataset's order, lazily;
    network failures (at load or while streaming) become a ConfigError that says what works offline."""
    dataset, config, hf_splits, streaming = HF_DATASETS[corpus]
    hf_split = hf_splits[split]

    def offline(exc):
        return ConfigError(
            f"corpus.name: {corpus}: the dataset {dataset} ({config}, split {hf_split}) could not be downloaded "
            f"({type(exc).__name__}: {exc}). c4 and wikitext103 need network access (or, for wikitext103, a "
            "filled Hugging Face cache); the stdlib and text corpora work offline."
        )

    try:
        datasets = importlib.import_module("datasets")
    except ImportError:
        raise ConfigError(
            f"corpus.name: {corpus} needs the optional Hugging Face `datasets` package: pip install datasets "
            '(or pip install -e ".[lm]"); the stdlib and text corpora need nothing extra'
        ) from None
    try:
        records = iter(datasets.load_dataset(dataset, config, split=hf_split, streaming=streaming))
    except Exception as exc:  # ConnectionError, HTTP errors, DatasetNotFoundError, offline-mode errors, ...
        raise offline(exc) from exc

    def texts():
        for index in itertools.count():
            try:
                record = next(records)
            except StopIteration:
                return
            except Exception as exc:  # a stream that fails midway
                raise offline(exc) from exc
            yield index, record["text"]

    if corpus == "c4":
        for index, text in itertools.islice(texts(), C4_CARVE.get(split, 0), None, 2 if split in C4_CARVE else 1):
            yield f"{hf_split}#{index}", text.encode("utf-8")
    else:
        yield from _wikitext_articles(texts(), hf_split)


def _wikitext_articles(texts, hf_split: str):
    """Wikitext records are lines; an article starts at a top-level " = Title = " line."""
    lines, first = [], 0
    for index, line in texts:
        if WIKITEXT_TITLE.fullmatch(line):
            if "".join(lines).strip():
                yield f"{hf_split}#{first}", "".join(lines).encode("utf-8")
            lines, first = [], index
        lines.append(line)
    if "".join(lines).strip():
        yield f"{hf_split}#{first}", "".join(lines).encode("utf-8")


def _hf_source(cfg: dict, corpus: str) -> tuple[dict, dict]:
    budgets = _budgets(cfg)
    if corpus == "c4":
        unbounded = [split for split in SPLITS if budgets[split] is None]
        if unbounded:
            raise ConfigError(
                f"corpus.max_bytes.{unbounded[0]}: c4 needs a byte budget for every split (the full C4 is 300+ GB); "
                "set e.g. max_bytes: {train: 100000000, val: 5000000, test: 5000000}"
            )
    docs = {split: take(_hf_documents(corpus, split), budgets[split]) for split in SPLITS}
    dataset, config, hf_splits, streaming = HF_DATASETS[corpus]
    source = {"dataset": dataset, "dataset_config": config, "dataset_splits": hf_splits}
    if corpus == "c4":
        source["carving"] = "val = even-indexed documents of c4 validation, test = odd-indexed ones"
    return docs, source


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
    return _hf_source(cfg, name)


# ---------------------------------------------------------------------------------------------------------------
# The corpus


def content_hash(docs) -> str:
    """sha256 over (name, length, bytes) of each document in order: any change of text, order or split shows."""
    h = hashlib.sha256()
    for name, data in docs:
        h.update(name.encode("utf-8") + b"\0" + len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def build_corpus(cfg: dict, tokenizer_source: str | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Token ids per split ({"train", "val", "test"}: int32 1-D arrays, each document followed by the
    separator) and a JSON-serializable metadata dict; cfg is the corpus section of an lm experiment,
    `tokenizer_source` the Hugging Face model whose tokenizer `tokenizer: model` means."""
    start = time.perf_counter()
    tokenizer = make_tokenizer(cfg, tokenizer_source)
    docs, source = _source(cfg)
    tokens, splits, files = {}, {}, {}
    for split in SPLITS:
        taken, truncated = docs[split]
        if not taken:
            raise ConfigError(
                f"corpus: the {split} split is empty: corpus.val_fraction / corpus.test_fraction (by file, of "
                f"{source.get('files_listed', 1)} file(s)) or corpus.max_bytes.{split} leave nothing for it; raise "
                "them, or add files (corpus.include/corpus.exclude, corpus.path)"
            )
        tokens[split] = tokenizer.encode_documents([data.decode("utf-8") for _, data in taken])
        splits[split] = {
            "documents": len(taken),
            "bytes": sum(len(data) for _, data in taken),
            "tokens": len(tokens[split]),
            "sha256": content_hash(taken),
            "truncated": truncated,
        }
        files[split] = [{"path": name, "bytes": len(data)} for name, data in taken]
    overall = hashlib.sha256("".join(f"{s}:{splits[s]['sha256']}\n" for s in SPLITS).encode()).hexdigest()
    meta = {
        "name": cfg.get("name", "stdlib"),
        **tokenizer.provenance(),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        **source,
        "config": json.loads(json.dumps(cfg, default=str)),
        "splits": splits,
        "sha256": overall,
        # Large (one entry per document): kept apart so that summaries can drop it with one key.
        "files": files,
    }
    log.info(
        "corpus %s: %s bytes, %s tokens in %.1fs",
        meta["name"],
        {s: splits[s]["bytes"] for s in SPLITS},
        {s: splits[s]["tokens"] for s in SPLITS},
        time.perf_counter() - start,
    )
    return tokens, meta
