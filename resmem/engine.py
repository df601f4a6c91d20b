"""The sweep engine: ResMem's correct counts at every (T, k, σ) of a grid from one neighbor search, for images
and token datastores alike, in torch on the device the config's switch selects (a CUDA GPU, else CPU threads).

For one temperature T and one chunk of queries it computes, for all σ at once, the kernel-weighted prefix sums
of the neighbors' residuals, growing segment by segment between consecutive grid values of k (the neighbors
are sorted): each segment is one float32 weighted bag of residual rows per (query, σ) (`embedding_bag`, which reads
the rows where they lie instead of gathering a (Q, L, C) copy for a batched matmul). The residuals come from

- one float32 table r = onehot(y) − softmax(z/T) of the whole training set, built once per temperature, when
  N × C × 4 bytes fit the chunk budget (CIFAR-size datastores), or else
- the chunk's unique neighbor rows, recomputed from their logits (a memmapped ImageNet-size logit matrix, or a
  token datastore's `KeyLogits`, which computes them from hidden states with one matmul on the device).

Exact: the kernel weights, their normalizers and the base probabilities are computed in float64 and rounded once;
the residuals are computed in float32 with a softmax whose error does not grow with the number of classes
(`residuals_on_device`); so the float32 scores lie within a bound derived from float32 rounding (`margin_bound`)
of the exact ones. A query whose top-two margin falls below that bound at any grid point is
re-decided by the float64 reference (`resmem.core.sweep_correct_float64`), so every count equals the reference's
bit for bit, near-ties and exact ties included.
"""

from __future__ import annotations

import contextlib

import numpy as np

from resmem.core import DEFAULT_SWEEP_CHUNK_BYTES, check_neighbors, sweep_correct_float64

UNIT_ROUNDOFF_32 = 2.0**-24
UNIT_ROUNDOFF_64 = 2.0**-53
CPU_CHUNK_BYTES = 32 * 2**20  # on the CPU a chunk's working set stays near the cache (measured faster than 256 MiB)
SOFTMAX_BLOCK = 64  # a softmax normalizer sums float32 blocks of this many terms in float64: error ∝ block, not C


def margin_bound(k: int, n_classes: int) -> float:
    """A top-two margin of float32 scores above which their argmax is the float64 reference's.

    A float32 residual is off by at most (SOFTMAX_BLOCK + 7)u (`residuals_on_device`); the kernel weights, the
    normalizers and the base probabilities are rounded once from float64 (relative error ≤ u). Each score is
    p_c + Σ_j u_j r_jc / Σ_j u_j with |r_jc| ≤ 1, so the float32 sum of k products is off by at most
    (k + SOFTMAX_BLOCK + 8)u·Σ_j u_j (any summation order: Higham's γ_k), and the quotient, the base probability
    and the final addition add 5u: (k + SOFTMAX_BLOCK + 13)u per score, whatever the number of classes. The
    float64 reference errs by at most (k + C + 16)·u64 (its softmax sums C terms). A margin above twice the sum
    of both, with slack for the float32 subtraction that measured it, separates the top class in both."""
    per_score = (k + SOFTMAX_BLOCK + 16) * UNIT_ROUNDOFF_32 + 2 * (k + n_classes + 16) * UNIT_ROUNDOFF_64
    return 2.0 * per_score * 1.01


def kernel_weights(dist, widths):
    """exp(−(d_j − d_0)/width) for every width: a (Q, S, k) float64 tensor from sorted distances (Q, k) and widths
    (S,), as `resmem.core.neighbor_weights` before normalizing: the nearest neighbor weighs 1, so no width can
    underflow a prefix's normalizer to zero. Normalized over a prefix of k, they are the kernel's weights there."""
    return (-(dist - dist[:, :1])[:, None, :] / widths[None, :, None]).exp_()


@contextlib.contextmanager
def ieee_float32():
    """Full float32 matmuls for the block (no TF32 on CUDA): the margin bound assumes float32 rounding."""
    import torch

    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def logits_on_device(source, rows, device, out=None):
    """float32 logits of training rows (an index array, or a slice) as a tensor on `device`, written into `out`
    when given: from an array (memmaps included), or from an object that computes them there
    (`resmem.lm.tokens.KeyLogits.on_device`)."""
    import torch

    if hasattr(source, "on_device"):
        return source.on_device(rows, out)
    logits = torch.from_numpy(np.array(source[rows], dtype=np.float32))  # a copy: a memmap is read-only
    return logits.to(device) if out is None else out.copy_(logits)


