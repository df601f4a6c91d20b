"""The transformer, its token windows, and the token datastore against the model's own hidden states."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from resmem import io
from resmem.bounds import RunSizes
from resmem.config import ConfigError, validate
from resmem.lm import stages as lm_stages
from resmem.lm.model import GPT, TokenWindows, datastore_entries, datastore_positions, sliding_windows
from resmem.lm.sizes import datastore_disk_bytes
from resmem.lm.stages import load_datastore
from resmem.stages import RowSubset, datastore_rows

CONTEXT = 16


def knn(**settings) -> dict:
    """A language-model experiment's knn section with the schema's defaults, `settings` and k_max (as the rules
    pass it): small grids for the tests."""
    defaults = validate({"lm_experiments": {"x": {"models": {"m": {}}}}})["lm_experiments"]["x"]["knn"]
    section = {**defaults, "k": [1, 4], "sigma": [1.0], "temperature": [1.0], "lam": [0.5], "sweep_chunk_mb": 16}
    section.update(settings)
    return {**section, "k_max": max(section["k"])}


def search_outputs(root):
    return {"neighbors": root / "nb.npz", "report": root / "search.json"}


def tiny_config(**train):
    spec = {"models": {"m": {"n_layer": 1, "n_head": 2, "n_embd": 16}}, "context": CONTEXT}
    spec["train"] = {"epochs": 2, "batch_size": 8, "lr": 0.01, **train}
    return validate({"lm_experiments": {"x": spec}})["lm_experiments"]["x"]


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    # A repeating pattern with noise: learnable in a few steps, not trivially.
    base = np.tile(np.arange(40, 72, dtype=np.int32), 200)
    tokens = {s: np.where(rng.random(n) < 0.1, rng.integers(0, 256, n), base[:n]).astype(np.int32)
              for s, n in (("train", 4000), ("val", 900), ("test", 900))}  # fmt: skip
    io.save_npz(tmp_path / "corpus.npz", **{f"{s}_tokens": t for s, t in tokens.items()})
    io.write_json(tmp_path / "corpus.json", {"vocab_size": 256})
    return tmp_path, tokens


def test_causal_model_sees_no_future_token():
    torch.manual_seed(0)
    model = GPT(50, CONTEXT, n_layer=2, n_head=2, n_embd=16).eval()
    x = torch.randint(0, 50, (2, CONTEXT))
    changed = x.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 50
    with torch.inference_mode():
        a, b = model.hidden(x), model.hidden(changed)
        # Tied output layer: logits are the hidden state times the token embedding.
        torch.testing.assert_close(model(x), a @ model.token_embedding.weight.T)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_token_windows_cover_the_array_and_shift_targets_by_one():
    tokens = np.arange(100, dtype=np.int32)
    loader = TokenWindows(tokens, 8, batch_size=5, device=torch.device("cpu"))
    assert len(loader) == 12  # (100 - 1) // 8
    batches = list(loader.epoch())
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.shape == (12, 8) and torch.equal(x.flatten(), torch.arange(96)) and torch.equal(y, x + 1)
    shuffled = torch.cat([b[0] for b in loader.epoch(seed=3)])
    again = torch.cat([b[0] for b in loader.epoch(seed=3)])
    assert torch.equal(shuffled, again)
    assert torch.equal(shuffled[:, 1:] - shuffled[:, :-1], torch.ones(len(shuffled), 7))  # whole windows


def test_datastore_positions_stride_and_budget():
    assert datastore_positions(101).tolist() == list(range(100))
    assert datastore_positions(101, stride=3).tolist() == list(range(0, 100, 3))
    thinned = datastore_positions(1001, budget=7)
    assert len(thinned) == 7 and thinned[0] == 0 and thinned[-1] == 999 and np.all(np.diff(thinned) > 0)


def strided_windows_as_transformers(n_tokens, max_length, stride):
    """The window (first token, scored targets) of every target token in the transformers perplexity guide's
    loop, written from the guide: target t is scored by the window whose new tokens include it."""
    scored_by, prev_end = {}, 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        for t in range(max(prev_end, begin + 1), end):
            scored_by[t] = begin
        prev_end = end
        if end == n_tokens:
            break
    return scored_by


@pytest.mark.parametrize("n_tokens,stride", [(300, None), (300, 5), (301, 16), (17, 3), (40, 1)])
def test_sliding_windows_score_every_position_once_as_transformers(n_tokens, stride):
    windows = sliding_windows(n_tokens, CONTEXT, stride)
    expected = strided_windows_as_transformers(n_tokens, CONTEXT + 1, stride or CONTEXT)
    positions = np.arange(n_tokens - 1)
    assert sorted(expected) == list(range(1, n_tokens))  # every target once
    covered = {int(p) + 1: int(windows.starts[w]) for p, w in zip(positions, windows.of(positions), strict=True)}
    assert covered == expected
    assert np.all(windows.ends - windows.starts <= CONTEXT)


@pytest.mark.parametrize("stride,position_chunk", [(None, 1 << 20), (5, 1 << 20), (5, 2)])
def test_datastore_entries_are_the_models_own_states_in_their_windows(stride, position_chunk, monkeypatch):
    """Each entry is the state at its position in the window that scores it, also when the window lookup goes a
    few positions at a time (a window straddling two lookups is run twice, each time for its own positions)."""
    monkeypatch.setattr("resmem.lm.model.POSITION_CHUNK", position_chunk)
    torch.manual_seed(0)
    model = GPT(256, CONTEXT, n_layer=2, n_head=2, n_embd=16)
    tokens = np.random.default_rng(0).integers(0, 256, 300).astype(np.int32)
    positions = np.array([0, 5, 15, 16, 17, 100, 250, 298])
    windows = sliding_windows(len(tokens), CONTEXT, stride)
    blocks = list(datastore_entries(model, tokens, positions, windows, 2, "cpu", key="last_ffn_input"))
    hidden = np.concatenate([b[0]["hidden"] for b in blocks])
    ffn_input = np.concatenate([b[0]["key"] for b in blocks])
    assert np.concatenate([b[1] for b in blocks]).tolist() == tokens[positions + 1].tolist()
    scored_by = strided_windows_as_transformers(len(tokens), CONTEXT + 1, stride or CONTEXT)
    with torch.inference_mode():
        for h, f, p in zip(hidden, ffn_input, positions, strict=True):
            start = scored_by[p + 1]
            window = torch.from_numpy(tokens[start : p + 1].astype(np.int64))[None]
            np.testing.assert_allclose(h, model.hidden(window)[0, -1].numpy(), rtol=1e-5, atol=1e-6)
            # The last block's MLP input, computed by hand: its LayerNorm of the stream after attention.
            x = model.token_embedding(window) + model.position_embedding(torch.arange(window.shape[1]))
            x = model.blocks[0](x)
            last = model.blocks[1]
            q, k, v = last.qkv(last.ln_attn(x)).split(16, dim=2)
            q, k, v = (z.view(1, -1, 2, 8).transpose(1, 2) for z in (q, k, v))
            attended = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + last.proj(attended.transpose(1, 2).reshape(1, -1, 16))
            np.testing.assert_allclose(f, last.ln_mlp(x)[0, -1].numpy(), rtol=1e-5, atol=1e-6)


def test_trained_datastore_round_trips(corpus):
    root, tokens = corpus
    cfg = tiny_config()
    out = {"model": root / "model.pt", "train_log": root / "log.csv", "meta": root / "meta.json"}
    lm_stages.train(root / "corpus.npz", root / "corpus.json", out, cfg["models"]["m"], cfg["train"], CONTEXT, 500,
                    seed=0, device="cpu", threads=1, config={})  # fmt: skip
    history = np.genfromtxt(root / "log.csv", delimiter=",", names=True)
    assert len(history) == 2 and history["loss"][1] < history["loss"][0]
    store = {"key": "final_hidden", "stride": 2, "max_tokens": 1000, "batch_size": 4}
    lm_stages.datastore(root / "corpus.npz", root / "model.pt", root / "ds.npz", root / "ds.json", store, 300,
                        eval_stride=None, amp=False, device="cpu", threads=1)  # fmt: skip
    arrays = load_datastore(root / "ds.npz")
    assert arrays["train_keys"].dtype == np.float16 and arrays["val_keys"].dtype == np.float32
    assert len(arrays["train_pos"]) == 1000 and len(arrays["val_pos"]) == len(arrays["test_pos"]) == 300
    for split in ("train", "val", "test"):
        assert arrays[f"{split}_next"].tolist() == tokens[split][arrays[f"{split}_pos"] + 1].tolist()
    model, _ = lm_stages.load_lm(root / "model.pt")
    positions = arrays["train_pos"][[0, 1, 500, 999]]
    windows = sliding_windows(len(tokens["train"]), CONTEXT)
    entries = datastore_entries(model, tokens["train"], positions, windows, 4, "cpu")
    direct = np.concatenate([states["hidden"] for states, _ in entries])
    np.testing.assert_allclose(arrays["train_keys"][[0, 1, 500, 999]], direct, rtol=2e-3, atol=2e-3)  # float16
    np.testing.assert_array_equal(arrays["head_weight"], model.token_embedding.weight.detach().numpy())
    report = json.loads((root / "ds.json").read_text())
    assert report["entries"] == {"train": 1000, "val": 300, "test": 300} and report["tokens_per_second"] > 0
    # The disk the stage asks for covers the file it wrote (and a scratch copy of its largest array: the keys).
    sizes = RunSizes(1000, 1000, 16, 600, 256, 1, 16)
    written, keys = (root / "ds.npz").stat().st_size, 1000 * 16 * 2
    assert written <= datastore_disk_bytes(sizes, "final_hidden") - keys <= 1.01 * written + 4096


def test_a_datastore_that_would_not_fit_the_disk_fails_before_writing(corpus, monkeypatch):
    root, _ = corpus
    cfg = tiny_config(epochs=1)
    out = {"model": root / "model.pt", "train_log": root / "log.csv", "meta": root / "meta.json"}
    lm_stages.train(root / "corpus.npz", root / "corpus.json", out, cfg["models"]["m"], cfg["train"], CONTEXT, 100,
                    seed=0, device="cpu", threads=1, config={})  # fmt: skip
    monkeypatch.setattr(io.shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    store = {"key": "last_ffn_input", "stride": 1, "max_tokens": None, "batch_size": 4}
    before = sorted(root.iterdir())
    with pytest.raises(io.ArtifactError, match=rf"lm_datastore: ds.npz needs 0.\d\d GB .* but {root} has 0.00 GB free"):
        lm_stages.datastore(root / "corpus.npz", root / "model.pt", root / "ds.npz", root / "ds.json", store, 300,
                            eval_stride=None, amp=False, device="cpu", threads=1)  # fmt: skip
    assert sorted(root.iterdir()) == before  # not a byte written: no datastore, no scratch file


def test_datastore_fractions_are_nested_and_row_subsets_read_lazily():
    half, quarter = datastore_rows(1000, 0.5), datastore_rows(1000, 0.25)
    assert len(half) == 500 and len(quarter) == 250 and set(quarter) <= set(half)
    assert np.array_equal(datastore_rows(1000, 1.0), np.arange(1000))
    data = np.arange(20).reshape(10, 2)
    subset = RowSubset(data, np.array([1, 4, 7]))
    assert subset.shape == (3, 2) and subset[1:].tolist() == [[8, 9], [14, 15]]


def test_truncated_datastore_is_named(tmp_path):
    io.save_npz(tmp_path / "ds.npz", train_keys=np.zeros((3, 2), np.float16))
    with pytest.raises(io.ArtifactError, match="ds.npz: missing arrays"):
        load_datastore(tmp_path / "ds.npz")


def test_ivfpq_index_reports_recall_and_exact_distances(tmp_path):
    """The IVF-PQ option: approximate neighbors, but the distances handed to the kernel are exact ones,
    rows sorted by them, and recall@k against exact search is reported on a sample."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 16)) * 4
    keys = (centers[rng.integers(0, 20, 6000)] + rng.normal(size=(6000, 16))).astype(np.float16)
    queries = {s: (centers[rng.integers(0, 20, 300)] + rng.normal(size=(300, 16))).astype(np.float32)
               for s in ("val", "test")}  # fmt: skip
    store = {"train_keys": keys, "train_next": rng.integers(0, 256, 6000), "train_pos": np.arange(6000)}
    for s, q in queries.items():
        store.update({f"{s}_keys": q, f"{s}_next": rng.integers(0, 256, 300), f"{s}_pos": np.arange(300)})
    io.save_npz(
        tmp_path / "ds.npz", **store, head_weight=np.zeros((256, 16), np.float32), head_bias=np.zeros(256, np.float32)
    )
    index = {"index": tmp_path / "pq.faiss", "rows": tmp_path / "rows.npz"}
    lm_stages.index(tmp_path / "ds.npz", index, knn(index="ivfpq", nlist=16, pq_m=4), "cpu", store_fraction=0.5)
    lm_stages.neighbors(index["index"], index["rows"], tmp_path / "ds.npz", search_outputs(tmp_path),
                        knn(k=[10], query_chunk=100, nprobe=4, recall_sample=200), "cpu")  # fmt: skip
    report = json.loads((tmp_path / "search.json").read_text())
    assert report["index"] == "IndexIVFPQ" and report["ntotal"] == 3000 and report["recall_sample"] == 200
    assert report["datastore_fraction"] == 0.5
    assert 0.3 < report["recall_at_k_max"] < 1.0  # approximate, but finds most true neighbors
    found = io.load_npz(tmp_path / "nb.npz", ["test_dist", "test_idx"])
    assert set(np.unique(found["test_idx"])) <= set(datastore_rows(6000, 0.5))
    exact = np.linalg.norm(keys[found["test_idx"]].astype(np.float32) - queries["test"][:, None], axis=2)
    np.testing.assert_allclose(found["test_dist"], exact, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(found["test_dist"], axis=1) >= 0)


