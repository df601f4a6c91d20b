"""Verdicts: the one tie rule against an exact rational oracle and against a float64 implementation that sums in
the reverse order; the baselines against an independent numpy implementation; the selection rule against hand-built
sweep tables; McNemar's test against exact binomial sums; the bootstrap interval's coverage by simulation; the
statistics over seeds against hand computations."""

import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from resmem import engine
from resmem.core import METHODS, predict, sweep_correct_float64, tie_tolerance
from resmem.knn import build_index, search
from resmem.plotting import per_model
from resmem.stats import bootstrap_ci, mcnemar_p, paired_gain, t_interval
from resmem.sweep import select, select_methods
from tests.conftest import exact_mcnemar

KS, SIGMAS, TEMPERATURES, LAMBDAS = [1, 2, 3, 4, 6], [0.5, 1e6], [1.0, 2.0], [0.25, 0.5]
GRID = {"lambdas": LAMBDAS, "methods": METHODS}


def tie_heavy(seed=0, n_train=12, n_query=200, n_classes=3, k_max=6):
    """Neighbors built by hand: distances from {0, 0.5, 1} (many equal), integer logits in {-1, 0, 1} (equal
    probabilities and residuals), labels of three classes: full of exact ties for every method."""
    rng = np.random.default_rng(seed)
    train_logits = rng.integers(-1, 2, (n_train, n_classes)).astype(np.float32)
    train_y = rng.integers(0, n_classes, n_train)
    query_logits = rng.integers(-1, 2, (n_query, n_classes)).astype(np.float32)
    query_y = rng.integers(0, n_classes, n_query)
    idx = np.stack([rng.permutation(n_train)[:k_max] for _ in range(n_query)])
    dist = np.sort(rng.choice([0.0, 0.5, 1.0], size=(n_query, k_max)), axis=1).astype(np.float32)
    return train_logits, train_y, query_logits, query_y, dist, idx


def exact_softmax(logits, temperature) -> list:
    """softmax(z/T) in rational arithmetic; the exponentials are float64 exp of the exact shifted logits (equal
    logits give equal exponentials), everything after them exact."""
    shifted = [float(z) / temperature - max(float(v) for v in logits) / temperature for z in logits]
    e = [Fraction(math.exp(x)) for x in shifted]
    return [x / sum(e) for x in e]


def lowest_best(scores) -> int:
    best = max(scores)
    return min(c for c, s in enumerate(scores) if s == best)


def oracle_counts(train_logits, train_y, query_logits, query_y, dist, idx):
    """Each method's correct counts in exact rational arithmetic: exact ties go to the lowest class."""
    n_classes = query_logits.shape[1]
    counts = {
        "resmem": np.zeros((len(TEMPERATURES), len(KS), len(SIGMAS)), np.int64),
        "knn": np.zeros((len(KS), len(SIGMAS)), np.int64),
        "knn_interp": np.zeros((len(TEMPERATURES), len(KS), len(SIGMAS), len(LAMBDAS)), np.int64),
    }
    ties = 0
    for q in range(len(query_y)):
        bases = [exact_softmax(query_logits[q], t) for t in TEMPERATURES]
        residuals = [
            {j: [Fraction(int(c == train_y[j])) - p for c, p in enumerate(exact_softmax(train_logits[j], t))]
             for j in idx[q]}
            for t in TEMPERATURES
        ]  # fmt: skip
        for i, k in enumerate(KS):
            for s, sigma in enumerate(SIGMAS):
                d = [float(x) for x in dist[q, :k]]
                u = [Fraction(math.exp(-(x - d[0]) / sigma)) for x in d]
                w = [x / sum(u) for x in u]
                held = train_y[idx[q, :k]]
                votes = [sum((w[j] for j in range(k) if held[j] == c), Fraction(0)) for c in range(n_classes)]
                decisions = [("knn", (i, s), votes)]
                for t in range(len(TEMPERATURES)):
                    memory = [sum(w[j] * residuals[t][idx[q, j]][c] for j in range(k)) for c in range(n_classes)]
                    decisions.append(("resmem", (t, i, s), [b + m for b, m in zip(bases[t], memory, strict=True)]))
                    for m, lam in enumerate(LAMBDAS):
                        lam = Fraction(lam)
                        mixed = [(1 - lam) * b + lam * v for b, v in zip(bases[t], votes, strict=True)]
                        decisions.append(("knn_interp", (t, i, s, m), mixed))
                for method, at, scores in decisions:
                    ties += scores.count(max(scores)) > 1
                    counts[method][at] += lowest_best(scores) == query_y[q]
    return counts, ties


