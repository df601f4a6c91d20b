"""Verdicts: the one tie rule against an exact rational oracle and against a float64 implementation that sums in
the reverse order; the baselines against an independent numpy implementation; the selection rule against hand-built
sweep tables; the paired procedures against independent references (an exact-fraction mid-p, scipy's
chi-square and t-tests, Tango's statistic recomputed by a numerical maximum likelihood), their interval and p-value
agreeing on every table of counts, coverage by simulation; Holm's adjustment and the statistics over seeds against
hand computations."""

import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as t_dist
from scipy.stats import ttest_1samp

from resmem import engine
from resmem.core import METHODS, predict, sweep_correct_float64, tie_tolerance
from resmem.knn import build_index, search
from resmem.plotting import per_model
from resmem.stats import correlation_time, gain_over_seeds, holm, mean_difference, paired_gain, t_interval
from resmem.sweep import select, select_methods
from resmem.verdicts import with_seed_tests
from tests.conftest import holm_by_hand, paired_p_by_hand, seeds_and_examples_by_hand

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


@pytest.mark.parametrize(
    "points, chosen",
    [
        # kNN-LM, equal val accuracy and k: the larger τ (smoother weights), whatever the order of the rows
        ([({"k": 4, "tau": 1.0, "lam": 0.25}, 0.8, 0.61), ({"k": 4, "tau": 10.0, "lam": 0.25}, 0.8, 0.62),
          ({"k": 4, "tau": 3.0, "lam": 0.25}, 0.8, 0.63)], 1),
        # equal k and τ: the smaller λ
        ([({"k": 4, "tau": 10.0, "lam": 0.5}, 0.8, 0.61), ({"k": 4, "tau": 10.0, "lam": 0.25}, 0.8, 0.62),
          ({"k": 8, "tau": 10.0, "lam": 0.1}, 0.8, 0.63)], 1),
    ],
)  # fmt: skip
def test_selection_breaks_tau_and_lambda_ties(points, chosen):
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        got = select(sweep_rows("knnlm", [points[i] for i in order]), ("k", "tau", "lam"))
        assert {p: got[p] for p in ("k", "tau", "lam")} == points[chosen][0], order
        assert got["test_accuracy"] == points[chosen][2]


def test_selection_by_lowest_perplexity():
    table = sweep_rows("knnlm", [({"k": 4, "tau": 1.0, "lam": 0.25}, 30.0, 31.0),
                                 ({"k": 4, "tau": 10.0, "lam": 0.25}, 30.0, 32.0),
                                 ({"k": 4, "tau": 10.0, "lam": 0.5}, 29.0, 33.0)])  # fmt: skip
    got = select(table, ("k", "tau", "lam"), metric="accuracy", higher_is_better=False)
    assert (got["tau"], got["lam"], got["test_accuracy"]) == (10.0, 0.5, 33.0)
    assert got["best_test_accuracy"] == 31.0  # the lowest anywhere


def outcomes_with(b: int, c: int, both: int = 30, neither: int = 7, seed: int = 0):
    """(base correct, method correct), shuffled: b examples only the method gets right, c only the base."""
    rng = np.random.default_rng(seed)
    base = np.array([0] * b + [1] * c + [1] * both + [0] * neither, bool)
    method = np.array([1] * b + [0] * c + [1] * both + [0] * neither, bool)
    order = rng.permutation(len(base))
    return base[order], method[order]


@pytest.mark.parametrize("b, c", [(0, 0), (1, 0), (4, 0), (5, 5), (12, 3), (3, 12), (20, 4), (40, 61), (400, 330)])
def test_paired_gain_p_value_equals_its_definition(b, c):
    verdict = paired_gain(*outcomes_with(b, c, seed=b * 1000 + c))
    assert verdict["p_value"] == pytest.approx(paired_p_by_hand(b, c), rel=1e-10)
    assert verdict["gain"] == pytest.approx((b - c) / (b + c + 37))
    assert verdict["test"].startswith("McNemar mid-p" if b + c < 25 else "Tango score")
    # b = 4, c = 0: the normal approximation would say p = 0.046; the mid-p 2·(1/16 − 1/32), and the interval agrees
    if (b, c) == (4, 0):
        assert verdict["p_value"] == pytest.approx(0.0625) and verdict["gain_ci_low"] < 0


def test_interval_and_p_value_agree_on_every_table():
    """Every (b, c) up to 60 discordant each way among 400 examples: the 95 % interval excludes 0 exactly when
    p < 0.05, across both procedures and their switch at 25 discordant examples."""
    for b in range(61):
        for c in range(61):
            v = paired_gain(*outcomes_with(b, c, both=400 - b - c - 7))
            assert (v["gain_ci_low"] > 0 or v["gain_ci_high"] < 0) == (v["p_value"] < 0.05), (b, c, v)
            assert v["gain_ci_low"] <= v["gain"] <= v["gain_ci_high"]