LM_BAD = {
    "heads do not divide the width": (
        lambda x: x["models"]["m"].update(n_head=3),
        "lm_experiments.x.models.m.n_head",
        "do not divide",
    ),
    "text corpus without a path": (lambda x: x.update(corpus={"name": "text"}), "lm_experiments.x.corpus.path", ""),
    "bpe without a file": (
        lambda x: x.update(corpus={"tokenizer": "bpe"}),
        "lm_experiments.x.corpus.tokenizer_file",
        "tokenizers JSON",
    ),
    "pq codes do not divide the width": (
        lambda x: x.update(knn={"index": "ivfpq", "pq_m": 5}),
        "lm_experiments.x.knn.pq_m",
        "do not divide",
    ),
    "lambda above 1": (lambda x: x.update(knn={"lam": [0.5, 1.5]}), "lm_experiments.x.knn.lam[1]", "maximum of 1"),
    "zero context": (lambda x: x.update(context=0), "lm_experiments.x.context", "minimum of 1"),
    "unknown corpus": (lambda x: x.update(corpus={"name": "pile"}), "lm_experiments.x.corpus.name", "not one of"),
    "empty fractions": (lambda x: x.update(datastore={"fractions": []}), "lm_experiments.x.datastore.fractions", ""),
}


@pytest.mark.parametrize("case", sorted(LM_BAD))
def test_bad_lm_config_names_the_key(case):
    edit, key, problem = LM_BAD[case]
    experiment = {"models": {"m": {"n_layer": 1, "n_head": 2, "n_embd": 16}}}
    edit(experiment)
    with pytest.raises(ConfigError) as info:
        validate({"lm_experiments": {"x": experiment}})
    assert f"invalid config at {key}" in str(info.value) and problem in str(info.value)


