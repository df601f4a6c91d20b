"""Corpora and tokenizers: the real stdlib, generated text folders and files, and a fake `datasets` module
standing in for the network."""

import hashlib
import importlib.util
import json
import os
import platform
import sys
import sysconfig
import types
from pathlib import Path

import numpy as np
import pytest

from resmem.config import ConfigError
from resmem.lm import sizes as lm_sizes
from resmem.lm import text_files
from resmem.lm.corpus import SPLITS, build_corpus, write_corpus
from resmem.lm.tokenizers import make_tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])
BUDGET = {"train": 300_000, "val": 40_000, "test": 40_000}


def config(**overrides) -> dict:
    """A corpus section with every default filled, as the caller hands it over."""
    cfg = {
        "name": "stdlib",
        "path": None,
        "include": [],
        "exclude": [],
        "max_bytes": {"train": None, "val": None, "test": None},
        "val_fraction": 0.1,
        "test_fraction": 0.1,
        "split_seed": 0,
        "tokenizer": "bytes",
        "tokenizer_file": None,
    }
    cfg.update(overrides)
    return cfg


def joined(docs, tokenizer=None) -> str:
    """The text a split's tokens must decode to: each document followed by the separator. (Splitting the decoded
    text on the separator would be ambiguous: files contain blank lines.)"""
    return "".join(doc + (tokenizer or make_tokenizer(config())).separator for doc in docs)


def decoded(tokens, tokenizer=None) -> str:
    return (tokenizer or make_tokenizer(config())).decode(tokens)


def file_docs(root: Path, files) -> list[str]:
    """The documents the metadata's file list says were taken: each file's first `bytes` bytes."""
    return [(root / f["path"]).read_bytes()[: f["bytes"]].decode("utf-8") for f in files]


# --- stdlib ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stdlib_full():
    return build_corpus(config())


def test_stdlib_split_is_deterministic_disjoint_and_excludes_tests(stdlib_full):
    tokens, meta = stdlib_full
    again_tokens, again = build_corpus(config())
    assert again["sha256"] == meta["sha256"] and again["files"] == meta["files"]
    assert all(np.array_equal(tokens[s], again_tokens[s]) for s in SPLITS)
    paths = {s: [f["path"] for f in meta["files"][s]] for s in SPLITS}
    assert not set(paths["train"]) & set(paths["val"]) and not set(paths["val"]) & set(paths["test"])
    assert not set(paths["train"]) & set(paths["test"])
    everything = [p for s in SPLITS for p in paths[s]]
    assert all(p.endswith(".py") for p in everything)
    assert "os.py" in everything and "json/__init__.py" in everything
    for part in ("test", "tests", "idle_test", "site-packages", "__pycache__"):
        assert not any(part in p.split("/")[:-1] for p in everything), part
    # ~10% each by file: loose bounds, the hash is uniform but the library has only ~700 files.
    n = len(everything)
    assert 0.05 * n < len(paths["val"]) < 0.16 * n and 0.05 * n < len(paths["test"]) < 0.16 * n
    other_seed = build_corpus(config(split_seed=1))[1]
    assert other_seed["files"]["val"] != meta["files"]["val"] and other_seed["sha256"] != meta["sha256"]


def test_stdlib_metadata(stdlib_full):
    tokens, meta = stdlib_full
    json.dumps(meta)  # JSON-serializable as is
    assert meta["python_version"] == platform.python_version() and meta["root"] == str(STDLIB)
    assert meta["tokenizer"] == "bytes" and meta["vocab_size"] == 256
    for split in SPLITS:
        info, files = meta["splits"][split], meta["files"][split]
        assert tokens[split].dtype == np.int32 and tokens[split].ndim == 1
        assert info["documents"] == len(files) and info["bytes"] == sum(f["bytes"] for f in files)
        assert info["tokens"] == len(tokens[split]) == info["bytes"] + 2 * info["documents"]  # "\n\n" each
        assert info["truncated"] is None
    assert len({meta["splits"][s]["sha256"] for s in SPLITS} | {meta["sha256"]}) == 4


