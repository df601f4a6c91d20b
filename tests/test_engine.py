"""The sweep engine (float32 torch, near-ties re-decided in float64) against the float64 reference, bit for bit, on
data built to be full of ties: quantized logits, duplicated embeddings and token states; with a residual table of
every training row and with per-block tables (a budget below the whole table's size)."""

import numpy as np
import pytest

from resmem import engine
from resmem.core import METHODS, sweep_correct_float64
from resmem.knn import build_index, search
from resmem.lm.tokens import KeyLogits

KS, SIGMAS, TEMPERATURES = [1, 2, 3, 5, 8, 20, 40], [0.05, 1.0, 1e6], [1.0, 2.0]
ALL = {"lambdas": [0.1, 0.5, 0.9], "methods": METHODS}  # ResMem and both baselines


def assert_same_counts(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for method in expected:
        np.testing.assert_array_equal(got[method], expected[method], err_msg=method)


def tie_heavy_images(seed=0, n_points=30, copies=20, n_query=300, n_classes=4):
    """Training embeddings are `copies` copies of `n_points` points (their distances tie), logits are integers in
    {-1, 0, 1} (equal logits give equal probabilities and residuals), and a third of the queries sit exactly on a
    training point (distance 0)."""
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(n_points, 6)).astype(np.float32)
    train_emb = np.repeat(points, copies, axis=0)
    train_y = rng.integers(0, n_classes, len(train_emb))
    train_logits = rng.integers(-1, 2, (len(train_emb), n_classes)).astype(np.float32)
    query_emb = points[rng.integers(0, n_points, n_query)] + rng.normal(size=(n_query, 6)).astype(np.float32)
    query_emb[::3] = points[rng.integers(0, n_points, len(query_emb[::3]))]
    query_y = rng.integers(0, n_classes, n_query)
    query_logits = rng.integers(-1, 2, (n_query, n_classes)).astype(np.float32)
    dist, idx = search(build_index(train_emb, device="cpu"), query_emb, max(KS), device="cpu")
    return train_logits, train_y, query_logits, query_y, dist, idx


def tie_heavy_tokens(seed=0, n_states=40, copies=25, n_query=300, vocab=16, dim=8):
    """A token datastore whose hidden states repeat, with logits exact in float32 (states in multiples of 1/2,
    an output layer of integers), so that every way of computing them gives the same numbers."""
    rng = np.random.default_rng(seed)
    states = (rng.integers(-2, 3, (n_states, dim)) / 2).astype(np.float16)
    train_keys = np.repeat(states, copies, axis=0)
    query_keys = states[rng.integers(0, n_states, n_query)].astype(np.float32)
    query_keys[1::2] += rng.normal(size=query_keys[1::2].shape).astype(np.float32)
    weight = rng.integers(-1, 2, (vocab, dim)).astype(np.float32)
    bias = np.zeros(vocab, np.float32)
    dist, idx = search(build_index(train_keys.astype(np.float32), device="cpu"), query_keys, max(KS), device="cpu")
    train_logits, query_logits = KeyLogits(train_keys, weight, bias), KeyLogits(query_keys, weight, bias)
    train_next, query_next = rng.integers(0, vocab, len(train_keys)), rng.integers(0, vocab, n_query)
    return train_logits, train_next, query_logits, query_next, dist, idx


class Calls(list):
    def __init__(self):
        super().__init__()
        self.methods = []

    def of(self, method) -> int:
        """Queries re-decided for `method`."""
        return sum(n for n, m in zip(self, self.methods, strict=True) if m == method)


def redecided(monkeypatch) -> Calls:
    """Records the number of queries of each call to the float64 reference from the engine (and, in
    calls.methods, the method of each call)."""
    calls = Calls()

    def counting(*args, **kwargs):
        calls.append(len(args[3]))
        calls.methods.append(kwargs.get("methods", ["resmem"])[0])
        return sweep_correct_float64(*args, **kwargs)

    monkeypatch.setattr(engine, "sweep_correct_float64", counting)
    return calls