def reversed_float64_counts(train_logits, train_y, query_logits, query_y, dist, idx):
    """An independent float64 implementation of every method that sums each query's neighbors in reverse order,
    with the tie rule: the lowest class within the tolerance of the best."""

    def softmax(z, t):
        e = np.exp(z.astype(np.float64) / t - (z.astype(np.float64) / t).max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def decided(scores, k):
        return (scores >= scores.max(axis=-1, keepdims=True) - tie_tolerance(k, scores.shape[-1])).argmax(axis=-1)

    n_classes = query_logits.shape[1]
    one_hot = np.eye(n_classes)[train_y]
    counts = {
        "resmem": np.zeros((len(TEMPERATURES), len(KS), len(SIGMAS)), np.int64),
        "knn": np.zeros((len(KS), len(SIGMAS)), np.int64),
        "knn_interp": np.zeros((len(TEMPERATURES), len(KS), len(SIGMAS), len(LAMBDAS)), np.int64),
    }
    for i, k in enumerate(KS):
        for s, sigma in enumerate(SIGMAS):
            d = dist[:, :k].astype(np.float64)
            u = np.exp(-(d - d[:, :1]) / sigma)
            norm = np.zeros(len(d))
            votes = np.zeros((len(d), n_classes))
            for j in reversed(range(k)):
                norm += u[:, j]
                votes += u[:, j, None] * one_hot[idx[:, j]]
            w = u / norm[:, None]
            votes /= norm[:, None]
            counts["knn"][i, s] = (decided(votes, k) == query_y).sum()
            for t, temperature in enumerate(TEMPERATURES):
                residual = one_hot - softmax(train_logits, temperature)
                memory = np.zeros((len(d), n_classes))
                for j in reversed(range(k)):
                    memory += w[:, j, None] * residual[idx[:, j]]
                base = softmax(query_logits, temperature)
                counts["resmem"][t, i, s] = (decided(base + memory, k) == query_y).sum()
                for m, lam in enumerate(LAMBDAS):
                    mixed = (1 - lam) * base + lam * votes
                    counts["knn_interp"][t, i, s, m] = (decided(mixed, k) == query_y).sum()
    return counts


@pytest.fixture(scope="module")
def ties():
    problem = tie_heavy()
    return problem, *oracle_counts(*problem)


def test_tie_rule_matches_the_exact_oracle_in_every_implementation(ties):
    problem, exact, n_ties = ties
    assert n_ties > 500  # the data is full of exact ties, for every method
    implementations = {
        "float64 reference": sweep_correct_float64(*problem, KS, SIGMAS, TEMPERATURES, **GRID),
        "float64, reversed sums": reversed_float64_counts(*problem),
        "engine, whole table": engine.sweep_correct(*problem, KS, SIGMAS, TEMPERATURES, **GRID),
        "engine, small blocks": engine.sweep_correct(*problem, KS, SIGMAS, TEMPERATURES, chunk_bytes=400, **GRID),
    }
    for name, counts in implementations.items():
        for method in METHODS:
            np.testing.assert_array_equal(counts[method], exact[method], err_msg=f"{name}: {method}")


def test_without_the_tolerance_rounding_decides_exact_ties(ties, monkeypatch):
    """The tolerance is what makes the rule hold: float64 argmax alone follows the rounding of its sums."""
    import resmem.core

    problem, exact, _ = ties
    monkeypatch.setattr(resmem.core, "tie_tolerance", lambda k, n_classes: 0.0)
    plain = sweep_correct_float64(*problem, KS, SIGMAS, TEMPERATURES, **GRID)
    assert any(np.any(plain[method] != exact[method]) for method in METHODS)


def test_predict_takes_the_lowest_class_within_the_tolerance():
    scores = np.array([[0.5, 0.5 + 1e-15, 0.2], [0.1, 0.7, 0.7], [0.3, 0.2, 0.5]])
    assert predict(scores, 1e-13).tolist() == [0, 1, 2]
    assert predict(scores, 0.0).tolist() == [1, 1, 2]  # numpy's argmax: the rounding decides the first row


def test_baselines_equal_an_independent_numpy_implementation():
    """On continuous data (no ties): the soft kNN classifier and its interpolation with the base model, by the
    engine, counted by plain numpy from the same neighbors."""
    rng = np.random.default_rng(3)
    n_classes, n_train, n_query = 5, 800, 400
    centers = 2 * rng.normal(size=(n_classes, 6))
    train_y, query_y = rng.integers(0, n_classes, n_train), rng.integers(0, n_classes, n_query)
    train_emb = (centers[train_y] + rng.normal(size=(n_train, 6))).astype(np.float32)
    query_emb = (centers[query_y] + rng.normal(size=(n_query, 6))).astype(np.float32)
    train_logits = rng.normal(size=(n_train, n_classes)).astype(np.float32)
    query_logits = (rng.normal(size=(n_query, n_classes)) + np.eye(n_classes)[query_y]).astype(np.float32)
    ks, sigmas, temperatures, lambdas = [1, 5, 20], [0.3, 3.0], [1.0, 0.5], [0.1, 0.9]
    dist, idx = search(build_index(train_emb, device="cpu"), query_emb, max(ks), device="cpu")
    got = engine.sweep_correct(train_logits, train_y, query_logits, query_y, dist, idx, ks, sigmas, temperatures,
                               lambdas=lambdas, methods=("knn", "knn_interp"))  # fmt: skip
    for i, k in enumerate(ks):
        for s, sigma in enumerate(sigmas):
            w = np.exp(-dist[:, :k].astype(np.float64) / sigma)
            w /= w.sum(axis=1, keepdims=True)
            p_knn = np.stack([(w * (train_y[idx[:, :k]] == c)).sum(axis=1) for c in range(n_classes)], axis=1)
            assert got["knn"][i, s] == (p_knn.argmax(1) == query_y).sum()
            for t, temperature in enumerate(temperatures):
                z = query_logits.astype(np.float64) / temperature
                base = np.exp(z - z.max(1, keepdims=True))
                base /= base.sum(1, keepdims=True)
                for j, lam in enumerate(lambdas):
                    mixed = (1 - lam) * base + lam * p_knn
                    assert got["knn_interp"][t, i, s, j] == (mixed.argmax(1) == query_y).sum(), (k, sigma, lam)
    assert set(got) == {"knn", "knn_interp"}


def sweep_rows(method, points):
    """A hand-built sweep table: base rows, and for each point (parameters, val accuracy, test accuracy) a val
    and a test row of `method`."""
    rows = [{"method": "base", "split": s, "k": 0, "accuracy": 0.5} for s in ("val", "test")]
    for parameters, val, test in points:
        for split, accuracy in (("val", val), ("test", test)):
            rows.append({"method": method, "split": split, **parameters, "accuracy": accuracy})
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "method, points, chosen",
    [
        # equal val accuracy at two k: the smaller k
        ("resmem", [({"k": 4, "sigma": 1.0, "temperature": 1.0}, 0.8, 0.61),
                    ({"k": 2, "sigma": 1.0, "temperature": 1.0}, 0.8, 0.62),
                    ({"k": 1, "sigma": 1.0, "temperature": 1.0}, 0.7, 0.99)], 1),
        # equal k: the larger σ
        ("resmem", [({"k": 2, "sigma": 0.3, "temperature": 1.0}, 0.8, 0.61),
                    ({"k": 2, "sigma": 3.0, "temperature": 1.0}, 0.8, 0.63)], 1),
        # equal k and σ: the smaller T
        ("resmem", [({"k": 2, "sigma": 3.0, "temperature": 2.0}, 0.8, 0.61),
                    ({"k": 2, "sigma": 3.0, "temperature": 0.5}, 0.8, 0.64)], 1),
        # equal k, σ and T: the smaller λ
        ("knn_interp", [({"k": 2, "sigma": 3.0, "temperature": 1.0, "lam": 0.9}, 0.8, 0.61),
                        ({"k": 2, "sigma": 3.0, "temperature": 1.0, "lam": 0.25}, 0.8, 0.65),
                        ({"k": 8, "sigma": 3.0, "temperature": 1.0, "lam": 0.1}, 0.8, 0.66)], 1),
        # a better val accuracy beats every tie-break
        ("knn", [({"k": 1, "sigma": 9.0}, 0.7, 0.9), ({"k": 64, "sigma": 0.1}, 0.81, 0.6)], 1),
    ],
)  # fmt: skip
def test_selection_breaks_ties_in_the_stated_order(method, points, chosen):
    table = sweep_rows(method, points)
    got = select_methods(table)[method]
    parameters, val, test = points[chosen]
    assert {p: got[p] for p in parameters} == parameters
    assert got["val_accuracy"] == val and got["test_accuracy"] == test
    assert got["gain"] == pytest.approx(test - 0.5) and got["base_test_accuracy"] == 0.5
    assert got["best_test_accuracy"] == max(t for _, _, t in points)


