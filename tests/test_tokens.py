"""Token-level ResMem and kNN-LM against independent brute-force implementations on a tiny vocabulary."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from resmem.core import tie_tolerance
from resmem.knn import build_index, search
from resmem.lm.tokens import KeyLogits, knnlm_sweep, select, sweep_table

VOCAB, DIM = 7, 5
KS, SIGMAS, TEMPERATURES, LAMBDAS = [1, 3, 8], [0.05, 0.5, 5.0], [0.5, 1.0, 2.0], [0.0, 0.25, 0.75, 1.0]


def datastore(seed=0, n_train=300, n_query=80):
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(VOCAB, DIM)).astype(np.float32)
    bias = rng.normal(size=VOCAB).astype(np.float32)
    keys = rng.normal(size=(n_train, DIM)).astype(np.float16)
    arrays = {"train_keys": keys, "train_next": rng.integers(0, VOCAB, n_train), "head_weight": weight}
    arrays["head_bias"] = bias
    for split in ("val", "test"):
        arrays[f"{split}_keys"] = rng.normal(size=(n_query, DIM)).astype(np.float32)
        arrays[f"{split}_next"] = rng.integers(0, VOCAB, n_query)
    return arrays


def neighbors(arrays, k):
    index = build_index(arrays["train_keys"], device="cpu")
    out = {}
    for split in ("val", "test"):
        out[f"{split}_dist"], out[f"{split}_idx"] = search(index, arrays[f"{split}_keys"], k, device="cpu")
    return out


def softmax_rows(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def brute_force(arrays, split, k, sigma, temperature=1.0, lam=None):
    """Per query, with scikit-learn's exact neighbors and the formulas written out: ResMem's argmax, or with
    `lam` kNN-LM's (argmax, p(y))."""
    keys = arrays["train_keys"].astype(np.float64)
    weight, bias = arrays["head_weight"].astype(np.float64), arrays["head_bias"].astype(np.float64)
    dist, idx = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(keys).kneighbors(arrays[f"{split}_keys"])
    preds, p_true = [], []
    for q, h in enumerate(arrays[f"{split}_keys"].astype(np.float64)):
        w = np.exp(-(dist[q] - dist[q].min()) / sigma)
        w /= w.sum()
        values = arrays["train_next"][idx[q]]
        if lam is None:
            residual = np.eye(VOCAB)[values] - softmax_rows((keys[idx[q]] @ weight.T + bias) / temperature)
            preds.append(np.argmax(softmax_rows((h @ weight.T + bias) / temperature) + w @ residual))
        else:
            p = lam * (w @ np.eye(VOCAB)[values]) + (1 - lam) * softmax_rows(h @ weight.T + bias)
            preds.append(np.argmax(p))
            p_true.append(p[arrays[f"{split}_next"][q]])
    return np.array(preds), np.array(p_true)


def test_key_logits_equal_the_output_layer_applied_to_keys():
    arrays = datastore()
    logits = KeyLogits(arrays["train_keys"], arrays["head_weight"], arrays["head_bias"])
    rows = np.array([[3, 1], [0, 299]])
    keys, weight, bias = arrays["train_keys"][rows].astype(np.float32), arrays["head_weight"], arrays["head_bias"]
    expected = keys @ weight.T + bias
    # Both sides are float32 evaluations of h·w + b (DIM products and their sum, in whatever order and with or
    # without FMA the CPU's kernels choose): each lies within γ = n·u/(1 − n·u), n = DIM + 1, u = 2⁻²⁴, of
    # Σ|h_i·w_i| + |b| around the exact value, so within 2γ of that of each other.
    n, u = DIM + 1, 2.0**-24
    bound = 2 * n * u / (1 - n * u) * (np.abs(keys).astype(np.float64) @ np.abs(weight.T) + np.abs(bias))
    assert (np.abs(logits[rows].astype(np.float64) - expected) <= bound).all()
    np.testing.assert_array_equal(logits[5:9], logits[np.arange(5, 9)])
    assert logits.shape == (300, VOCAB) and len(logits) == 300
    assert str(logits.device) == "cpu"  # the default
    auto = KeyLogits(arrays["val_keys"], arrays["head_weight"], arrays["head_bias"], "auto")
    assert auto.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_token_resmem_equals_brute_force():
    arrays = datastore()
    table = sweep_table(arrays, neighbors(arrays, max(KS)), KS, SIGMAS, TEMPERATURES, LAMBDAS)
    resmem = table[table.method == "resmem"]
    for split in ("val", "test"):
        labels = arrays[f"{split}_next"]
        for k in KS:
            for sigma in SIGMAS:
                for temperature in TEMPERATURES:
                    expected = (brute_force(arrays, split, k, sigma, temperature)[0] == labels).mean()
                    row = resmem[
                        (resmem.split == split)
                        & (resmem.k == k)
                        & np.isclose(resmem.sigma, sigma)
                        & np.isclose(resmem.temperature, temperature)
                    ]
                    assert row.accuracy.item() == pytest.approx(expected), (split, k, sigma, temperature)


