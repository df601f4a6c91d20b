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

Exact: the kernel weights, their normalizers and the base probabilities are computed in float64 and rounded once;
the residuals are computed in float32 with a softmax whose error does not grow with the number of classes
(`exponentials`); so the float32 scores lie within a bound derived from float32 rounding (`margin_bound`) of the
exact ones. A query whose top-two margin falls below that bound at any grid point is re-decided by the float64
reference (`resmem.core.sweep_correct_float64`), so every count equals the reference's bit for bit, near-ties and
exact ties included. For a token datastore that holds given the logits: `KeyLogits` computes them as float32
products, whose last bits depend on the BLAS kernel (a handful of rows or thousands, MKL or cuBLAS), and the
reference recomputes those of the queries it re-decides.
"""

from __future__ import annotations

import contextlib

import numpy as np

from resmem.artifacts import QUERY_SPLITS
from resmem.core import DEFAULT_SWEEP_CHUNK_BYTES, check_neighbors, sweep_correct_float64

UNIT_ROUNDOFF_32 = 2.0**-24
UNIT_ROUNDOFF_64 = 2.0**-53
CPU_CHUNK_BYTES = 32 * 2**20  # on the CPU a chunk's working set stays near the cache (measured faster than 256 MiB)
SOFTMAX_BLOCK = 64  # a softmax normalizer sums float32 blocks of this many terms in float64: error ∝ block, not C


def margin_bound(k: int, n_classes: int) -> float:
    """A top-two margin of float32 scores above which their argmax is the float64 reference's.

    A float32 residual is off by at most (SOFTMAX_BLOCK + 7)u (`exponentials`); the kernel weights, the
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


def neighbor_rows(idx, k_max: int):
    """The distinct training rows that the first k_max neighbors of the queries name, sorted (a numpy array), and
    each neighbor slot's number among them (a (Q, k_max) int64 tensor): distinct[numbers] = idx[:, :k_max]."""
    import torch

    slots = torch.from_numpy(np.array(idx[:, :k_max], dtype=np.int64))
    distinct, numbers = torch.unique(slots.view(-1), return_inverse=True)  # 7× faster than numpy's sort
    return distinct.numpy(), numbers.view(slots.shape)


def locality_order(numbers) -> np.ndarray:
    """The queries in an order that puts those sharing neighbor rows side by side, so that a row is computed in
    as few blocks as possible: by the lowest row two hops away (the lowest neighbor row of any query that shares
    a row with this one), then by their own lowest row. `numbers` are the queries' neighbor rows numbered in order
    (`neighbor_rows`). Both keys are MinHashes of the query–row graph; the two-hop one gathers a cluster of
    queries that share rows pairwise but rarely share their lowest one. Measured rows computed against the own
    lowest row alone: 40–50 % fewer on the default's token stores (16 MiB budget), none twice on the synthetic
    clusters of bench_datastore (30 % fewer), at 1–3 % of the sweep's time."""
    import torch

    own = numbers.amin(dim=1)
    reached = torch.full((int(numbers.max()) + 1,), len(own), dtype=torch.int64)  # each row's lowest query label
    reached.scatter_reduce_(0, numbers.view(-1), own.repeat_interleave(numbers.shape[1]), "amin")
    two_hops = reached[numbers].amin(dim=1)
    return np.lexsort((own.numpy(), two_hops.numpy()))  # the last key sorts first