def test_selection_by_lowest_perplexity():
    table = sweep_rows("knnlm", [({"k": 4, "tau": 1.0, "lam": 0.25}, 30.0, 31.0),
                                 ({"k": 4, "tau": 10.0, "lam": 0.25}, 30.0, 32.0),
                                 ({"k": 4, "tau": 10.0, "lam": 0.5}, 29.0, 33.0)])  # fmt: skip
    got = select(table, ("k", "tau", "lam"), metric="accuracy", higher_is_better=False)
    assert (got["tau"], got["lam"], got["test_accuracy"]) == (10.0, 0.5, 33.0)
    assert got["best_test_accuracy"] == 31.0  # the lowest anywhere


@pytest.mark.parametrize("b, c", [(0, 0), (1, 0), (5, 5), (12, 3), (3, 12), (40, 61), (400, 330)])
def test_mcnemar_equals_the_exact_binomial(b, c):
    rng = np.random.default_rng(b * 1000 + c)
    both = rng.integers(0, 50)
    base = np.array([0] * b + [1] * c + [1] * both + [0] * 7, bool)
    method = np.array([1] * b + [0] * c + [1] * both + [0] * 7, bool)
    order = rng.permutation(len(base))
    assert mcnemar_p(base[order], method[order]) == pytest.approx(exact_mcnemar(b, c), rel=1e-10)