def test_resmem_k_grid_is_its_own_and_final_hidden_states_give_the_logits():
    """knn.resmem_k: ResMem on the first neighbours only (same accuracies as with the full grid); a datastore whose
    search keys are another state recomputes logits and residuals from its final hidden states."""
    arrays = datastore(3)
    found = neighbors(arrays, max(KS))
    full = sweep_table(arrays, found, KS, SIGMAS, TEMPERATURES, LAMBDAS)
    short = sweep_table(arrays, found, KS, SIGMAS, TEMPERATURES, LAMBDAS, resmem_ks=[1, 3])
    assert sorted(short[short.method == "resmem"].k.unique()) == [1, 3]
    pd.testing.assert_frame_equal(
        short[short.method != "resmem"].reset_index(drop=True), full[full.method != "resmem"].reset_index(drop=True)
    )
    expected = full[(full.method == "resmem") & full.k.isin([1, 3])].reset_index(drop=True)
    pd.testing.assert_frame_equal(short[short.method == "resmem"].reset_index(drop=True), expected)
    # The same states stored as hidden beside unrelated search keys: the table is unchanged.
    rng = np.random.default_rng(9)
    split_keys = {f"{s}_keys": rng.normal(size=arrays[f"{s}_keys"].shape).astype(np.float32) for s in ("val", "test")}
    moved = {**arrays, **{f"{s}_hidden": arrays[f"{s}_keys"] for s in ("train", "val", "test")}, **split_keys}
    moved["train_keys"] = rng.normal(size=arrays["train_keys"].shape).astype(np.float16)
    pd.testing.assert_frame_equal(sweep_table(moved, found, KS, SIGMAS, TEMPERATURES, LAMBDAS), full)


def test_knnlm_with_the_l2_kernel_equals_the_linear_interpolation_formula():
    """With ResMem's kernel, kNN-LM's log-space mixture is λ·p_kNN + (1−λ)·p_LM; at λ = 1 a token no neighbor
    holds costs the floor, 10,000 nats, where the linear formula gives an infinite loss."""
    arrays = datastore(1)
    found = neighbors(arrays, max(KS))
    query_logits = KeyLogits(arrays["val_keys"], arrays["head_weight"], arrays["head_bias"])
    correct, nll = knnlm_sweep(
        query_logits, arrays["val_next"], found["val_dist"], found["val_idx"], arrays["train_next"],
        KS, SIGMAS, LAMBDAS, kernel="l2", chunk_bytes=20_000,
    )  # fmt: skip
    for i, k in enumerate(KS):
        for s, sigma in enumerate(SIGMAS):
            for j, lam in enumerate(LAMBDAS):
                preds, p_true = brute_force(arrays, "val", k, sigma, lam=lam)
                assert correct[i, s, j] == (preds == arrays["val_next"]).sum(), (k, sigma, lam)
                with np.errstate(divide="ignore"):
                    log_p = np.maximum(np.log(p_true), -10_000.0) if lam == 1.0 else np.log(p_true)
                # Logits and distances are float32 here, float64 in the reference.
                assert nll[i, s, j] == pytest.approx(-log_p.sum(), rel=1e-6), (k, sigma, lam)
    assert np.isfinite(nll).all() and nll[0, 0, -1] > 10_000  # k = 1, λ = 1: most tokens held by no neighbor


