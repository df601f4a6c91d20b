"""resmem.ResMem, the array-level estimator: its scores against ResMem written out per query (no resmem code),
labels of any kind, copies, checked inputs (each error raised before any search), torch tensors, selection against
predict looped over the grid, the tie rule of selection, bounded memory, and save/load without pickle."""

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch

import resmem.estimator
from resmem import ResMem
from resmem.io import ArtifactError
from tests.conftest import REPO, resmem_by_hand


@pytest.fixture(scope="module")
def data():
    """Five Gaussian classes in 8 dimensions, a weak base model's logits, and train / val / test splits."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 8)) * 2

    def split(n):
        y = rng.integers(0, 5, n)
        emb = (centers[y] + rng.normal(size=(n, 8))).astype(np.float32)
        logits = (rng.normal(size=(n, 5)) + np.eye(5)[y]).astype(np.float32)
        return emb, logits, y

    return {"train": split(400), "val": split(150), "test": split(120)}


def test_scores_probabilities_and_predictions_match_resmem_by_hand(data):
    train, test = data["train"], data["test"]
    model = ResMem(k=7, sigma=0.5, temperature=2.0, device="cpu").fit(*train)
    expected = resmem_by_hand(*train, *test[:2], 7, 0.5, 2.0)
    np.testing.assert_allclose(model.decision_function(*test[:2]), expected, atol=1e-6)  # float32 distances
    np.testing.assert_array_equal(model.predict(*test[:2]), expected.argmax(axis=1))
    proba = model.predict_proba(*test[:2])
    clipped = np.maximum(expected, 0.0)
    np.testing.assert_allclose(proba, clipped / clipped.sum(axis=1, keepdims=True), atol=1e-6)
    assert (proba >= 0).all() and np.allclose(proba.sum(axis=1), 1.0)
    assert (expected < 0).any()  # the raw scores are not probabilities: some entries are negative
    assert model.score(*test) == pytest.approx(np.mean(expected.argmax(axis=1) == test[2]))


def test_labels_of_any_sortable_kind_and_their_column_order(data):
    train, test = data["train"], data["test"]
    names = np.array(["ant", "bee", "cat", "dog", "emu"])
    by_code = ResMem(k=5, device="cpu").fit(*train)
    by_name = ResMem(k=5, device="cpu").fit(train[0], train[1], names[train[2]])
    assert by_name.classes_.tolist() == names.tolist()
    np.testing.assert_array_equal(by_name.predict(*test[:2]), names[by_code.predict(*test[:2])])
    assert by_name.score(test[0], test[1], names[test[2]]) == by_code.score(*test)
    # a class absent from the training labels: classes= names every logit column
    absent = train[2] != 4
    with pytest.raises(ValueError, match="the labels hold 4 distinct classes but the logits have 5 columns"):
        ResMem(device="cpu").fit(train[0][absent], train[1][absent], train[2][absent])
    model = ResMem(k=3, device="cpu").fit(train[0][absent], train[1][absent], train[2][absent], classes=range(5))
    assert model.classes_.tolist() == [0, 1, 2, 3, 4]


def test_fit_keeps_copies_not_the_callers_arrays(data):
    train, test = data["train"], data["test"]
    emb, logits, y = (a.copy() for a in train)
    model = ResMem(k=5, device="cpu").fit(emb, logits, y)
    before = model.decision_function(*test[:2])
    emb[:] = 0.0
    logits[:] = 100.0
    y[:] = 0
    np.testing.assert_array_equal(model.decision_function(*test[:2]), before)


BAD_SETTINGS = [
    (dict(sigma=0), ValueError, "sigma must be a finite number > 0; got 0"),
    (dict(sigma=-1.0), ValueError, "sigma must be a finite number > 0; got -1.0"),
    (dict(temperature=0.0), ValueError, "temperature must be a finite number > 0; got 0.0"),
    (dict(temperature=float("inf")), ValueError, "temperature must be a finite number > 0; got inf"),
    (
        dict(temperature=1e-300),
        ValueError,
        "temperature must lie in \\[1e-30, 1e\\+30\\] \\(the sweep divides by it in "
        "float32, where 1e-300 rounds to 0\\)",
    ),  # fmt: skip
    (dict(sigma="1"), TypeError, "sigma must be a positive number; got '1' \\(str\\)"),
    (dict(k=0), ValueError, "k must be a positive integer; got 0"),
    (dict(k=1.5), TypeError, "k must be a positive integer; got 1.5 \\(float\\)"),
    (dict(k=True), TypeError, "k must be a positive integer; got True \\(bool\\)"),
    (dict(k=401), ValueError, "k = 401 exceeds the 400 training examples the model was fitted on"),
    (dict(device="tpu"), ValueError, "device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device; got 'tpu'"),
]


@pytest.fixture
def no_search(monkeypatch):
    """The search raises if it is reached: a check must fail before it."""

    def search(*args, **kwargs):
        raise AssertionError("the search ran before the input was checked")

    monkeypatch.setattr(resmem.estimator, "search", search)


@pytest.mark.parametrize(("settings", "error", "message"), BAD_SETTINGS)
def test_bad_hyperparameters_name_themselves_before_any_search(data, no_search, settings, error, message):
    train, test = data["train"], data["test"]
    model = ResMem(device="cpu").fit(*train)  # fit builds the index; the search is what must not start
    with pytest.raises(error, match=message):
        model.set_params(**settings).predict(*test[:2])


def bad_inputs(train, test):
    emb, logits, y = train
    nan_logits, nan_emb = test[1].copy(), test[0].copy()
    nan_logits[3, 2], nan_emb[5, 0] = np.nan, np.inf
    return [
        (
            "query width",
            (test[0][:, :7], test[1]),
            ValueError,
            "embeddings has 7 features, but the model was fitted with 8",
        ),  # fmt: skip
        (
            "class count",
            (test[0], test[1][:, :4]),
            ValueError,
            "logits has 4 classes, but the model was fitted with 5",
        ),  # fmt: skip
        (
            "NaN logits",
            (test[0], nan_logits),
            ValueError,
            "logits holds 1 NaN or infinite values \\(the first at row 3, column 2\\)",
        ),  # fmt: skip
        ("inf embedding", (nan_emb, test[1]), ValueError, "embeddings holds 1 NaN or infinite values"),
        (
            "one query, 1-D",
            (test[0][0], test[1][0]),
            ValueError,
            "embeddings must be a 2-D array \\(samples × features\\); got shape \\(8,\\) \\(one sample: reshape",
        ),  # fmt: skip
        ("no queries", (test[0][:0], test[1][:0]), ValueError, "embeddings has no rows"),
        ("rows differ", (test[0][:5], test[1][:6]), ValueError, "logits has 6 rows but embeddings has 5"),
        ("strings", (np.array([["a"] * 8]), test[1][:1]), TypeError, "embeddings must hold real numbers"),
    ]


@pytest.mark.parametrize("case", range(8))
def test_bad_queries_are_named_before_any_search(data, no_search, case):
    model = ResMem(device="cpu").fit(*data["train"])
    _, arrays, error, message = bad_inputs(data["train"], data["test"])[case]
    with pytest.raises(error, match=message):
        model.predict(*arrays)


def test_bad_training_inputs_are_named(data):
    emb, logits, y = data["train"]
    nan = logits.copy()
    nan[7, 1] = np.nan
    with pytest.raises(ValueError, match="logits holds 1 NaN or infinite values \\(the first at row 7, column 1\\)"):
        ResMem().fit(emb, nan, y)
    with pytest.raises(ValueError, match="logits has 399 rows but embeddings has 400"):
        ResMem().fit(emb, logits[1:], y)
    with pytest.raises(ValueError, match="labels has 399 rows but embeddings has 400"):
        ResMem().fit(emb, logits, y[1:])
    with pytest.raises(ValueError, match="labels must be 1-D; got shape \\(400, 1\\)"):
        ResMem().fit(emb, logits, y[:, None])
    with pytest.raises(ValueError, match="the labels hold 6 distinct classes but the logits have 5 columns"):
        ResMem().fit(emb, logits, np.where(np.arange(len(y)) == 0, -1, y))  # -1 and 0..4: six classes
    with pytest.raises(AttributeError, match="not fitted yet; call fit"):
        ResMem().predict(emb, logits)


def test_select_rejects_labels_it_was_not_fitted_with(data, no_search):
    model = ResMem(device="cpu").fit(*data["train"])
    val = data["val"]
    with pytest.raises(ValueError, match="labels holds labels the model was not fitted with: \\[7\\]"):
        model.select(val[0], val[1], np.where(np.arange(len(val[2])) == 3, 7, val[2]), k=[1], sigma=[1.0],
                     temperature=[1.0])  # fmt: skip
    with pytest.raises(ValueError, match="k repeats a value: \\[4, 4\\]"):
        model.select(*val, k=[4, 4], sigma=[1.0], temperature=[1.0])
    with pytest.raises(ValueError, match="sigma\\[1\\] must be a finite number > 0; got 0.0"):
        model.select(*val, k=[4], sigma=[1.0, 0.0], temperature=[1.0])


def test_inputs_as_lists_numpy_integers_and_torch_tensors(data):
    train, test = data["train"], data["test"]
    reference = ResMem(k=4, sigma=0.5, device="cpu").fit(*train).predict(*test[:2])
    as_lists = ResMem(k=np.int64(4), sigma=np.float32(0.5), device=torch.device("cpu"))
    as_lists.fit(train[0].tolist(), train[1].tolist(), train[2].tolist())
    np.testing.assert_array_equal(as_lists.predict(test[0].tolist(), test[1].tolist()), reference)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        emb = torch.tensor(train[0], dtype=dtype, requires_grad=True)
        logits = torch.tensor(train[1], dtype=dtype, requires_grad=True)
        model = ResMem(k=4, sigma=0.5, device="cpu").fit(emb, logits, torch.tensor(train[2]))
        queries = [torch.tensor(a, dtype=dtype, requires_grad=True) for a in test[:2]]
        rounded = [t.detach().float().numpy() for t in (emb, logits, *queries)]  # the same values as numpy
        expected = ResMem(k=4, sigma=0.5, device="cpu").fit(*rounded[:2], train[2]).predict(*rounded[2:])
        np.testing.assert_array_equal(model.predict(*queries), expected)


def test_device_names(data, monkeypatch):
    """cuda:N and torch.device are understood; without a GPU, asking for one says so (not a config message)."""
    model = ResMem(device="cuda:0")
    with pytest.raises(RuntimeError, match="'device: cuda:0' but faiss sees 0 GPUs"):
        model.fit(*data["train"])
    assert ResMem(device=torch.device("cpu")).fit(*data["train"]).score(*data["test"]) > 0.5


def test_select_counts_equal_predict_looped_over_the_grid(data):
    train, val = data["train"], data["val"]
    model = ResMem(device="cpu").fit(*train)
    grid = model.select(*val, k=[1, 4, 16], sigma=[0.3, 1.0, 3.0], temperature=[0.5, 1.0])
    assert list(grid.columns) == ["k", "sigma", "temperature", "accuracy", "selected"] and len(grid) == 18
    looped = ResMem(device="cpu").fit(*train)
    for row in grid.itertuples():
        by_hand = resmem_by_hand(*train, *val[:2], row.k, row.sigma, row.temperature).argmax(axis=1)
        assert row.accuracy == pytest.approx(np.mean(by_hand == val[2]), abs=1e-12)
        looped.set_params(k=row.k, sigma=row.sigma, temperature=row.temperature)
        assert row.accuracy == looped.score(*val)
    chosen = grid[grid.selected].iloc[0]
    assert chosen.accuracy == grid.accuracy.max() and grid.selected.sum() == 1
    assert (model.k, model.sigma, model.temperature) == (chosen.k, chosen.sigma, chosen.temperature)


def test_extreme_temperatures_sweep_as_the_float64_reference_scores(data):
    """At the ends of the accepted range, T = 1e-30 (the softmax is one-hot) and 1e30 (uniform), the sweep's
    counts equal `score` at each point, which the float64 reference computes."""
    model = ResMem(device="cpu").fit(*data["train"])
    grid = model.select(*data["val"], k=[1, 8], sigma=[0.5], temperature=[1e-30, 1e30])
    for row in grid.itertuples():
        assert row.accuracy == model.set_params(k=row.k, sigma=row.sigma, temperature=row.temperature).score(
            *data["val"]
        )
    assert grid.accuracy.min() > 0.3


def test_select_breaks_ties_by_smaller_k_then_larger_sigma_then_smaller_temperature(data):
    """Queries that are training points, labels their base model already gets right with any setting: every
    grid point scores 100 %, so the tie rule alone decides."""
    emb, logits, y = data["train"]
    sure = np.eye(5)[y] * 50.0  # logits no memory can overturn
    model = ResMem(device="cpu").fit(emb, sure, y)
    grid = model.select(emb[:50], sure[:50], y[:50], k=[8, 2, 4], sigma=[0.5, 2.0, 1.0], temperature=[2.0, 1.0])
    assert (grid.accuracy == 1.0).all()
    assert (model.k, model.sigma, model.temperature) == (2, 2.0, 1.0)
    assert grid.loc[grid.selected, ["k", "sigma", "temperature"]].values.tolist() == [[2, 2.0, 1.0]]


def test_predict_memory_stays_bounded():
    """10,000 queries, k = 64, 100 classes: gathering every query's neighbours' residuals at once would take
    10,000 × 64 × 100 × 8 bytes = 512 MB; chunked, predict's peak stays within 4 × 64 MiB (tracemalloc)."""
    rng = np.random.default_rng(1)
    emb, y = rng.normal(size=(2000, 16)).astype(np.float32), rng.integers(0, 100, 2000)
    model = ResMem(k=64, device="cpu").fit(emb, rng.normal(size=(2000, 100)).astype(np.float32), y)
    queries, logits = rng.normal(size=(10_000, 16)).astype(np.float32), rng.normal(size=(10_000, 100))
    tracemalloc.start()
    model.predict(queries, logits)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 * resmem.estimator.PREDICT_CHUNK_BYTES, f"peak {peak / 2**20:.0f} MiB"


