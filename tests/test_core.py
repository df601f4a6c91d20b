"""The ResMem math against an independent brute-force implementation (scikit-learn neighbors, scipy softmax)."""

import numpy as np
import pytest
from scipy.special import softmax as scipy_softmax
from sklearn.neighbors import NearestNeighbors

from resmem.core import neighbor_weights, residuals, resmem_predict, resmem_scores, sweep_correct_float64
from resmem.engine import sweep_correct
from resmem.knn import build_index, search
from tests.conftest import resmem_by_hand


def reference_predict(train_emb, train_logits, train_y, query_emb, query_logits, k, sigma, temperature):
    """Algorithm 1 of the paper written out per query, sharing no code with resmem."""
    return np.argmax(resmem_by_hand(train_emb, train_logits, train_y, query_emb, query_logits, k, sigma,
                                    temperature), axis=1)  # fmt: skip


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    n_train, n_query, dim, n_classes = 400, 120, 8, 5
    centers = rng.normal(size=(n_classes, dim)) * 2
    train_y = rng.integers(0, n_classes, n_train)
    query_y = rng.integers(0, n_classes, n_query)
    train_emb = (centers[train_y] + rng.normal(size=(n_train, dim))).astype(np.float32)
    query_emb = (centers[query_y] + rng.normal(size=(n_query, dim))).astype(np.float32)
    # A weak "base model": noisy logits that are right only part of the time.
    train_logits = (rng.normal(size=(n_train, n_classes)) + np.eye(n_classes)[train_y]).astype(np.float32)
    query_logits = (rng.normal(size=(n_query, n_classes)) + np.eye(n_classes)[query_y]).astype(np.float32)
    index = build_index(train_emb, device="cpu")
    dist, idx = search(index, query_emb, 64, device="cpu")
    return dict(
        train_emb=train_emb,
        train_logits=train_logits,
        train_y=train_y,
        query_emb=query_emb,
        query_logits=query_logits,
        query_y=query_y,
        dist=dist,
        idx=idx,
    )


@pytest.mark.parametrize("k", [1, 3, 10, 64])
@pytest.mark.parametrize("sigma", [0.05, 0.5, 2.0, 50.0])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_predictions_match_brute_force_reference(problem, k, sigma, temperature):
    p = problem
    expected = reference_predict(
        p["train_emb"], p["train_logits"], p["train_y"], p["query_emb"], p["query_logits"], k, sigma, temperature
    )
    train = (p["train_logits"], p["train_y"])
    got = resmem_predict(p["query_logits"], p["dist"][:, :k], p["idx"][:, :k], *train, sigma, temperature)
    np.testing.assert_array_equal(got, expected)


def assert_float32_distances(dist, queries, keys, idx, roundings: int = 1) -> None:
    """faiss's Euclidean distances from each query to its neighbours `idx` against float64 ones. faiss forms
    d² = |x|² + |y|² − 2·x·y in float32, sums of D terms that cancel where neighbours are close: within
    (D + 4)·u·(|x| + |y|)² of the exact d² (u = 2⁻²⁴; its square root's rounding included), in whatever order the
    CPU's kernels sum, not within a fixed share of d. `roundings` = 3 where faiss and the reference normalized the
    vectors in float32 each: the two normalizations differ by (D + 4)·u·|x| at most, which moves d² ≤ 4 by at most
    twice as much again."""
    x, y = queries.astype(np.float64)[:, None, :], keys.astype(np.float64)[idx]
    exact = np.linalg.norm(x - y, axis=2)
    bound = roundings * (x.shape[2] + 4) * 2.0**-24 * (np.linalg.norm(x, axis=2) + np.linalg.norm(y, axis=2)) ** 2
    assert (np.abs(dist.astype(np.float64) ** 2 - exact**2) <= bound).all()


def test_faiss_distances_are_euclidean_not_squared(problem):
    p = problem
    nn = NearestNeighbors(n_neighbors=5).fit(p["train_emb"])
    _, idx = nn.kneighbors(p["query_emb"])
    np.testing.assert_array_equal(p["idx"][:, :5], idx)
    assert_float32_distances(p["dist"][:, :5], p["query_emb"], p["train_emb"], idx)


def test_memorization_at_k1_returns_training_labels(problem):
    p = problem
    index = build_index(p["train_emb"], device="cpu")
    dist, idx = search(index, p["train_emb"], 1, device="cpu")
    np.testing.assert_array_equal(idx[:, 0], np.arange(len(p["train_y"])))
    for temperature in (0.1, 1.0, 10.0):
        pred = resmem_predict(
            p["train_logits"], dist, idx, p["train_logits"], p["train_y"], sigma=1.0, temperature=temperature
        )
        np.testing.assert_array_equal(pred, p["train_y"])
    base = p["train_logits"].argmax(1)
    assert (base != p["train_y"]).mean() > 0.2  # the base model alone does not memorize