def test_stdlib_budgets_and_round_trip(stdlib_full):
    tokens, meta = build_corpus(config(max_bytes=BUDGET))
    for split in SPLITS:
        # Exactly the budget, give or take a multi-byte character at the cut (the stdlib is far larger).
        assert BUDGET[split] - 3 <= meta["splits"][split]["bytes"] <= BUDGET[split]
        files = meta["files"][split]
        assert decoded(tokens[split]) == joined(file_docs(STDLIB, files))
        # Every file whole but the last, which is cut.
        assert all(f["bytes"] == (STDLIB / f["path"]).stat().st_size for f in files[:-1])
        assert meta["splits"][split]["truncated"] == files[-1]["path"]
        assert files[-1]["bytes"] < (STDLIB / files[-1]["path"]).stat().st_size
    # A budget picks the first files of each split's order: a prefix of the unbudgeted split.
    full = stdlib_full[1]
    for split in SPLITS:
        budgeted = [f["path"] for f in meta["files"][split]]
        assert [f["path"] for f in full["files"][split][: len(budgeted)]] == budgeted


def test_stdlib_include_exclude():
    meta = build_corpus(config(include=["json/*.py", "email/**"], exclude=["**/__init__.py"], val_fraction=0.3))[1]
    paths = [f["path"] for s in SPLITS for f in meta["files"][s]]
    assert paths and all(p.startswith(("json/", "email/")) and not p.endswith("__init__.py") for p in paths)
    assert any(p.startswith("email/mime/") for p in paths)  # ** crosses folders
    assert meta["files_listed"] >= len(paths)


def test_empty_split_names_the_fractions():
    with pytest.raises(ConfigError, match="val_fraction"):
        build_corpus(config(include=["json/*.py"], val_fraction=0.001))
    with pytest.raises(ConfigError, match="val_fraction \\+ corpus.test_fraction"):
        build_corpus(config(val_fraction=0.6, test_fraction=0.5))
    with pytest.raises(ConfigError, match="corpus.include"):
        build_corpus(config(include=["no/such/*.txt"]))


def test_split_assignment_is_stable_when_files_are_added():
    files = [f"f{i}.txt" for i in range(200)]
    before = text_files.split_files(files, 0.1, 0.2, seed=3)
    after = text_files.split_files(files + [f"new{i}.txt" for i in range(50)], 0.1, 0.2, seed=3)
    for split in SPLITS:
        assert [f for f in after[split] if not f.startswith("new")] == before[split]


def test_glob_semantics():
    match = {p: text_files.glob_regex(p) for p in ("**/*.py", "*.py", "a/**", "a/?.t[!x]t")}
    assert match["**/*.py"].fullmatch("x.py") and match["**/*.py"].fullmatch("a/b/x.py")
    assert match["*.py"].fullmatch("x.py") and not match["*.py"].fullmatch("a/x.py")
    assert match["a/**"].fullmatch("a/b/c") and not match["a/**"].fullmatch("b/a/c")
    assert match["a/?.t[!x]t"].fullmatch("a/b.txt") is None and match["a/?.t[!x]t"].fullmatch("a/b.tyt")


def test_utf8_prefix_never_cuts_a_character():
    data = "aé€😀b".encode()
    for limit in range(len(data) + 2):
        prefix = text_files.utf8_prefix(data, limit)
        assert len(prefix) <= limit and data.startswith(prefix)
        prefix.decode("utf-8")  # strict


# --- text ------------------------------------------------------------------------------------------------------


