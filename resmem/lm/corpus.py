"""Text corpora for the language-model experiments (their tokenizers: `resmem.lm.tokenizers`): a corpus config in,
token arrays per split and their provenance out.

    meta = write_corpus(npz_path, cfg)  # {split}_tokens int32 1-D arrays into npz_path; a JSON-serializable dict
    tokens, meta = build_corpus(cfg)    # the same arrays in memory, {"train"|"val"|"test": ...}, for small corpora

Corpora (cfg["name"]):
  stdlib       the source of the running Python's standard library (offline, ~12 MB of .py on CPython 3.11):
               its root, the Python version and a content hash go into the metadata, so a result names the
               exact text it was trained on.
  text         local UTF-8 files, corpus.path: a folder (split by file, like stdlib), one file (split into
               contiguous line ranges: train first, then val, then test), or {train, val, test}: each split's
               own file or folder, for corpora published with their splits (WikiText's wiki.train.tokens,
               wiki.valid.tokens, wiki.test.tokens; PTB's train.txt, valid.txt, test.txt).
  c4           allenai/c4 "en" through Hugging Face `datasets`, streamed: train = its train split; val and test
               = alternate documents of its validation split (even → val, odd → test), so both come from
               the same distribution without knowing the split's length up front. Needs max_bytes per split.
  wikitext103  Salesforce/wikitext "wikitext-103-raw-v1" with its own train/validation/test splits; its
               records are lines, regrouped into articles at the " = Title = " headings.
               (These two: `resmem.lm.hf_corpora`.)

How the local sources split and order their documents is `resmem.lm.text_files`'s: a folder by a stable hash of
each file's path, a file at line boundaries, per-split paths as given (their metadata, "paths", records each
split's resolved path, and for a file its bytes and sha256, which `sha256sum` reproduces). Within a split,
documents are taken in order until the split's max_bytes is reached, the last one truncated at a UTF-8
character boundary. Budgets count document bytes, not separators.

Documents are joined so that the model sees their boundaries: each document is followed by the separator,
"\\n\\n" for the byte tokenizer (two newlines: what ends a Python module or a paragraph anyway) and the EOS
token for a BPE tokenizer that has one ("\\n\\n" otherwise).

Documents stream from the source through the tokenizer into the file, so the stage's peak memory is about one
tokenize batch (TOKENIZE_CHUNK_BYTES of text and its ids) plus the largest document held whole (a folder's largest
file, a dataset's longest article; a single file, or a split's own file, is read in pieces) plus the tokenizer,
whatever the corpus length.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import sysconfig
import time
from pathlib import Path

import numpy as np

from resmem import io
from resmem.artifacts import SPLITS
from resmem.config import ConfigError
from resmem.lm.hf_corpora import HF_DATASETS, hf_source
from resmem.lm.text_files import (
    READ_PIECE_BYTES,
    byte_pieces,
    folder_source,
    single_file_source,
    split_paths_source,
    utf8_prefix,
)
from resmem.lm.tokenizers import TOKENIZE_CHUNK_BYTES, encode_stream, make_tokenizer

log = logging.getLogger("resmem")

CORPORA = ("stdlib", "text", "c4", "wikitext103")


# ---------------------------------------------------------------------------------------------------------------
# Splits: their documents taken under a budget, and recorded


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


# ---------------------------------------------------------------------------------------------------------------
# Sources: each returns ({split: its documents (name, bytes or FileRange), lazily}, source metadata)


def _budgets(cfg: dict) -> dict[str, int | None]:
    budgets = cfg.get("max_bytes") or {}
    return {split: budgets.get(split) for split in SPLITS}


def _source(cfg: dict) -> tuple[dict, dict]:
    name = cfg.get("name", "stdlib")
    if name not in CORPORA:
        raise ConfigError(f"corpus.name: {name!r} is not one of {list(CORPORA)}")
    if name != "text" and cfg.get("path") is not None:
        raise ConfigError(f"corpus.path ({cfg['path']}) is only used with name: text (name is {name})")
    if name in HF_DATASETS and (cfg.get("include") or cfg.get("exclude")):
        raise ConfigError(f"corpus.include/corpus.exclude select files; {name} has none: remove them")
    if name == "stdlib":
        return folder_source(cfg, Path(sysconfig.get_paths()["stdlib"]), "stdlib")
    if name == "text":
        if cfg.get("path") is None:
            raise ConfigError(
                "corpus.path: the text corpus needs path: a UTF-8 file or a folder of them, or {train, val, test}"
            )
        if isinstance(cfg["path"], dict):
            return split_paths_source(cfg, cfg["path"])
        path = Path(cfg["path"]).expanduser()
        if not path.exists():
            raise ConfigError(f"corpus.path: {path} does not exist (a UTF-8 file or a folder of them)")
        return folder_source(cfg, path, "text") if path.is_dir() else single_file_source(cfg, path)
    return hf_source(name, _budgets(cfg))


def _empty_split(split: str, source: dict) -> ConfigError:
    if "paths" in source:
        return ConfigError(
            f"corpus: the {split} split is empty: corpus.path.{split} ({source['paths'][split]['path']}) holds no "
            f"text, or corpus.max_bytes.{split} keeps none of it; point it at the split's text"
        )
    return ConfigError(
        f"corpus: the {split} split is empty: corpus.val_fraction / corpus.test_fraction (by file, of "
        f"{source.get('files_listed', 1)} file(s)) or corpus.max_bytes.{split} leave nothing for it; raise "
        "them, or add files (corpus.include/corpus.exclude, corpus.path)"
    )


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
            raise _empty_split(split, source)
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
