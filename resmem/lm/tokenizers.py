"""Tokenizers of a corpus: bytes (the offline default), a Hugging Face `tokenizers` BPE file, or a Hugging Face
model's own (`resmem.lm.hf.ModelTokenizer`); each encodes documents joined by its end-of-document separator and
describes itself for provenance."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np

from resmem.config import ConfigError

TOKENIZERS = ("bytes", "bpe", "model")
BYTES_SEPARATOR = "\n\n"
# Special tokens taken as end-of-document, in order of preference, when a BPE tokenizer file has one of them.
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "<|end_of_text|>", "[EOS]")


class ByteTokenizer:
    """UTF-8 bytes: token id = byte value, vocabulary 256, nothing to download or train."""

    name = "bytes"
    vocab_size = 256
    separator = BYTES_SEPARATOR

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        # errors="replace": a model's samples need not be valid UTF-8; encoded text always round-trips.
        return bytes(np.asarray(ids, dtype=np.uint8).tolist()).decode("utf-8", errors="replace")

    def encode_documents(self, docs: list[str]) -> np.ndarray:
        return self.encode("".join(doc + self.separator for doc in docs))

    def provenance(self) -> dict:
        return {"tokenizer": self.name, "vocab_size": self.vocab_size, "separator": self.separator}


class BPETokenizer:
    """A Hugging Face `tokenizers` JSON file (e.g. a GPT-2 tokenizer.json or one trained with tokenizers)."""

    def __init__(self, path):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ConfigError(
                "corpus.tokenizer: bpe needs the optional `tokenizers` package: pip install tokenizers "
                '(or pip install -e ".[lm]"), or use tokenizer: bytes'
            ) from None
        self.path = Path(path)
        try:
            self._tok = Tokenizer.from_file(str(self.path))
        except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
            raise ConfigError(
                f"corpus.tokenizer_file: {self.path} is not a Hugging Face tokenizers JSON file ({exc})"
            ) from exc
        self.name = f"bpe:{self.path.name}"
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eos = next((t for t in EOS_CANDIDATES if self._tok.token_to_id(t) is not None), None)
        self.separator = self.eos or BYTES_SEPARATOR
        # The separator is encoded on its own, so no merge ever spans a document boundary.
        self._sep_ids = (
            [self._tok.token_to_id(self.eos)]
            if self.eos
            else self._tok.encode(BYTES_SEPARATOR, add_special_tokens=False).ids
        )

    def encode(self, text: str) -> np.ndarray:
        # add_special_tokens=False: no BOS/CLS from a post-processor in the middle of the corpus.
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def encode_documents(self, docs: list[str]) -> np.ndarray:
        encodings = self._tok.encode_batch(docs, add_special_tokens=False)  # parallel in Rust
        ids = [i for enc in encodings for i in itertools.chain(enc.ids, self._sep_ids)]
        return np.asarray(ids, dtype=np.int32)

    def provenance(self) -> dict:
        return {
            "tokenizer": self.name,
            "vocab_size": self.vocab_size,
            "separator": self.separator,
            "tokenizer_file": str(self.path.resolve()),
            "tokenizer_sha256": hashlib.sha256(self.path.read_bytes()).hexdigest(),
        }


def make_tokenizer(cfg: dict, model_source: str | None = None):
    """The tokenizer named by cfg["tokenizer"] (cfg is the corpus section); for `model`, the tokenizer of the
    Hugging Face model (hub name or folder) `model_source`."""
    kind, file = cfg.get("tokenizer", "bytes"), cfg.get("tokenizer_file")
    if kind == "model":
        if model_source is None:
            raise ConfigError("corpus.tokenizer: model tokenizes with a Hugging Face model's tokenizer; none given")
        from resmem.lm.hf import ModelTokenizer

        return ModelTokenizer(model_source)
    if kind == "bytes":
        if file is not None:
            raise ConfigError(f"corpus.tokenizer_file ({file}) is only used with tokenizer: bpe; remove it or set bpe")
        return ByteTokenizer()
    if kind == "bpe":
        if file is None:
            raise ConfigError("corpus.tokenizer_file: tokenizer bpe needs the path of a tokenizers JSON file")
        if not Path(file).is_file():
            raise ConfigError(f"corpus.tokenizer_file: {file} does not exist (a Hugging Face tokenizers JSON file)")
        return BPETokenizer(file)
    raise ConfigError(f"corpus.tokenizer: {kind!r} is not one of {list(TOKENIZERS)}")