@pytest.mark.parametrize("make", [tie_heavy_images, tie_heavy_tokens], ids=["images", "tokens"])
@pytest.mark.parametrize("mode", ["table", "blocks", "small blocks"])
def test_engine_equals_the_float64_reference_on_tie_heavy_data(make, mode, monkeypatch):
    problem = make()
    table_bytes = len(problem[1]) * problem[2].shape[1] * 4
    chunk_bytes = {"table": table_bytes, "blocks": table_bytes - 1, "small blocks": 5_000}[mode]
    assert engine.fits_table(len(problem[1]), problem[2].shape[1], chunk_bytes) == (mode == "table")
    expected = sweep_correct_float64(*problem, KS, SIGMAS, TEMPERATURES, **ALL)
    calls = redecided(monkeypatch)
    got = engine.sweep_correct(*problem, KS, SIGMAS, TEMPERATURES, chunk_bytes=chunk_bytes, **ALL)
    assert_same_counts(got, expected)
    assert sum(calls) > 0  # the data has near-ties, and the reference decided them


@pytest.mark.parametrize("make", [tie_heavy_images, tie_heavy_tokens], ids=["images", "tokens"])
@pytest.mark.parametrize("mode", ["table", "small blocks"])
def test_groups_swept_at_once_count_each_group_as_the_reference(make, mode, monkeypatch):
    """val and test swept together (their queries interleaved here): each group's counts equal the float64
    reference on that group's queries alone, near-ties included."""
    train_logits, train_labels, query_logits, query_labels, dist, idx = make()
    groups = np.random.default_rng(2).integers(0, 3, len(query_labels))
    chunk_bytes = {"table": 10**9, "small blocks": 5_000}[mode]
    calls = redecided(monkeypatch)
    got = engine.sweep_correct(
        train_logits, train_labels, query_logits, query_labels, dist, idx, KS, SIGMAS, TEMPERATURES,
        chunk_bytes=chunk_bytes, groups=groups, **ALL,
    )  # fmt: skip
    assert got["resmem"].shape == (3, len(TEMPERATURES), len(KS), len(SIGMAS)) and len(calls) > 0
    assert got["knn"].shape == (3, len(KS), len(SIGMAS))
    assert got["knn_interp"].shape == (3, len(TEMPERATURES), len(KS), len(SIGMAS), len(ALL["lambdas"]))
    for g in range(3):
        mine = np.flatnonzero(groups == g)
        expected = sweep_correct_float64(
            train_logits, train_labels, query_logits[mine], query_labels[mine], dist[mine], idx[mine], KS, SIGMAS,
            TEMPERATURES, **ALL,
        )  # fmt: skip
        assert_same_counts({m: c[g] for m, c in got.items()}, expected)
    with pytest.raises(ValueError, match="groups must hold one integer ≥ 0 per query"):
        engine.sweep_correct(train_logits, train_labels, query_logits, query_labels, dist, idx, KS, SIGMAS,
                             TEMPERATURES, groups=groups[1:])  # fmt: skip


def test_query_blocks_are_the_longest_runs_whose_rows_fit():
    idx = np.random.default_rng(0).integers(0, 500, (200, 12))
    distinct, numbers = engine.neighbor_rows(idx, 10)
    np.testing.assert_array_equal(distinct, np.unique(idx[:, :10]))
    np.testing.assert_array_equal(distinct[numbers.numpy()], idx[:, :10])
    order = engine.locality_order(numbers)
    assert sorted(order) == list(range(len(idx)))
    blocks = list(engine.query_blocks(numbers, order, 150, 10_000))
    assert [b[0] for b in blocks] == [0] + [b[1] for b in blocks[:-1]] and blocks[-1][1] == len(idx)
    assert len(blocks) > 1 and max(last - first for first, last, _, _ in blocks) > 1
    for first, last, rows, local in blocks:
        slots = idx[order[first:last], :10]
        np.testing.assert_array_equal(distinct[rows.numpy()], np.unique(slots))  # sorted, each once
        np.testing.assert_array_equal(distinct[rows.numpy()][local.numpy()], slots)
        assert len(rows) <= 150
        if last < len(idx):  # one more query would not fit
            assert len(np.unique(idx[order[first : last + 1], :10])) > 150
    few_slots = list(engine.query_blocks(numbers, order, 150, 25))  # two queries' slots at most
    assert {last - first for first, last, _, _ in few_slots} == {2}


