"""The sweep engine: ResMem's correct counts at every (T, k, σ) of a grid from one neighbor search, for images
and token datastores alike, in torch on the device the config's switch selects (a CUDA GPU, else CPU threads).

For one temperature T and one chunk of queries it computes, for all σ at once, the kernel-weighted prefix sums
of the neighbors' residuals r = onehot(y) − softmax(z/T), growing segment by segment between consecutive grid
values of k (the neighbors are sorted): each segment is one float32 weighted bag of rows of a residual table per
(query, σ) (`embedding_bag`, which reads the rows where they lie instead of gathering a (Q, L, C) copy). The table
holds, per temperature,

- every training row, when N × C × 4 bytes fit the chunk budget (CIFAR-size datastores), or else
- the unique neighbor rows of a block of queries, as many queries as the budget's rows allow, recomputed from
  their logits (a memmapped ImageNet-size logit matrix, or a token datastore's `KeyLogits`, which computes them
  from hidden states with one matmul on the device). A row that many queries share is computed once per block:
  in a language-model datastore popular contexts are the neighbors of many queries (the default's token
  datastores: 640,000 neighbor slots of 10,000 queries name 40,000 to 140,000 distinct rows), and the queries
  are blocked in an order that puts those sharing rows side by side (`locality_order`); val and test are
  swept together (`groups`), so the rows their neighbors share are computed once too.

The soft kNN classifier (`knn`) and its interpolation with the base model (`knn_interp`) ride along on the same
neighbors and weights: a segment adds its kernel weights to its neighbors' classes (a scatter, no table), and each
(k, σ) point is scored for every T and λ at once.

Exact: the kernel weights, their normalizers and the base probabilities are computed in float64 and rounded once;
the residuals are computed in float32 with a softmax whose error does not grow with the number of classes
(`exponentials`); so the float32 scores lie within a bound derived from float32 rounding (`margin_bound`) of the
exact ones. A prediction is decided by the gap between the label's score and the best other class's: above the
bound the label wins under the tie rule (`resmem.core.predict`), below minus the bound it loses, and a query whose
gap lies within the bound at any grid point is re-decided by the float64 reference
(`resmem.core.sweep_correct_float64`), which applies the tie rule; so every count equals the reference's bit for
bit, near-ties and exact ties included. For a token datastore that holds given the logits: `KeyLogits` computes
them as float32 products, whose last bits depend on the BLAS kernel (a handful of rows or thousands, MKL or
cuBLAS), and the reference recomputes those of the queries it re-decides.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from resmem.artifacts import QUERY_SPLITS
from resmem.blocks import locality_order, neighbor_rows, query_blocks
from resmem.core import (
    DEFAULT_SWEEP_CHUNK_BYTES,
    check_neighbors,
    count_shapes,
    float64_error,
    sweep_correct_float64,
    tie_tolerance,
)

UNIT_ROUNDOFF_32 = 2.0**-24
CPU_CHUNK_BYTES = 32 * 2**20  # on the CPU a chunk's working set stays near the cache (measured faster than 256 MiB)
SOFTMAX_BLOCK = 64  # a softmax normalizer sums float32 blocks of this many terms in float64: error ∝ block, not C


def margin_bound(k: int, n_classes: int) -> float:
    """A gap between float32 scores above which the float64 reference's tie rule decides as float32's argmax.

    A float32 residual is off by at most (SOFTMAX_BLOCK + 7)u (`exponentials`); the kernel weights, the
    normalizers and the base probabilities are rounded once from float64 (relative error ≤ u). Each score is
    p_c + Σ_j u_j r_jc / Σ_j u_j with |r_jc| ≤ 1, so the float32 sum of k products is off by at most
    (k + SOFTMAX_BLOCK + 8)u·Σ_j u_j (any summation order: Higham's γ_k), and the quotient, the base probability
    and the final addition add 5u: (k + SOFTMAX_BLOCK + 13)u per score, whatever the number of classes (the
    baselines' scores, with exact one-hot votes and one interpolation, err less). The float64 reference errs by
    `resmem.core.float64_error`. Two scores whose float32 gap exceeds twice the sum of both, with slack for the
    float32 subtraction that measured it, plus the tie tolerance, differ in float64 by more than the tolerance:
    the reference's tie rule then keeps only the better one."""
    per_score = (k + SOFTMAX_BLOCK + 16) * UNIT_ROUNDOFF_32 + float64_error(k, n_classes)
    return 2.0 * per_score * 1.01 + tie_tolerance(k, n_classes)


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
    picked = source[rows] if isinstance(rows, slice) else np.take(source, rows, axis=0)  # take: faster on memmaps
    logits = torch.from_numpy(np.array(picked, dtype=np.float32))  # a copy: a memmap is read-only
    return logits.to(device) if out is None else out.copy_(logits)


def exponentials(logits, temperature: float):
    """e = exp((z − max z)/T) in place of `logits` (a float32 tensor, one row per example) and the softmax's
    normalizer S = Σ_c e_c (float32, one per row): softmax = e / S, and 1 − e/S, −e/S (the residuals) are within
    (SOFTMAX_BLOCK + 7)u of the exact values whatever the number of classes C (u = 2⁻²⁴):

    - the exponents t = (z − max z)/T carry two roundings, 2u|t| absolutely, so e = exp(t) is off relatively by
      2u|t| plus 4u for exp itself (2 ulp: CUDA's expf; SLEEF's on the CPU is within 1), and since p = e/S ≤ e^t,
      p·2u|t| ≤ 0.74u;
    - the normalizer S sums float32 blocks of SOFTMAX_BLOCK terms (error ≤ (SOFTMAX_BLOCK − 1)u each, any order)
      and adds the blocks in float64, so it is off by (SOFTMAX_BLOCK − 1)u + u when rounded, where a float32 sum
      of all C terms could be off by Cu (thousands of u for a 50k vocabulary);
    - the division and 1 − p add 2u."""
    e = logits.sub_(logits.amax(dim=1, keepdim=True))
    if temperature != 1.0:
        e.div_(temperature)
    e.exp_()
    whole = e.shape[1] - e.shape[1] % SOFTMAX_BLOCK
    blocks = e[:, :whole].reshape(len(e), -1, SOFTMAX_BLOCK).sum(dim=2)
    return e, (blocks.double().sum(dim=1) + e[:, whole:].double().sum(dim=1)).float()


def fits_table(n_rows: int, n_classes: int, chunk_bytes: int) -> bool:
    """Whether the residual table holds every training row (else each block's unique neighbor rows)."""
    return n_rows * n_classes * 4 <= chunk_bytes


class Grid:
    """A (k, σ) grid on the device: k sorted ascending (`order` maps back to the order given) with the segment
    bounds between them, the σ's, and each k's margin bound."""

    def __init__(self, ks, sigmas, n_classes: int, device):
        import torch

        ks = np.asarray(ks, dtype=np.int64)
        self.order = np.argsort(ks, kind="stable")
        k_sorted = ks[self.order]
        self.k_max, self.n_ks, self.n_sigmas = int(k_sorted[-1]), len(ks), len(sigmas)
        self.bounds = np.concatenate([[0], k_sorted])
        self.sigmas = torch.as_tensor(np.asarray(sigmas, dtype=np.float64), device=device)
        self.k_columns = torch.as_tensor(k_sorted - 1, device=device)
        self.thresholds = [margin_bound(int(k), n_classes) for k in k_sorted]

    def weights(self, dist):
        """The float32 kernel weights (Q, S, k_max) of sorted distances and their prefix sums at each k
        (Q, S, len(ks)), both rounded once from float64, on the grid's device."""
        import torch

        d = torch.from_numpy(np.array(dist[:, : self.k_max], dtype=np.float64)).to(self.sigmas.device)
        u = kernel_weights(d, self.sigmas)
        return u.float(), torch.cumsum(u, dim=2)[:, :, self.k_columns].float()


def fill_residuals(table, train_logits, labels, rows, temperature: float, pass_rows: int) -> None:
    """table[i] = onehot(y) − softmax(z/T) of training row rows[i] (an index array, or None for every row), in
    float32 on the table's device, `pass_rows` rows at a time."""
    import torch

    n = len(table) if rows is None else len(rows)
    for start in range(0, n, pass_rows):
        here = slice(start, min(start + pass_rows, n))
        source_rows = here if rows is None else rows[here]
        logits = logits_on_device(train_logits, source_rows, table.device, out=table[here])
        e, normalizer = exponentials(logits, temperature)
        residuals = torch.div(e, normalizer.neg_()[:, None], out=e)  # −e/S in one pass, bit for bit
        residuals[torch.arange(len(e), device=e.device), labels[source_rows]] += 1.0


def base_probabilities(query_logits, rows: np.ndarray, temperature: float, device):
    """softmax(z/T) of some queries: a float64 tensor on the device."""
    import torch

    return torch.softmax(logits_on_device(query_logits, rows, device).double() / temperature, dim=1)


def label_gap(scores, labels):
    """The label's score minus the best other class's along the last axis (`labels` broadcast to scores.shape[:-1]
    + (1,)); the other classes' scores are overwritten (−inf at the label)."""
    import torch

    own = scores.gather(-1, labels).squeeze(-1)
    return own - scores.scatter_(-1, labels, -torch.inf).amax(dim=-1)


def decide(table, rows, neighbor_labels, u, norms, base, labels, grid: Grid, lambdas, methods):
    """For each method, correct predictions (Q, len(ks), S), or (Q, len(ks), S, len(lambdas)) for knn_interp, and
    near-ties (Q,) of a chunk over the k's of the grid. Each segment adds Σ_j u_j r_j, one weighted bag of table
    rows (`rows`, (Q, k_max)) per (query, σ), to ResMem's prefix sums, and u_j to the vote of each neighbor's class
    (`neighbor_labels`, (Q, k_max)); at each k the scores are base + sums / norms (ResMem), votes / norms (knn)
    and (1 − λ)·base + λ·votes / norms (knn_interp). A prediction is correct where the label's gap to the best
    other class exceeds the grid's bound, and a gap within the bound makes a near-tie."""
    import torch
    import torch.nn.functional as F

    n_query, n_sigmas, n_classes = len(labels), grid.n_sigmas, base.shape[1]
    on = dict(dtype=torch.float32, device=base.device)
    shape = (n_query, n_sigmas, n_classes)
    hits = {
        method: torch.zeros((n_query, grid.n_ks, n_sigmas, *((len(lambdas),) if method == "knn_interp" else ())),
                            dtype=torch.bool, device=base.device)
        for method in methods
    }  # fmt: skip
    near = {method: torch.zeros(n_query, dtype=torch.bool, device=base.device) for method in methods}
    voting = "knn" in methods or "knn_interp" in methods
    total = torch.zeros(shape, **on) if "resmem" in methods else None
    votes = torch.zeros(shape, **on) if voting else None
    scores = torch.empty(shape, **on)  # buffers for every k: a fresh block each time costs page faults
    at_label = labels[:, None, None].expand(n_query, n_sigmas, 1)
    if "knn_interp" in methods:
        lam = torch.tensor(lambdas, **on)
        base_part = base[:, None, :] * (1.0 - lam)[:, None]  # (Q, Λ, C), rounded once per chunk
        mixed = torch.empty((n_query, n_sigmas, len(lambdas), n_classes), **on)
        at_label_mixed = labels[:, None, None, None].expand(n_query, n_sigmas, len(lambdas), 1)

    def record(method, column, gap, bound):
        hits[method][:, column] = gap > bound
        near[method] |= (gap.abs() <= bound).flatten(1).any(dim=1)

    for j, (lo, hi) in enumerate(zip(grid.bounds[:-1], grid.bounds[1:], strict=True)):
        column, bound = grid.order[j], grid.thresholds[j]
        if hi > lo:
            weights = u[:, :, lo:hi].reshape(-1, hi - lo)
            if total is not None:
                bags = rows[:, None, lo:hi].expand(-1, n_sigmas, -1).reshape(-1, hi - lo)
                total += F.embedding_bag(bags, table, per_sample_weights=weights, mode="sum").view_as(total)
            if votes is not None:
                classes = neighbor_labels[:, None, lo:hi].expand(-1, n_sigmas, -1).reshape(-1, hi - lo)
                votes.view(-1, n_classes).scatter_add_(1, classes, weights)
        if total is not None:
            torch.addcdiv(base[:, None, :], total, norms[:, :, j, None], out=scores)
            record("resmem", column, label_gap(scores, at_label), bound)
        if votes is not None:
            p_knn = torch.div(votes, norms[:, :, j, None], out=scores)
            if "knn_interp" in methods:
                torch.addcmul(base_part[:, None], p_knn[:, :, None, :], lam[:, None], out=mixed)
                record("knn_interp", column, label_gap(mixed, at_label_mixed), bound)
            if "knn" in methods:
                record("knn", column, label_gap(p_knn, at_label), bound)
    return hits, near


def stack_splits(neighbors: dict, k_max: int, splits=QUERY_SPLITS):
    """The first k_max columns of <split>_dist and <split>_idx of one search, one split after another, and each
    query's split number: what `sweep_correct` takes to sweep the splits at once."""
    dist = np.concatenate([neighbors[f"{split}_dist"][:, :k_max] for split in splits])
    idx = np.concatenate([neighbors[f"{split}_idx"][:, :k_max] for split in splits])
    groups = np.repeat(np.arange(len(splits)), [len(neighbors[f"{split}_idx"]) for split in splits])
    return dist, idx, groups


def sweep_correct(
    train_logits: ArrayLike,
    train_labels: ArrayLike,
    query_logits: np.ndarray,
    query_labels: ArrayLike,
    dist: ArrayLike,
    idx: ArrayLike,
    ks: Sequence[int],
    sigmas: Sequence[float],
    temperatures: Sequence[float],
    chunk_bytes: int = DEFAULT_SWEEP_CHUNK_BYTES,
    progress: Any = None,
    device: str = "cpu",
    groups: ArrayLike | None = None,
    lambdas: Sequence[float] = (),
    methods: Sequence[str] = ("resmem",),
) -> dict[str, np.ndarray]:
    """Number of correct predictions of each method (`resmem.core.METHODS`) at every grid point: {method: int64
    counts} shaped as `resmem.core.count_shapes` says, in the orders given, equal to
    `resmem.core.sweep_correct_float64`'s.

    `train_logits` is an N×C array (a memmap too) or an object computing the logits of the rows it is indexed
    with (`KeyLogits`); `dist`/`idx` are one search at the largest k, sorted ascending. Working memory stays
    within about twice `chunk_bytes` (the residual table and one chunk's blocks).

    `groups` (one integer in [0, G) per query) counts each group apart, in a leading axis of length G. Sweeping
    several query sets at once (val and test) computes the residual rows they share once: in the default's
    token stores val's and test's neighbors name 44 % fewer distinct rows together than apart."""
    import torch

    from resmem.device import torch_device

    dist, idx, query_labels = np.asarray(dist), np.asarray(idx), np.asarray(query_labels)
    check_neighbors(dist, idx, len(train_labels))
    shapes = count_shapes(methods, len(temperatures), len(ks), len(sigmas), len(lambdas))
    group_of = np.zeros(len(query_labels), dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    if group_of.shape != query_labels.shape or (len(group_of) and group_of.min() < 0):
        raise ValueError(f"groups must hold one integer ≥ 0 per query ({len(query_labels)}); got {np.shape(groups)}")
    if len(ks) == 0 or min(ks) < 1 or max(ks) > dist.shape[1]:
        raise ValueError(f"every k must lie in [1, {dist.shape[1]}] (neighbors searched); got {list(ks)}")
    n_rows, n_classes = len(train_labels), query_logits.shape[1]
    if n_classes < 2:
        raise ValueError(f"the logits have {n_classes} class; ResMem needs at least 2")
    device = torch_device(device)
    grid = Grid(ks, sigmas, n_classes, device)
    working = chunk_bytes if device.type == "cuda" else min(chunk_bytes, CPU_CHUNK_BYTES)
    # per query: the (S, C) float32 blocks of each method, knn_interp's (S, Λ, C) and (Λ, C), and the (S, k_max)
    # bags of rows, classes and weights
    blocks_per_sigma = 1 + 2 * ("resmem" in methods) + 2 * ("knn" in methods or "knn_interp" in methods)
    mixing = len(lambdas) * ("knn_interp" in methods)
    per_query = 4 * n_classes * (grid.n_sigmas * (blocks_per_sigma + mixing) + mixing) + 24 * grid.n_sigmas * grid.k_max
    chunk = max(1, working // per_query)
    pass_rows = max(1, working // (32 * n_classes))  # one pass's logits: 4 MiB on the CPU (cache; faster than 16)
    whole = fits_table(n_rows, n_classes, chunk_bytes)
    # the queries in blocks that share rows; all of them in their own order with the whole table
    if whole or "resmem" not in methods:
        order, table_rows = np.arange(len(query_labels)), n_rows if "resmem" in methods else 0
    else:  # a block's rows: as many as the budget holds (one query's at least), or all the neighbors name
        distinct, numbers = neighbor_rows(idx, grid.k_max)
        order = locality_order(numbers)
        table_rows = min(max(chunk_bytes // (4 * n_classes), grid.k_max), len(distinct))
    table = torch.empty((table_rows, n_classes), dtype=torch.float32, device=device)  # reused
    train_labels_np = np.asarray(train_labels, dtype=np.int64)
    with warnings.catch_warnings():  # a memory-mapped (read-only) datastore's labels: only ever read here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        train_labels_t = torch.from_numpy(train_labels_np).to(device)
    query_labels_t = torch.from_numpy(np.array(query_labels, dtype=np.int64)).to(device)
    n_groups = int(group_of.max()) + 1 if len(group_of) else 1
    group_t = torch.from_numpy(group_of).to(device)
    counted = {m: torch.zeros((n_groups, *shape), dtype=torch.int64, device=device) for m, shape in shapes.items()}
    redecided = {m: np.zeros((n_groups, *shape), dtype=np.int64) for m, shape in shapes.items()}
    with ieee_float32(), torch.inference_mode():
        for t, temperature in enumerate(temperatures):
            here = [m for m in methods if m != "knn" or t == 0]  # the soft kNN has no temperature: counted once
            near_ties = {m: [np.empty(0, dtype=np.int64)] for m in here}
            if not whole and "resmem" in here:
                blocks = query_blocks(numbers, order, table_rows, max(1, chunk_bytes // 24))
            else:
                if "resmem" in here:
                    fill_residuals(table, train_logits, train_labels_t, None, temperature, pass_rows)
                blocks = [(0, len(order), None, None)]
            for first, last, block_rows, local in blocks:
                if block_rows is not None:
                    fill_residuals(
                        table, train_logits, train_labels_t, distinct[block_rows.numpy()], temperature, pass_rows
                    )
                for start in range(first, last, chunk):
                    queries = order[start : min(start + chunk, last)]
                    neighbors = np.array(idx[queries, : grid.k_max], dtype=np.int64)
                    if local is None:  # table rows are training rows
                        rows = torch.from_numpy(neighbors)
                    else:
                        rows = local[start - first : start - first + len(queries)]
                    u, norms = grid.weights(dist[queries])
                    base = base_probabilities(query_logits, queries, temperature, device).float()
                    neighbor_labels = torch.from_numpy(train_labels_np[neighbors]).to(device)
                    hits, near = decide(table, rows.to(device), neighbor_labels, u, norms, base,
                                        query_labels_t[queries], grid, lambdas, here)  # fmt: skip
                    for method in here:
                        decided = hits[method] & ~near[method].view(-1, *[1] * (hits[method].dim() - 1))
                        column = counted[method][:, t] if method != "knn" else counted[method]
                        column.index_add_(0, group_t[queries], decided.to(torch.int64))
                        near_ties[method].append(queries[near[method].cpu().numpy()])
                    if progress is not None:
                        progress.update(len(queries))
            for method in here:  # the near-ties of a group: the float64 reference decides them
                tied = np.sort(np.concatenate(near_ties[method]))
                for g in np.unique(group_of[tied]):
                    redo = tied[group_of[tied] == g]
                    again = sweep_correct_float64(
                        train_logits, train_labels, query_logits[redo], query_labels[redo], dist[redo], idx[redo],
                        ks, sigmas, [temperature], chunk_bytes, lambdas=lambdas, methods=[method],
                    )[method]  # fmt: skip
                    if method == "knn":
                        redecided[method][g] = again
                    else:
                        redecided[method][g, t] = again[0]
    correct = {m: counted[m].cpu().numpy() + redecided[m] for m in methods}
    return correct if groups is not None else {m: c[0] for m, c in correct.items()}