def test_paired_bootstrap_interval_covers_a_known_gain():
    """1,000 simulated test sets of 500 paired outcomes with a true gain of 4 points (P(method right, base
    wrong) = 0.08, P(base right, method wrong) = 0.04): the 95 % interval covers it in 93–97 % of them."""
    rng = np.random.default_rng(1)
    p_plus, p_minus, n, trials = 0.08, 0.04, 500, 1000
    covered = 0
    for trial in range(trials):
        outcome = rng.choice(3, size=n, p=[p_plus, p_minus, 1 - p_plus - p_minus])
        base, method = outcome == 1, outcome == 0
        shared = rng.random(n) < 0.5  # both right on some of the rest
        verdict = paired_gain(base | (shared & (outcome == 2)), method | (shared & (outcome == 2)), 10_000, trial)
        covered += verdict["gain_ci_low"] <= p_plus - p_minus <= verdict["gain_ci_high"]
    assert 0.93 <= covered / trials <= 0.97


def test_block_bootstrap_resamples_whole_blocks():
    """Blocks of 4 identical differences: every resample's mean is a mean of whole blocks, so the interval's
    ends are multiples of 1/(number of blocks); with block 1 it is the plain paired bootstrap."""
    differences = np.repeat([1.0, 0.0, 0.0, -1.0, 1.0, 1.0, 0.0, 1.0], 4)
    low, high = bootstrap_ci(differences, resamples=2000, seed=0, block=4)
    assert low * 8 == pytest.approx(round(low * 8)) and high * 8 == pytest.approx(round(high * 8))
    wide = bootstrap_ci(np.tile([1.0, -1.0], 200), resamples=2000, seed=0, block=2)
    assert wide == (0.0, 0.0)  # each block sums to 0: no resample moves the mean
    assert bootstrap_ci(np.tile([1.0, -1.0], 200), resamples=2000, seed=0)[0] < 0  # block 1 does


def test_statistics_over_seeds_by_hand():
    """Two models: three seeds with gains 1, 2 and 6 points, and two seeds with gains 1 and 3 points."""
    summary = pd.DataFrame({"model": ["a"] * 3 + ["b"] * 2, "seed": [0, 1, 2, 0, 1], "parameters": [10] * 3 + [20] * 2,
                            "gain": [0.01, 0.02, 0.06, 0.01, 0.03]})  # fmt: skip
    stats = per_model(summary, ["gain"])
    # a: mean 3, std sqrt(((−2)² + (−1)² + 3²)/2) = sqrt(7), t(0.975, 2) = 4.302653
    a = stats.loc["a"]
    assert a.gain_mean == pytest.approx(0.03) and a.gain_std == pytest.approx(0.01 * math.sqrt(7))
    half = 4.302653 * 0.01 * math.sqrt(7) / math.sqrt(3)
    assert (a.gain_low, a.gain_high) == pytest.approx((0.03 - half, 0.03 + half), rel=1e-6)
    # b: mean 2, std sqrt(2), t(0.975, 1) = 12.706205
    b = stats.loc["b"]
    half = 12.706205 * 0.01 * math.sqrt(2) / math.sqrt(2)
    assert (b.gain_low, b.gain_high) == pytest.approx((0.02 - half, 0.02 + half), rel=1e-6)
    assert list(stats.index) == ["a", "b"] and stats.seeds.tolist() == [3, 2]
    mean, std, low, high = t_interval([0.5])
    assert (mean, std) == (0.5, 0.0) and math.isnan(low) and math.isnan(high)
