"""Is a gain real? One paired procedure per run and method, whose 95 % interval excludes 0 exactly when its
p-value is below 0.05, valid under the dependence of the test data; Holm's adjustment over the cells of a table;
Student's t over seeds.

- Independent test examples (images, `block` = 1), on the paired 0/1 outcomes: b examples only the method gets
  right, c only the base model, n in all; the gain is (b − c)/n.
  - b + c ≥ MIN_DISCORDANT: Tango's score test of "gain = Δ0" (Tango 1998, Stat Med 17:891), whose statistic at
    Δ0 = 0 is McNemar's (b − c)/√(b + c); the interval is every Δ0 the test does not reject (the recommended
    paired-difference interval of Fagerland, Lydersen & Laake 2014, Stat Methods Med Res 24:224).
  - fewer discordant examples, where the normal approximation is too liberal (b = 4, c = 0 would give p = 0.046):
    McNemar's mid-p test, conditional on b + c, and the mid-p interval of the discordant share b/(b + c) it
    inverts, scaled to a gain by (b + c)/n.
- Dependent test positions (language models, `block` ≠ 1): the mean of non-overlapping blocks of contiguous
  positions and Student's t-test and t-interval over the block means (batch means), with the block length chosen
  from the data (`block` = None): BLOCK_SPAN integrated autocorrelation times, estimated with the flat-top lag
  window and the lag rule of Politis & White (2004, Econometric Reviews 23:53). Fewer than MIN_BLOCKS blocks: no
  interval and no p-value. A t over few blocks, unlike a bootstrap, widens with the few degrees of freedom.
- Over seeds on one test set (`gain_over_seeds`): a t-interval and t-test whose standard error adds to the run
  gains' spread the test examples' (or blocks') share that every seed has in common, so the verdict holds for a fresh
  test set too; one seed: n/a. Accuracies over seeds: mean, standard deviation and t-interval (`t_interval`).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

LEVEL = 0.95  # of every interval; its p-value threshold is 1 − LEVEL
MIN_DISCORDANT = 25  # fewer examples where the two disagree: the exact mid-p test instead of Tango's score test
MIN_BLOCKS = 10  # fewer blocks of test positions: no interval, no p-value
BLOCK_SPAN = 16  # integrated autocorrelation times a block spans: adjacent block means correlate by at most ≈ 0.016
NO_VERDICT = {"gain_ci_low": float("nan"), "gain_ci_high": float("nan"), "p_value": float("nan")}


def holm(p_values: ArrayLike) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries are not tested and stay NaN): the i-th smallest of m is
    max over j ≤ i of min(1, (m − j + 1)·p_(j))."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return adjusted


def _tango_statistic(delta, b: int, c: int, n: int) -> float:
    """Tango's score statistic of "gain = delta": (b − c − n·delta) over its standard deviation at the maximum
    likelihood cell probabilities under that constraint (the root of a quadratic)."""
    a, bb, cc = 2.0 * n, -(b + c) + (2.0 * n - b + c) * delta, -c * delta * (1.0 - delta)
    q = (math.sqrt(max(bb * bb - 4.0 * a * cc, 0.0)) - bb) / (2.0 * a)  # P(only the base model right)
    variance = n * (2.0 * q + delta * (1.0 - delta))
    return (b - c - n * delta) / math.sqrt(variance) if variance > 0 else math.copysign(math.inf, b - c - n * delta)


def tango(b: int, c: int, n: int, level: float = LEVEL) -> tuple[float, float, float]:
    """(low, high, p): Tango's score interval of the paired gain (b − c)/n and its score test of gain = 0."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2.0))
    gain = (b - c) / n
    statistic = lambda delta, target: _tango_statistic(delta, b, c, n) - target  # noqa: E731  decreasing in delta
    low = -1.0 if statistic(-1.0, z) <= 0 else brentq(statistic, -1.0, gain, args=(z,), xtol=1e-14, rtol=1e-14)
    high = 1.0 if statistic(1.0, -z) >= 0 else brentq(statistic, gain, 1.0, args=(-z,), xtol=1e-14, rtol=1e-14)
    p = 1.0 if b == c else float(2.0 * norm.sf(abs(b - c) / math.sqrt(b + c)))
    return float(low), float(high), p


def mid_p_mcnemar(b: int, c: int, n: int, level: float = LEVEL) -> tuple[float, float, float]:
    """(low, high, p): McNemar's mid-p test conditional on the d = b + c discordant examples (b ~ Binomial(d, ½)
    under no difference) and the mid-p interval of the share π = b/d it inverts, as a gain d/n·(2π − 1)."""
    from scipy.optimize import brentq
    from scipy.stats import binom

    d = b + c
    if d == 0:
        return 0.0, 0.0, 1.0  # the two never disagree: the gain on this test set is exactly 0
    alpha = (1.0 - level) / 2.0
    above = lambda pi: binom.sf(b, d, pi) + 0.5 * binom.pmf(b, d, pi)  # noqa: E731  mid P(X ≥ b), rises with pi
    below = lambda pi: binom.cdf(b - 1, d, pi) + 0.5 * binom.pmf(b, d, pi)  # noqa: E731  mid P(X ≤ b), falls
    pi_low = 0.0 if b == 0 else brentq(lambda pi: above(pi) - alpha, 0.0, 1.0, xtol=1e-14, rtol=1e-14)
    pi_high = 1.0 if b == d else brentq(lambda pi: below(pi) - alpha, 0.0, 1.0, xtol=1e-14, rtol=1e-14)
    p = float(min(1.0, 2.0 * min(above(0.5), below(0.5))))
    return d / n * (2.0 * pi_low - 1.0), d / n * (2.0 * pi_high - 1.0), p


