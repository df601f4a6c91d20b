"""Is a gain real? Paired statistics of a method against the base model on the same test examples, and of a
model's gains over seeds.

- McNemar's exact test: of the test examples where exactly one of the two is right, the method is right on b and
  the base on c; under "no difference" b ~ Binomial(b + c, 1/2). Two-sided p = min(1, 2·P(X ≤ min(b, c))).
- A (block) bootstrap percentile interval of the mean paired difference: the test set is cut into contiguous
  blocks (one example each for images; `stats.block_tokens` positions for language models, whose neighbouring
  tokens are not independent), and `resamples` resamples draw as many blocks with replacement. Blocks with the
  same (sum, length) are interchangeable, so a resample is drawn as multinomial counts of the distinct blocks:
  the same distribution as drawing block indices, at a cost that does not grow with the test set for accuracy
  differences (three distinct one-example blocks: −1, 0, +1).
- Over seeds: mean, standard deviation (n − 1) and Student's t-interval of the mean.
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95  # of every interval: the bootstrap's of a run's gain, and Student's t over seeds
MAX_COUNT_CELLS = 2**24  # resamples × distinct blocks drawn at once: 128 MiB of int64 counts


def mcnemar_p(base_correct, method_correct) -> float:
    """McNemar's exact two-sided p-value of paired 0/1 outcomes (1.0 where they never disagree)."""
    from scipy.stats import binom

    base_correct, method_correct = np.asarray(base_correct, bool), np.asarray(method_correct, bool)
    b = int(np.sum(method_correct & ~base_correct))
    c = int(np.sum(base_correct & ~method_correct))
    if b + c == 0:
        return 1.0
    return float(min(1.0, 2.0 * binom.cdf(min(b, c), b + c, 0.5)))


def bootstrap_ci(differences, resamples: int = 10_000, seed: int = 0, level: float = LEVEL, block: int = 1):
    """The percentile interval (low, high) at `level` of the mean of paired `differences` (one per test example,
    in test order), resampling contiguous blocks of `block` examples (the last one may be shorter)."""
    differences = np.asarray(differences, dtype=np.float64)
    if len(differences) == 0:
        return float("nan"), float("nan")
    starts = np.arange(0, len(differences), block)
    sums = np.add.reduceat(differences, starts)
    lengths = np.diff(np.append(starts, len(differences)))
    distinct, counts = np.unique(np.stack([sums, lengths]), axis=1, return_counts=True)
    rng = np.random.default_rng(seed)
    per_draw = max(1, MAX_COUNT_CELLS // len(counts))
    means = []
    for start in range(0, resamples, per_draw):
        drawn = rng.multinomial(len(starts), counts / len(starts), size=min(per_draw, resamples - start))
        means.append((drawn @ distinct[0]) / (drawn @ distinct[1]))
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(np.concatenate(means), [alpha, 1.0 - alpha])
    return float(low), float(high)


def paired_gain(base_correct, method_correct, resamples: int, seed: int, block: int = 1) -> dict:
    """A method's test-accuracy gain over the base model on the same examples: the gain, its bootstrap interval
    and McNemar's p-value."""
    difference = np.asarray(method_correct, np.float64) - np.asarray(base_correct, np.float64)
    low, high = bootstrap_ci(difference, resamples, seed, LEVEL, block)
    return {"gain": float(difference.mean()), "gain_ci_low": low, "gain_ci_high": high,
            "mcnemar_p": mcnemar_p(base_correct, method_correct)}  # fmt: skip


def t_interval(values, level: float = LEVEL) -> tuple[float, float, float, float]:
    """(mean, standard deviation, low, high) of `values` (one per seed): Student's t-interval of the mean; with one
    value the deviation is 0 and the interval unknown (NaN)."""
    from scipy.stats import t

    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, 0.0, float("nan"), float("nan")
    std = float(values.std(ddof=1))
    half = float(t.ppf(0.5 + level / 2.0, len(values) - 1)) * std / np.sqrt(len(values))
    return mean, std, mean - half, mean + half


def excludes_zero(low, high) -> bool:
    """Whether an interval lies wholly on one side of 0 (not for an unknown one)."""
    return bool(low > 0 or high < 0)