@pytest.fixture
def text_folder(tmp_path):
    root = tmp_path / "texts"
    (root / "nested" / "deeper").mkdir(parents=True)
    for i in range(40):
        folder = root if i % 3 == 0 else root / "nested" if i % 3 == 1 else root / "nested" / "deeper"
        (folder / f"doc{i:02d}.txt").write_text(f"document {i}: héllo wörld ✓\n" * (i + 1), encoding="utf-8")
    (root / "nested" / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (root / ".git").mkdir()
    (root / ".git" / "index").write_bytes(b"\x00\xff\xfe binary")
    return root


def test_text_folder_non_utf8_file_is_named(text_folder):
    with pytest.raises(ConfigError, match=r"nested/latin1\.txt is not UTF-8 \(byte 3.*corpus\.exclude"):
        build_corpus(config(name="text", path=str(text_folder), val_fraction=0.2, test_fraction=0.2))


def test_text_folder_by_file(text_folder):
    cfg = config(name="text", path=str(text_folder), exclude=["**/latin1.txt"], val_fraction=0.2, test_fraction=0.2)
    tokens, meta = build_corpus(cfg)
    paths = {s: [f["path"] for f in meta["files"][s]] for s in SPLITS}
    everything = sorted(p for s in SPLITS for p in paths[s])
    assert len(everything) == 40 and len(set(everything)) == 40 and meta["files_listed"] == 40
    assert any(p.startswith("nested/deeper/") for p in everything) and not any(".git" in p for p in everything)
    for split in SPLITS:
        assert paths[split]
        assert decoded(tokens[split]) == joined((text_folder / p).read_text(encoding="utf-8") for p in paths[split])
    # The same files land in the same splits when the folder moves: paths are relative to the root.
    moved = text_folder.rename(text_folder.parent / "elsewhere")
    again = build_corpus({**cfg, "path": str(moved)})[1]
    assert again["files"] == meta["files"] and again["sha256"] == meta["sha256"]


def test_text_folder_budget_truncates_at_a_character(text_folder):
    budget = {"train": 1001, "val": 333, "test": 77}
    cfg = config(name="text", path=str(text_folder), exclude=["**/latin1.txt"], max_bytes=budget)
    cfg.update(val_fraction=0.25, test_fraction=0.25)
    tokens, meta = build_corpus(cfg)
    for split in SPLITS:
        assert budget[split] - 3 <= meta["splits"][split]["bytes"] <= budget[split]
        files = meta["files"][split]
        assert decoded(tokens[split]) == joined(file_docs(text_folder, files))
        assert meta["splits"][split]["truncated"] == files[-1]["path"]


def test_text_single_file_split_by_lines(tmp_path):
    path = tmp_path / "book.txt"
    lines = [f"line {i} — {'x' * (i % 17)}\n" for i in range(1000)]
    path.write_text("".join(lines), encoding="utf-8")
    tokens, meta = build_corpus(config(name="text", path=str(path), val_fraction=0.2, test_fraction=0.1))
    assert all(meta["splits"][s]["documents"] == 1 for s in SPLITS)
    texts = {s: decoded(tokens[s]).removesuffix("\n\n") for s in SPLITS}
    # Contiguous, in order, at line boundaries, and together the whole file.
    assert "".join(texts[s] for s in SPLITS) == path.read_text(encoding="utf-8")
    assert all(texts[s].endswith("\n") and texts[s].startswith("line ") for s in SPLITS)
    shares = {s: meta["splits"][s]["bytes"] / path.stat().st_size for s in SPLITS}
    assert shares["train"] == pytest.approx(0.7, abs=0.01) and shares["val"] == pytest.approx(0.2, abs=0.01)
    assert texts["val"].startswith(lines[len(texts["train"].splitlines())])
    budgeted = build_corpus(config(name="text", path=str(path), max_bytes={"train": 500, "val": None, "test": 10}))
    assert budgeted[1]["splits"]["train"]["bytes"] == 500
    assert decoded(budgeted[0]["train"]) == joined([texts["train"].encode()[:500].decode()])
    # "line 9NN — ": byte 10 falls inside the 3-byte dash, so the cut steps back to byte 9.
    assert texts["test"].encode()[:12].decode().endswith("—") and budgeted[1]["splits"]["test"]["bytes"] == 9
    assert decoded(budgeted[0]["test"]) == joined([texts["test"].encode()[:9].decode()])


def test_text_single_file_too_small(tmp_path):
    path = tmp_path / "one_line.txt"
    path.write_text("only one line\n")
    with pytest.raises(ConfigError, match="split is empty.*val_fraction"):
        build_corpus(config(name="text", path=str(path)))


def test_text_path_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"corpus\.path: .*nowhere does not exist"):
        build_corpus(config(name="text", path=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match=r"corpus\.path"):
        build_corpus(config(name="text"))
    with pytest.raises(ConfigError, match=r"corpus\.path .*only used with name: text"):
        build_corpus(config(path=str(tmp_path)))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nthen \xff\n")
    with pytest.raises(ConfigError, match=r"bad\.txt is not UTF-8 \(byte 10"):
        build_corpus(config(name="text", path=str(bad)))


# --- text with per-split paths (corpus.path = {train, val, test}) ------------------------------------------------


WIKI = {  # WikiText-style: a file per split, non-ASCII UTF-8 in each, 2- 3- and 4-byte characters
    "train": " = Valkyria Chronicles III = \n\n Senjō no Valkyria 3 : 戦場のヴァルキュリア3 .\n" * 40,
    "val": " = Homarus gammarus = \n\n Le homard européen — 🦞 , « grand » .\n" * 12,
    "test": " = Robert Boulter = \n\n Boulter starred in Ünïcode — ✓ 😀 .\n" * 10,
}
WIKI_NAMES = {"train": "wiki.train.tokens", "val": "wiki.valid.tokens", "test": "wiki.test.tokens"}


def split_config(paths, **overrides) -> dict:
    """A text corpus with per-split paths as the caller hands it over: the fractions, which the validated config
    drops, left out."""
    cfg = config(**{"name": "text", "path": {split: str(p) for split, p in paths.items()}, **overrides})
    for key in {"val_fraction", "test_fraction"} - set(overrides):
        del cfg[key]
    return cfg


@pytest.fixture
def wikitext(tmp_path) -> dict[str, Path]:
    root = tmp_path / "wikitext-103"
    root.mkdir()
    for split, text in WIKI.items():
        (root / WIKI_NAMES[split]).write_text(text, encoding="utf-8")
    return {split: root / WIKI_NAMES[split] for split in SPLITS}


def split_digest(docs: list[tuple[str, bytes]]) -> str:
    """The split's sha256 as the corpus documents it: over each document's name, NUL, length (8 bytes, little
    endian) and bytes."""
    digest = hashlib.sha256()
    for name, data in docs:
        digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def test_text_split_files_are_the_published_splits(tmp_path, wikitext):
    """Each split is its own file, whole: the byte tokens are its bytes and one separator, and corpus.json names
    the file with its size and the sha256 that hashlib computes of it."""
    meta = write_corpus(tmp_path / "corpus.npz", split_config(wikitext))
    with np.load(tmp_path / "corpus.npz") as npz:
        tokens = {split: npz[f"{split}_tokens"] for split in SPLITS}
    json.dumps(meta)
    assert "root" not in meta and meta["config"]["path"] == {s: str(p) for s, p in wikitext.items()}
    for split, path in wikitext.items():
        data = path.read_bytes()
        assert any(b > 0x7F for b in data)  # the non-ASCII text is there
        assert tokens[split].dtype == np.int32
        assert np.array_equal(tokens[split], np.frombuffer(data + b"\n\n", dtype=np.uint8))
        assert meta["files"][split] == [{"path": path.name, "bytes": os.path.getsize(path)}]
        assert meta["paths"][split] == {
            "path": str(path.resolve()),
            "bytes": os.path.getsize(path),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        info = meta["splits"][split]
        assert info["documents"] == 1 and info["bytes"] == len(data) and info["tokens"] == len(data) + 2
        assert info["sha256"] == split_digest([(path.name, data)]) and info["truncated"] is None
    # A budget still caps a split, at a character boundary: 37 bytes end inside "ō" (the train file's bytes 36, 37).
    budget = {"train": 37, "val": None, "test": 7}
    tokens, meta = build_corpus(split_config(wikitext, max_bytes=budget))
    for split in ("train", "test"):
        expected = wikitext[split].read_bytes()[: budget[split]].decode("utf-8", errors="ignore").encode()
        assert np.array_equal(tokens[split], np.frombuffer(expected + b"\n\n", dtype=np.uint8))
        assert meta["splits"][split]["truncated"] == WIKI_NAMES[split]
    assert meta["splits"]["train"]["bytes"] == 36 and len(tokens["val"]) == len(WIKI["val"].encode()) + 2


def test_text_split_folders_read_like_a_folder_corpus(tmp_path, wikitext):
    """A split's folder is listed as a folder corpus is (include, exclude, .git pruned), its files in the order of
    sha256(f"{split_seed}\\0{path}") and each followed by "\\n\\n"; an empty file is skipped."""
    folders = {split: tmp_path / split for split in ("train", "val")}
    contents = {
        "train": {"a.txt": "première page ✓\n", "nested/b.txt": "zweite Seite — 😀\n", "nested/deep/c.txt": "3\n",
                  "empty.txt": "", "notes.log": "excluded\n", ".git/HEAD": "ref: pruned\n"},
        "val": {f"doc{i}.txt": f"val {i} é\n" * (i + 1) for i in range(5)},
    }  # fmt: skip
    for split, files in contents.items():
        for rel, text in files.items():
            (folders[split] / rel).parent.mkdir(parents=True, exist_ok=True)
            (folders[split] / rel).write_text(text, encoding="utf-8")
    paths = {**folders, "test": wikitext["test"]}
    read = {"train": ["a.txt", "nested/b.txt", "nested/deep/c.txt"], "val": [f"doc{i}.txt" for i in range(5)]}
    orders = {}
    for seed in (0, 7):
        tokens, meta = build_corpus(split_config(paths, exclude=["*.log"], split_seed=seed))
        for split, rels in read.items():
            order = sorted(rels, key=lambda rel: hashlib.sha256(f"{seed}\0{rel}".encode()).digest()[:8])
            docs = [(rel, (folders[split] / rel).read_bytes()) for rel in order]
            expected = b"".join(data + b"\n\n" for _, data in docs)
            assert np.array_equal(tokens[split], np.frombuffer(expected, dtype=np.uint8)), (seed, split)
            assert meta["files"][split] == [{"path": rel, "bytes": len(data)} for rel, data in docs]
            assert meta["splits"][split]["sha256"] == split_digest(docs)
            listed = len(rels) + (split == "train")  # the empty file is listed, then skipped
            assert meta["paths"][split] == {"path": str(folders[split].resolve()), "files_listed": listed}
        assert meta["paths"]["test"]["sha256"] == hashlib.sha256(wikitext["test"].read_bytes()).hexdigest()
        orders[seed] = [f["path"] for f in meta["files"]["val"]]
    assert orders[0] != orders[7]  # the seed orders a folder's files


def test_text_split_path_errors(tmp_path, wikitext):
    """Each mistake names its key: a split missing, a path not there, a key that is not a split, a fraction beside
    the splits, a file in two splits, a folder without files, an empty split, a file that is not UTF-8."""

    def error(paths, **overrides) -> str:
        with pytest.raises(ConfigError) as caught:
            build_corpus(split_config(paths, **overrides))
        return str(caught.value)

    train, val, test = (wikitext[s] for s in SPLITS)
    assert error({"train": train, "test": test}).startswith("corpus.path.val: missing; per-split paths need all of")
    message = error({"train": train, "val": val, "test": tmp_path / "nowhere.tokens"})
    assert message == f"corpus.path.test: {tmp_path}/nowhere.tokens does not exist; point it at the test split's " \
                      "UTF-8 file or folder"  # fmt: skip
    assert error({"train": train, "valid": val, "test": test}).startswith(
        "corpus.path.valid: not a split; per-split paths take exactly the keys train, val and test"
    )
    for key in ("val_fraction", "test_fraction"):
        assert error(wikitext, **{key: 0.1}).startswith(f"corpus.{key}: corpus.path gives the train, val and test")
    assert error({"train": train.parent, "val": val, "test": test}).startswith(
        f"corpus.path.val: {val} is also in corpus.path.train"
    )
    (tmp_path / "only.log").mkdir()
    (tmp_path / "only.log" / "x.log").write_text("x")
    assert error({**wikitext, "train": tmp_path / "only.log"}, exclude=["*.log"]).startswith(
        f"corpus.path.train: no file under {tmp_path}/only.log matches corpus.include ['**/*']"
    )
    (tmp_path / "empty.tokens").write_text("")
    assert error({**wikitext, "val": tmp_path / "empty.tokens"}).startswith(
        f"corpus: the val split is empty: corpus.path.val ({tmp_path}/empty.tokens) holds no text"
    )
    (tmp_path / "latin1.tokens").write_bytes("caf\xe9\n".encode("latin-1"))
    assert error({**wikitext, "test": tmp_path / "latin1.tokens"}).startswith(
        f"corpus: {tmp_path}/latin1.tokens is not UTF-8 (byte 3"
    )
    assert error(wikitext, name="stdlib").startswith("corpus.path ({'train'")


def test_config_takes_per_split_paths(tmp_path, wikitext):
    """The schema accepts {train, val, test} and drops the fractions it cannot use; a wrong key, a split missing,
    a fraction beside the splits and a path not there each stop the run naming the key."""
    from resmem.config import check_input_paths, validate

    def experiment(corpus):
        return {"lm_experiments": {"wt": {"corpus": corpus, "models": {"m": {}}}}}

    paths = {split: str(path) for split, path in wikitext.items()}
    valid = validate(experiment({"name": "text", "path": paths}))
    corpus_cfg = valid["lm_experiments"]["wt"]["corpus"]
    assert corpus_cfg["path"] == paths and "val_fraction" not in corpus_cfg and "test_fraction" not in corpus_cfg
    assert validate(valid)["lm_experiments"]["wt"]["corpus"] == corpus_cfg  # validating again changes nothing
    check_input_paths(valid)
    tokens, _ = build_corpus(corpus_cfg)  # the validated section builds as it is
    assert np.array_equal(tokens["val"], np.frombuffer(wikitext["val"].read_bytes() + b"\n\n", dtype=np.uint8))
    wrong = [
        ({"train": "a", "valid": "b", "test": "c"}, {}, "lm_experiments.wt.corpus.path: Additional properties are "
         "not allowed ('valid' was unexpected)"),
        ({"train": "a", "test": "c"}, {}, "lm_experiments.wt.corpus.path.val: 'val' is a required property"),
        ({"train": "a", "val": "", "test": "c"}, {}, "lm_experiments.wt.corpus.path.val: '' should be non-empty"),
        (paths, {"test_fraction": 0.1}, "lm_experiments.wt.corpus.test_fraction: corpus.path gives the train, val "
         "and test splits their own files"),
    ]  # fmt: skip
    for path, extra, message in wrong:
        with pytest.raises(ConfigError) as caught:
            validate(experiment({"name": "text", "path": path, **extra}))
        assert str(caught.value).startswith(f"invalid config at {message}"), caught.value
    with pytest.raises(ConfigError, match=r"at lm_experiments\.wt\.corpus\.path: only the text corpus reads a path"):
        validate(experiment({"name": "stdlib", "path": paths}))
    gone = validate(experiment({"name": "text", "path": {**paths, "test": str(tmp_path / "gone")}}))
    with pytest.raises(ConfigError) as caught:
        check_input_paths(gone)
    assert str(caught.value) == (
        f"invalid config at lm_experiments.wt.corpus.path.test: {tmp_path}/gone does not exist; point it at the "
        "test split's UTF-8 file or folder"
    )


def test_planned_bytes_follow_the_split_paths(tmp_path, wikitext):
    """The planner's bytes per split (memory and disk requests) are the sizes of each split's own files: a file's,
    or the files a folder's listing reads; budgets cap them."""
    folder = tmp_path / "val_folder"
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "objects").write_bytes(b"x" * 5000)
    for name, text in (("a.txt", "é" * 300), ("b.txt", "b" * 77), ("skip.log", "c" * 900)):
        (folder / name).write_text(text, encoding="utf-8")
    cfg = split_config({**wikitext, "val": folder}, exclude=["*.log"])
    sizes = {"train": os.path.getsize(wikitext["train"]), "test": os.path.getsize(wikitext["test"])}
    sizes["val"] = os.path.getsize(folder / "a.txt") + os.path.getsize(folder / "b.txt")
    assert lm_sizes.corpus_bytes(cfg) == sizes and lm_sizes.source_bytes(cfg) == sum(sizes.values())
    capped = lm_sizes.corpus_bytes({**cfg, "max_bytes": {"train": 100, "val": None, "test": 10**9}})
    assert capped == {**sizes, "train": 100}
    meta = build_corpus(cfg)[1]
    assert {split: meta["splits"][split]["bytes"] for split in SPLITS} == sizes  # what the corpus stage reads


# --- c4 and wikitext103 through a fake `datasets` ----------------------------------------------------------------


def fake_datasets(splits: dict, calls: list | None = None, error: Exception | None = None):
    """A stand-in for the `datasets` module: load_dataset returns in-memory lists of {"text": ...} records."""

    def load_dataset(path, name=None, split=None, streaming=False):
        if calls is not None:
            calls.append((path, name, split, streaming))
        if error is not None:
            raise error
        return [{"text": text} for text in splits[split]]

    return types.SimpleNamespace(load_dataset=load_dataset, __name__="datasets")


def test_datasets_not_installed(monkeypatch):
    if importlib.util.find_spec("datasets") is not None:
        monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    for name in ("c4", "wikitext103"):
        budget = {"train": 10, "val": 10, "test": 10}
        with pytest.raises(ConfigError, match=r"pip install datasets.*\.\[lm\]"):
            build_corpus(config(name=name, max_bytes=budget))


def test_c4_budgets_and_carving(monkeypatch):
    docs = {
        "train": [f"train document {i} ünïcode\n" * 3 for i in range(100)],
        "validation": [f"validation document {i}\n" for i in range(100)],
    }
    calls = []
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(docs, calls))
    budget = {"train": 1000, "val": 200, "test": 150}
    tokens, meta = build_corpus(config(name="c4", max_bytes=budget))
    assert {c[:2] for c in calls} == {("allenai/c4", "en")} and all(c[3] for c in calls)  # streamed
    assert {c[2] for c in calls} == {"train", "validation"}
    for split in SPLITS:
        assert budget[split] - 3 <= meta["splits"][split]["bytes"] <= budget[split]
    # Documents in order, the last one cut; val = even documents of validation, test = odd ones.
    sources = {"train": docs["train"], "val": docs["validation"][0::2], "test": docs["validation"][1::2]}
    for split in SPLITS:
        n = meta["splits"][split]["documents"]
        expected = sources[split][: n - 1] + [
            sources[split][n - 1].encode()[: meta["files"][split][-1]["bytes"]].decode()
        ]
        assert decoded(tokens[split]) == joined(expected)
    assert [f["path"] for f in meta["files"]["test"][:3]] == ["validation#1", "validation#3", "validation#5"]
    assert [f["path"] for f in meta["files"]["val"][:2]] == ["validation#0", "validation#2"]
    assert meta["dataset"] == "allenai/c4"
    json.dumps(meta)