def test_tiny_sigma_gives_no_nan_and_follows_the_nearest_neighbor(problem):
    p = problem
    train = (p["train_logits"], p["train_y"])
    scores = resmem_scores(p["query_logits"], p["dist"][:, :16], p["idx"][:, :16], *train, sigma=1e-12)
    assert np.isfinite(scores).all()
    nearest = resmem_scores(p["query_logits"], p["dist"][:, :1], p["idx"][:, :1], *train, sigma=1.0)
    np.testing.assert_allclose(scores, nearest, atol=1e-9)


def test_huge_sigma_gives_uniform_weights(problem):
    weights = neighbor_weights(problem["dist"][:, :10], sigma=1e12)
    np.testing.assert_allclose(weights, np.full_like(weights, 0.1), rtol=1e-9)
    np.testing.assert_allclose(neighbor_weights(problem["dist"][:, :10], 0.3).sum(1), 1.0)


@pytest.mark.parametrize("sweep", [sweep_correct, sweep_correct_float64], ids=["engine", "float64"])
def test_sweep_equals_per_point_evaluation(problem, sweep):
    p = problem
    ks, sigmas, temps = [16, 1, 5, 64, 2], [0.01, 0.3, 1.0, 100.0], [0.5, 1.0, 2.0]
    # A chunk bound far below one query block forces many chunks (and the engine's per-block residual tables).
    correct = sweep(
        p["train_logits"],
        p["train_y"],
        p["query_logits"],
        p["query_y"],
        p["dist"],
        p["idx"],
        ks,
        sigmas,
        temps,
        chunk_bytes=64 * 5 * 8 * 7,
    )["resmem"]
    assert correct.shape == (3, 5, 4)
    for t, temperature in enumerate(temps):
        train = (p["train_logits"], p["train_y"])
        for i, k in enumerate(ks):
            for s, sigma in enumerate(sigmas):
                pred = resmem_predict(p["query_logits"], p["dist"][:, :k], p["idx"][:, :k], *train, sigma, temperature)
                assert correct[t, i, s] == (pred == p["query_y"]).sum(), (temperature, k, sigma)


def test_resmem_improves_a_weak_base_model(problem):
    p = problem
    correct = sweep_correct(
        p["train_logits"], p["train_y"], p["query_logits"], p["query_y"], p["dist"], p["idx"], [16], [1.0], [1.0]
    )["resmem"]
    base = (p["query_logits"].argmax(1) == p["query_y"]).sum()
    assert correct[0, 0, 0] > base + 0.1 * len(p["query_y"])


def test_bad_neighbors_are_rejected(problem):
    p = problem
    train = (p["train_logits"], p["train_y"])
    with pytest.raises(ValueError, match="sorted ascending"):
        resmem_scores(p["query_logits"], p["dist"][:, ::-1][:, :5], p["idx"][:, :5], *train, 1.0)
    bad_idx = p["idx"][:, :5].copy()
    bad_idx[0, 4] = -1
    with pytest.raises(ValueError, match="more neighbors than the datastore holds"):
        resmem_scores(p["query_logits"], p["dist"][:, :5], bad_idx, *train, 1.0)
    with pytest.raises(ValueError, match="every k must lie in"):
        sweep_correct(
            p["train_logits"], p["train_y"], p["query_logits"], p["query_y"], p["dist"], p["idx"], [65], [1.0], [1.0]
        )
    index = build_index(p["train_emb"][:10], device="cpu")
    with pytest.raises(ValueError, match="holds only 10"):
        search(index, p["query_emb"], 11, device="cpu")


def test_normalize_searches_on_the_unit_sphere(problem):
    p = problem
    unit = p["train_emb"] / np.linalg.norm(p["train_emb"], axis=1, keepdims=True)
    query = p["query_emb"] / np.linalg.norm(p["query_emb"], axis=1, keepdims=True)
    dist, idx = search(
        build_index(p["train_emb"], normalize=True, device="cpu"), p["query_emb"], 3, normalize=True, device="cpu"
    )
    _, ref_idx = NearestNeighbors(n_neighbors=3).fit(unit).kneighbors(query)
    np.testing.assert_array_equal(idx, ref_idx)
    assert_float32_distances(dist, query, unit, ref_idx, roundings=3)
    assert dist.max() <= 2.0


def test_residuals_are_onehot_minus_tempered_softmax(problem):
    p = problem
    res = residuals(p["train_logits"][:5], p["train_y"][:5], temperature=2.0)
    expected = np.eye(5)[p["train_y"][:5]] - scipy_softmax(p["train_logits"][:5].astype(np.float64) / 2.0, axis=1)
    np.testing.assert_allclose(res, expected, atol=1e-12)
    np.testing.assert_allclose(res.sum(axis=1), 0.0, atol=1e-12)


def test_chunked_prediction_equals_one_block(problem):
    p = problem
    args = (p["query_logits"], p["dist"][:, :8], p["idx"][:, :8], p["train_logits"], p["train_y"], 0.5, 1.0)
    np.testing.assert_array_equal(resmem_predict(*args, chunk_bytes=8 * 5 * 8 * 3), resmem_predict(*args))
