"""The stages every kind of experiment shares, written once: fit and save a base model, load it back, build the
index over a (nested fraction of a) datastore, search it once at the largest k, check the neighbors against the
grid, select the grid point, aggregate the runs and write the provenance record.

Each kind's own stage module (`resmem.vision.stages`, `resmem.lm.stages`, `resmem.regression.stages`) reads its
artifacts and calls these; the Snakemake scripts in workflow/scripts/ only unpack `snakemake` and call the kind's
stage, so every stage also runs without Snakemake. torch and faiss are imported only where they are needed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from resmem import custody, io, provenance
from resmem.artifacts import NEIGHBOR_KEYS, QUERY_SPLITS
from resmem.config import ConfigError
from resmem.device import CPU_KERNELS
from resmem.io import ArtifactError

log = logging.getLogger("resmem")


def fit_and_save(
    model,
    train_loader,
    val_loader,
    train_cfg: dict,
    seed: int,
    dev,
    out: dict,
    meta: dict,
    copy_weights: bool = True,
    resume=None,
    stop_epoch: int | None = None,
) -> None:
    """Train (resuming from the checkpoint beside out["model"], else from `resume`, the checkpoint the run's
    previous segment ended with), then write the model with its metadata, the per-epoch log (out["train_log"])
    and the metadata as JSON (out["meta"]): parameters, device, recipe, seed, time, versions and `meta`. Without
    `copy_weights` (pretrained weights used as they are, which `meta` says where to load from) the model file
    holds the metadata only. A segment (`stop_epoch`, out["segment"]) trains up to that epoch and writes only
    its checkpoint there."""
    import torch

    from resmem.train import count_parameters
    from resmem.train import train as fit

    if "segment" in out:  # a segment's own scratch file beside its output, renamed to it once its epochs are done
        checkpoint = Path(out["segment"]).with_suffix(".partial")
    else:
        checkpoint = Path(out["model"]).with_name("train_checkpoint.pt")  # not an output: survives a killed job
    start = time.perf_counter()
    history = fit(model, train_loader, val_loader, train_cfg, seed, dev, checkpoint, resume, stop_epoch)
    if "segment" in out:
        os.replace(checkpoint, out["segment"])
        log.info("segment done after epoch %d of %d: %s", len(history), train_cfg["epochs"], out["segment"])
        return
    meta = {
        "parameters": count_parameters(model),
        "device": str(dev),
        "train": train_cfg,
        "seed": seed,
        "seconds": time.perf_counter() - start,
        "final": history[-1],
        "versions": provenance.package_versions(),
        **meta,
    }
    with io.atomic_path(out["model"]) as tmp:
        torch.save({"state_dict": model.state_dict() if copy_weights else None, "meta": meta}, tmp)
    io.write_csv(out["train_log"], pd.DataFrame(history, columns=["epoch", "loss", "train_acc", "val_acc", "seconds"]))
    io.write_json(out["meta"], meta)
    checkpoint.unlink(missing_ok=True)


def load_model(model_path, build: Callable[[dict], object], rule: str, spec: dict | None = None):
    """(model, meta) from a file that `fit_and_save` wrote, read as data only (`weights_only`: tensors and plain
    values; a file that holds anything else, such as a pickled call, is refused before it can run). `spec`: the
    config's model spec, which must be the one the file was trained for (the workflow passes it; interactive use
    may omit it). `build(meta)` makes the network (with its pretrained weights where the file holds none). A
    config error in `build` is the user's to fix; any other failure names the file and the rule to rerun."""
    import torch

    try:
        saved = torch.load(model_path, map_location="cpu", weights_only=True)
        meta = saved["meta"]
    except Exception as exc:  # pickle.UnpicklingError for anything but tensors and plain values; zip errors
        raise ArtifactError(
            f"{model_path}: not a model file this workflow wrote ({type(exc).__name__}: {str(exc)[:300]}); "
            f"delete it and rerun {rule}"
        ) from None
    if spec is not None and meta.get("model") != spec:
        raise ArtifactError(
            f"{model_path}: trained for the model {meta.get('model')}, but the config's is {spec}; delete it and "
            f"rerun {rule}"
        )
    try:
        model = build(meta)
        if saved["state_dict"] is not None:
            model.load_state_dict(saved["state_dict"])
    except ConfigError:
        raise
    except Exception as exc:
        raise ArtifactError(f"{model_path}: cannot load the model ({exc}); delete it and rerun {rule}") from exc
    return model, meta


def datastore_rows(n: int, fraction: float, seed: int = 0) -> np.ndarray:
    """The sorted datastore rows of a fraction: a prefix of one fixed permutation, so fractions are nested
    (and the fraction 1 is every row)."""
    return np.sort(np.random.default_rng(seed).permutation(n)[: max(1, round(fraction * n))])