def query_blocks(numbers, order: np.ndarray, max_rows: int, max_slots: int):
    """(first, last, block rows, local) for consecutive blocks order[first:last] of queries, each the longest run
    whose neighbors name at most `max_rows` distinct rows (one query at least) within `max_slots` neighbor
    slots. `numbers` are the queries' neighbor rows numbered in order (`neighbor_rows`); a block's rows are their
    numbers, sorted (a tensor), and local is a (last − first, k_max) tensor: rows[local] = numbers[order[first:last]].

    Sized in one pass, without sorting: the query that first names each row is found by a scatter, so the number
    of rows the first n queries name is a cumulative sum over n."""
    import torch

    n_numbers, k_max = int(numbers.max()) + 1, numbers.shape[1]
    first_query = torch.empty(n_numbers, dtype=torch.int64)
    position = torch.empty(n_numbers, dtype=torch.int64)
    start, window = 0, max(1, max_slots // k_max)
    while start < len(order):
        slots = numbers[torch.from_numpy(order[start : start + window])]
        queries = len(slots)
        first_query.fill_(queries).scatter_reduce_(
            0, slots.view(-1), torch.arange(queries).repeat_interleave(k_max), "amin"
        )
        named = torch.bincount(first_query[first_query < queries], minlength=queries).cumsum(0)
        size = max(1, int(torch.searchsorted(named, max_rows, right=True)))
        rows = torch.nonzero(first_query < size).view(-1)
        position[rows] = torch.arange(len(rows))
        yield start, start + size, rows, position[slots[:size]]
        start += size


def base_probabilities(query_logits, rows: np.ndarray, temperature: float, device):
    """softmax(z/T) of some queries: a float64 tensor on the device."""
    import torch

    return torch.softmax(logits_on_device(query_logits, rows, device).double() / temperature, dim=1)


def decide(table, rows, u, norms, base, labels, grid: Grid):
    """Correct predictions (Q, len(ks), S) and near-ties (Q,) of a chunk over the k's of the grid: each
    segment's Σ_j u_j r_j, one weighted bag of table rows (`rows`, (Q, k_max)) per (query, σ), is added to the
    prefix sums, and the argmax of the scores base + sums / norms taken at each k. A top-two margin at or below
    the grid's bound makes a near-tie (0 for an exact tie)."""
    import torch
    import torch.nn.functional as F

    n_query, n_sigmas = len(labels), grid.n_sigmas
    total = torch.zeros((n_query, n_sigmas, table.shape[1]), dtype=torch.float32, device=table.device)
    scores = torch.empty_like(total)  # one buffer for every k: a fresh block each time costs page faults
    hits = torch.zeros((n_query, grid.n_ks, n_sigmas), dtype=torch.bool, device=table.device)
    near_tie = torch.zeros(n_query, dtype=torch.bool, device=table.device)
    for j, (lo, hi) in enumerate(zip(grid.bounds[:-1], grid.bounds[1:], strict=True)):
        if hi > lo:
            bags = rows[:, None, lo:hi].expand(-1, n_sigmas, -1).reshape(-1, hi - lo)
            weights = u[:, :, lo:hi].reshape(-1, hi - lo)
            total += F.embedding_bag(bags, table, per_sample_weights=weights, mode="sum").view_as(total)
        torch.addcdiv(base[:, None, :], total, norms[:, :, j, None], out=scores)
        best, predicted = scores.max(dim=2)
        scores.scatter_(2, predicted[:, :, None], -torch.inf)
        margin = best - scores.amax(dim=2)  # to the runner-up: 0 for an exact tie
        hits[:, grid.order[j]] = predicted == labels[:, None]
        near_tie |= (margin <= grid.thresholds[j]).any(dim=1)
    return hits, near_tie


def stack_splits(neighbors: dict, k_max: int, splits=QUERY_SPLITS):
    """The first k_max columns of <split>_dist and <split>_idx of one search, one split after another, and each
    query's split number: what `sweep_correct` takes to sweep the splits at once."""
    dist = np.concatenate([neighbors[f"{split}_dist"][:, :k_max] for split in splits])
    idx = np.concatenate([neighbors[f"{split}_idx"][:, :k_max] for split in splits])
    groups = np.repeat(np.arange(len(splits)), [len(neighbors[f"{split}_idx"]) for split in splits])
    return dist, idx, groups


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
    groups=None,
) -> np.ndarray:
    """Number of correct ResMem predictions for every (T, k, σ): an int64 array shaped (len(temperatures),
    len(ks), len(sigmas)) in the order given, equal to `resmem.core.sweep_correct_float64`'s.

    `train_logits` is an N×C array (a memmap too) or an object computing the logits of the rows it is indexed
    with (`KeyLogits`); `dist`/`idx` are one search at the largest k, sorted ascending. Working memory stays
    within about twice `chunk_bytes` (the residual table and one chunk's blocks).

    `groups` (one integer in [0, G) per query) counts each group apart: (G, len(temperatures), len(ks),
    len(sigmas)). Sweeping several query sets at once (val and test) computes the residual rows they share once:
    in the default's token stores val's and test's neighbors name 44 % fewer distinct rows together than apart."""
    import torch

    from resmem.device import torch_device

    dist, idx, query_labels = np.asarray(dist), np.asarray(idx), np.asarray(query_labels)
    check_neighbors(dist, idx, len(train_labels))
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
    # per query: three (S, C) float32 blocks and the (S, k_max) bags of rows and weights
    chunk = max(1, working // (12 * n_classes * grid.n_sigmas + 16 * grid.n_sigmas * grid.k_max))
    pass_rows = max(1, working // (32 * n_classes))  # one pass's logits: 4 MiB on the CPU (cache; faster than 16)
    whole = fits_table(n_rows, n_classes, chunk_bytes)
    # the queries in blocks that share rows; all of them in their own order with the whole table
    if whole:
        order, table_rows = np.arange(len(query_labels)), n_rows
    else:  # a block's rows: as many as the budget holds (one query's at least), or all the neighbors name
        distinct, numbers = neighbor_rows(idx, grid.k_max)
        order = locality_order(numbers)
        table_rows = min(max(chunk_bytes // (4 * n_classes), grid.k_max), len(distinct))
    table = torch.empty((table_rows, n_classes), dtype=torch.float32, device=device)  # reused
    train_labels_t = torch.from_numpy(np.array(train_labels, dtype=np.int64)).to(device)
    query_labels_t = torch.from_numpy(np.array(query_labels, dtype=np.int64)).to(device)
    n_groups = int(group_of.max()) + 1 if len(group_of) else 1
    group_t = torch.from_numpy(group_of).to(device)
    counted = torch.zeros((n_groups, len(temperatures), len(ks), len(sigmas)), dtype=torch.int64, device=device)
    redecided = np.zeros(counted.shape, dtype=np.int64)
    with ieee_float32(), torch.inference_mode():
        for t, temperature in enumerate(temperatures):
            near_ties = [np.empty(0, dtype=np.int64)]
            if whole:
                fill_residuals(table, train_logits, train_labels_t, None, temperature, pass_rows)
                blocks = [(0, len(order), None, None)]
            else:  # the index arrays of a block: three int64 copies of its neighbor slots within the budget
                blocks = query_blocks(numbers, order, table_rows, max(1, chunk_bytes // 24))
            for first, last, block_rows, local in blocks:
                if block_rows is not None:
                    fill_residuals(
                        table, train_logits, train_labels_t, distinct[block_rows.numpy()], temperature, pass_rows
                    )
                for start in range(first, last, chunk):
                    queries = order[start : min(start + chunk, last)]
                    if local is None:  # table rows are training rows
                        rows = torch.from_numpy(np.array(idx[queries, : grid.k_max], dtype=np.int64))
                    else:
                        rows = local[start - first : start - first + len(queries)]
                    u, norms = grid.weights(dist[queries])
                    base = base_probabilities(query_logits, queries, temperature, device).float()
                    hits, near_tie = decide(table, rows.to(device), u, norms, base, query_labels_t[queries], grid)
                    decided = (hits & ~near_tie[:, None, None]).to(torch.int64)
                    counted[:, t].index_add_(0, group_t[queries], decided)
                    near_ties.append(queries[near_tie.cpu().numpy()])
                    if progress is not None:
                        progress.update(len(queries))
            near = np.sort(np.concatenate(near_ties))
            for g in np.unique(group_of[near]):  # the near-ties of a group: the float64 reference decides them
                redo = near[group_of[near] == g]
                redecided[g, t] = sweep_correct_float64(
                    train_logits, train_labels, query_logits[redo], query_labels[redo], dist[redo], idx[redo], ks,
                    sigmas, [temperature], chunk_bytes,
                )[0]  # fmt: skip
    correct = counted.cpu().numpy() + redecided
    return correct if groups is not None else correct[0]