def test_c4_needs_budgets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets({}))
    with pytest.raises(ConfigError, match=r"corpus\.max_bytes\.val.*300\+ GB"):
        build_corpus(config(name="c4", max_bytes={"train": 100, "val": None, "test": 100}))


@pytest.mark.parametrize("error", [ConnectionError("Couldn't reach huggingface.co"), OSError("offline mode")])
def test_offline_message(monkeypatch, error):
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets({}, error=error))
    for name in ("c4", "wikitext103"):
        with pytest.raises(ConfigError, match=r"could not be downloaded.*need network access.*stdlib and text"):
            build_corpus(config(name=name, max_bytes={"train": 100, "val": 100, "test": 100}))


def test_wikitext_articles_and_budgets(monkeypatch):
    def article(title, n):
        return ["", f" = {title} = \n", "", *[f" {title} paragraph {i} .\n" for i in range(n)], " = = Section = = \n"]

    hf = {
        "train": [r for i in range(30) for r in article(f"Train {i}", 5)],
        "validation": [r for i in range(4) for r in article(f"Val {i}", 3)],
        "test": [r for i in range(4) for r in article(f"Test {i}", 3)],
    }
    calls = []
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(hf, calls))
    tokens, meta = build_corpus(config(name="wikitext103", max_bytes={"train": 700, "val": None, "test": None}))
    assert {c[:3] for c in calls} == {("Salesforce/wikitext", "wikitext-103-raw-v1", s) for s in hf}
    assert meta["splits"]["train"]["bytes"] == 700 and meta["splits"]["train"]["truncated"] is not None
    # One document per article, from its title to the next; sections stay inside their article.
    for split, name in (("val", "Val"), ("test", "Test")):
        assert meta["splits"][split]["documents"] == 4
        assert decoded(tokens[split]) == joined("".join(article(f"{name} {i}", 3)) for i in range(4))
    first = "".join(article("Train 0", 5))
    assert decoded(tokens["train"]).startswith(first + "\n\n" + " = Train 1 = \n")