def residuals_on_device(logits, labels, temperature: float):
    """onehot(y) − softmax(z/T) in float32, computed in place of `logits` (a float32 tensor), each entry within
    (SOFTMAX_BLOCK + 7)u of the exact value whatever the number of classes C (u = 2⁻²⁴):

    - the exponents t = (z − max z)/T carry two roundings, 2u|t| absolutely, so e = exp(t) is off relatively by
      2u|t| plus 4u for exp itself (2 ulp: CUDA's expf; SLEEF's on the CPU is within 1), and since p = e/S ≤ e^t,
      p·2u|t| ≤ 0.74u;
    - the normalizer S sums float32 blocks of SOFTMAX_BLOCK terms (error ≤ (SOFTMAX_BLOCK − 1)u each, any order)
      and adds the blocks in float64, so it is off by (SOFTMAX_BLOCK − 1)u + u when rounded, where a float32 sum
      of all C terms could be off by Cu (thousands of u for a 50k vocabulary);
    - the division and 1 − p add 2u."""
    import torch

    r = logits.sub_(logits.amax(dim=1, keepdim=True))
    if temperature != 1.0:
        r.div_(temperature)
    r.exp_()
    whole = r.shape[1] - r.shape[1] % SOFTMAX_BLOCK
    blocks = r[:, :whole].reshape(len(r), -1, SOFTMAX_BLOCK).sum(dim=2)
    normalizer = blocks.double().sum(dim=1) + r[:, whole:].double().sum(dim=1)
    r.div_(normalizer.float()[:, None]).neg_()
    r[torch.arange(len(r), device=r.device), labels] += 1.0
    return r