@pytest.mark.parametrize("b, c, n", [(40, 20, 160), (30, 10, 1000), (8, 30, 90), (200, 150, 5000)])
def test_tango_interval_ends_are_where_the_score_test_rejects(b, c, n):
    """At each end of the interval, Tango's score statistic — recomputed here with the constrained maximum
    likelihood found numerically (scipy's bounded scalar minimizer), not the closed-form root — is ±1.96."""
    from scipy.optimize import minimize_scalar
    from scipy.stats import norm

    def score(delta):
        rest = n - b - c  # q = P(only the base right); P(only the method right) = q + delta
        nll = lambda q: -(b * np.log(q + delta) + c * np.log(q) + rest * np.log(1 - 2 * q - delta))  # noqa: E731
        q = minimize_scalar(nll, bounds=(max(0, -delta) + 1e-12, (1 - delta) / 2 - 1e-12), method="bounded",
                            options={"xatol": 1e-13}).x  # fmt: skip
        return (b - c - n * delta) / np.sqrt(n * (2 * q + delta - delta**2))

    v = paired_gain(*outcomes_with(b, c, both=n - b - c - 7))
    assert score(v["gain_ci_low"]) == pytest.approx(norm.ppf(0.975), abs=1e-5)
    assert score(v["gain_ci_high"]) == pytest.approx(-norm.ppf(0.975), abs=1e-5)


def test_paired_interval_covers_a_known_gain():
    """1,000 simulated test sets of 500 independent paired outcomes with a true gain of 4 points (P(only the method
    right) = 0.08, P(only the base right) = 0.04): the 95 % interval covers it in 93–97 % of them."""
    rng = np.random.default_rng(1)
    p_plus, p_minus, n, trials = 0.08, 0.04, 500, 1000
    covered = 0
    for _ in range(trials):
        outcome = rng.choice(3, size=n, p=[p_plus, p_minus, 1 - p_plus - p_minus])
        verdict = paired_gain(outcome == 1, outcome == 0)
        covered += verdict["gain_ci_low"] <= p_plus - p_minus <= verdict["gain_ci_high"]
    assert 0.93 <= covered / trials <= 0.97


def test_block_t_is_scipys_t_test_on_block_means_and_needs_ten_blocks():
    rng = np.random.default_rng(3)
    differences = rng.choice([-1.0, 0.0, 1.0], size=1000, p=[0.1, 0.78, 0.12])
    v = mean_difference(differences, block=40)
    means = differences.reshape(25, 40).mean(axis=1)
    assert v["p_value"] == pytest.approx(ttest_1samp(means, 0.0).pvalue, rel=1e-10)
    half = t_dist.ppf(0.975, 24) * means.std(ddof=1) / 5
    assert (v["gain_ci_low"], v["gain_ci_high"]) == pytest.approx((means.mean() - half, means.mean() + half))
    assert v["test"] == "block t (25 blocks of 40 positions)"
    few = paired_gain(differences < 0, differences > 0, block=101)  # 9 blocks
    assert math.isnan(few["p_value"]) and math.isnan(few["gain_ci_low"])
    assert few["test"] == "no verdict: 9 blocks of 101 positions (fewer than 10)"


def test_correlation_time_of_a_chain_with_known_autocorrelation():
    """A sticky chain (keep the previous outcome with probability ρ, else draw afresh) has autocorrelation ρ^lag,
    so an integrated autocorrelation time of (1 + ρ)/(1 − ρ): 9 at ρ = 0.8, 1 for independent outcomes."""
    rng = np.random.default_rng(5)
    fresh = rng.choice([-1.0, 0.0, 1.0], size=200_000, p=[0.1, 0.8, 0.1])
    keep = rng.random(200_000) < 0.8
    keep[0] = False
    chain = fresh[np.maximum.accumulate(np.where(keep, 0, np.arange(200_000)))]
    assert correlation_time(chain) == pytest.approx(9.0, rel=0.1)
    assert correlation_time(fresh) == pytest.approx(1.0, abs=0.05)
    assert paired_gain(chain < 0, chain > 0, block=None)["block"] == math.ceil(16 * correlation_time(chain))


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, float("nan"), 0.5]
    assert holm(p)[[0, 1, 2, 4]] == pytest.approx([0.04, 0.09, 0.09, 0.5])  # 4·0.01, max(3·0.03, 2·0.04), 0.5
    assert math.isnan(holm(p)[3])
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.random(12) ** 3
        assert holm(p) == pytest.approx(holm_by_hand(list(p)))


