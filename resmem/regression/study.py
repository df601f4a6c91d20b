"""The paper's stylized regression study (Sec. 4) as an experiment: ResMem's test risk vs the base model's.

Target y = βᵀx + a·g(x) + ε on x ~ Uniform[−1, 1]^d, with g(x) = Π_j sin(ω π x_j), a product of sines that
(for d ≥ 2) is orthogonal to every linear function on the symmetric cube, and ε ~ N(0, noise²). The base model
is ordinary least squares with an intercept (limited capacity: it cannot express g), pure kNN regression averages
the k nearest training targets, and ResMem adds to the base prediction the average of the k nearest training
residuals y_i − base(x_i). As the training set grows, the base model's risk plateaus at noise² + a²·E[g²] while
ResMem's keeps falling toward noise², faster than pure kNN, whose neighborhoods must also average out the
linear part.

k is chosen per run by validation MSE (a fixed share of each n, ties to the smaller k); every method is scored
on one large test set per seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from resmem.knn import exact_search

METHODS = ("base", "knn", "resmem")
RISK_COLUMNS = ("n", "seed", "method", "k", "val_mse", "test_mse")


def target(x: np.ndarray, cfg: dict) -> np.ndarray:
    """The noiseless target βᵀx + a·Π_j sin(ω π x_j), with β = b·(1, …, 1)/√d (|β| = b)."""
    linear = cfg["linear_scale"] * x.sum(axis=1) / np.sqrt(x.shape[1])
    return linear + cfg["nonlinear_scale"] * np.prod(np.sin(cfg["frequency"] * np.pi * x), axis=1)


def simulate(n: int, cfg: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.uniform(-1.0, 1.0, size=(n, cfg["dim"]))
    return x, target(x, cfg) + cfg["noise"] * rng.standard_normal(n)


def fit_linear(x: np.ndarray, y: np.ndarray):
    """Ordinary least squares with an intercept; returns the fitted predictor."""
    design = np.column_stack([np.ones(len(x)), x])
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    return lambda z: coef[0] + z @ coef[1:]


def knn_means(values: np.ndarray, idx: np.ndarray, ks) -> np.ndarray:
    """Mean of `values` over each query's k nearest training points (`idx`: sorted neighbors from one search
    at the largest k), for every k at once by prefix sums: (len(ks), queries)."""
    prefix = np.cumsum(values[idx], axis=1)
    return np.stack([prefix[:, k - 1] / k for k in ks])


def best_linear_risk(cfg: dict, samples: int = 400_000, seed: int = 12345) -> float:
    """The risk of the best linear predictor, noise included, by Monte Carlo: the base model's plateau."""
    x, y = simulate(samples, cfg, np.random.default_rng(seed))
    return float(np.mean((fit_linear(x, y)(x) - y) ** 2))


def risk_table(cfg: dict) -> pd.DataFrame:
    """Validation and test MSE of base, kNN (best k) and ResMem (best k) for every n and seed."""
    ks = sorted(cfg["k"])
    rows = []
    for seed in cfg["seeds"]:
        test_x, test_y = simulate(cfg["n_test"], cfg, np.random.default_rng([seed, 0]))
        for n in cfg["n_train"]:
            x, y = simulate(n, cfg, np.random.default_rng([seed, 1, n]))
            n_val = max(1, round(cfg["val_fraction"] * n))
            (train_x, train_y), (val_x, val_y) = (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val])
            usable = [k for k in ks if k <= len(train_x)]
            base = fit_linear(train_x, train_y)
            residuals = train_y - base(train_x)
            rows.append(_row(n, seed, "base", 0, base(val_x), val_y, base(test_x), test_y))
            # One search per query set serves both methods and every k.
            val_idx = exact_search(train_x, val_x, usable[-1])[1]
            test_idx = exact_search(train_x, test_x, usable[-1])[1]
            for method, values, offset in (("knn", train_y, 0.0), ("resmem", residuals, 1.0)):
                val_pred = knn_means(values, val_idx, usable) + offset * base(val_x)
                test_pred = knn_means(values, test_idx, usable) + offset * base(test_x)
                val_mse = ((val_pred - val_y) ** 2).mean(axis=1)
                best = int(np.argmin(val_mse))  # the first minimum: ties go to the smaller k
                rows.append(_row(n, seed, method, usable[best], val_pred[best], val_y, test_pred[best], test_y))
    return pd.DataFrame(rows, columns=list(RISK_COLUMNS))


def _row(n, seed, method, k, val_pred, val_y, test_pred, test_y) -> dict:
    return {
        "n": n,
        "seed": seed,
        "method": method,
        "k": k,
        "val_mse": float(np.mean((val_pred - val_y) ** 2)),
        "test_mse": float(np.mean((test_pred - test_y) ** 2)),
    }