@pytest.mark.parametrize("kernel", ["squared_l2", "l2"])
def test_sparse_knnlm_equals_the_dense_mixture_over_the_vocabulary_with_ties(kernel):
    """The sweep scores only the tokens the neighbors hold; a dense log-space mixture over all V tokens (argmax:
    the lowest id among equal scores) gives the same predictions and losses, on data built to tie: integer
    logits (tied base predictions), duplicated keys (tied distances) and few distinct next tokens; and so does one
    that sums the votes in the reverse order and applies the tie rule (the lowest token within the tolerance)."""
    rng = np.random.default_rng(4)
    vocab, n_train, n_query, ks, widths, lambdas = 11, 200, 120, [1, 3, 16], [0.5, 4.0], [0.0, 0.3, 0.7, 1.0]
    train = np.repeat(np.round(rng.normal(size=(n_train // 4, 3)), 1), 4, axis=0)
    queries = np.round(rng.normal(size=(n_query, 3)), 1)
    logits = np.round(rng.normal(size=(n_query, vocab)) * 1.5)
    train_next, labels = rng.integers(0, 4, n_train), rng.integers(0, vocab, n_query)
    distance = np.sqrt(((queries[:, None] - train[None]) ** 2).sum(-1))
    idx = np.argsort(distance, axis=1, kind="stable")[:, : max(ks)]
    dist = np.take_along_axis(distance, idx, axis=1)
    correct, nll = knnlm_sweep(logits, labels, dist, idx, train_next, ks, widths, lambdas, kernel, chunk_bytes=5_000)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_lm = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    kernel_dist = dist**2 if kernel == "squared_l2" else dist
    for i, k in enumerate(ks):
        for w, width in enumerate(widths):
            u = np.exp(-(kernel_dist[:, :k] - kernel_dist[:, :1]) / width)
            p_knn = np.zeros((n_query, vocab))
            np.add.at(p_knn, (np.arange(n_query)[:, None], train_next[idx[:, :k]]), u / u.sum(axis=1, keepdims=True))
            # the same votes summed in the reverse order of the neighbors, decided by the tie rule
            backwards = np.zeros((n_query, vocab))
            for j in reversed(range(k)):
                backwards[np.arange(n_query), train_next[idx[:, j]]] += u[:, j] / u.sum(axis=1)
            with np.errstate(divide="ignore"):
                log_knn = np.maximum(np.log(p_knn), -10_000.0)
                log_back = np.maximum(np.log(backwards), -10_000.0)
                for j, lam in enumerate(lambdas):
                    log_p = np.logaddexp(np.log1p(-lam) + log_lm, np.log(lam) + log_knn)
                    assert correct[i, w, j] == (log_p.argmax(axis=1) == labels).sum(), (k, width, lam)
                    assert nll[i, w, j] == pytest.approx(-log_p[np.arange(n_query), labels].sum(), rel=1e-12)
                    log_p = np.logaddexp(np.log1p(-lam) + log_lm, np.log(lam) + log_back)
                    tied = log_p >= log_p.max(axis=1, keepdims=True) - tie_tolerance(k, vocab)
                    assert correct[i, w, j] == (tied.argmax(axis=1) == labels).sum(), (k, width, lam)


def published_knnlm_perplexity(arrays, split, k, tau, lam) -> float:
    """kNN-LM as Khandelwal et al. (2020) write it and knn-transformers computes it, re-implemented here in torch
    from the equations: exact neighbors by squared L2 distance, p_kNN ∝ Σ_j exp(−d_j²/τ)·[y_j = v],
    log p_kNN floored at −10,000, log p = logaddexp(log p_LM + log(1 − λ), log p_kNN + log λ)."""
    import torch

    keys = torch.tensor(arrays["train_keys"].astype(np.float64))
    queries = torch.tensor(arrays[f"{split}_keys"].astype(np.float64))
    weight, bias = (torch.tensor(arrays[name].astype(np.float64)) for name in ("head_weight", "head_bias"))
    squared = torch.cdist(queries, keys) ** 2
    d2, nearest = squared.topk(k, largest=False)
    probs = torch.softmax(-d2 / tau, dim=-1)
    values = torch.tensor(arrays["train_next"])[nearest]
    knn = torch.zeros(len(queries), VOCAB, dtype=torch.float64).scatter_add(1, values, probs).log()
    knn = torch.nan_to_num(knn, neginf=-10_000.0)
    lm = torch.log_softmax(queries @ weight.T + bias, dim=-1)
    mixed = torch.logaddexp(lm + np.log(1 - lam), knn + np.log(lam))
    labels = torch.tensor(arrays[f"{split}_next"])
    return float(torch.exp(-mixed[torch.arange(len(labels)), labels].mean()))


def test_knnlm_perplexity_is_the_published_formulation():
    arrays = datastore(5)
    taus, lambdas = [0.5, 2.0, 8.0], [0.25, 0.5, 0.9]
    table = sweep_table(arrays, neighbors(arrays, 8), [2, 8], [1.0], [1.0], lambdas, knnlm_kernel="squared_l2",
                        taus=taus)  # fmt: skip
    knnlm = table[table.method == "knnlm"]
    assert (knnlm.kernel == "squared_l2").all() and knnlm.sigma.isna().all()
    for split in ("val", "test"):
        for k in (2, 8):
            for tau in taus:
                for lam in lambdas:
                    row = knnlm[(knnlm.split == split) & (knnlm.k == k) & (knnlm.tau == tau) & (knnlm.lam == lam)]
                    expected = published_knnlm_perplexity(arrays, split, k, tau, lam)
                    assert row.perplexity.item() == pytest.approx(expected, rel=1e-6), (split, k, tau, lam)
    chosen = select(table)
    assert chosen["knnlm"]["kernel"] == "squared_l2" and chosen["knnlm"]["tau"] in taus


def test_lambda_zero_is_the_base_model_and_perplexities_are_consistent():
    arrays = datastore(2)
    table = sweep_table(arrays, neighbors(arrays, 8), [8], [0.5], [1.0], [0.0, 0.5])
    for split in ("val", "test"):
        base = table[(table.method == "base") & (table.split == split)].iloc[0]
        logits = arrays[f"{split}_keys"] @ arrays["head_weight"].T + arrays["head_bias"]
        p = softmax_rows(logits.astype(np.float64))
        labels = arrays[f"{split}_next"]
        assert base.accuracy == pytest.approx((logits.argmax(1) == labels).mean())
        assert base.perplexity == pytest.approx(np.exp(-np.log(p[np.arange(len(p)), labels]).mean()))
        knn0 = table[(table.method == "knnlm") & (table.split == split) & (table.lam == 0.0)].iloc[0]
        assert knn0.accuracy == base.accuracy and knn0.perplexity == pytest.approx(base.perplexity)
    assert table[table.method == "resmem"].perplexity.isna().all()  # ResMem's sum is not a distribution


def test_memorization_at_k1_on_training_positions():
    """A training position queried against the datastore with k = 1 is its own nearest neighbor and gets
    its own next token back, for ResMem at any σ and T, and for kNN-LM at λ = 1."""
    arrays = datastore(3, n_train=200)
    arrays["val_keys"] = arrays["train_keys"].astype(np.float32)
    arrays["val_next"] = arrays["train_next"]
    arrays["test_keys"], arrays["test_next"] = arrays["val_keys"][:50], arrays["val_next"][:50]
    table = sweep_table(arrays, neighbors(arrays, 1), [1], [1e-3, 1.0, 100.0], [0.5, 1.0, 2.0], [1.0])
    assert (table[table.method.isin(["resmem", "knnlm"])].accuracy == 1.0).all()
    assert (table[table.method == "base"].accuracy < 0.5).all()


def test_selection_picks_each_methods_best_val_point():
    arrays = datastore(4)
    table = sweep_table(arrays, neighbors(arrays, max(KS)), KS, SIGMAS, TEMPERATURES, LAMBDAS)
    chosen = select(table)
    val = table[table.split == "val"]
    assert chosen["resmem"]["val_accuracy"] == val[val.method == "resmem"].accuracy.max()
    assert chosen["knnlm"]["val_accuracy"] == val[val.method == "knnlm"].accuracy.max()
    assert chosen["knnlm_perplexity"]["val_perplexity"] == val[val.method == "knnlm"].perplexity.min()
    assert set(chosen["knnlm"]) >= {"k", "kernel", "tau", "lam", "test_accuracy", "gain"}  # the published kernel
