"""ResMem and kNN-LM for next-token prediction, from one neighbor search in a token datastore.

The datastore holds one entry per training position: key h_i (the final hidden state fed to the output layer,
float16 on disk) and value y_i (the next token). With the vocabulary as the class set, ResMem is exactly the
image-classification math of `resmem.core`:

    r_i = onehot(y_i) − softmax(W h_i / T),    prediction = argmax_v [softmax(W h / T) + Σ_j w_j r_j]_v

and since the key is h_i itself, a neighbor's residual is recomputed from its key and the output layer
(`KeyLogits`): no V-wide residual or logit matrix is ever stored. The kNN-LM baseline (Khandelwal et al. 2020)
uses the same neighbors and kernel weights w_j = softmax(−d/σ)_j:

    p_kNN(v) = Σ_j w_j [y_j = v],    p = λ·p_kNN + (1 − λ)·softmax(W h)

ResMem's score vector is not a probability distribution (it sums to 1 but may be negative), so it has an
accuracy and no perplexity; base and kNN-LM have both.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
from tqdm import tqdm

from resmem.artifacts import QUERY_SPLITS
from resmem.core import DEFAULT_SWEEP_CHUNK_BYTES, check_neighbors, kernel_prefix_means, softmax, sweep_correct
from resmem.lm.artifacts import LM_SWEEP_COLUMNS


class KeyLogits:
    """The logits h @ W.T + b of datastore rows, computed from their keys when indexed (rows of any shape, or
    a slice): the stand-in for a stored N×V logit matrix wherever `resmem.core` takes one."""

    def __init__(self, keys: np.ndarray, weight: np.ndarray, bias: np.ndarray):
        self.keys, self.weight, self.bias = keys, np.asarray(weight, np.float32), np.asarray(bias, np.float32)
        self.shape = (len(keys), len(self.weight))

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, slice):
            return np.asarray(self.keys[rows], np.float32) @ self.weight.T + self.bias
        rows = np.asarray(rows)
        keys = np.asarray(self.keys[rows.ravel()], np.float32)
        return (keys @ self.weight.T + self.bias).reshape(*rows.shape, -1)


def log_likelihoods(logits, labels, chunk: int = 4096) -> np.ndarray:
    """log softmax(z)[y] of every query (float64), in chunks of queries."""
    out = np.empty(len(labels))
    for start in range(0, len(labels), chunk):
        p = softmax(logits[start : start + chunk])
        out[start : start + chunk] = np.log(p[np.arange(len(p)), labels[start : start + chunk]])
    return out


def knnlm_sweep(
    query_logits,
    query_labels: np.ndarray,
    dist: np.ndarray,
    idx: np.ndarray,
    train_next: np.ndarray,
    ks,
    sigmas,
    lambdas,
    chunk_bytes: int = DEFAULT_SWEEP_CHUNK_BYTES,
    progress=None,
) -> tuple[np.ndarray, np.ndarray]:
    """kNN-LM at every (k, σ, λ): (number of correct argmax predictions, sum of −log p(y)), both shaped
    (len(ks), len(sigmas), len(lambdas)). A zero probability (λ = 1 and y among no neighbor) gives inf."""
    query_labels = np.asarray(query_labels)
    train_next = np.asarray(train_next)
    check_neighbors(np.asarray(dist), np.asarray(idx), len(train_next))
    vocab = np.shape(query_logits)[1]
    lambdas = np.asarray(lambdas, dtype=np.float64)

    def one_hot(rows):
        v = np.zeros((*rows.shape, vocab))
        np.put_along_axis(v, train_next[rows][..., None], 1.0, axis=-1)
        return v

    shape = (len(ks), len(sigmas), len(lambdas))
    correct, nll = np.zeros(shape, dtype=np.int64), np.zeros(shape)
    lm_start = None
    # The chunk holds len(lambdas) mixtures of the (queries, σ, V) block at once.
    per_block = max(1, chunk_bytes // (len(lambdas) + 1))
    for start, stop, i, p_knn in kernel_prefix_means(dist, idx, ks, sigmas, one_hot, vocab, per_block, progress):
        if start != lm_start:
            p_lm, lm_start = softmax(query_logits[start:stop])[:, None, :], start
            y = query_labels[start:stop]
        for j, lam in enumerate(lambdas):
            p = lam * p_knn + (1.0 - lam) * p_lm  # (Q, S, V)
            correct[i, :, j] += (p.argmax(axis=2) == y[:, None]).sum(axis=0)
            with np.errstate(divide="ignore"):
                nll[i, :, j] -= np.log(p[np.arange(len(y)), :, y]).sum(axis=0)
    return correct, nll


def sweep_table(
    arrays: dict, neighbors: dict, ks, sigmas, temperatures, lambdas, chunk_bytes: int = DEFAULT_SWEEP_CHUNK_BYTES
) -> pd.DataFrame:
    """Next-token accuracy (and perplexity where it exists) of base, ResMem (k, σ, T) and kNN-LM (k, σ, λ) on
    val and test. `arrays` is a datastore (`resmem.lm.stages.load_datastore`); `neighbors` holds
    <split>_dist/<split>_idx into its training rows from one search at the largest k."""
    train_logits = KeyLogits(arrays["train_keys"], arrays["head_weight"], arrays["head_bias"])
    rows = []
    for split in QUERY_SPLITS:
        logits = KeyLogits(arrays[f"{split}_keys"], arrays["head_weight"], arrays["head_bias"])
        labels = np.asarray(arrays[f"{split}_next"])
        dist, idx, n = neighbors[f"{split}_dist"], neighbors[f"{split}_idx"], len(labels)
        base_correct = sum(
            int((logits[s : s + 4096].argmax(axis=1) == labels[s : s + 4096]).sum()) for s in range(0, n, 4096)
        )
        rows.append(
            {
                "method": "base",
                "split": split,
                "k": 0,
                "accuracy": base_correct / n,
                "perplexity": float(np.exp(-log_likelihoods(logits, labels).mean())),
            }
        )
        bar = dict(total=n * (len(temperatures) + 1), unit="query", file=sys.stderr, dynamic_ncols=True)
        with tqdm(desc=f"sweep {split}", **bar) as progress:
            resmem = sweep_correct(
                train_logits, arrays["train_next"], logits, labels, dist, idx, ks, sigmas, temperatures,
                chunk_bytes, progress,
            )  # fmt: skip
            knn_correct, knn_nll = knnlm_sweep(
                logits, labels, dist, idx, arrays["train_next"], ks, sigmas, lambdas, chunk_bytes, progress
            )
        for i, k in enumerate(ks):
            for s, sigma in enumerate(sigmas):
                common = {"split": split, "k": int(k), "sigma": float(sigma)}
                for t, temperature in enumerate(temperatures):
                    accuracy = resmem[t, i, s] / n
                    rows.append({"method": "resmem", **common, "temperature": temperature, "accuracy": accuracy})
                for j, lam in enumerate(lambdas):
                    rows.append(
                        {
                            "method": "knnlm",
                            **common,
                            "lam": float(lam),
                            "accuracy": knn_correct[i, s, j] / n,
                            "perplexity": float(np.exp(knn_nll[i, s, j] / n)),
                        }
                    )
    return pd.DataFrame(rows, columns=list(LM_SWEEP_COLUMNS))


def select(table: pd.DataFrame) -> dict:
    """ResMem's (k, σ, T) and kNN-LM's (k, σ, λ) by val accuracy, and kNN-LM's by val perplexity, with the
    test values there (rules and ties as in `resmem.sweep.select`)."""
    from resmem.sweep import select as choose

    base = table[table.method == "base"]
    resmem = pd.concat([base, table[table.method == "resmem"]])
    knnlm = pd.concat([base, table[table.method == "knnlm"]])
    return {
        "resmem": choose(resmem, "temperature"),
        "knnlm": choose(knnlm, "lam"),
        "knnlm_perplexity": choose(knnlm, "lam", "perplexity", higher_is_better=False),
    }
