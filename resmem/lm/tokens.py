"""ResMem and kNN-LM for next-token prediction, from one neighbor search in a token datastore.

The datastore holds one entry per training position: the final hidden state h_i fed to the output layer (float16
on disk), the search key (h_i itself, or with datastore.key last_ffn_input the input of the last feed-forward
block, stored beside it) and the value y_i (the next token). With the vocabulary as the class set, ResMem is
exactly the image-classification math of `resmem.core`:

    r_i = onehot(y_i) − softmax(W h_i / T),    prediction = argmax_v [softmax(W h / T) + Σ_j w_j r_j]_v

and a neighbor's residual is recomputed from h_i and the output layer (`KeyLogits`): no V-wide residual or logit
matrix is ever stored. The price is compute: each query's k neighbors cost k·V·d multiply-adds per temperature
(k = 1024, V = 50,257, d = 1024: 5·10¹⁰ per query), in chunks bounded by knn.sweep_chunk_mb; knn.resmem_k gives
ResMem a smaller k than kNN-LM's. The kNN-LM baseline (Khandelwal et al. 2020) uses the same neighbors, as
published: weights w_j = softmax(−d_j²/τ) over squared L2 distances, and the
mixture in log space (`knnlm_sweep`):

    p_kNN(v) = Σ_j w_j [y_j = v],    log p = logsumexp(log(1 − λ) + log softmax(W h), log λ + log p_kNN)

ResMem's score vector is not a probability distribution (it sums to 1 but may be negative), so it has an
accuracy and no perplexity; base and kNN-LM have both.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from resmem.artifacts import QUERY_SPLITS, SPLITS
from resmem.core import DEFAULT_SWEEP_CHUNK_BYTES, check_neighbors, tie_tolerance
from resmem.engine import kernel_weights, logits_on_device, stack_splits, sweep_correct
from resmem.io import ArtifactError
from resmem.lm.artifacts import LM_METHODS, LM_SWEEP_COLUMNS


class KeyLogits:
    """The logits h @ W.T + b of datastore rows, computed from their final hidden states when indexed (rows of any
    shape, or a slice): the stand-in for a stored N×V logit matrix wherever `resmem.core` takes one.

    The product, k·V·d multiply-adds per query's neighbors and most of a token sweep's arithmetic, runs in
    float32 on `device` (the config's switch: a CUDA GPU when there is one; the same code on the CPU)."""

    def __init__(self, keys: np.ndarray, weight: np.ndarray, bias: np.ndarray, device: str = "cpu") -> None:
        import torch

        from resmem.device import torch_device

        self.keys, self.device = keys, torch_device(device)
        # Copies: the output layer is a read-only memmap of the datastore.
        self.weight = torch.tensor(np.asarray(weight), dtype=torch.float32, device=self.device)
        self.bias = torch.tensor(np.asarray(bias), dtype=torch.float32, device=self.device)
        self.shape = (len(keys), len(self.weight))

    def __len__(self) -> int:
        return len(self.keys)

    def on_device(self, rows: np.ndarray | slice, out: Any = None) -> Any:
        """The logits of `rows` (an index array of any shape, or a slice) as a float32 tensor on the device,
        shaped rows.shape + (V,), written into `out` when given: what the sweep engine takes residuals from."""
        import torch

        picked = self.keys[rows] if isinstance(rows, slice) else np.take(self.keys, np.ravel(rows), axis=0)
        hidden = torch.from_numpy(np.array(picked)).to(self.device).float()  # take: faster on a memmap; a copy
        logits = torch.addmm(self.bias, hidden, self.weight.T, out=out)
        return logits if isinstance(rows, slice) else logits.view(*np.shape(rows), -1)

    def __getitem__(self, rows) -> np.ndarray:
        return self.on_device(rows).cpu().numpy()


def final_hidden(arrays: dict, split: str) -> np.ndarray:
    """A split's final hidden states (from which logits and residuals are recomputed) in a datastore: the keys
    themselves unless datastore.key made them another state."""
    if f"{split}_hidden" not in arrays and any(f"{s}_hidden" in arrays for s in SPLITS):
        raise ArtifactError(
            f"the datastore holds no final hidden states of its {split} positions (a study whose knn.methods runs no "
            "ResMem); add resmem to knn.methods, and lm_datastore reruns"
        )
    return arrays.get(f"{split}_hidden", arrays[f"{split}_keys"])


def base_predict(query_logits, labels, chunk_bytes: int = DEFAULT_SWEEP_CHUNK_BYTES, device: str = "cpu"):
    """The base model's predicted token (the argmax of its logits; ties: the lowest token) and −log softmax(z)[y]
    per query (numpy arrays), in float64 torch on `device`, in chunks of queries within `chunk_bytes`."""
    import torch

    from resmem.device import torch_device

    device, labels = torch_device(device), np.asarray(labels)
    chunk = max(1, int(chunk_bytes // (16 * np.shape(query_logits)[1])))  # float32 logits + float64 log-softmax
    predicted, loss = [np.zeros(0, dtype=np.int64)], [np.zeros(0)]
    for start in range(0, len(labels), chunk):
        stop = min(start + chunk, len(labels))
        logits = logits_on_device(query_logits, slice(start, stop), device).double()
        y = torch.from_numpy(np.array(labels[start:stop], dtype=np.int64)).to(device)
        predicted.append(logits.argmax(dim=1).cpu().numpy())
        loss.append(-torch.log_softmax(logits, dim=1).gather(1, y[:, None])[:, 0].cpu().numpy())
    return np.concatenate(predicted), np.concatenate(loss)


KNN_LOG_FLOOR = -10_000.0  # log p_kNN of a token no neighbor holds, as knn-transformers floors log(0)


def knnlm_scores(
    query_logits,
    query_labels: np.ndarray,
    dist: np.ndarray,
    idx: np.ndarray,
    train_next: np.ndarray,
    ks,
    widths,
    lambdas,
    kernel: str = "squared_l2",
    chunk_bytes: int = DEFAULT_SWEEP_CHUNK_BYTES,
    device: str = "cpu",
):
    """kNN-LM per query at every (k, width, λ): yields (start, stop, i, w, predicted, log_p) for the queries
    start:stop at the i-th k and w-th width, the predicted tokens and log p(y) both (len(lambdas), stop − start)
    tensors on `device`.

    As published (Khandelwal et al. 2020; neulab/knn-transformers): with kernel "squared_l2" the neighbors'
    weights are softmax(−d²/τ) over the squared L2 distances (`widths` = the τ grid; "l2": softmax(−d/σ),
    ResMem's kernel), p_kNN(v) = Σ_j w_j [y_j = v], and the mixture is taken in log space,
    log p = logsumexp(log(1−λ) + log p_LM, log λ + log p_kNN), with log p_kNN floored at KNN_LOG_FLOOR where no
    neighbor holds the token. So λ = 1 and no neighbor of the right token costs a large finite loss (10,000
    nats) instead of the infinite one of the linear mixture λ·p_kNN + (1−λ)·p_LM, which it equals elsewhere.

    p_kNN is sparse: it is computed only at the (at most k) tokens the neighbors hold, so a query costs O(k log k)
    beside its V-wide log-softmax whatever the vocabulary. The prediction follows the tie rule
    (`resmem.core.predict`): the lowest token whose log p is within `tie_tolerance(k, V)` of the best (a bound on
    float64 rounding in log p, relative in p). Its candidates are the neighbors' tokens and the base model's
    argmax: every other token scores log(1−λ) + log p_LM, below the argmax's by the base model's own comparison of
    its logits. So the sums of a token's neighbours' weights (`scatter_add_`, whose order a GPU may change) cannot
    decide a tie.

    In float64 torch on `device`, all λ at once: the same code on the CPU and on a GPU."""
    import torch

    from resmem.device import torch_device

    query_labels = np.asarray(query_labels)
    train_next = np.asarray(train_next)
    check_neighbors(np.asarray(dist), np.asarray(idx), len(train_next))
    if kernel not in ("squared_l2", "l2"):
        raise ValueError(f"unknown kNN-LM kernel {kernel!r}; use squared_l2 or l2")
    ks = [int(k) for k in ks]
    k_max = max(ks)
    if min(ks) < 1 or k_max > np.shape(dist)[1]:
        raise ValueError(f"every k must lie in [1, {np.shape(dist)[1]}] (neighbors searched); got {ks}")
    device = torch_device(device)
    vocab = np.shape(query_logits)[1]
    widths_t = torch.tensor(np.asarray(widths, dtype=np.float64), device=device)
    lam = torch.tensor(np.asarray(lambdas, dtype=np.float64), device=device)[:, None, None]  # (Λ, 1, 1)
    log_lam, log_rest = torch.log(lam), torch.log1p(-lam)  # −inf at λ = 0 and λ = 1: one term drops out
    # A chunk holds its V-wide logits and log-softmax and about a dozen (Λ, queries, k_max) arrays.
    chunk = max(1, int(chunk_bytes // (8 * (2 * vocab + 12 * k_max * len(lambdas)))))
    for start in range(0, len(query_labels), chunk):
        stop = min(start + chunk, len(query_labels))
        rows = torch.arange(stop - start, device=device)
        logits = logits_on_device(query_logits, slice(start, stop), device).double()
        log_lm = torch.log_softmax(logits, dim=1)
        y = torch.from_numpy(np.array(query_labels[start:stop], dtype=np.int64)).to(device)
        lm_arg = logits.argmax(dim=1)  # the first maximal token on ties, as numpy's argmax
        lm_best, lm_y = log_lm[rows, lm_arg], log_lm[rows, y]
        kernel_dist = torch.from_numpy(np.array(dist[start:stop, :k_max], dtype=np.float64)).to(device)
        kernel_dist = kernel_dist.square() if kernel == "squared_l2" else kernel_dist
        unnormalized = kernel_weights(kernel_dist, widths_t)  # (Q, widths, k_max)
        held = torch.from_numpy(np.array(train_next[np.asarray(idx[start:stop, :k_max])], dtype=np.int64)).to(device)
        for i, k in enumerate(ks):
            tolerance = tie_tolerance(k, vocab)
            tokens = held[:, :k]
            sorted_tokens, order = torch.sort(tokens, dim=1, stable=True)
            # The distinct tokens that a query's neighbors hold, lowest first, in the first columns of its row of
            # `distinct` (padded with −1 to the most any query of the chunk has: far fewer than k where neighbors
            # agree, as a language model's do), and each sorted neighbor's column there.
            starts = torch.ones_like(sorted_tokens, dtype=torch.bool)
            starts[:, 1:] = sorted_tokens[:, 1:] != sorted_tokens[:, :-1]
            column = torch.cumsum(starts, dim=1) - 1
            distinct = torch.full((len(rows), int(column[:, -1].max()) + 1), -1, dtype=torch.int64, device=device)
            distinct.scatter_(1, column, sorted_tokens)
            padding = distinct < 0
            never = torch.where(padding, vocab, distinct)  # padding is never a candidate
            lm_held = log_rest + log_lm.gather(1, distinct.clamp(min=0))  # (Λ, Q, distinct), whatever the width
            lm_arg_part = log_rest[:, :, 0] + lm_best  # (Λ, Q)
            for w in range(len(widths)):
                weights = unnormalized[:, w, :k] / unnormalized[:, w, :k].sum(dim=1, keepdim=True)
                p_y = torch.where(tokens == y[:, None], weights, 0.0).sum(dim=1)
                p_lm_arg = torch.where(tokens == lm_arg[:, None], weights, 0.0).sum(dim=1)
                # each token's weights summed in the neighbors' order (the sort is stable), as a dense sum would
                p_held = torch.zeros(distinct.shape, dtype=torch.float64, device=device)
                p_held.scatter_add_(1, column, weights.gather(1, order))
                log_knn = torch.log(p_held).clamp_(min=KNN_LOG_FLOOR)
                log_knn_y = torch.log(p_y).clamp_(min=KNN_LOG_FLOOR)
                log_p_y = torch.logaddexp(log_rest[:, :, 0] + lm_y, log_lam[:, :, 0] + log_knn_y)  # (Λ, Q)
                mixed = torch.logaddexp(lm_held, log_lam + log_knn).masked_fill_(padding, -torch.inf)
                log_knn_arg = torch.log(p_lm_arg).clamp_(min=KNN_LOG_FLOOR)
                arg_score = torch.logaddexp(lm_arg_part, log_lam[:, :, 0] + log_knn_arg)
                best = torch.maximum(mixed.amax(dim=2), arg_score)  # (Λ, Q)
                held_tied = torch.where(mixed >= best[:, :, None] - tolerance, never, vocab).amin(dim=2)
                arg_tied = torch.where(arg_score >= best - tolerance, lm_arg, vocab)
                yield start, stop, i, w, torch.minimum(held_tied, arg_tied), log_p_y


def knnlm_sweep(
    query_logits,
    query_labels: np.ndarray,
    dist: np.ndarray,
    idx: np.ndarray,
    train_next: np.ndarray,
    ks,
    widths,
    lambdas,
    kernel: str = "squared_l2",
    chunk_bytes: int = DEFAULT_SWEEP_CHUNK_BYTES,
    progress=None,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """kNN-LM at every (k, width, λ) (`knnlm_scores`): (number of correct predictions, sum of −log p(y)), both
    shaped (len(ks), len(widths), len(lambdas))."""
    import torch

    shape = (len(ks), len(widths), len(lambdas))
    correct, nll = np.zeros(shape, dtype=np.int64), np.zeros(shape)
    labels = torch.from_numpy(np.asarray(query_labels, dtype=np.int64))
    done = 0
    for start, stop, i, w, predicted, log_p in knnlm_scores(query_logits, query_labels, dist, idx, train_next, ks,
                                                            widths, lambdas, kernel, chunk_bytes, device):  # fmt: skip
        correct[i, w] += (predicted.cpu() == labels[start:stop]).sum(dim=1).numpy()
        nll[i, w] -= log_p.sum(dim=1).cpu().numpy()
        if progress is not None and stop > done:
            progress.update(stop - done)
            done = stop
    return correct, nll


def knnlm_predict(query_logits, query_labels, dist, idx, train_next, point: dict, chunk_bytes: int, device: str):
    """kNN-LM's predicted token and −log p(y) per query at one grid point (`point`: k, tau or sigma, lam, kernel,
    as `select` records it): numpy arrays."""
    width = point["tau"] if point["kernel"] == "squared_l2" else point["sigma"]
    predicted, loss = [np.zeros(0, dtype=np.int64)], [np.zeros(0)]
    for *_, tokens, log_p in knnlm_scores(query_logits, query_labels, dist, idx, train_next, [point["k"]], [width],
                                          [point["lam"]], point["kernel"], chunk_bytes, device):  # fmt: skip
        predicted.append(tokens[0].cpu().numpy())
        loss.append(-log_p[0].cpu().numpy())
    return np.concatenate(predicted), np.concatenate(loss)


def sweep_table(
    arrays: dict,
    neighbors: dict,
    ks: Sequence[int],
    sigmas: Sequence[float],
    temperatures: Sequence[float],
    lambdas: Sequence[float],
    chunk_bytes: int = DEFAULT_SWEEP_CHUNK_BYTES,
    knnlm_kernel: str = "squared_l2",
    taus: Sequence[float] = (1.0,),
    resmem_ks: Sequence[int] | None = None,
    device: str = "cpu",
    methods: Sequence[str] = LM_METHODS,
) -> pd.DataFrame:
    """Next-token accuracy (and perplexity where it exists) of base, ResMem (k from `resmem_ks` or `ks`, σ, T;
    kernel l2) and kNN-LM (k, τ, λ with the published squared_l2 kernel, or k, σ, λ with `knnlm_kernel` l2) on
    val and test, for the `methods` asked for (base always); the `kernel` column says which. `arrays` is a
    datastore (`resmem.lm.stages.load_datastore`); `neighbors` holds <split>_dist/<split>_idx into its training
    rows from one search at the largest k; the logits are computed on `device` (`KeyLogits`)."""
    width_name, widths = ("tau", taus) if knnlm_kernel == "squared_l2" else ("sigma", sigmas)
    resmem_ks = ks if resmem_ks is None else resmem_ks
    head = arrays["head_weight"], arrays["head_bias"]
    logits = {split: KeyLogits(final_hidden(arrays, split), *head, device) for split in QUERY_SPLITS}
    labels = {split: np.asarray(arrays[f"{split}_next"]) for split in QUERY_SPLITS}
    dist, idx, groups = stack_splits(neighbors, max(resmem_ks))
    bar = dict(desc="sweep " + " + ".join(QUERY_SPLITS), unit="query", file=sys.stderr, dynamic_ncols=True)
    passes = len(groups) * (len(temperatures) * ("resmem" in methods) + ("knnlm" in methods))
    resmem, knnlm = None, {}
    with tqdm(total=passes, **bar) as progress:
        if "resmem" in methods:  # both splits at once: the rows their neighbors share are computed once
            resmem = sweep_correct(
                KeyLogits(final_hidden(arrays, "train"), *head, device), arrays["train_next"],
                KeyLogits(np.concatenate([logits[split].keys for split in QUERY_SPLITS]), *head, device),
                np.concatenate(list(labels.values())), dist, idx, resmem_ks, sigmas, temperatures, chunk_bytes,
                progress, device, groups,
            )["resmem"]  # fmt: skip
        for split in QUERY_SPLITS if "knnlm" in methods else ():  # one split at a time: no training row computed
            knnlm[split] = knnlm_sweep(
                logits[split], labels[split], neighbors[f"{split}_dist"], neighbors[f"{split}_idx"],
                arrays["train_next"], ks, widths, lambdas, knnlm_kernel, chunk_bytes, progress, device,
            )  # fmt: skip
    rows = []
    for g, split in enumerate(QUERY_SPLITS):
        n = len(labels[split])
        base_tokens, base_losses = base_predict(logits[split], labels[split], chunk_bytes, device)
        base_correct, base_loss = int((base_tokens == labels[split]).sum()), float(base_losses.mean())
        rows.append(
            {
                "method": "base",
                "split": split,
                "k": 0,
                "accuracy": base_correct / n,
                "loss": base_loss,
                "perplexity": float(np.exp(base_loss)),
            }
        )
        for i, k in enumerate(resmem_ks if resmem is not None else ()):
            for s, sigma in enumerate(sigmas):
                common = {"split": split, "k": int(k), "kernel": "l2", "sigma": float(sigma)}
                for t, temperature in enumerate(temperatures):
                    accuracy = resmem[g, t, i, s] / n
                    rows.append({"method": "resmem", **common, "temperature": temperature, "accuracy": accuracy})
        knn_correct, knn_nll = knnlm.get(split, (None, None))
        for i, k in enumerate(ks if split in knnlm else ()):
            for w, width in enumerate(widths):
                for j, lam in enumerate(lambdas):
                    rows.append(
                        {
                            "method": "knnlm",
                            "split": split,
                            "k": int(k),
                            "kernel": knnlm_kernel,
                            width_name: float(width),
                            "lam": float(lam),
                            "accuracy": knn_correct[i, w, j] / n,
                            "loss": knn_nll[i, w, j] / n,  # mean −log p: finite even where exp overflows
                            "perplexity": float(np.exp(min(knn_nll[i, w, j] / n, 709.0))),  # no overflow
                        }
                    )
    return pd.DataFrame(rows, columns=list(LM_SWEEP_COLUMNS))


def select(table: pd.DataFrame) -> dict:
    """ResMem's (k, σ, T) and kNN-LM's (k, τ or σ, λ) by val accuracy, and kNN-LM's by val perplexity, with the
    test values there (the tie rule of `resmem.sweep.select`)."""
    from resmem.sweep import PARAMETERS
    from resmem.sweep import select as choose

    base = table[table.method == "base"]
    chosen = {}
    if (table.method == "resmem").any():
        chosen["resmem"] = choose(pd.concat([base, table[table.method == "resmem"]]), PARAMETERS["resmem"])
    if (table.method == "knnlm").any():
        knnlm = pd.concat([base, table[table.method == "knnlm"]])
        kernel = knnlm.kernel.dropna().iloc[0]
        knnlm_parameters = ("k", "tau" if kernel == "squared_l2" else "sigma", "lam")  # the kernel's width parameter
        chosen["knnlm"] = choose(knnlm, knnlm_parameters)
        chosen["knnlm_perplexity"] = choose(knnlm, knnlm_parameters, "perplexity", higher_is_better=False)
        for method in ("knnlm", "knnlm_perplexity"):
            chosen[method]["kernel"] = kernel
    return chosen
