"""The ResMem math (arXiv 2302.01576, Algorithm 1), on plain numpy arrays so that it serves any model.

Training split: base logits z (N×C), labels y (N,). A query split: logits z' (Q×C) and its neighbours in the
training embeddings, sorted by ascending Euclidean distance (not squared), as `resmem.knn.search` returns them.

    residual    r_i = onehot(y_i) - softmax(z_i / T)
    weights     w_j = exp(-d_j / σ) / Σ_l exp(-d_l / σ)        over the k nearest training examples
    prediction  ŷ   = argmax_c [ softmax(z' / T) + Σ_j w_j r_j ]_c

Everything is computed in float64: predictions are argmaxes, and float32 would flip near-ties between this
engine and any other implementation of the same formula.
"""

from __future__ import annotations

import numpy as np

DEFAULT_SWEEP_CHUNK_BYTES = 256 * 2**20  # bound on the gathered residual block (queries × k_max × C float64)


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


def _check_neighbours(dist: np.ndarray, idx: np.ndarray, n_train: int) -> None:
    if dist.shape != idx.shape or dist.ndim != 2:
        raise ValueError(f"neighbour distances {dist.shape} and indices {idx.shape} must be equal 2-D arrays")
    if idx.size and (idx.min() < 0 or idx.max() >= n_train):
        raise ValueError(
            f"neighbour indices must lie in [0, {n_train}) (the training set); got [{idx.min()}, {idx.max()}]"
            " — a negative index means the search asked for more neighbours than the datastore holds"
        )
    if np.any(np.diff(dist, axis=1) < 0):
        raise ValueError("neighbour distances must be sorted ascending along each row")


def _unnormalized_weights(dist: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """exp(-(d_j - d_0)/σ) for each σ: (Q, S, k). Subtracting the nearest distance d_0 cancels in the
    normalization of every prefix of the sorted row and keeps the first weight at 1, so no σ can underflow
    the denominator to zero (no NaN for tiny σ)."""
    shifted = dist - dist[:, :1]
    return np.exp(-shifted[:, None, :] / sigmas[None, :, None])


def neighbour_weights(dist: np.ndarray, sigma: float) -> np.ndarray:
    """Normalized kernel weights w_j over each row of sorted neighbour distances (Q×k)."""
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
    """softmax(z'/T) + Σ_j w_j r_j over all the neighbours given (Q×C). Slice dist/idx to [:, :k] for k.

    Only the neighbours' residuals are computed (from their logits), so train_logits may be a memmap of a
    datastore far larger than memory."""
    dist = np.asarray(dist, dtype=np.float64)
    idx = np.asarray(idx)
    _check_neighbours(dist, idx, len(train_labels))
    w = neighbour_weights(dist, sigma)
    memory = np.einsum("qk,qkc->qc", w, gathered_residuals(train_logits, train_labels, idx, temperature))
    return softmax(query_logits, temperature) + memory


def resmem_predict(
    query_logits,
    dist,
    idx,
    train_logits,
    train_labels,
    sigma,
    temperature=1.0,
    chunk_bytes: int = DEFAULT_SWEEP_CHUNK_BYTES,
) -> np.ndarray:
    """ResMem's class predictions, computed in chunks of queries so that memory stays bounded."""
    chunk = max(1, int(chunk_bytes // (np.shape(idx)[1] * np.shape(query_logits)[1] * 8)))
    return np.concatenate(
        [
            resmem_scores(
                query_logits[i : i + chunk],
                dist[i : i + chunk],
                idx[i : i + chunk],
                train_logits,
                train_labels,
                sigma,
                temperature,
            ).argmax(axis=1)
            for i in range(0, len(query_logits), chunk)
        ]
        or [np.zeros(0, dtype=np.int64)]
    )


def sweep_correct(
    train_logits: np.ndarray,
    train_labels: np.ndarray,
    query_logits: np.ndarray,
    query_labels: np.ndarray,
    dist: np.ndarray,
    idx: np.ndarray,
    ks,
    sigmas,
    temperatures,
    chunk_bytes: int = DEFAULT_SWEEP_CHUNK_BYTES,
    progress=None,
) -> np.ndarray:
    """Number of correct ResMem predictions for every (T, k, σ) from one neighbour search at k_max.

    Returns an int64 array of shape (len(temperatures), len(ks), len(sigmas)), in the order given.
    Neighbours are sorted, so the k-prefix sums Σ_{j<k} u_j r_j grow segment by segment between
    consecutive grid values of k: each segment is one batched matmul (Q, S, L) @ (Q, L, C) that serves
    every σ at once. Queries are processed in chunks, and the neighbours' residuals are computed from their
    gathered logits one segment at a time, so that no block exceeds `chunk_bytes` (chunk × k_max × C
    float64) whatever the number of queries, and no N×C residual matrix is held (train_logits may be a
    memmap of an ImageNet-size datastore).
    """
    ks = np.asarray(ks, dtype=np.int64)
    sigmas = np.asarray(sigmas, dtype=np.float64)
    order = np.argsort(ks, kind="stable")
    k_sorted = ks[order]
    k_max = int(k_sorted[-1])
    if k_sorted[0] < 1 or k_max > dist.shape[1]:
        raise ValueError(f"every k must lie in [1, {dist.shape[1]}] (neighbours searched); got {ks.tolist()}")
    dist = np.asarray(dist)[:, :k_max]
    idx = np.asarray(idx)[:, :k_max]
    _check_neighbours(dist, idx, len(train_labels))
    query_labels = np.asarray(query_labels)
    n_query, n_classes = np.shape(query_logits)
    chunk = max(1, int(chunk_bytes // (k_max * n_classes * 8)))
    bounds = np.concatenate([[0], k_sorted])

    correct = np.zeros((len(temperatures), len(ks), len(sigmas)), dtype=np.int64)
    for t, temperature in enumerate(temperatures):
        for start in range(0, n_query, chunk):
            stop = min(start + chunk, n_query)
            u = _unnormalized_weights(dist[start:stop].astype(np.float64), sigmas)  # (Q, S, k_max)
            base = softmax(query_logits[start:stop], temperature)[:, None, :]
            y = query_labels[start:stop, None]
            memory = np.zeros((stop - start, len(sigmas), n_classes))
            norm = np.zeros((stop - start, len(sigmas), 1))
            for j, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
                if hi > lo:
                    block = gathered_residuals(train_logits, train_labels, idx[start:stop, lo:hi], temperature)
                    memory += u[:, :, lo:hi] @ block  # (Q, S, L) @ (Q, L, C)
                    norm += u[:, :, lo:hi].sum(axis=2, keepdims=True)
                pred = (base + memory / norm).argmax(axis=2)  # (Q, S)
                correct[t, order[j]] += (pred == y).sum(axis=0)
            if progress is not None:
                progress.update(stop - start)
    return correct
