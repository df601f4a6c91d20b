"""The corpora of the Hugging Face hub, through the optional `datasets` package (see `resmem.lm.corpus` for what
each one is): their documents per split, in the dataset's order and lazily, and their provenance."""

from __future__ import annotations

import importlib
import itertools
import re

from resmem.artifacts import SPLITS
from resmem.config import ConfigError

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


def hf_documents(corpus: str, split: str):
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


def hf_source(corpus: str, budgets: dict) -> tuple[dict, dict]:
    """The corpus's documents per split (lazily, nothing loaded yet) and what the metadata says of its source."""
    if corpus == "c4":
        unbounded = [split for split in SPLITS if budgets[split] is None]
        if unbounded:
            raise ConfigError(
                f"corpus.max_bytes.{unbounded[0]}: c4 needs a byte budget for every split (the full C4 is 300+ GB); "
                "set e.g. max_bytes: {train: 100000000, val: 5000000, test: 5000000}"
            )
    docs = {split: hf_documents(corpus, split) for split in SPLITS}
    dataset, config, hf_splits, streaming = HF_DATASETS[corpus]
    source = {"dataset": dataset, "dataset_config": config, "dataset_splits": hf_splits}
    if corpus == "c4":
        source["carving"] = "val = even-indexed documents of c4 validation, test = odd-indexed ones"
    return docs, source