def test_locality_order_blocks_clusters_of_queries_that_share_rows():
    """Queries in clusters, each cluster's rows interleaved with the others' (row r belongs to cluster r mod 40):
    in locality order a cluster's queries are consecutive, so a row is computed twice only where a block ends
    inside a cluster, where the queries' own order and their own lowest row alone compute rows several times."""
    rng = np.random.default_rng(1)
    n_clusters, rows_each, per_cluster, k = 40, 16, 12, 6
    cluster = np.repeat(np.arange(n_clusters), per_cluster)
    rng.shuffle(cluster)
    idx = np.stack([n_clusters * rng.choice(rows_each, k, replace=False) + c for c in cluster])
    distinct, numbers = engine.neighbor_rows(idx, k)

    def computed(order):
        blocks = list(engine.query_blocks(numbers, order, 4 * rows_each, 10_000))
        return sum(len(rows) for _, _, rows, _ in blocks), len(blocks)

    rows, blocks = computed(engine.locality_order(numbers))
    assert rows <= len(distinct) + (blocks - 1) * rows_each  # a split cluster at most per block boundary
    own_lowest = np.argsort(numbers.amin(dim=1).numpy(), kind="stable")
    assert computed(own_lowest)[0] > 2 * rows and computed(np.arange(len(idx)))[0] > 3 * rows  # 650, 1819, 2741


