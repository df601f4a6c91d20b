"""The stylized regression study: its estimators against scikit-learn, the documented shape of its risk curves,
and its two workflow rules."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.linear_model import LinearRegression
from sklearn.neighbors import KNeighborsRegressor

from resmem.config import ConfigError, validate
from resmem.plan import planned_jobs
from resmem.regression.study import METHODS, RISK_COLUMNS, best_linear_risk, risk_table, simulate
from tests.conftest import snakemake, two_seed_statistics


def study(**overrides):
    return validate({"regression": {"r": overrides}})["regression"]["r"]


def test_risk_table_equals_scikit_learn_by_hand():
    """Every row of the risk table, recomputed with scikit-learn alone: least squares, KNeighborsRegressor on the
    targets (kNN) and on the least-squares residuals (ResMem) at every k, k chosen by val MSE (ties: smaller k)."""
    cfg = study(n_train=[60, 400], n_test=300, seeds=[0, 1], k=[1, 3, 8, 32])
    table = risk_table(cfg).set_index(["n", "seed", "method"])
    for seed in cfg["seeds"]:
        test_x, test_y = simulate(cfg["n_test"], cfg, np.random.default_rng([seed, 0]))
        for n in cfg["n_train"]:
            x, y = simulate(n, cfg, np.random.default_rng([seed, 1, n]))
            n_val = round(cfg["val_fraction"] * n)
            train_x, train_y, val_x, val_y = x[n_val:], y[n_val:], x[:n_val], y[:n_val]
            base = LinearRegression().fit(train_x, train_y)
            assert table.loc[(n, seed, "base"), "test_mse"] == pytest.approx(
                np.mean((base.predict(test_x) - test_y) ** 2), rel=1e-12)  # fmt: skip
            for method, values, offset in (("knn", train_y, 0.0), ("resmem", train_y - base.predict(train_x), 1.0)):
                fits = {k: KNeighborsRegressor(n_neighbors=k).fit(train_x, values) for k in cfg["k"]
                        if k <= len(train_x)}  # fmt: skip
                val_mse = {k: np.mean((f.predict(val_x) + offset * base.predict(val_x) - val_y) ** 2)
                           for k, f in fits.items()}  # fmt: skip
                best = min(val_mse, key=lambda k: (val_mse[k], k))
                test_mse = np.mean((fits[best].predict(test_x) + offset * base.predict(test_x) - test_y) ** 2)
                row = table.loc[(n, seed, method)]
                assert row.k == best and row.val_mse == pytest.approx(val_mse[best], rel=1e-9)
                assert row.test_mse == pytest.approx(test_mse, rel=1e-9)


@pytest.mark.parametrize("dim, frequency", [(2, 1.0), (4, 1.0), (3, 1.5)])
def test_best_linear_risk_equals_the_analytic_value(dim, frequency):
    """For d ≥ 2 the sines are orthogonal to linear functions, so the best linear predictor is βᵀx and its risk
    noise² + a²·Π_j E[sin²(ω π x_j)], with E[sin²(ω π x)] = 1/2 − sin(2 ω π)/(4 ω π) on Uniform[−1, 1]."""
    cfg = study(dim=dim, frequency=frequency)
    mean_square = 0.5 - np.sin(2 * np.pi * frequency) / (4 * np.pi * frequency)
    analytic = cfg["noise"] ** 2 + cfg["nonlinear_scale"] ** 2 * mean_square**dim
    assert best_linear_risk(cfg) == pytest.approx(analytic, rel=0.01)


def test_risk_curves_have_the_documented_shape():
    """The base model plateaus at the best linear risk, far above the noise floor; ResMem keeps falling,
    beats the base model clearly and pure kNN at the largest n."""
    cfg = study(n_train=[200, 1000, 8000], n_test=4000, seeds=[0])
    table = risk_table(cfg).set_index(["n", "method"]).test_mse
    plateau, floor = best_linear_risk(cfg), cfg["noise"] ** 2
    assert table[(8000, "base")] == pytest.approx(plateau, rel=0.15) and plateau > 2 * floor
    resmem = [table[(n, "resmem")] for n in (200, 1000, 8000)]
    assert resmem[0] > resmem[1] > resmem[2] > floor
    assert resmem[2] < 0.6 * table[(8000, "base")]
    assert resmem[2] < table[(8000, "knn")]


def test_risk_table_is_deterministic_and_complete():
    cfg = study(n_train=[50, 300], n_test=500, seeds=[0, 1], k=[1, 4, 64])
    first, second = risk_table(cfg), risk_table(cfg)
    pd.testing.assert_frame_equal(first, second)
    assert list(first.columns) == list(RISK_COLUMNS) and len(first) == 2 * 2 * 3
    assert set(first[first.method == "base"].k) == {0}
    assert first[first.n == 50].k.max() <= 40  # k never exceeds the training part of n (50 − 10 validation)


BAD = {
    "empty sizes": ({"n_train": []}, "regression.r.n_train", "should be non-empty"),
    "k zero": ({"k": [0, 4]}, "regression.r.k[0]", "minimum of 1"),
    "val fraction 1.5": ({"val_fraction": 1.5}, "regression.r.val_fraction", "maximum of 1"),
    "negative noise": ({"noise": -0.1}, "regression.r.noise", "minimum of 0"),
    "unknown key": ({"size": 3}, "regression.r", "'size' was unexpected"),
    "n too small": ({"n_train": [5, 100]}, "regression.r.n_train[0]", "minimum of 10"),
    "empty k grid": ({"k": []}, "regression.r.k", "should be non-empty"),
    "zero frequency": ({"frequency": 0}, "regression.r.frequency", "minimum of 0"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_regression_config_names_the_key(case):
    overrides, key, problem = BAD[case]
    with pytest.raises(ConfigError) as info:
        study(**overrides)
    assert f"invalid config at {key}" in str(info.value) and problem in str(info.value)


def test_workflow_runs_a_regression_study(smoke_run, tmp_path):
    """The session's smoke run holds a regression study (config/smoke.yaml's smoke_regression, seeds 0 and 1): its
    risk table is the one risk_table computes here, its summary's mean ± std over the seeds the one computed by hand
    from that table; and a config of a regression study alone (no image experiment) plans just the study's jobs."""
    cfg = yaml.safe_load(smoke_run["config"].read_text())["regression"]["smoke_regression"]
    assert cfg["seeds"] == [0, 1] and cfg["n_train"] == [50, 200, 800]
    results = smoke_run["workdir"] / "results" / "smoke_regression"
    risk = pd.read_csv(results / "risk.csv")
    assert list(risk.columns) == list(RISK_COLUMNS) and len(risk) == 3 * 2 * 3  # n × seeds × methods
    pd.testing.assert_frame_equal(risk, risk_table(study(**cfg)), check_exact=False, rtol=1e-12)
    assert (results / "figures" / "risk_vs_n.png").stat().st_size > 10_000
    assert (results / "figures" / "risk_vs_n.pdf").exists()
    summary = (results / "summary.md").read_text()
    assert "| 200 |" in summary and "ResMem" in summary and "Noise floor 0.01" in summary
    assert "mean ± std over seeds 0, 1" in summary
    for n in cfg["n_train"]:
        [row] = [line for line in summary.splitlines() if line.startswith(f"| {n:,} |")]
        cells = re.findall(r"(\d+\.\d{4}) ± (\d+\.\d{4})", row)
        assert len(cells) == len(METHODS)
        for method, (mean, std) in zip(METHODS, cells, strict=True):
            by_hand = two_seed_statistics(*risk[(risk.n == n) & (risk.method == method)].sort_values("seed").test_mse)
            assert float(mean) == pytest.approx(by_hand["mean"], abs=5e-5 + 1e-12), (n, method)
            assert float(std) == pytest.approx(by_hand["std"], abs=5e-5 + 1e-12), (n, method)
    provenance = json.loads((results / "provenance.json").read_text())
    assert provenance["config"]["regression"]["smoke_regression"]["n_train"] == [50, 200, 800] and provenance[
        "noise_floor"
    ] == pytest.approx(0.01)
    # A study alone: the workflow plans its risk table and its report, nothing else.
    config = tmp_path / "regression.yaml"
    tiny = {"dim": 2, "n_train": [50, 200], "n_test": 500, "seeds": [0, 1], "k": [1, 4, 16]}
    config.write_text(yaml.safe_dump({"experiments": {}, "regression": {"tiny": tiny}}))
    proc = snakemake(tmp_path, "-n", configfile=config)
    assert planned_jobs(proc.stdout) == {"regression_risk": 1, "regression_report": 1, "all": 1}