def test_experiment_names_are_unique_across_kinds():
    config = {
        "experiments": {"same": {"models": {"c": {"arch": "small_cnn"}}}},
        "lm_experiments": {"same": {"models": {"m": {}}}},
    }
    with pytest.raises(
        ConfigError, match=r"lm_experiments.same: the name is also used \(regardless of case\) in experiments.same"
    ):
        validate(config)
    with pytest.raises(ConfigError, match="no experiment"):
        validate({})


def test_neighbors_that_do_not_fit_the_datastore_are_named(tmp_path):
    rng = np.random.default_rng(0)
    store = {f"{s}_{kind}": np.zeros(n, np.int64) for s, n in (("train", 50), ("val", 20), ("test", 20))
             for kind in ("next", "pos")}  # fmt: skip
    store.update(train_keys=rng.normal(size=(50, 4)).astype(np.float16), val_keys=np.zeros((20, 4), np.float32))
    store.update(test_keys=np.zeros((20, 4), np.float32), head_weight=np.zeros((256, 4), np.float32))
    io.save_npz(tmp_path / "ds.npz", **store, head_bias=np.zeros(256, np.float32))
    short = {f"{s}_{kind}": np.zeros((10, 4), np.float32 if kind == "dist" else np.int64)
             for s in ("val", "test") for kind in ("dist", "idx")}  # fmt: skip
    io.save_npz(tmp_path / "nb.npz", **short)
    with pytest.raises(io.ArtifactError, match=r"nb.npz: 10 × 4 val neighbors do not fit .*ds.npz \(20 queries\)"):
        lm_stages.sweep(tmp_path / "ds.npz", tmp_path / "nb.npz", tmp_path / "s.csv", knn(k=[1, 4]))


