"""Stage functions without Snakemake: a truncated or mismatched artifact fails with a message naming the file."""

import json

import numpy as np
import pandas as pd
import pytest

from resmem import io, stages
from resmem.artifacts import EMBEDDING_KEYS, SWEEP_COLUMNS
from resmem.config import ConfigError
from resmem.io import ArtifactError, atomic_path

N = {"train": 40, "val": 12, "test": 10}


def write_artifacts(tmp_path, rows=N, classes=3, dim=4, split_rows=N):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in rows.items():
        arrays[f"{split}_emb"] = rng.normal(size=(n, dim)).astype(np.float32)
        arrays[f"{split}_logits"] = rng.normal(size=(n, classes)).astype(np.float32)
        arrays[f"{split}_y"] = rng.integers(0, classes, n).astype(np.int64)
    io.save_npz(tmp_path / "embeddings.npz", **arrays)
    offsets = np.cumsum([0, *split_rows.values()])
    io.save_npz(
        tmp_path / "split.npz",
        train_pool=np.int64(offsets[-1]),
        test_pool=np.int64(offsets[-1]),
        **{f"{s}_idx": np.arange(a, b) for s, a, b in zip(split_rows, offsets[:-1], offsets[1:], strict=True)},
    )
    return tmp_path / "embeddings.npz", tmp_path / "split.npz"


def test_stages_chain_without_snakemake(tmp_path):
    emb, split = write_artifacts(tmp_path)
    stages.index(emb, split, tmp_path / "index.faiss", normalize=False, device="cpu")
    stages.neighbours(
        tmp_path / "index.faiss",
        emb,
        tmp_path / "neighbors.npz",
        tmp_path / "search.json",
        k_max=8,
        normalize=False,
        device="cpu",
        query_chunk=5,
    )
    stages.sweep(
        emb,
        tmp_path / "neighbors.npz",
        tmp_path / "sweep.csv",
        ks=[1, 8],
        sigmas=[0.5],
        temperatures=[1.0],
        sweep_chunk_mb=1,
    )
    sweep = pd.read_csv(tmp_path / "sweep.csv")
    assert list(sweep.columns) == list(SWEEP_COLUMNS) and len(sweep) == 2 * 3
    stages.select(tmp_path / "sweep.csv", tmp_path / "selected.json")
    assert (tmp_path / "selected.json").exists()


def test_embeddings_whose_rows_differ_from_the_split_name_the_file(tmp_path):
    emb, split = write_artifacts(tmp_path, rows={**N, "val": N["val"] - 1})
    with pytest.raises(ArtifactError, match=r"embeddings.npz: 11 val rows but .*split.npz has 12"):
        stages.load_embeddings(emb, split)


def test_truncated_embeddings_name_the_file(tmp_path):
    emb, split = write_artifacts(tmp_path)
    emb.write_bytes(emb.read_bytes()[:100])
    with pytest.raises(ArtifactError, match=r"embeddings.npz: cannot be read .*rerun"):
        stages.load_embeddings(emb, split)


def test_missing_array_is_named(tmp_path):
    emb, _ = write_artifacts(tmp_path)
    with np.load(emb) as data:
        arrays = {k: data[k] for k in EMBEDDING_KEYS if k != "test_logits"}
    io.save_npz(emb, **arrays)
    with pytest.raises(ArtifactError, match=r"embeddings.npz: missing arrays \['test_logits'\]"):
        stages.load_embeddings(emb)


def test_wrong_dtype_is_named(tmp_path):
    emb, _ = write_artifacts(tmp_path)
    with np.load(emb) as data:
        arrays = {k: data[k] for k in EMBEDDING_KEYS}
    io.save_npz(emb, **{**arrays, "train_y": arrays["train_y"].astype(np.float32)})
    with pytest.raises(ArtifactError, match=r"embeddings.npz: array 'train_y' has dtype float32, expected"):
        stages.load_embeddings(emb)


def test_k_larger_than_the_datastore_names_the_config_key(tmp_path):
    emb, split = write_artifacts(tmp_path)
    stages.index(emb, split, tmp_path / "index.faiss", normalize=False, device="cpu")
    with pytest.raises(ConfigError, match=r"knn.k: the largest k \(41\) exceeds the training split's 40"):
        stages.neighbours(
            tmp_path / "index.faiss",
            emb,
            tmp_path / "nb.npz",
            tmp_path / "nb.json",
            k_max=41,
            normalize=False,
            device="cpu",
            query_chunk=8,
        )
    assert not (tmp_path / "nb.npz").exists()


