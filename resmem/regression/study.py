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
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import LinearRegression

from resmem.wrappers import ResMemRegressor

METHODS = ("base", "knn", "resmem")
RISK_COLUMNS = ("n", "seed", "method", "k", "val_mse", "test_mse")
# The memorizing methods as `ResMemRegressor`s (uniform weights): ResMem on least squares, and pure kNN
# regression as ResMem on a base model that predicts 0 (its residuals are the targets).
BASES = {"knn": DummyRegressor(strategy="constant", constant=0.0), "resmem": LinearRegression()}


def target(x: np.ndarray, cfg: dict) -> np.ndarray:
    """The noiseless target βᵀx + a·Π_j sin(ω π x_j), with β = b·(1, …, 1)/√d (|β| = b)."""
    linear = cfg["linear_scale"] * x.sum(axis=1) / np.sqrt(x.shape[1])
    return linear + cfg["nonlinear_scale"] * np.prod(np.sin(cfg["frequency"] * np.pi * x), axis=1)


def simulate(n: int, cfg: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.uniform(-1.0, 1.0, size=(n, cfg["dim"]))
    return x, target(x, cfg) + cfg["noise"] * rng.standard_normal(n)


def best_linear_risk(cfg: dict, samples: int = 400_000, seed: int = 12345) -> float:
    """The risk of the best linear predictor, noise included, by Monte Carlo: the base model's plateau."""
    x, y = simulate(samples, cfg, np.random.default_rng(seed))
    return float(np.mean((LinearRegression().fit(x, y).predict(x) - y) ** 2))


def risk_table(cfg: dict) -> pd.DataFrame:
    """Validation and test MSE of base, kNN (best k) and ResMem (best k) for every n and seed; k chosen by
    `ResMemRegressor.select` (one search at the largest k; ties to the smaller k)."""
    ks = sorted(cfg["k"])
    rows = []
    for seed in cfg["seeds"]:
        test_x, test_y = simulate(cfg["n_test"], cfg, np.random.default_rng([seed, 0]))
        for n in cfg["n_train"]:
            x, y = simulate(n, cfg, np.random.default_rng([seed, 1, n]))
            n_val = max(1, round(cfg["val_fraction"] * n))
            (train_x, train_y), (val_x, val_y) = (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val])
            usable = [k for k in ks if k <= len(train_x)]
            base = LinearRegression().fit(train_x, train_y)
            rows.append(_row(n, seed, "base", 0, base.predict(val_x), val_y, base.predict(test_x), test_y))
            for method, estimator in BASES.items():
                model = ResMemRegressor(estimator, device="cpu").fit(train_x, train_y)
                model.select(val_x, val_y, k=usable)
                rows.append(_row(n, seed, method, model.k, model.predict(val_x), val_y, model.predict(test_x),
                                 test_y))  # fmt: skip
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
