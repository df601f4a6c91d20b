"""The corpus stage in bounded memory: its streamed token arrays equal tokenizing every document at once, its peak
memory grows with the tokenize chunk and not with the text, and the streaming .npz writer takes arrays whose
length is known only at the end."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from resmem import io
from resmem.lm.corpus import SPLITS, write_corpus
from resmem.lm.tokenizers import TOKENIZE_CHUNK_BYTES, make_tokenizer
from tests.test_corpus import config, train_bpe

CHUNK = 64  # bytes of text a batch: every document of the corpora below is cut, most batches hold several


def bpe_safe_text(seed: int, lines: int) -> str:
    """Python-like lines, some indented, some with trailing spaces or a blank line after them (where a cut would
    change byte-level BPE's words), never two of these in a row and all so short that every CHUNK bytes hold a
    newline between two printable ASCII characters: the pieces' ids must equal the whole document's."""
    rng = np.random.default_rng(seed)
    words = np.array(["def", "f(x):", "return", "héllo", "wörld", "✓", "the", "fox", "—", "x=1"])
    out = []
    for i in range(lines):
        line = f"{'    ' if i % 6 == 1 else ''}w{i} {' '.join(rng.choice(words, rng.integers(1, 3)))}."
        out.append(line + ("  " if i % 6 == 3 else "") + ("\n\n" if i % 6 == 5 else "\n"))
    return "".join(out)


def awkward_text(seed: int, lines: int) -> str:
    """bpe_safe_text with lines longer than CHUNK of multi-byte characters and no newline to cut at, which the
    byte tokenizer must survive too (cut at a character boundary instead)."""
    extras = ["", "é✓😀" * 40, "\t", "x" * 150]
    return "".join(
        line + extras[i % len(extras)] + "\n" for i, line in enumerate(bpe_safe_text(seed, lines).split("\n"))
    )


@pytest.fixture
def texts(tmp_path):
    """A folder of files of assorted sizes (from nothing to far above CHUNK) and a single file, of both texts."""
    out = {}
    for kind, make in (("bpe_safe", bpe_safe_text), ("awkward", awkward_text)):
        folder = tmp_path / kind / "folder"
        (folder / "sub").mkdir(parents=True)
        for i in range(24):
            (folder / ("sub" if i % 3 else "") / f"doc{i:02d}.txt").write_text(make(i, i * 7 % 40), encoding="utf-8")
        (tmp_path / kind / "book.txt").write_text(make(99, 600), encoding="utf-8")
        (tmp_path / kind / "extra.txt").write_text(make(98, 90), encoding="utf-8")
        out[kind] = {"folder": folder, "file": tmp_path / kind / "book.txt", "extra": tmp_path / kind / "extra.txt"}
    return out


def taken_documents(meta: dict, split: str) -> list[bytes]:
    """The bytes of each document of a split as its metadata describes them, read straight from the files."""
    if "paths" in meta:  # per-split paths: a file is one document, a folder's files are read like a folder's
        root = meta["paths"][split]["path"]
        if "sha256" in meta["paths"][split]:
            (entry,) = meta["files"][split]
            with open(root, "rb") as f:
                return [f.read()[: entry["bytes"]]]
    else:
        root = meta["root"]
    if "byte_ranges" in meta:  # one document: the split's line range of the file, less any budget
        start = meta["byte_ranges"][split][0]
        (entry,) = meta["files"][split]
        with open(root, "rb") as f:
            return [f.read()[start : start + entry["bytes"]]]
    return [open(f"{root}/{entry['path']}", "rb").read()[: entry["bytes"]] for entry in meta["files"][split]]


def reference_sha256(meta: dict, split: str, docs: list[bytes]) -> str:
    digest = hashlib.sha256()
    for entry, data in zip(meta["files"][split], docs, strict=True):
        digest.update(entry["path"].encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def run_stage(tmp_path, name: str, cfg: dict, chunk: int) -> tuple[dict, bytes]:
    """The corpus stage's two files, as the workflow writes them but with the given chunk."""
    io.write_json(tmp_path / f"{name}.json", write_corpus(tmp_path / f"{name}.npz", cfg, chunk=chunk))
    with np.load(tmp_path / f"{name}.npz") as npz:
        tokens = {split: npz[f"{split}_tokens"] for split in SPLITS}
    return tokens, (tmp_path / f"{name}.json").read_bytes()


def check_against_all_at_once(tmp_path, cfg: dict, tokenizer) -> None:
    streamed, meta_json = run_stage(tmp_path, "streamed", cfg, CHUNK)
    # The default chunk holds these corpora whole: one batch, every document tokenized at once.
    whole, whole_json = run_stage(tmp_path, "whole", cfg, TOKENIZE_CHUNK_BYTES)
    assert meta_json == whole_json
    meta = json.loads(meta_json)
    for split in SPLITS:
        docs = taken_documents(meta, split)
        assert any(len(doc) > CHUNK for doc in docs)  # the cuts inside a document are exercised
        expected = tokenizer.encode_documents([doc.decode() for doc in docs])
        if tokenizer.name == "bytes":  # the byte tokenizer's ids are the bytes: a reference that shares no code
            assert np.array_equal(expected, np.frombuffer(b"".join(doc + b"\n\n" for doc in docs), dtype=np.uint8))
        assert streamed[split].dtype == np.int32 and np.array_equal(streamed[split], expected)
        assert np.array_equal(whole[split], expected)
        info = meta["splits"][split]
        assert info["documents"] == len(docs) and info["bytes"] == sum(map(len, docs))
        assert info["tokens"] == len(expected) and info["sha256"] == reference_sha256(meta, split, docs)


FOLDER, FILE = {"val_fraction": 0.25, "test_fraction": 0.25}, {"val_fraction": 0.2, "test_fraction": 0.1}
LAYOUTS = {
    "folder": FOLDER,
    "folder, budgeted": {**FOLDER, "max_bytes": {"train": 5001, "val": 997, "test": None}},
    "file": FILE,
    "file, budgeted": {**FILE, "max_bytes": {"train": 9001, "val": None, "test": 333}},
    "split paths": {},  # corpus.path = {train: the folder, val: the file, test: another file}
    "split paths, budgeted": {"max_bytes": {"train": 4001, "val": None, "test": 555}},
}
SPLIT_PATHS = {"train": "folder", "val": "file", "test": "extra"}


def layout_config(paths: dict, layout: str, **overrides) -> dict:
    """The text corpus of a layout on the texts fixture's `paths` (per-split paths: without the fractions, as the
    validated config leaves them)."""
    form = layout.split(",")[0]
    if form == "split paths":
        cfg = config(name="text", path={split: str(paths[key]) for split, key in SPLIT_PATHS.items()})
        del cfg["val_fraction"], cfg["test_fraction"]
    else:
        cfg = config(name="text", path=str(paths[form]))
    cfg.update(overrides, **LAYOUTS[layout])
    return cfg


@pytest.mark.parametrize("layout", LAYOUTS)
def test_byte_tokens_and_metadata_equal_tokenizing_all_at_once(tmp_path, texts, layout):
    cfg = layout_config(texts["awkward"], layout)
    check_against_all_at_once(tmp_path, cfg, make_tokenizer(cfg))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("eos", [True, False])
def test_bpe_tokens_and_metadata_equal_tokenizing_all_at_once(tmp_path, texts, layout, eos):
    # Trained on such texts and on their lines alone, it merges a newline with the spaces or newline next to it
    # ("\\n   ", "  \\n", "\\n\\n"), so a cut beside whitespace would show.
    strings = [bpe_safe_text(seed, 200) for seed in range(5)]
    strings += [line for text in strings for line in text.splitlines(keepends=True)]
    path = train_bpe(tmp_path / "bpe.json", eos, strings, vocab_size=400)
    cfg = layout_config(texts["bpe_safe"], layout, tokenizer="bpe", tokenizer_file=str(path))
    check_against_all_at_once(tmp_path, cfg, make_tokenizer(cfg))


# VmHWM, not ru_maxrss: a child's ru_maxrss keeps the high-water mark of the parent's memory it was forked with
# (pytest's, a GB once torch is loaded), VmHWM is that of its own address space since exec.
PEAK_RSS = """
import json, re, sys
from resmem.lm import stages
stages.corpus(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak from /proc/self/status")
def test_peak_memory_grows_with_the_chunk_not_with_the_text(tmp_path):
    """The stage as the workflow runs it (the default 8 MiB chunk) on a 40 MB and a 160 MB single-file corpus, the
    worst case: each split is one document. Measured (byte tokenizer, 2 cores): 211 MB and 207 MB of peak resident
    memory, ~10 s together; before streaming, 377 MB and 1295 MB."""
    line_block = "".join(f"line {i} of the générated text ✓ {'word ' * (i % 13)}end\n" for i in range(20_000)).encode()
    peaks = {}
    for megabytes in (40, 160):
        path = tmp_path / f"text{megabytes}.txt"
        with open(path, "wb") as f:
            for _ in range(megabytes * 10**6 // len(line_block)):
                f.write(line_block)
        cfg = json.dumps(config(name="text", path=str(path)))
        args = [sys.executable, "-c", PEAK_RSS, str(tmp_path / f"{megabytes}.npz"), str(tmp_path / f"{megabytes}.json")]
        run = subprocess.run([*args, cfg], capture_output=True, text=True, check=True)
        peaks[megabytes] = int(run.stdout.split()[-1]), path.stat().st_size
        path.unlink()
    extra_text = peaks[160][1] - peaks[40][1]
    assert peaks[160][0] - peaks[40][0] < 0.25 * extra_text, peaks
    assert peaks[160][0] < 600e6, peaks  # one batch, its ids and the interpreter: far below the 640 MB of ids


# --- save_npz_streaming -------------------------------------------------------------------------------------------


def blocks_of_unknown_length():
    rng = np.random.default_rng(0)
    return [
        ("ids", np.arange(7, dtype=np.int32)),
        ("keys", rng.standard_normal((5, 3)).astype(np.float16)),
        ("ids", np.arange(0, dtype=np.int32)),  # an empty block
        ("bytes", rng.integers(0, 255, (4, 2, 2), dtype=np.uint8)),
        ("keys", rng.standard_normal((2, 3)).astype(np.float16)[:, ::-1]),  # not C-contiguous
        ("ids", np.arange(100, 103, dtype=np.int32)),
        ("known", np.arange(3.0)),
        ("known", np.arange(2.0)),
    ]


def test_streaming_npz_with_unknown_row_counts(tmp_path):
    blocks = blocks_of_unknown_length()
    for rows in (None, {"known": 5}):
        folder = tmp_path / str(bool(rows))
        io.save_npz_streaming(folder / "out.npz", iter(blocks), rows)
        assert [p.name for p in folder.iterdir()] == ["out.npz"]  # no scratch file left
        with np.load(folder / "out.npz") as npz:
            assert sorted(npz.files) == ["bytes", "ids", "keys", "known"]
            for key in npz.files:
                expected = np.concatenate([block for k, block in blocks if k == key])
                assert npz[key].dtype == expected.dtype and np.array_equal(npz[key], expected)
                assert np.array_equal(io.npz_memmap(folder / "out.npz", key), expected)  # a correct header


def test_streaming_npz_checks_known_counts_and_cleans_up(tmp_path):
    with pytest.raises(ValueError, match="rows written vs expected"):
        io.save_npz_streaming(tmp_path / "short.npz", iter(blocks_of_unknown_length()), {"known": 6})
    with pytest.raises(ValueError, match="rows of shape"):
        io.save_npz_streaming(tmp_path / "bad.npz", iter([("k", np.zeros((2, 3))), ("k", np.zeros((2, 4)))]))

    def failing_midway():
        yield from blocks_of_unknown_length()[:5]
        raise RuntimeError("the tokenizer died")

    with pytest.raises(RuntimeError, match="died"):
        io.save_npz_streaming(tmp_path / "failed.npz", failing_midway(), {"known": 5})
    assert list(tmp_path.iterdir()) == []  # neither scratch files nor a half-written archive
