"""The ResMem math (arXiv 2302.01576, Algorithm 1), on plain numpy arrays so that it serves any model.

Training split: base logits z (N×C), labels y (N,). A query split: logits z' (Q×C) and its neighbors in the
training embeddings, sorted by ascending Euclidean distance (not squared), as `resmem.knn.search` returns them.

    residual    r_i = onehot(y_i) - softmax(z_i / T)
    weights     w_j = exp(-d_j / σ) / Σ_l exp(-d_l / σ)        over the k nearest training examples
    prediction  ŷ   = argmax_c [ softmax(z' / T) + Σ_j w_j r_j ]_c

The two baselines on the same neighbours, memorization alone and kNN-LM's recipe applied to classes:

    knn         p_kNN(c) = Σ_j w_j [y_j = c]
    knn_interp  (1 − λ)·softmax(z' / T) + λ·p_kNN

One tie rule decides every prediction (`predict`): the lowest class among those whose score is within
`tie_tolerance` of the best, a bound on float64 rounding, so that classes whose scores are equal in exact arithmetic
tie whatever order a sum was taken in (numpy's argmax applies the same rule, with no tolerance, to the base model's
logits, which no arithmetic touched).

Everything here is computed in float64 numpy: plain float32 would flip near-ties between this code and any other
implementation of the same formula. It is the reference; the grid sweep runs in float32 torch on the device
(`resmem.engine`) and hands its near-ties back to `sweep_correct_float64`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_SWEEP_CHUNK_BYTES = 256 * 2**20  # bound on a sweep chunk's working set (knn.sweep_chunk_mb)
UNIT_ROUNDOFF_64 = 2.0**-53
METHODS = ("resmem", "knn", "knn_interp")  # what the sweeps count, besides the base model
# The axes of each method's counts over a grid, in order: the soft kNN has no temperature (the base model takes no
# part in it), knn_interp adds the interpolation weight λ.
COUNT_AXES = {"resmem": ("temperature", "k", "sigma"), "knn": ("k", "sigma"),
              "knn_interp": ("temperature", "k", "sigma", "lam")}  # fmt: skip


def float64_error(k: int, n_classes: int) -> float:
    """A bound on the float64 rounding error of one score of any method here, (k + C + 16)·u: its softmax sums C
    terms, its weighted sum k, and a dozen more roundings (exponentials, divisions, the interpolation); every
    score lies in [−1, 2] (|r_jc| ≤ 1 and the weights sum to 1), so the bound is absolute. kNN-LM's log-space
    scores err by as much relatively in p, so absolutely in log p."""
    return (k + n_classes + 16) * UNIT_ROUNDOFF_64


def tie_tolerance(k: int, n_classes: int) -> float:
    """Scores within this of the best one tie: twice `float64_error`, so two scores equal in exact arithmetic,
    each computed in any order, always tie (4.5·10⁻¹³ at C = 1,000 and k = 1,024; 1.1·10⁻¹¹ for a 50k vocabulary).
    Scores that differ in exact arithmetic by less than that are taken as tied too."""
    return 2.0 * float64_error(k, n_classes)


def predict(scores: np.ndarray, tolerance: float) -> np.ndarray:
    """The tie rule: along the last axis, the lowest index among those whose score is within `tolerance` of the
    best one (tolerance 0: numpy's argmax)."""
    best = scores.max(axis=-1, keepdims=True)
    return (scores >= best - tolerance).argmax(axis=-1)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.array(logits, dtype=np.float64)  # a copy, then in place: the sweep calls this on large blocks
    z /= temperature
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def residuals(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """r_i = onehot(y_i) − softmax(z_i / T) for every training example (N×C, float64)."""
    r = softmax(logits, temperature)
    np.negative(r, out=r)
    r[np.arange(len(r)), np.asarray(labels)] += 1.0
    return r


def gathered_residuals(train_logits, train_labels, rows: np.ndarray, temperature: float) -> np.ndarray:
    """Residuals of the training examples `rows` (any shape), shaped rows.shape + (C,)."""
    flat = rows.ravel()
    return residuals(train_logits[flat], np.asarray(train_labels)[flat], temperature).reshape(*rows.shape, -1)


def check_neighbors(dist: np.ndarray, idx: np.ndarray, n_train: int) -> None:
    if dist.shape != idx.shape or dist.ndim != 2:
        raise ValueError(f"neighbor distances {dist.shape} and indices {idx.shape} must be equal 2-D arrays")
    if idx.size and (idx.min() < 0 or idx.max() >= n_train):
        raise ValueError(
            f"neighbor indices must lie in [0, {n_train}) (the training set); got [{idx.min()}, {idx.max()}]"
            " — a negative index means the search asked for more neighbors than the datastore holds"
        )
    if np.any(np.diff(dist, axis=1) < 0):
        raise ValueError("neighbor distances must be sorted ascending along each row")


def _unnormalized_weights(dist: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """exp(-(d_j - d_0)/σ) for each σ: (Q, S, k). Subtracting the nearest distance d_0 cancels in the
    normalization of every prefix of the sorted row and keeps the first weight at 1, so no σ can underflow
    the denominator to zero (no NaN for tiny σ)."""
    shifted = dist - dist[:, :1]
    return np.exp(-shifted[:, None, :] / sigmas[None, :, None])


def neighbor_weights(dist: np.ndarray, sigma: float) -> np.ndarray:
    """Normalized kernel weights w_j over each row of sorted neighbor distances (Q×k)."""
    dist = np.asarray(dist, dtype=np.float64)
    u = _unnormalized_weights(dist, np.array([sigma], dtype=np.float64))[:, 0, :]
    return u / u.sum(axis=1, keepdims=True)


def resmem_scores(
    query_logits: np.ndarray,
    dist: np.ndarray,
    idx: np.ndarray,
    train_logits: np.ndarray,
    train_labels: np.ndarray,
    sigma: float,
    temperature: float = 1.0,
) -> np.ndarray:
    """softmax(z'/T) + Σ_j w_j r_j over all the neighbors given (Q×C). Slice dist/idx to [:, :k] for k.

    Only the neighbors' residuals are computed (from their logits), so train_logits may be a memmap of a
    datastore far larger than memory."""
    dist = np.asarray(dist, dtype=np.float64)
    idx = np.asarray(idx)
    check_neighbors(dist, idx, len(train_labels))
    w = neighbor_weights(dist, sigma)
    memory = np.einsum("qk,qkc->qc", w, gathered_residuals(train_logits, train_labels, idx, temperature))
    return softmax(query_logits, temperature) + memory


def resmem_predict(
    query_logits: np.ndarray,
    dist: np.ndarray,
    idx: np.ndarray,
    train_logits: np.ndarray,
    train_labels: np.ndarray,
    sigma: float,
    temperature: float = 1.0,
    chunk_bytes: int = DEFAULT_SWEEP_CHUNK_BYTES,
) -> np.ndarray:
    """ResMem's class predictions (the tie rule, `predict`), computed in chunks of queries so that memory stays
    bounded."""
    return method_predict("resmem", query_logits, dist, idx, train_logits, train_labels, sigma, temperature,
                          chunk_bytes=chunk_bytes)  # fmt: skip


def knn_scores(dist: np.ndarray, idx: np.ndarray, train_labels: np.ndarray, sigma: float, n_classes: int) -> np.ndarray:
    """The soft kNN classifier's p_kNN(c) = Σ_j w_j [y_j = c] over all the neighbors given (Q×C)."""
    dist = np.asarray(dist, dtype=np.float64)
    idx = np.asarray(idx)
    check_neighbors(dist, idx, len(train_labels))
    w = neighbor_weights(dist, sigma)
    p = np.zeros((len(idx), n_classes))
    np.add.at(p, (np.arange(len(idx))[:, None], np.asarray(train_labels)[idx]), w)
    return p


def method_predict(
    method: str,
    query_logits,
    dist,
    idx,
    train_logits,
    train_labels,
    sigma: float,
    temperature: float = 1.0,
    lam: float = 0.0,
    chunk_bytes: int = DEFAULT_SWEEP_CHUNK_BYTES,
) -> np.ndarray:
    """The predictions of one method (`METHODS`) at one grid point (k = the neighbors given), by the tie rule, in
    chunks of queries: what a sweep's count at that point counts."""
    n_classes, k = np.shape(query_logits)[1], np.shape(idx)[1]
    chunk = max(1, int(chunk_bytes // (k * n_classes * 8)))
    parts = [np.zeros(0, dtype=np.int64)]
    for i in range(0, len(query_logits), chunk):
        here = slice(i, i + chunk)
        if method == "resmem":
            scores = resmem_scores(query_logits[here], dist[here], idx[here], train_logits, train_labels, sigma,
                                   temperature)  # fmt: skip
        else:
            scores = knn_scores(dist[here], idx[here], train_labels, sigma, n_classes)
            if method == "knn_interp":
                scores = (1.0 - lam) * softmax(query_logits[here], temperature) + lam * scores
        parts.append(predict(scores, tie_tolerance(k, n_classes)))
    return np.concatenate(parts)


def kernel_prefix_means(
    dist: np.ndarray,
    idx: np.ndarray,
    ks,
    sigmas,
    neighbor_vectors,
    width: int,
    chunk_bytes: int = DEFAULT_SWEEP_CHUNK_BYTES,
    progress=None,
):
    """Kernel-weighted means Σ_{j<k} w_j v_j of the neighbors' vectors for every k in `ks` and every σ at once,
    from one neighbor search at k_max (w normalized over each k-prefix, as in `neighbor_weights`).

    Yields (start, stop, i, mean): the queries start:stop, the position i of k in `ks`, and mean shaped
    (queries, len(sigmas), width). `neighbor_vectors(rows)` returns the vectors of training rows (any shape)
    shaped rows.shape + (width,): ResMem's residuals, kNN-LM's one-hot next tokens.

    Neighbors are sorted, so the prefix sums grow segment by segment between consecutive grid values of k:
    each segment is one batched matmul (Q, S, L) @ (Q, L, width) that serves every σ. Queries are processed in
    chunks and vectors are gathered one segment at a time, so that no block exceeds `chunk_bytes`
    (chunk × k_max × width float64) whatever the number of queries, and no N×width matrix is ever held.
    """
    ks = np.asarray(ks, dtype=np.int64)
    sigmas = np.asarray(sigmas, dtype=np.float64)
    order = np.argsort(ks, kind="stable")
    k_sorted = ks[order]
    k_max = int(k_sorted[-1])
    if k_sorted[0] < 1 or k_max > dist.shape[1]:
        raise ValueError(f"every k must lie in [1, {dist.shape[1]}] (neighbors searched); got {ks.tolist()}")
    dist = np.asarray(dist)[:, :k_max]
    idx = np.asarray(idx)[:, :k_max]
    chunk = max(1, int(chunk_bytes // (k_max * width * 8)))
    bounds = np.concatenate([[0], k_sorted])
    for start in range(0, len(dist), chunk):
        stop = min(start + chunk, len(dist))
        u = _unnormalized_weights(dist[start:stop].astype(np.float64), sigmas)  # (Q, S, k_max)
        total = np.zeros((stop - start, len(sigmas), width))
        norm = np.zeros((stop - start, len(sigmas), 1))
        for j, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            if hi > lo:
                total += u[:, :, lo:hi] @ neighbor_vectors(idx[start:stop, lo:hi])  # (Q, S, L) @ (Q, L, width)
                norm += u[:, :, lo:hi].sum(axis=2, keepdims=True)
            yield start, stop, int(order[j]), total / norm
        if progress is not None:
            progress.update(stop - start)


def count_shapes(methods, n_temperatures: int, n_ks: int, n_sigmas: int, n_lambdas: int) -> dict:
    """The shape of each method's counts over a grid, along its `COUNT_AXES`."""
    unknown = set(methods) - set(COUNT_AXES)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; the sweeps count {list(COUNT_AXES)}")
    sizes = {"temperature": n_temperatures, "k": n_ks, "sigma": n_sigmas, "lam": n_lambdas}
    return {method: tuple(sizes[axis] for axis in COUNT_AXES[method]) for method in methods}


def sweep_correct_float64(
    train_logits: np.ndarray,
    train_labels: np.ndarray,
    query_logits: np.ndarray,
    query_labels: np.ndarray,
    dist: np.ndarray,
    idx: np.ndarray,
    ks: Sequence[int],
    sigmas: Sequence[float],
    temperatures: Sequence[float],
    chunk_bytes: int = DEFAULT_SWEEP_CHUNK_BYTES,
    progress: Any = None,
    lambdas: Sequence[float] = (),
    methods: Sequence[str] = ("resmem",),
) -> dict[str, np.ndarray]:
    """Number of correct predictions of each method at every grid point from one neighbor search at k_max, in
    float64 numpy by the tie rule (`predict`): the reference that the sweep engine (`resmem.engine.sweep_correct`,
    float32 torch) equals bit for bit, and that re-decides the engine's near-ties.

    Returns {method: int64 counts} shaped as `count_shapes` says, in the orders given. The neighbors' residuals
    are computed from their gathered logits segment by segment (see `kernel_prefix_means`), so train_logits may
    be a memmap of an ImageNet-size datastore, or any object that computes the logits of the rows it is indexed
    with (`resmem.lm.tokens.KeyLogits`); the baselines need only the labels.
    """
    check_neighbors(np.asarray(dist), np.asarray(idx), len(train_labels))
    query_labels = np.asarray(query_labels)
    n_classes = np.shape(query_logits)[1]
    shapes = count_shapes(methods, len(temperatures), len(ks), len(sigmas), len(lambdas))
    correct = {method: np.zeros(shape, dtype=np.int64) for method, shape in shapes.items()}
    tolerances = [tie_tolerance(int(k), n_classes) for k in ks]

    def count(scores, i, start, stop):  # (Q, S) correct predictions at the i-th k
        return (predict(scores, tolerances[i]) == query_labels[start:stop, None]).sum(axis=0)

    for t, temperature in enumerate(temperatures if "resmem" in methods else ()):

        def residuals_of(rows, temperature=temperature):
            return gathered_residuals(train_logits, train_labels, rows, temperature)

        base_start = None
        for start, stop, i, memory in kernel_prefix_means(
            dist, idx, ks, sigmas, residuals_of, n_classes, chunk_bytes, progress
        ):
            if start != base_start:  # the base probabilities of a query chunk serve every k
                base, base_start = softmax(query_logits[start:stop], temperature)[:, None, :], start
            correct["resmem"][t, i] += count(base + memory, i, start, stop)
    if "knn" in methods or "knn_interp" in methods:
        labels, one_hot = np.asarray(train_labels), np.eye(n_classes)

        def votes_of(rows):
            return one_hot[labels[rows]]

        base_start = None
        for start, stop, i, p_knn in kernel_prefix_means(dist, idx, ks, sigmas, votes_of, n_classes, chunk_bytes):
            if "knn" in methods:
                correct["knn"][i] += count(p_knn, i, start, stop)
            if "knn_interp" not in methods:
                continue
            if start != base_start:
                bases, base_start = [softmax(query_logits[start:stop], T)[:, None, :] for T in temperatures], start
            for t, base in enumerate(bases):
                for j, lam in enumerate(lambdas):
                    correct["knn_interp"][t, i, :, j] += count((1.0 - lam) * base + lam * p_knn, i, start, stop)
    return correct


def accuracy_by_confidence(
    logits: np.ndarray, labels: np.ndarray, predictions: np.ndarray, bins: int = 10
) -> pd.DataFrame:
    """Correct counts of the base model (argmax of `logits`) and of other `predictions` (ResMem's) in
    equal-width bins of the base model's confidence, its largest softmax probability: where ResMem helps."""
    import pandas as pd

    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(softmax(logits).max(axis=1), edges[1:-1]), 0, bins - 1)
    return pd.DataFrame(
        {
            "bin_lo": edges[:-1],
            "bin_hi": edges[1:],
            "count": np.bincount(which, minlength=bins),
            "base_correct": np.bincount(which, weights=logits.argmax(1) == labels, minlength=bins).astype(int),
            "resmem_correct": np.bincount(which, weights=predictions == labels, minlength=bins).astype(int),
        }
    )