def test_gain_over_seeds_is_the_two_way_analysis_of_variance_by_hand():
    """gain_over_seeds' standard error (run gains' spread + the mean covariance of two seeds' blocks) equals the
    one of the seeds × examples analysis of variance computed by hand from sums of squares, with S − 1 degrees
    of freedom, on outcomes with a shared example effect, a seed effect, both and neither; with blocks of 4, the
    same on the block means."""
    rng = np.random.default_rng(3)
    for seeds in (2, 3, 5):
        for example_sd, seed_sd in ((0.0, 0.0), (1.5, 0.0), (0.0, 0.4), (1.5, 0.4)):
            v, a = rng.normal(0, example_sd, 120), rng.normal(0, seed_sd, (seeds, 1))
            right = rng.random((seeds, 120)) < 1 / (1 + np.exp(-(0.5 + v + a)))
            wrong_base = rng.random((seeds, 120)) < 0.3
            differences = right.astype(int) - (right & ~wrong_base)  # ≥ 0 where the base agrees
            differences = np.where(rng.random((seeds, 120)) < 0.5, differences, -differences)
            got, by_hand = gain_over_seeds(differences), seeds_and_examples_by_hand(differences)
            assert got["gain"] == pytest.approx(by_hand["mean"], abs=1e-15)
            assert (got["gain_ci_low"], got["gain_ci_high"]) == pytest.approx((by_hand["low"], by_hand["high"]))
            assert got["p_value"] == pytest.approx(by_hand["p"], rel=1e-9)
            assert got["test"] == f"t over {seeds} seeds × 120 test examples"
            blocked = gain_over_seeds(differences, block=4)
            means = differences.reshape(seeds, 30, 4).mean(axis=2)
            assert blocked["p_value"] == pytest.approx(seeds_and_examples_by_hand(means)["p"], rel=1e-9)
            assert blocked["test"] == f"t over {seeds} seeds × 30 test blocks of 4 positions"
    # Two seeds whose examples go opposite ways (MS_examples < MS_residual): the shared part counts as 0, and
    # what is left is the t over the two run gains.
    x = np.tile([1, -1, 0, 1, 0], 8)
    opposite = np.stack([x, -x + (np.arange(40) % 7 == 0)])
    got, gains = gain_over_seeds(opposite), opposite.mean(axis=1)
    assert got["p_value"] == pytest.approx(seeds_and_examples_by_hand(opposite)["p"], rel=1e-9)
    assert got["p_value"] == pytest.approx(ttest_1samp(gains, 0.0).pvalue, rel=1e-9)


def test_gain_over_seeds_gives_no_verdict_without_seeds_blocks_or_spread():
    """One seed, fewer than 10 blocks, or float noise around identical gains (a spread of 5e-17): no interval and
    no p-value, hence no star; seeds with identical outcomes that differ between examples still have the test
    set's share to judge; all zero: no difference at all (p = 1)."""
    one = gain_over_seeds(np.ones((1, 50)))
    assert one["test"] == "no verdict: one seed" and math.isnan(one["p_value"]) and one["gain"] == 1.0
    few = gain_over_seeds(np.ones((3, 90)), block=10)
    assert few["test"] == "no verdict: 9 blocks of 10 positions (fewer than 10)" and math.isnan(few["gain_ci_low"])
    noise = 0.03 + np.random.default_rng(0).normal(0, 5e-17, (3, 40))
    assert math.isnan(gain_over_seeds(noise)["p_value"])
    same = np.tile(np.array([1, 0, 0, -1, 1, 1, 0, 1, 0, 0] * 4), (3, 1))
    by_hand = seeds_and_examples_by_hand(same)
    assert gain_over_seeds(same)["p_value"] == pytest.approx(by_hand["p"], rel=1e-9) and by_hand["p"] < 1
    zero = gain_over_seeds(np.zeros((2, 30)))
    assert (zero["gain_ci_low"], zero["gain_ci_high"], zero["p_value"]) == (0.0, 0.0, 1.0)


def test_seed_tests_need_one_test_set_per_group():
    """Runs of one model and fraction with test sets of different lengths cannot be compared over one: a clear
    error, not a broadcast."""
    summary = pd.DataFrame({"model": ["a", "a"], "seed": [0, 1], "parameters": [1, 1], "resmem_gain": [0.1, 0.2],
                            "differences": [{"block": 1, "resmem_gain": np.ones(20)},
                                            {"block": 1, "resmem_gain": np.ones(30)}]})  # fmt: skip
    stats = per_model(summary, ["resmem_gain"])
    with pytest.raises(ValueError, match=r"the runs of a hold test sets of \[20, 30\] positions"):
        with_seed_tests(stats, summary, ("model",), ("resmem_gain",))


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
    assert mean == 0.5 and math.isnan(std) and math.isnan(low) and math.isnan(high)  # one seed: n/a, not ± 0