def autocorrelation(x: ArrayLike, max_lag: int) -> np.ndarray:
    """Sample autocorrelations of `x` at lags 0..max_lag (the biased estimator, by FFT)."""
    x = np.asarray(x, dtype=np.float64) - np.mean(x)
    size = 1 << int(2 * len(x) - 1).bit_length()
    spectrum = np.fft.rfft(x, size)
    covariance = np.fft.irfft(spectrum * np.conj(spectrum), size)[: max_lag + 1]
    return covariance / covariance[0]


def correlation_time(x: ArrayLike) -> float:
    """The integrated autocorrelation time 1 + 2·Σ ρ(k) of a series (≥ 1): the flat-top window of Politis &
    White (2004) with its lag rule (the window ends at twice the first lag m after which K_n autocorrelations in
    a row are within 2·√(log10 n / n) of 0)."""
    n = len(x)
    if n < 3 or np.all(np.asarray(x) == np.asarray(x)[0]):
        return 1.0
    k_n = max(5, math.ceil(math.sqrt(math.log10(n))))
    rho = autocorrelation(x, n - 1)
    small = (np.abs(rho[1:]) < 2.0 * math.sqrt(math.log10(n) / n)).astype(np.int64)  # small[j]: lag j + 1
    runs = np.convolve(small, np.ones(k_n, dtype=np.int64), "valid") == k_n  # runs[m]: lags m + 1 .. m + k_n small
    m = int(np.argmax(runs)) if runs.any() else n // 2
    window = 2 * m
    lags = np.arange(1, min(window, n - 1) + 1)
    weight = np.clip(2.0 * (1.0 - lags / window), 0.0, 1.0)  # flat-top: 1 up to half the window, then linear
    return max(1.0, 1.0 + 2.0 * float(np.sum(weight * rho[lags])))


def block_length(differences: ArrayLike) -> int:
    """The block length the data call for: BLOCK_SPAN integrated autocorrelation times of the differences."""
    return math.ceil(BLOCK_SPAN * correlation_time(differences))


def block_means(differences: ArrayLike, block: int) -> np.ndarray:
    """The means of len // block contiguous blocks of near-equal length (array_split): each block's sum over the
    nominal length len/blocks, so that their mean is the mean of all differences."""
    differences = np.asarray(differences, dtype=np.float64)
    blocks = len(differences) // block
    starts = np.linspace(0, len(differences), blocks + 1).astype(np.int64)[:-1] if blocks else np.zeros(0, int)
    return np.add.reduceat(differences, starts) * blocks / len(differences) if blocks else np.zeros(0)


def _t_verdict(estimate: float, standard_error: float, dof: float, level: float = LEVEL) -> dict:
    """Student's t-test of 0 and t-interval around `estimate`; no variation: no verdict (or p = 1 at exactly 0)."""
    from scipy.stats import t

    if not standard_error > 1e-12 * max(1.0, abs(estimate)):  # zero, or float noise around zero
        return {"gain_ci_low": 0.0, "gain_ci_high": 0.0, "p_value": 1.0} if estimate == 0 else dict(NO_VERDICT)
    half = float(t.ppf(0.5 + level / 2.0, dof)) * standard_error
    p = float(2.0 * t.sf(abs(estimate) / standard_error, dof))
    return {"gain_ci_low": estimate - half, "gain_ci_high": estimate + half, "p_value": p}


def mean_difference(differences: ArrayLike, *, block: int | None = 1) -> dict:
    """The mean of paired `differences` (in test order) with Student's t over the means of contiguous blocks of
    `block` positions (None: `block_length` of the data); 1 = the paired t-test. Returns gain, gain_ci_low,
    gain_ci_high, p_value, test (what was done, or why there is no verdict), blocks and block."""
    differences = np.asarray(differences, dtype=np.float64)
    block = block_length(differences) if block is None else block
    means = block_means(differences, block)
    result = {"gain": float(differences.mean()) if len(differences) else float("nan"), "blocks": len(means),
              "block": block}  # fmt: skip
    if len(means) < MIN_BLOCKS:
        test = f"no verdict: {len(means)} blocks of {block} positions (fewer than {MIN_BLOCKS})"
        return {**result, **NO_VERDICT, "test": test}
    verdict = _t_verdict(result["gain"], float(means.std(ddof=1)) / math.sqrt(len(means)), len(means) - 1)
    test = "paired t" if block == 1 else f"block t ({len(means)} blocks of {block} positions)"
    return {**result, **verdict, "test": test}