def test_index_of_other_embeddings_is_named(tmp_path):
    emb, split = write_artifacts(tmp_path)
    stages.index(emb, split, tmp_path / "index.faiss", normalize=False, device="cpu")
    emb, _ = write_artifacts(tmp_path, rows={**N, "train": 30})
    with pytest.raises(ArtifactError, match=r"index.faiss holds 40 vectors but .*embeddings.npz has 30"):
        stages.neighbours(
            tmp_path / "index.faiss",
            emb,
            tmp_path / "nb.npz",
            tmp_path / "nb.json",
            k_max=4,
            normalize=False,
            device="cpu",
            query_chunk=8,
        )


def test_neighbours_of_other_queries_are_named(tmp_path):
    emb, split = write_artifacts(tmp_path)
    io.save_npz(
        tmp_path / "neighbors.npz",
        val_dist=np.zeros((5, 4), np.float32),
        val_idx=np.zeros((5, 4), int),
        test_dist=np.zeros((10, 4), np.float32),
        test_idx=np.zeros((10, 4), int),
    )
    with pytest.raises(ArtifactError, match=r"neighbors.npz: 5 val rows but .*embeddings.npz has 12"):
        stages.sweep(
            emb,
            tmp_path / "neighbors.npz",
            tmp_path / "sweep.csv",
            ks=[1],
            sigmas=[1.0],
            temperatures=[1.0],
            sweep_chunk_mb=1,
        )
    assert not (tmp_path / "sweep.csv").exists()


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("finished result\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "finished result\n"  # the earlier result is not lost
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_ivf_index_reports_its_recall_against_exact_search(tmp_path):
    rows = {"train": 400, "val": 30, "test": 60}
    emb, split = write_artifacts(tmp_path, rows=rows, dim=8, split_rows=rows)
    stages.index(emb, split, tmp_path / "ivf.faiss", normalize=False, device="cpu", kind="ivf", nlist=8)
    reports = {}
    for nprobe in (1, 8):
        stages.neighbours(
            tmp_path / "ivf.faiss",
            emb,
            tmp_path / f"nb{nprobe}.npz",
            tmp_path / f"nb{nprobe}.json",
            k_max=10,
            normalize=False,
            device="cpu",
            query_chunk=16,
            nprobe=nprobe,
            recall_sample=50,
        )
        reports[nprobe] = json.loads((tmp_path / f"nb{nprobe}.json").read_text())
    assert reports[8]["index"] == "IndexIVFFlat" and reports[8]["nlist"] == 8 and reports[8]["recall_sample"] == 50
    assert reports[8]["recall_at_k_max"] == 1.0  # all lists probed: exact
    assert reports[1]["recall_at_k_max"] < 1.0  # one list of eight: misses neighbours in the others
    assert reports[1]["queries"] == 90 and reports[1]["queries_per_second"] > 0
    # An exhaustive IVF search finds the same neighbours as the flat index.
    stages.index(emb, split, tmp_path / "flat.faiss", normalize=False, device="cpu")
    stages.neighbours(
        tmp_path / "flat.faiss",
        emb,
        tmp_path / "flat.npz",
        tmp_path / "flat.json",
        k_max=10,
        normalize=False,
        device="cpu",
        query_chunk=16,
    )
    with np.load(tmp_path / "flat.npz") as flat, np.load(tmp_path / "nb8.npz") as ivf:
        np.testing.assert_array_equal(flat["test_idx"], ivf["test_idx"])
    assert json.loads((tmp_path / "flat.json").read_text())["recall_at_k_max"] == 1.0


def test_streamed_npz_equals_the_concatenated_blocks_and_maps_back(tmp_path):
    rng = np.random.default_rng(0)
    blocks = [rng.normal(size=(n, 5)).astype(np.float32) for n in (7, 3, 11)]
    labels = np.arange(21)
    pieces = [("emb", b) for b in blocks] + [("y", labels)]
    io.save_npz_streaming(tmp_path / "e.npz", iter(pieces), rows={"emb": 21, "y": 21})
    arrays = io.load_npz(tmp_path / "e.npz", ["emb", "y"], mmap=True)
    assert isinstance(arrays["emb"], np.memmap)
    np.testing.assert_array_equal(arrays["emb"], np.concatenate(blocks))
    np.testing.assert_array_equal(arrays["y"], labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npz"]  # no scratch files left
    with pytest.raises(ValueError, match=r"rows written vs expected \{'emb': \(21, 22\)\}"):
        io.save_npz_streaming(tmp_path / "f.npz", iter(pieces), rows={"emb": 22, "y": 21})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npz"]