def test_bpe_text_corpus_end_to_end_through_the_stages(tmp_path):
    """A vocabulary other than bytes flows from the corpus through the model, the datastore and the sweep."""
    from tests.test_corpus import train_bpe

    tokenizer_file = train_bpe(tmp_path / "bpe.json", eos=True)
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(40):
        (texts / f"{i}.txt").write_text(f"def hello_{i % 7}(world):\n    return world * {i}\n" * 5)
    corpus = {"name": "text", "path": str(texts), "tokenizer": "bpe", "tokenizer_file": str(tokenizer_file)}
    corpus.update(val_fraction=0.25, test_fraction=0.25)
    cfg = validate({"lm_experiments": {"x": {"models": {"m": {"n_layer": 1, "n_head": 2, "n_embd": 16}},
                                             "corpus": corpus, "context": 8}}})["lm_experiments"]["x"]  # fmt: skip
    cfg["train"].update(epochs=1, batch_size=8, lr=0.01)
    lm_stages.corpus(tmp_path / "corpus.npz", tmp_path / "corpus.json", cfg["corpus"])
    vocab = json.loads((tmp_path / "corpus.json").read_text())["vocab_size"]
    assert vocab > 256
    out = {"model": tmp_path / "model.pt", "train_log": tmp_path / "log.csv", "meta": tmp_path / "meta.json"}
    lm_stages.train(tmp_path / "corpus.npz", tmp_path / "corpus.json", out, cfg["models"]["m"], cfg["train"], 8, 200,
                    seed=0, device="cpu", threads=1, config={})  # fmt: skip
    lm_stages.datastore(tmp_path / "corpus.npz", tmp_path / "model.pt", tmp_path / "ds.npz", tmp_path / "ds.json",
                        {"key": "final_hidden", "stride": 1, "max_tokens": None, "batch_size": 8}, 100, None, False,
                        "cpu", threads=1)  # fmt: skip
    assert load_datastore(tmp_path / "ds.npz")["head_weight"].shape == (vocab, 16)
    index = {"index": tmp_path / "i.faiss", "rows": tmp_path / "rows.npz"}
    lm_stages.index(tmp_path / "ds.npz", index, knn(), "cpu")
    lm_stages.neighbors(index["index"], index["rows"], tmp_path / "ds.npz", search_outputs(tmp_path),
                        knn(k=[4], query_chunk=1000, nprobe=1, recall_sample=10), "cpu")  # fmt: skip
    lm_stages.sweep(tmp_path / "ds.npz", tmp_path / "nb.npz", tmp_path / "sw.csv", knn(k=[1, 4]))
    table = pd.read_csv(tmp_path / "sw.csv")
    assert set(table.method) == {"base", "resmem", "knnlm"} and table.accuracy.between(0, 1).all()