class RowSubset:
    """Rows `rows` of an array (a memmap), read only when indexed: a datastore fraction without a copy."""

    def __init__(self, array: np.ndarray, rows: np.ndarray):
        self.array, self.rows = array, rows
        self.shape = (len(rows), *array.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return self.array[self.rows[i]]


def row_subset(keys, rows: np.ndarray):
    """The datastore keys of `rows`: the keys themselves where the rows are all of them."""
    return keys if len(rows) == len(keys) else RowSubset(keys, rows)


def index(keys, out: dict, knn: dict, device: str, store_fraction: float = 1.0) -> None:
    """An L2 index of the config's kind (`knn` is the experiment's knn section) over a nested fraction of the
    datastore's keys (out["index"]), and the datastore rows it holds (out["rows"], with the datastore's size and
    the fraction), which the search maps its results back through."""
    from resmem.knn import build_index, write_index

    rows = datastore_rows(len(keys), store_fraction)
    kind = knn["index"]
    built = build_index(
        row_subset(keys, rows), knn["normalize"], device, kind=kind, nlist=knn["nlist"], pq_m=knn["pq_m"],
        pq_bits=knn["pq_bits"],
    )  # fmt: skip
    log.info("%s L2 index: %d of %d datastore rows (fraction %g), dim %d", kind, len(rows), len(keys),
             store_fraction, built.d)  # fmt: skip
    record = write_index(built, out["index"])
    io.save_npz(out["rows"], rows=rows, datastore_rows=np.int64(len(keys)), fraction=np.float64(store_fraction),
                **{f"index_{key}": np.array(value) for key, value in record.items()})  # fmt: skip


VERDICT_KEYS = ("gain", "gain_ci_low", "gain_ci_high", "p_value", "test")  # of resmem.stats.paired_gain
ROWS_DTYPES = {"rows": np.int64, "datastore_rows": np.int64, "fraction": np.float64}
NEIGHBOR_CHECK_QUERIES = 256  # queries per split whose recorded neighbour distances every reader recomputes
INDEX_RECORD = ("type", "dim", "ntotal", "bytes", "sha256")  # resmem.knn.write_index's record, in the rows file


def read_index(index_path, rows_path, datastore_path, n_datastore: int):
    """(index, its rows file's arrays), the index checked against what its rows file recorded when it was
    written (`resmem.knn.read_index`) and to be built over a datastore of `n_datastore` rows."""
    from resmem.knn import read_index as read_checked

    recorded = [f"index_{key}" for key in INDEX_RECORD]
    held = io.load_npz(rows_path, ["rows", "datastore_rows", "fraction", *recorded], ROWS_DTYPES)
    record = {key: held[f"index_{key}"].item() for key in INDEX_RECORD}
    built = read_checked(index_path, record)
    if built.ntotal != len(held["rows"]) or int(held["datastore_rows"]) != n_datastore:
        raise ArtifactError(
            f"{index_path} holds {built.ntotal} vectors but {datastore_path} has {n_datastore} datastore rows "
            f"({rows_path} lists {len(held['rows'])} of {int(held['datastore_rows'])}); delete the index and rerun "
            "its index rule"
        )
    return built, held


def neighbors(index_path, rows_path, datastore_path, keys, queries: dict, out: dict, knn: dict, device: str) -> None:
    """ONE search at the largest k of the grid (knn["k_max"]) for each query split ({split: query vectors}) in
    the index over rows of the datastore `keys`, written to out["neighbors"] as datastore rows, and the search
    report (speed, recall@k of an approximate index, the datastore fraction) to out["report"]."""
    from resmem.knn import search_queries

    built, held = read_index(index_path, rows_path, datastore_path, len(keys))
    rows = held["rows"]
    k_max = knn["k_max"]
    if k_max > len(rows):
        raise ConfigError(f"config key knn.k: the largest k ({k_max}) exceeds the {len(rows)} datastore rows; lower it")
    found, report = search_queries(built, row_subset(keys, rows), queries, k_max, knn, device)
    for split in queries:  # rows of the whole datastore; -1 (fewer than k found by an IVF probe) stays -1
        idx = found[f"{split}_idx"]
        for start in range(0, len(idx), knn["query_chunk"]):  # in place, chunk by chunk: no Q×k copies
            block = idx[start : start + knn["query_chunk"]]
            block[...] = np.where(block >= 0, rows[block], -1)
    for split in queries:  # an index (with its rows file) from other vectors finds rows at other distances
        check_distances(
            index_path,
            datastore_path,
            found,
            split,
            queries[split],
            keys,
            knn["normalize"],
            k_max,
            "its index was built from other vectors: delete it and its rows file and rerun its index rule",
        )
    io.save_npz(out["neighbors"], **found, normalize=np.bool_(knn["normalize"]))  # what `load_neighbors` recomputes
    io.write_json(out["report"], {**report, "datastore_fraction": float(held["fraction"])})


def load_neighbors(path, queries: dict, k_needed: int, datastore_path, keys) -> dict[str, np.ndarray]:
    """neighbors.npz, checked to have one row per query ({split: query vectors}) and at least `k_needed` columns,
    and to be the search of these queries in the datastore `keys`: the distances it records for every neighbour
    of NEIGHBOR_CHECK_QUERIES queries per split, spread over the split, are recomputed (an edited or swapped file
    names other rows or other distances)."""
    found = io.load_npz(path, NEIGHBOR_KEYS, {k: np.int64 if k.endswith("_idx") else np.float32 for k in NEIGHBOR_KEYS},
                        optional=["normalize"])  # fmt: skip
    for split in QUERY_SPLITS:
        rows, searched = found[f"{split}_idx"].shape
        if rows != len(queries[split]) or searched < k_needed:
            raise ArtifactError(
                f"{path}: {rows} × {searched} {split} neighbors do not fit {datastore_path} "
                f"({len(queries[split])} queries) and k up to {k_needed}; delete it and rerun its neighbors rule"
            )
    if "normalize" in found:  # (files written before it was recorded are not recomputed)
        for split in QUERY_SPLITS:
            normalize = bool(found["normalize"])
            check_distances(path, datastore_path, found, split, queries[split], keys, normalize, k_needed)
    return found


NEIGHBORS_REMEDY = "the file was edited or comes from another search: delete it and rerun its neighbors rule"


def check_distances(path, datastore_path, found: dict, split: str, queries, keys, normalize: bool, k: int,
                    remedy: str = NEIGHBORS_REMEDY) -> None:  # fmt: skip
    """The first k recorded distances of a sample of queries equal ‖q − x‖ over the rows they name, within
    float32's rounding of ‖q‖² + ‖x‖² − 2q·x (faiss's formula), and ascend."""
    from resmem.knn import prepare

    picked = np.unique(np.linspace(0, len(queries) - 1, min(len(queries), NEIGHBOR_CHECK_QUERIES)).astype(np.int64))
    for q in picked.tolist():
        idx, dist = found[f"{split}_idx"][q, :k], found[f"{split}_dist"][q, :k].astype(np.float64)
        named = idx >= 0  # an IVF probe may find fewer than k
        if np.any(idx[named] >= len(keys)) or np.any(np.diff(dist[named]) < 0):
            raise ArtifactError(f"{path}: {split} query {q}'s neighbours are not rows of {len(keys)} in ascending "
                                f"distance; {remedy}")  # fmt: skip
        query = prepare(queries[q : q + 1], normalize).astype(np.float64)
        rows = prepare(np.take(keys, idx[named], axis=0), normalize).astype(np.float64)
        exact = np.sum((rows - query) ** 2, axis=1)
        scale = np.sum(query**2) + np.sum(rows**2, axis=1)
        off = np.abs(dist[named] ** 2 - exact) > 8 * query.shape[1] * 2.0**-24 * scale + 1e-30
        if off.any():
            j = int(np.argmax(off))
            raise ArtifactError(f"{path}: {split} query {q}'s neighbour {int(idx[named][j])} comes at distance "
                                f"{dist[named][j]:.6g}, but lies at {np.sqrt(exact[j]):.6g} in {datastore_path}; "
                                f"{remedy}")  # fmt: skip


def select(sweep_path, out_path, choose: Callable[[pd.DataFrame], dict]) -> None:
    """The grid point `choose` picks from the sweep table (by val accuracy), with its test value."""
    chosen = choose(pd.read_csv(sweep_path))
    log.info("selected %s", chosen)
    io.write_json(out_path, chosen)


def aggregate(
    experiment: str,
    runs: list[dict],
    out: dict,
    config: dict,
    repo_dir,
    summarize,
    columns,
    write_report,
    **provenance_extra,
) -> None:
    """The aggregate stage of every kind. `summarize(run)` reads one run's files into its summary row and its
    tables ({name: DataFrame}, e.g. its sweep with the run's columns); the summary's `columns` go to
    out["summary_csv"], `write_report(summary, tables, experiment, out)` writes the kind's tables and figures
    from the summary and each table concatenated over runs, and the provenance record goes to out["provenance"]."""
    rows, tables = [], {}
    for run in runs:
        row, run_tables = summarize(run)
        rows.append({"experiment": experiment, **row})
        for name, table in run_tables.items():
            tables.setdefault(name, []).append(table)
    summary = holm_columns(pd.DataFrame(rows))
    io.write_csv(out["summary_csv"], summary[list(columns)])
    tables = {name: pd.concat(parts, ignore_index=True) for name, parts in tables.items()}
    write_report(summary, tables, experiment, out)
    sources = [
        value for run in runs for value in run.values() if isinstance(value, str)
    ]  # its files (chain skips the rest)
    write_provenance(out["provenance"], experiment, config, runs, summary.device, repo_dir, sources, **provenance_extra)


def load_predictions(path, keys, dtypes=None) -> dict[str, np.ndarray]:
    """A predict stage's per-test-example arrays, checked to be 1-D and of one length."""
    arrays = io.load_npz(path, keys, dtypes)
    shapes = {key: array.shape for key, array in arrays.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 1:
        raise ArtifactError(f"{path}: its arrays must be 1-D and of one length, got {shapes}; delete it and rerun "
                            "its predict rule")  # fmt: skip
    return arrays


def gain_columns(method: str, base_correct, method_correct, point: dict, block: int | None = 1, run=None) -> dict:
    """A run's summary columns of one method's test-accuracy gain over the base model on the same test examples
    (`point`: its selected point, as `resmem.sweep.select` records it): <method>_test_acc, _gain with its paired
    interval _gain_ci_low/_high, _p_value and _test (`resmem.stats.paired_gain`, blocks of `block` positions;
    None: chosen from the data) and _best_test_acc, the best test accuracy anywhere on its grid. _p_holm is
    added over the whole experiment (`holm_columns`). The predictions must count what the sweep counted at that
    point, for the base model and the method (`run`: its paths, for the message)."""
    from resmem.stats import paired_gain

    for who, correct, swept in (("the base model", base_correct, point["base_test_accuracy"]),
                                (method, method_correct, point["test_accuracy"])):  # fmt: skip
        counted = float(np.mean(correct))
        if not abs(counted - swept) <= 1e-9:
            files = f"{run['predictions']} and {run['selected']}" if run else "the predictions and the sweep"
            raise ArtifactError(f"{files} disagree: {who}'s test accuracy is {counted:.6f} in the predictions but "
                                f"{swept:.6f} in the sweep at its selected point; one of them was changed or is "
                                "stale: delete both and rerun their sweep, select and predict rules")  # fmt: skip
    verdict = paired_gain(base_correct, method_correct, block=block)
    columns = {"test_acc": point["test_accuracy"], **{key: verdict[key] for key in VERDICT_KEYS},
               "best_test_acc": point["best_test_accuracy"]}  # fmt: skip
    return {f"{method}_{name}": value for name, value in columns.items()}


def holm_columns(summary: pd.DataFrame) -> pd.DataFrame:
    """`summary` with <prefix>_p_holm beside every <prefix>_p_value: Holm-adjusted over all of them, every run and
    gain of the experiment (the cells of its per-run table)."""
    from resmem.stats import holm

    columns = [c for c in summary.columns if c.endswith("_p_value")]
    adjusted = holm(summary[columns].to_numpy(np.float64).ravel()).reshape(len(summary), len(columns))
    return summary.assign(**{c.removesuffix("_p_value") + "_p_holm": adjusted[:, i] for i, c in enumerate(columns)})


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def write_provenance(
    path, experiment: str, config: dict, runs: list[dict], devices, repo_dir, sources, **extra
) -> None:
    """What made an experiment's results: its config, the git commit and a hash of the package source (so a
    dirty tree is identifiable), package versions, devices, the CPU kernels pinned (`resmem.device.CPU_KERNELS`),
    the runs aggregated and the chain of custody of the files read (`sources`) down to the inputs
    (`resmem.custody.chain`: each artifact, the rule that wrote it and its sha256)."""
    record = {
        "experiment": experiment,
        "config": config,
        "git_commit": provenance.git_commit(repo_dir),
        "source_sha256": provenance.source_hash(),
        "versions": provenance.package_versions(),
        "devices": sorted(set(devices)),
        "cpu_kernels": {name: os.environ[name] for name in CPU_KERNELS if name in os.environ},
        **extra,
        "runs": [{k: str(v) for k, v in run.items()} for run in runs],
        "chain": custody.chain(sources),
    }
    io.write_json(path, record)


def run_records(runs: list[dict], files) -> list[dict]:
    """One record per run for an aggregate stage: the run's wildcards (fractions as numbers) and, for each named
    list of `files` (Snakemake's input, or a dict; single paths are left out), the run's file."""
    lists = {name: paths for name, paths in dict(files.items()).items() if not isinstance(paths, (str, Path))}
    for name, paths in lists.items():
        if len(paths) != len(runs):
            raise ValueError(f"input {name!r} lists {len(paths)} files for {len(runs)} runs")
    records = []
    for i, run in enumerate(runs):
        record = {key: float(value) if key.endswith("_fraction") else value for key, value in run.items()}
        records.append({**record, **{name: paths[i] for name, paths in lists.items()}})
    return records