def paired_gain(base_correct: ArrayLike, method_correct: ArrayLike, *, block: int | None = 1) -> dict:
    """A method's test-accuracy gain over the base model on the same test examples, in test order: gain,
    gain_ci_low, gain_ci_high, p_value (the interval excludes 0 exactly when p < 1 − LEVEL), test (the procedure)
    and the blocks used. `block` = 1: independent examples (Tango's score test, or McNemar's mid-p with fewer than
    MIN_DISCORDANT discordant examples); otherwise t over the means of blocks of `block` contiguous positions
    (None: chosen from the data), for dependent ones."""
    base_correct, method_correct = np.asarray(base_correct, bool), np.asarray(method_correct, bool)
    if base_correct.shape != method_correct.shape or base_correct.ndim != 1:
        raise ValueError(f"base_correct {base_correct.shape} and method_correct {method_correct.shape} must be "
                         "1-D arrays of one length: the two models' outcomes on the same test examples")  # fmt: skip
    if block != 1:
        return mean_difference(method_correct.astype(np.float64) - base_correct, block=block)
    n = len(base_correct)
    b, c = int(np.sum(method_correct & ~base_correct)), int(np.sum(base_correct & ~method_correct))
    exact = b + c < MIN_DISCORDANT
    low, high, p = (mid_p_mcnemar if exact else tango)(b, c, n)
    test = f"McNemar mid-p ({b + c} discordant)" if exact else f"Tango score ({b + c} discordant)"
    return {"gain": (b - c) / n, "gain_ci_low": low, "gain_ci_high": high, "p_value": p, "test": test,
            "blocks": n, "block": 1}  # fmt: skip


def t_interval(values: ArrayLike, level: float = LEVEL) -> tuple[float, float, float, float]:
    """(mean, standard deviation, low, high) of `values` (one per seed): Student's t-interval of the mean; with one
    value the deviation and the interval are unknown (NaN), not 0."""
    from scipy.stats import t

    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan"), float("nan")
    std = float(values.std(ddof=1))
    half = float(t.ppf(0.5 + level / 2.0, len(values) - 1)) * std / np.sqrt(len(values))
    return mean, std, mean - half, mean + half


def gain_over_seeds(differences: ArrayLike, *, block: int | None = 1) -> dict:
    """The mean gain of S runs (training seeds) on one shared test set, with a t-interval and t-test that cover
    both what the seeds vary and what drawing the test set varies. `differences`: S × n paired differences
    (method − base per test example or position, in test order), reduced to the means of J contiguous blocks
    of `block` positions (None: the longest `block_length` of the runs).

    With seed effects a_s, test-block effects b_j shared by every seed and the rest e_sj, the mean gain errs by
    ā + b̄ + ē, of variance σa²/S + σb²/J + σe²/(SJ). The run gains' spread s²/S estimates σa²/S + σe²/(SJ) (S − 1
    degrees of freedom); the mean covariance of two seeds' block means estimates σb² (J − 1). Their sum is the
    standard error²; the t quantile takes the smaller degrees of freedom, S − 1, the bound for a sum of two
    variance estimates (Hsu 1938; Mickey & Brown 1966, Ann Math Stat 37:639) that keeps the level whatever the
    shares, at the cost of width where test sampling dominates. A t-test over the run gains alone (the test set
    held fixed) leaves out σb²/J. Returns gain, gain_ci_low, gain_ci_high, p_value, test, seeds, blocks, block."""
    differences = np.asarray(differences, dtype=np.float64)
    if differences.ndim != 2:
        raise ValueError(f"differences must be seeds × test positions, got shape {differences.shape}")
    seeds = len(differences)
    block = max(block_length(row) for row in differences) if block is None else block
    means = np.stack([block_means(row, block) for row in differences])
    blocks = means.shape[1]
    result = {"gain": float(differences.mean()), "seeds": seeds, "blocks": blocks, "block": block}
    if seeds < 2 or blocks < MIN_BLOCKS:
        why = "one seed" if seeds < 2 else f"{blocks} blocks of {block} positions (fewer than {MIN_BLOCKS})"
        return {**result, **NO_VERDICT, "test": f"no verdict: {why}"}
    seed_variance = float(means.mean(axis=1).var(ddof=1)) / seeds
    centered = means - means.mean(axis=1, keepdims=True)
    shared = centered.sum(axis=0)  # Σ over s ≠ t of c_sj·c_tj = (Σ_s c_sj)² − Σ_s c_sj², summed over blocks
    covariance = float(shared @ shared - np.sum(centered**2)) / (seeds * (seeds - 1) * (blocks - 1))
    standard_error = math.sqrt(seed_variance + max(covariance, 0.0) / blocks)
    units = "examples" if block == 1 else f"blocks of {block} positions"
    test = f"t over {seeds} seeds × {blocks} test {units}"
    return {**result, **_t_verdict(result["gain"], standard_error, seeds - 1), "test": test}


def excludes_zero(low: float, high: float) -> bool:
    """Whether an interval lies wholly on one side of 0 (not for an unknown one)."""
    return bool(low > 0 or high < 0)
