"""Embeddings computed elsewhere: a user's file runs through index → … → aggregate, and a bad file is named,
array by array, before any job runs."""

import numpy as np
import pandas as pd
import pytest
import yaml

from resmem.config import ConfigError
from resmem.core import tie_tolerance
from resmem.vision.external import check_file
from tests.conftest import snakemake

SMOKE_KNN = {"k": [1, 2, 4], "sigma": [0.3, 1.0], "temperature": [1.0]}


def user_file(path, n=(60, 20, 30), classes=4, dim=8, seed=0, **replace):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, rows in zip(("train", "val", "test"), n, strict=True):
        arrays[f"{split}_emb"] = rng.normal(size=(rows, dim)).astype(np.float32)
        arrays[f"{split}_logits"] = rng.normal(size=(rows, classes)).astype(np.float32)
        arrays[f"{split}_y"] = rng.integers(0, classes, rows)
    arrays.update(replace)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


BAD = {
    "missing array": ({"test_logits": None}, r"lacks the arrays \['test_logits'\]"),
    "half a val split": ({"val_y": None}, r"lacks the arrays \['val_y'\]"),
    "rows differ": ({"train_y": np.zeros(59, int)}, r"array train_emb/train_logits/train_y: row counts differ"),
    "label out of range": ({"test_y": np.full(30, 4)}, r"array test_y: labels span \[4, 4\] but the logits have 4"),
    "negative label": ({"val_y": np.full(20, -1)}, r"array val_y: labels span \[-1, -1\]"),
    "NaN": ({"train_emb": np.full((60, 8), np.nan, np.float32)}, r"array train_emb: holds NaN or inf"),
    "inf": ({"test_logits": np.full((30, 4), np.inf, np.float32)}, r"array test_logits: holds NaN or inf"),
    "logit width": ({"test_logits": np.zeros((30, 5), np.float32)}, r"array \*_logits: widths differ"),
    "float labels": ({"train_y": np.zeros(60)}, r"array train_y: has dtype float64; expected integers"),
    "1-D embeddings": ({"test_emb": np.zeros(30, np.float32)}, r"array test_emb: has shape \(30,\)"),
    "zero width": ({"train_emb": np.zeros((60, 0), np.float32)}, r"array train_emb: has shape \(60, 0\): no features"),
    "float64 beyond float32": (
        {"val_emb": np.full((20, 8), 1e300)},
        r"array val_emb: holds values up to 1e\+300, "
        r"above 3.26e\+18: in float32 \(the index and the sweep\) their squared distances",
    ),
    "float32 distances overflow": (
        {"test_emb": np.full((30, 8), 1e20, np.float32)},
        r"array test_emb: holds values "
        r"up to 1e\+20, above 3.26e\+18",
    ),  # fmt: skip
    "logits beyond float32": (
        {"train_logits": np.full((60, 4), -1e39)},
        r"array train_logits: holds values up to "
        r"1e\+39, above 3.4e\+38: in float32 \(the index and the sweep\) they overflow",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_embeddings_files_name_the_file_and_the_array(case, tmp_path):
    replace, message = BAD[case]
    path = user_file(tmp_path / "mine.npz", **replace)
    with pytest.raises(ConfigError, match=rf"invalid config at experiments.x.embeddings.m: .*mine.npz.*{message}"):
        check_file(path, "experiments.x.embeddings.m")


def test_a_compressed_file_is_read_too(tmp_path):
    path = user_file(tmp_path / "plain.npz")
    with np.load(path) as data:
        np.savez_compressed(tmp_path / "packed.npz", **data)
    assert check_file(tmp_path / "packed.npz", "x")["test_y"].shape == (30,)


def test_planning_reads_a_compressed_file_by_its_headers_and_refuses_a_bomb(tmp_path, monkeypatch):
    """A compressed file's sizes come from its headers (planning memory-maps nothing), and an array that would
    inflate beyond COMPRESSED_READ_BYTES is refused before it is inflated: 2 MB of zeros pack into a few KB."""
    from resmem import io
    from resmem.vision.sizes import run_sizes

    with np.load(user_file(tmp_path / "plain.npz")) as data:
        np.savez_compressed(tmp_path / "packed.npz", **data, big=np.zeros((1000, 256)))
    experiment = {"knn": {"k": [1, 4]}, "embeddings": {"m": {"path": str(tmp_path / "packed.npz")}},
                  "dataset": {"val_fraction": 0.2}}  # fmt: skip
    sizes = run_sizes(experiment, {"model": "m", "train_fraction": 1.0})
    assert (sizes.datastore_rows, sizes.dim, sizes.queries, sizes.classes) == (60, 8, 50, 4)
    assert io.npz_shapes(tmp_path / "packed.npz", ["big"])["big"] == ((1000, 256), np.dtype(np.float64))
    assert (tmp_path / "packed.npz").stat().st_size < 50_000
    monkeypatch.setattr(io, "COMPRESSED_READ_BYTES", 1_000_000)
    with pytest.raises(io.ArtifactError, match=r"array 'big' is compressed and would take 0.0 GiB of memory to read "
                       r"\(more than 0 GiB\); write the file with np.savez"):  # fmt: skip
        io.load_npz(tmp_path / "packed.npz", ["big"])


def run_config(workdir, embeddings: dict) -> dict:
    # device cpu, as the session's smoke run (conftest.smoke_run): their sweeps are compared exactly
    config = {"device": "cpu", "experiments": {"mine": {"embeddings": embeddings, "knn": SMOKE_KNN}}}
    (workdir / "mine.yaml").write_text(yaml.safe_dump(config))
    return config


def test_exported_embeddings_reproduce_the_run_that_made_them(smoke_run, tmp_path):
    """The smoke run's own embeddings, exported as a user's file, give the same sweep and summary; without
    val_*, a stratified val split is carved from train and left out of the datastore."""
    run = smoke_run["results"] / "cnn_w4" / "frac1" / "seed0"
    with np.load(run / "embeddings.npz") as saved:
        arrays = {k: saved[k] for k in saved.files if k != "train_idx"}
    np.savez(tmp_path / "cnn_w4.npz", **arrays)
    np.savez(tmp_path / "no_val.npz", **{k: v for k, v in arrays.items() if not k.startswith("val_")})
    embeddings = {"cnn_w4": {"path": str(tmp_path / "cnn_w4.npz"), "parameters": 450},
                  "no_val": {"path": str(tmp_path / "no_val.npz"), "parameters": 450}}  # fmt: skip
    run_config(tmp_path, embeddings)
    snakemake(tmp_path, configfile=tmp_path / "mine.yaml")
    results = tmp_path / "results" / "mine"
    mine = results / "cnn_w4" / "frac1" / "seed0"
    pd.testing.assert_frame_equal(pd.read_csv(mine / "sweep.csv"), pd.read_csv(run / "sweep.csv"))
    summary = pd.read_csv(results / "summary.csv").set_index("model")
    smoke = pd.read_csv(smoke_run["results"] / "summary.csv")
    original = smoke[(smoke.model == "cnn_w4") & (smoke.train_fraction == 1.0)].iloc[0]
    for column in ("base_test_acc", "resmem_test_acc", "k", "sigma", "temperature"):
        assert summary.loc["cnn_w4", column] == original[column]
    assert summary.loc["cnn_w4", "parameters"] == 450 and summary.loc["cnn_w4", "epochs"] == 0
    with np.load(results / "no_val" / "frac1" / "seed0" / "embeddings.npz") as carved:
        n_train = len(arrays["train_y"])
        assert len(carved["train_y"]) + len(carved["val_y"]) == n_train
        assert abs(len(carved["val_y"]) - 0.2 * n_train) <= 10  # dataset.val_fraction, stratified per class
        np.testing.assert_array_equal(carved["train_emb"], arrays["train_emb"][carved["train_idx"]])
        np.testing.assert_array_equal(carved["test_y"], arrays["test_y"])
    assert "- cnn_w4: embeddings from" in (results / "summary.md").read_text()
    assert (results / "figures" / "accuracy_vs_size.png").stat().st_size > 10_000
    assert_baselines_equal_plain_numpy(arrays, mine)


def assert_baselines_equal_plain_numpy(arrays: dict, run) -> None:
    """The workflow's kNN and kNN-interp test accuracies on a user's file, at every grid point, against plain
    numpy on the run's own neighbors: p_kNN = Σ_j softmax(−d/σ)_j [y_j = c], (1 − λ) softmax(z/T) + λ p_kNN, the
    lowest class within the tie tolerance of the best."""
    sweep = pd.read_csv(run / "sweep.csv")
    test = sweep[sweep.split == "test"]
    with np.load(run / "neighbors.npz") as found:
        dist, idx = found["test_dist"].astype(np.float64), found["test_idx"]
    labels, train_y, n_classes = arrays["test_y"], arrays["train_y"], arrays["test_logits"].shape[1]
    for row in test[test.method.isin(["knn", "knn_interp"])].itertuples():
        w = np.exp(-(dist[:, : row.k] - dist[:, :1]) / row.sigma)
        w /= w.sum(axis=1, keepdims=True)
        scores = np.stack([(w * (train_y[idx[:, : row.k]] == c)).sum(axis=1) for c in range(n_classes)], axis=1)
        if row.method == "knn_interp":
            z = arrays["test_logits"].astype(np.float64) / row.temperature
            base = np.exp(z - z.max(axis=1, keepdims=True))
            scores = (1 - row.lam) * base / base.sum(axis=1, keepdims=True) + row.lam * scores
        tied = scores >= scores.max(axis=1, keepdims=True) - tie_tolerance(row.k, n_classes)
        assert row.accuracy == (tied.argmax(axis=1) == labels).mean(), row
    assert (test.method == "knn_interp").sum() == 3 * 2 * 1 * 5  # k × σ × T × the default's five λ


def test_a_bad_embeddings_file_stops_the_workflow_before_any_job(tmp_path):
    bad = user_file(tmp_path / "bad.npz", train_logits=np.full((60, 4), np.nan, np.float32))
    run_config(tmp_path, {"m": {"path": str(bad), "parameters": 10}})
    proc = snakemake(tmp_path, configfile=tmp_path / "mine.yaml", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in output
    assert f"invalid config at experiments.mine.embeddings.m: {bad}, array train_logits: holds NaN" in output
    assert not (tmp_path / "results").exists()


def test_embeddings_with_seeds_name_the_key():
    from resmem.config import validate

    experiment = {"embeddings": {"m": {"path": "x.npz", "parameters": 1}}, "seeds": [0, 1]}
    with pytest.raises(ConfigError, match=r"experiments.x.seeds: embeddings computed elsewhere have no seeds"):
        validate({"experiments": {"x": experiment}})


@pytest.mark.parametrize(
    "experiment",
    [{}, {"models": {"m": {"arch": "small_cnn"}}, "embeddings": {"m": {"path": "m.npz", "parameters": 1}}}],
)
def test_an_image_experiment_has_models_or_embeddings(experiment):
    from resmem.config import validate

    with pytest.raises(ConfigError, match=r"experiments.x: give models \(trained here\) or embeddings"):
        validate({"experiments": {"x": experiment}})