def test_saved_model_predicts_the_same_in_a_new_process(data, tmp_path):
    train, test = data["train"], data["test"]
    names = np.array(["ant", "bee", "cat", "dog", "emu"])
    model = ResMem(k=6, sigma=0.7, temperature=1.5, device="cpu").fit(train[0], train[1], names[train[2]])
    model.save(tmp_path / "model")
    np.savez(tmp_path / "queries.npz", emb=test[0], logits=test[1])
    code = (
        "import numpy as np, sys; from resmem import ResMem; q = np.load(sys.argv[2]); "
        "m = ResMem.load(sys.argv[1]); print(m.get_params()); print(' '.join(m.predict(q['emb'], q['logits'])))"
    )
    out = subprocess.run([sys.executable, "-c", code, tmp_path / "model", tmp_path / "queries.npz"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.splitlines()  # fmt: skip
    assert out[0] == str(model.get_params())
    assert out[1].split() == model.predict(*test[:2]).tolist()
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["arrays.npz", "index.faiss", "resmem.json"]


@pytest.mark.parametrize("part", ["arrays.npz", "index.faiss", "resmem.json"])
def test_a_changed_byte_in_any_part_is_refused_with_the_file_named(data, tmp_path, part):
    ResMem(device="cpu").fit(*data["train"]).save(tmp_path)
    path = tmp_path / part
    content = bytearray(path.read_bytes())
    at = len(content) // 2 if part != "resmem.json" else content.index(b'"k": 16') + 6
    content[at] = ord("7") if part == "resmem.json" else content[at] ^ 1
    path.write_bytes(bytes(content))
    with pytest.raises(ArtifactError, match=f"{path}[ :].*(changed|sha256 differ)"):
        ResMem.load(tmp_path)


def test_loading_a_folder_without_a_model_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="resmem.json: no saved model here"):
        ResMem.load(tmp_path)
    (tmp_path / "resmem.json").write_text('{"format": "something else"}')
    with pytest.raises(ArtifactError, match="not a saved ResMem model"):
        ResMem.load(tmp_path)