class ResidualRows:
    """The float32 residuals at one temperature (`set_temperature`) of the training rows a chunk's neighbors name,
    on the device: rows of one table when it fits `table_bytes` (filled again in place for each temperature:
    fresh memory costs page faults), else each chunk's unique rows."""

    def __init__(self, train_logits, train_labels, device, table_bytes: int):
        import torch

        self.logits, self.device, self.table_bytes = train_logits, device, table_bytes
        self.labels = torch.from_numpy(np.array(train_labels, dtype=np.int64)).to(device)
        n, n_classes = len(self.labels), train_logits.shape[1]
        fits = n * n_classes * 4 <= table_bytes
        self.table = torch.empty((n, n_classes), dtype=torch.float32, device=device) if fits else None

    def set_temperature(self, temperature: float) -> None:
        self.temperature = temperature
        if self.table is None:
            return
        n, n_classes = self.table.shape
        block = max(1, self.table_bytes // (n_classes * 16))  # a block's temporaries stay within the budget
        for start in range(0, n, block):
            rows = slice(start, min(start + block, n))
            logits = logits_on_device(self.logits, rows, self.device, out=self.table[rows])
            residuals_on_device(logits, self.labels[rows], temperature)

    def of(self, idx: np.ndarray):
        """(table, rows): a (M, C) residual tensor and the (Q, k) tensor of `idx`'s rows in it."""
        import torch

        if self.table is not None:
            return self.table, torch.from_numpy(np.array(idx, dtype=np.int64)).to(self.device)
        unique, inverse = np.unique(idx, return_inverse=True)
        labels = self.labels[torch.from_numpy(unique).to(self.device)]
        table = residuals_on_device(logits_on_device(self.logits, unique, self.device), labels, self.temperature)
        return table, torch.from_numpy(inverse.reshape(idx.shape)).to(self.device)


def queries_per_chunk(chunk_bytes: int, k_max: int, n_sigmas: int, n_classes: int, table: bool) -> int:
    """Queries whose working set fits `chunk_bytes`: three (S, C) float32 blocks and the (S, k_max) bags of
    rows and weights, plus, without a table, the chunk's unique rows' logits and residuals."""
    per_query = 12 * n_classes * n_sigmas + 16 * n_sigmas * k_max + (0 if table else 8 * n_classes * k_max)
    return max(1, int(chunk_bytes // per_query))


def sweep_correct(
    train_logits,
    train_labels,
    query_logits,
    query_labels,
    dist,
    idx,
    ks,
    sigmas,
    temperatures,
    chunk_bytes: int = DEFAULT_SWEEP_CHUNK_BYTES,
    progress=None,
    device: str = "cpu",
) -> np.ndarray:
    """Number of correct ResMem predictions for every (T, k, σ): an int64 array shaped (len(temperatures),
    len(ks), len(sigmas)) in the order given, equal to `resmem.core.sweep_correct_float64`'s.

    `train_logits` is an N×C array (a memmap too) or an object computing the logits of the rows it is indexed
    with (`KeyLogits`); `dist`/`idx` are one search at the largest k, sorted ascending. Working memory stays
    within about twice `chunk_bytes` (the residual table, when it fits, and one chunk's blocks)."""
    import torch
    import torch.nn.functional as F

    from resmem.device import torch_device

    dist, idx, query_labels = np.asarray(dist), np.asarray(idx), np.asarray(query_labels)
    check_neighbors(dist, idx, len(train_labels))
    ks = np.asarray(ks, dtype=np.int64)
    order = np.argsort(ks, kind="stable")
    k_sorted = ks[order]
    if len(ks) == 0 or k_sorted[0] < 1 or k_sorted[-1] > dist.shape[1]:
        raise ValueError(f"every k must lie in [1, {dist.shape[1]}] (neighbors searched); got {ks.tolist()}")
    k_max = int(k_sorted[-1])
    bounds = np.concatenate([[0], k_sorted])
    n_classes = query_logits.shape[1]
    if n_classes < 2:
        raise ValueError(f"the logits have {n_classes} class; ResMem needs at least 2")
    device = torch_device(device)
    sigmas_t = torch.as_tensor(np.asarray(sigmas, dtype=np.float64), device=device)
    labels_t = torch.from_numpy(np.array(query_labels, dtype=np.int64)).to(device)
    k_columns = torch.as_tensor(k_sorted - 1, device=device)
    thresholds = torch.tensor([margin_bound(int(k), n_classes) for k in k_sorted], device=device)
    correct = np.zeros((len(temperatures), len(ks), len(sigmas)), dtype=np.int64)
    with ieee_float32(), torch.inference_mode():
        residual_rows = ResidualRows(train_logits, train_labels, device, chunk_bytes)
        for t, temperature in enumerate(temperatures):
            residual_rows.set_temperature(temperature)
            working = chunk_bytes if device.type == "cuda" else min(chunk_bytes, CPU_CHUNK_BYTES)
            chunk = queries_per_chunk(working, k_max, len(sigmas), n_classes, residual_rows.table is not None)
            for start in range(0, len(query_labels), chunk):
                stop = min(start + chunk, len(query_labels))
                d = torch.from_numpy(np.array(dist[start:stop, :k_max], dtype=np.float64)).to(device)
                u = kernel_weights(d, sigmas_t)  # (Q, S, k_max)
                norms = torch.cumsum(u, dim=2)[:, :, k_columns].float()  # (Q, S, len(ks))
                u = u.float()
                query = logits_on_device(query_logits, slice(start, stop), device).double()
                base = torch.softmax(query / temperature, dim=1).float()  # float64, rounded once
                table, rows = residual_rows.of(idx[start:stop, :k_max])
                total = torch.zeros((stop - start, len(sigmas), n_classes), dtype=torch.float32, device=device)
                scores = torch.empty_like(total)  # one buffer for every k: a fresh block each time costs page faults
                hits = torch.zeros((stop - start, len(ks), len(sigmas)), dtype=torch.bool, device=device)
                near_tie = torch.zeros(stop - start, dtype=torch.bool, device=device)
                for j, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
                    if hi > lo:  # Σ_j u_j r_j over the segment for every (query, σ): one weighted bag of rows each
                        bags = rows[:, None, lo:hi].expand(-1, len(sigmas), -1).reshape(-1, hi - lo)
                        weights = u[:, :, lo:hi].reshape(-1, hi - lo)
                        segment = F.embedding_bag(bags, table, per_sample_weights=weights, mode="sum")
                        total += segment.view(stop - start, len(sigmas), n_classes)
                    torch.addcdiv(base[:, None, :], total, norms[:, :, j, None], out=scores)
                    best, predicted = scores.max(dim=2)
                    scores.scatter_(2, predicted[:, :, None], -torch.inf)
                    margin = best - scores.amax(dim=2)  # to the runner-up: 0 for an exact tie
                    hits[:, order[j]] = predicted == labels_t[start:stop, None]
                    near_tie |= (margin <= thresholds[j]).any(dim=1)
                correct[t] += (hits & ~near_tie[:, None, None]).sum(dim=0).cpu().numpy()
                redo = start + np.flatnonzero(near_tie.cpu().numpy())
                if len(redo):  # near-ties: the float64 reference decides them
                    correct[t] += sweep_correct_float64(
                        train_logits, train_labels, query_logits[redo], query_labels[redo], dist[redo], idx[redo],
                        ks, sigmas, [temperature], chunk_bytes,
                    )[0]  # fmt: skip
                if progress is not None:
                    progress.update(stop - start)
    return correct