def test_dataset_corpora_refuse_file_options(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets({}))
    with pytest.raises(ConfigError, match="corpus.include"):
        build_corpus(config(name="wikitext103", include=["*.txt"]))


# --- tokenizers --------------------------------------------------------------------------------------------------


def test_byte_tokenizer():
    tok = make_tokenizer(config())
    text = "def f(x):\n    return 'é€😀'\n"
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and len(ids) == len(text.encode()) and ids.max() < tok.vocab_size == 256
    assert tok.decode(ids) == text and tok.name == "bytes"
    assert tok.decode([0xFF, 0x41]) == "\ufffdA"  # a model's invalid sample decodes with replacement


def test_bpe_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"corpus\.tokenizer_file"):
        make_tokenizer(config(tokenizer="bpe"))
    with pytest.raises(ConfigError, match=r"corpus\.tokenizer_file: .*missing\.json does not exist"):
        make_tokenizer(config(tokenizer="bpe", tokenizer_file=str(tmp_path / "missing.json")))
    with pytest.raises(ConfigError, match=r"corpus\.tokenizer_file .*only used with tokenizer: bpe"):
        make_tokenizer(config(tokenizer_file=str(tmp_path / "x.json")))


def test_bpe_without_tokenizers_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    (tmp_path / "tok.json").write_text("{}")
    with pytest.raises(ConfigError, match="pip install tokenizers"):
        make_tokenizer(config(tokenizer="bpe", tokenizer_file=str(tmp_path / "tok.json")))