def test_a_row_that_queries_share_is_computed_once_per_block(monkeypatch):
    """Token states repeat and neighbors are shared: each block's residual table computes each row it needs
    once, far fewer rows than the neighbor slots."""
    problem = tie_heavy_tokens()
    chunk_bytes = len(problem[1]) * problem[2].shape[1] * 4 - 1  # a byte short of the whole table: blocks
    requested, compute = [], engine.logits_on_device

    def counting(source, rows, device, out=None):
        if source is problem[0]:
            requested.append(len(rows))
        return compute(source, rows, device, out)

    monkeypatch.setattr(engine, "logits_on_device", counting)
    engine.sweep_correct(*problem, KS, SIGMAS, TEMPERATURES, chunk_bytes=chunk_bytes)
    max_rows, (_, numbers) = chunk_bytes // (4 * problem[2].shape[1]), engine.neighbor_rows(problem[5], max(KS))
    blocks = list(engine.query_blocks(numbers, engine.locality_order(numbers), max_rows, chunk_bytes // 24))
    assert sum(requested) == len(TEMPERATURES) * sum(len(rows) for _, _, rows, _ in blocks)
    assert sum(requested) < 0.5 * len(TEMPERATURES) * problem[5][:, : max(KS)].size


@pytest.mark.parametrize("make", [tie_heavy_images, tie_heavy_tokens], ids=["images", "tokens"])
def test_without_the_float64_redecision_float32_flips_ties(make, monkeypatch):
    """The data is hard enough that float32 alone differs from the reference: the re-decision is what makes
    the engine exact."""
    problem = make()
    monkeypatch.setattr(engine, "margin_bound", lambda k, n_classes: -1.0)
    got = engine.sweep_correct(*problem, KS, SIGMAS, TEMPERATURES, **ALL)
    expected = sweep_correct_float64(*problem, KS, SIGMAS, TEMPERATURES, **ALL)
    assert all(np.any(got[m] != expected[m]) for m in ("resmem", "knn_interp"))


def test_near_ties_are_rare_on_continuous_data(monkeypatch):
    """The margin bound is tight enough that the float64 reference re-decides few queries (here < 1 %)."""
    rng = np.random.default_rng(1)
    n_classes, n_query = 10, 2000
    centers = 2 * rng.normal(size=(n_classes, 8))
    train_y, query_y = rng.integers(0, n_classes, 3000), rng.integers(0, n_classes, n_query)
    train_emb = (centers[train_y] + rng.normal(size=(3000, 8))).astype(np.float32)
    query_emb = (centers[query_y] + rng.normal(size=(n_query, 8))).astype(np.float32)
    train_logits = (rng.normal(size=(3000, n_classes)) + np.eye(n_classes)[train_y]).astype(np.float32)
    query_logits = (rng.normal(size=(n_query, n_classes)) + np.eye(n_classes)[query_y]).astype(np.float32)
    dist, idx = search(build_index(train_emb, device="cpu"), query_emb, max(KS), device="cpu")
    problem = (train_logits, train_y, query_logits, query_y, dist, idx)
    calls = redecided(monkeypatch)
    got = engine.sweep_correct(*problem, KS, SIGMAS, TEMPERATURES, **ALL)
    assert_same_counts(got, sweep_correct_float64(*problem, KS, SIGMAS, TEMPERATURES, **ALL))
    for method in ("resmem", "knn_interp"):  # the soft kNN at σ = 10⁶ has uniform weights: its vote ties are exact
        assert calls.of(method) < 0.01 * n_query * len(TEMPERATURES)


def test_memmapped_logits_and_progress(tmp_path):
    """An ImageNet-size datastore is a memmap that does not fit the table budget: each block's rows are read from
    it (here a budget below the 9.6 kB table), and progress counts every query at every temperature. Its labels,
    a read-only memmap too, are read without a warning (torch warns on tensors over non-writable arrays)."""
    import warnings

    train_logits, train_y, query_logits, query_y, dist, idx = tie_heavy_images()
    np.save(tmp_path / "logits.npy", train_logits)
    np.save(tmp_path / "labels.npy", train_y.astype(np.int64))
    mapped, mapped_y = (np.load(tmp_path / f"{name}.npy", mmap_mode="r") for name in ("logits", "labels"))

    class Progress:
        done = 0

        def update(self, n):
            self.done += n

    progress = Progress()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = engine.sweep_correct(mapped, mapped_y, query_logits, query_y, dist, idx, KS, SIGMAS, TEMPERATURES,
                                   chunk_bytes=5_000, progress=progress, **ALL)  # fmt: skip
    expected = sweep_correct_float64(train_logits, train_y, query_logits, query_y, dist, idx, KS, SIGMAS, TEMPERATURES,
                                     **ALL)  # fmt: skip
    assert_same_counts(got, expected)
    assert not engine.fits_table(len(train_y), train_logits.shape[1], 5_000)
    assert progress.done == len(query_y) * len(TEMPERATURES)


def test_margin_bound_grows_with_k_and_stays_far_below_probability_gaps():
    assert engine.margin_bound(1, 10) < engine.margin_bound(1024, 10) < 1e-3
    assert engine.margin_bound(16, 50_257) < 2e-5  # a 50k vocabulary barely moves it


def test_bad_inputs_are_named():
    train_logits, train_y, query_logits, query_y, dist, idx = tie_heavy_images()
    with pytest.raises(ValueError, match="every k must lie in"):
        engine.sweep_correct(train_logits, train_y, query_logits, query_y, dist, idx, [41], [1.0], [1.0])
    with pytest.raises(ValueError, match="1 class; ResMem needs at least 2"):
        engine.sweep_correct(train_logits[:, :1], train_y * 0, query_logits[:, :1], query_y * 0, dist, idx, [1], [1.0],
                             [1.0])  # fmt: skip
