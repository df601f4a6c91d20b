"""Tokenizers of a corpus: bytes (the offline default), a Hugging Face `tokenizers` BPE file, or a Hugging Face
model's own (`resmem.lm.hf.ModelTokenizer`); each encodes documents joined by its end-of-document separator and
describes itself for provenance. `encode_stream` feeds one a stream of documents in batches of bounded size."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from resmem.config import ConfigError

TOKENIZERS = ("bytes", "bpe", "model")
BYTES_SEPARATOR = "\n\n"
# Special tokens taken as end-of-document, in order of preference, when a BPE tokenizer file has one of them.
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "<|end_of_text|>", "[EOS]")
# Text tokenized at once: it bounds a corpus stage's memory and is large enough to keep the BPE's threads busy.
# While it encodes, a `tokenizers` BPE holds ~100 bytes a token (ids, offsets, strings) for a batch of documents,
# ~290 for one long text (a single-file corpus's piece): 8 MiB of English is ~2M GPT-2 tokens, 0.2 to 0.6 GB.
TOKENIZE_CHUNK_BYTES = 8 << 20
# A document longer than a batch is cut right after a "\n" between two of these (printable ASCII, so that no
# Unicode space hides in a multi-byte character): see document_pieces.
CUT_NEIGHBOURS = range(0x21, 0x7F)


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


def join_documents(documents_ids, separator_ids) -> np.ndarray:
    """Each document's ids followed by the separator's, as one int32 array built from numpy pieces: a Python list
    of all the ids would take ~70 bytes a token."""
    separator = np.asarray(separator_ids, dtype=np.int32)
    parts = [part for ids in documents_ids for part in (np.asarray(ids, dtype=np.int32), separator)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


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
        return join_documents((enc.ids for enc in encodings), self._sep_ids)

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


def utf8_cut(data, limit: int) -> int:
    """The length of the longest prefix of at most `limit` bytes of data (bytes, an mmap, anything indexed like
    bytes) that does not cut a UTF-8 character; only the bytes at the cut are read."""
    if len(data) <= limit:
        return len(data)
    cut = limit
    while cut > 0 and data[cut] & 0xC0 == 0x80:  # 10xxxxxx: a continuation byte, not a character start
        cut -= 1
    return cut


def newline_cut(window: bytes, limit: int) -> int:
    """Right after the last "\\n" before `limit` between two printable ASCII characters, else the last UTF-8
    character boundary at or before `limit`."""
    end = limit
    while (newline := window.rfind(b"\n", 1, end)) > 0:
        if window[newline - 1] in CUT_NEIGHBOURS and window[newline + 1] in CUT_NEIGHBOURS:
            return newline + 1
        end = newline
    return utf8_cut(window, limit)


def document_pieces(data, chunk: int):
    """(piece, whether it ends the document) of a document of UTF-8 bytes (or anything whose slices bytes() reads,
    such as a file range): the whole of it when it has at most `chunk` bytes, else consecutive pieces of at most
    `chunk` bytes, each but the last cut right after the last "\\n" of its window that sits between two printable
    ASCII characters. GPT-2-style byte-level BPE splits its words there anyway (such a newline is a word of its
    own), so the ids of the pieces are those of the whole document, as the byte tokenizer's are. A window without
    such a newline is cut at a UTF-8 character boundary instead: BPE ids may then differ from the whole document's
    at that cut (a word cut in two), as they may at every cut for a tokenizer that treats the start of a text
    specially (SentencePiece's prefix space)."""
    start = 0
    while len(data) - start > chunk:
        window = bytes(data[start : start + chunk + 1])  # one byte more: the right neighbour of the last cut
        cut = newline_cut(window, chunk)
        yield window[:cut], False
        start += cut
    yield bytes(data[start:]), True


def text_batches(docs, chunk: int):
    """(pieces, whether the last one ends its document): the documents (name, data) in batches of at most `chunk`
    bytes, in order. A document longer than `chunk` is cut by document_pieces, and a batch ends after each of its
    pieces but the last, so only the last piece of a batch may leave its document unfinished."""
    batch, size = [], 0
    for _, data in docs:
        for piece, ends_document in document_pieces(data, chunk):
            if batch and size + len(piece) > chunk:
                yield batch, True
                batch, size = [], 0
            batch.append(piece)
            size += len(piece)
            if not ends_document:
                yield batch, False
                batch, size = [], 0
    if batch:
        yield batch, True


def encode_stream(tokenizer, docs, chunk: int = TOKENIZE_CHUNK_BYTES):
    """The ids of the documents (name, UTF-8 data), each followed by the separator, as by
    tokenizer.encode_documents, but in one int32 block per batch of at most `chunk` bytes of text (at least 4: a
    character), so that neither the text nor its ids are ever whole in memory."""
    if chunk < 4:
        raise ValueError(f"chunk {chunk}: a tokenize batch must hold a UTF-8 character (up to 4 bytes)")
    separator = len(tokenizer.encode_documents([""]))  # how many ids the separator alone encodes to
    for batch, ends_document in text_batches(docs, chunk):
        ids = tokenizer.encode_documents([piece.decode("utf-8") for piece in batch])
        if not ends_document:  # the document goes on in the next batch: its separator comes there
            ids = ids[: len(ids) - separator]
        yield ids