def train_bpe(path: Path, eos: bool, strings=None, vocab_size: int = 300) -> Path:
    tokenizers = pytest.importorskip("tokenizers", reason="the optional tokenizers package is not installed")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>"] if eos else []
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    strings = strings or ["def hello(world):\n    return world\n", "the quick brown fox — héllo wörld ✓\n"] * 20
    tok.train_from_iterator(strings, trainer=trainer)
    tok.save(str(path))
    return path


@pytest.mark.parametrize("eos", [True, False])
def test_bpe_round_trip(tmp_path, eos):
    path = train_bpe(tmp_path / "bpe.json", eos)
    tok = make_tokenizer(config(tokenizer="bpe", tokenizer_file=str(path)))
    text = "def hello(world):\n    return 'héllo wörld ✓ 😀'\n"
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.max() < tok.vocab_size and len(ids) < len(text.encode())
    assert tok.decode(ids) == text
    assert tok.separator == ("<|endoftext|>" if eos else "\n\n")
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(30):
        (folder / f"{i}.txt").write_text(f"def hello(world):\n    return {i}\n")
    tokens, meta = build_corpus(
        config(name="text", path=str(folder), tokenizer="bpe", tokenizer_file=str(path), val_fraction=0.3)
    )
    assert meta["tokenizer"] == "bpe:bpe.json" and meta["vocab_size"] == tok.vocab_size and len(meta["sha256"]) == 64
    for split in SPLITS:
        expected = [(folder / f["path"]).read_text() for f in meta["files"][split]]
        assert decoded(tokens[split], tok) == joined(expected, tok)
        if eos:
            assert (tokens[split] == tok._tok.token_to_id("<|endoftext|>")).sum() == len(expected)
