"""The stages every kind of experiment shares, written once: fit and save a base model, load it back, build the
index over a datastore, search it once at the largest k, check the neighbors against the grid, select the grid
point, and write the provenance record.

Each kind's own stage module (`resmem.vision.stages`, `resmem.lm.stages`, `resmem.regression.stages`) reads its
artifacts and calls these; the Snakemake scripts in workflow/scripts/ only unpack `snakemake` and call the kind's
stage, so every stage also runs without Snakemake. torch and faiss are imported only where they are needed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from resmem import io
from resmem.artifacts import NEIGHBOR_KEYS, QUERY_SPLITS
from resmem.config import ConfigError
from resmem.io import ArtifactError

log = logging.getLogger("resmem")


def fit_and_save(model, train_loader, val_loader, train_cfg: dict, seed: int, dev, out: dict, meta: dict) -> None:
    """Train (resuming from the checkpoint beside out["model"]), then write the model with its metadata, the
    per-epoch log (out["train_log"]) and the metadata as JSON (out["meta"]): parameters, device, recipe, seed,
    time, versions and `meta`."""
    import torch

    from resmem.train import count_parameters
    from resmem.train import train as fit

    checkpoint = Path(out["model"]).with_name("train_checkpoint.pt")  # not an output: survives a killed job
    start = time.perf_counter()
    history = fit(model, train_loader, val_loader, train_cfg, seed, dev, checkpoint)
    meta = {
        "parameters": count_parameters(model),
        "device": str(dev),
        "train": train_cfg,
        "seed": seed,
        "seconds": time.perf_counter() - start,
        "final": history[-1],
        "versions": io.package_versions(),
        **meta,
    }
    with io.atomic_path(out["model"]) as tmp:
        torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp)
    io.write_csv(out["train_log"], pd.DataFrame(history, columns=["epoch", "loss", "train_acc", "val_acc", "seconds"]))
    io.write_json(out["meta"], meta)
    checkpoint.unlink(missing_ok=True)


def load_model(model_path, build: Callable[[dict], object], rule: str):
    """(model, meta) from a file that `fit_and_save` wrote; `build(meta)` makes the empty network. A config
    error in `build` is the user's to fix; any other failure names the file and the rule to rerun."""
    import torch

    try:
        saved = torch.load(model_path, map_location="cpu", weights_only=False)
        meta = saved["meta"]
        model = build(meta)
        model.load_state_dict(saved["state_dict"])
    except ConfigError:
        raise
    except Exception as exc:
        raise ArtifactError(f"{model_path}: cannot load the model ({exc}); delete it and rerun {rule}") from exc
    return model, meta


def index(vectors, out_path, knn: dict, device: str) -> None:
    """An L2 index of the config's kind (`knn` is the experiment's knn section) over the datastore vectors."""
    import faiss

    from resmem.knn import build_index

    kind = knn["index"]
    built = build_index(
        vectors, knn["normalize"], device, kind=kind, nlist=knn["nlist"], pq_m=knn["pq_m"], pq_bits=knn["pq_bits"]
    )
    log.info("%s L2 index: %d vectors of dim %d", kind, built.ntotal, built.d)
    with io.atomic_path(out_path) as tmp:
        faiss.write_index(built, str(tmp))


def read_index(index_path, datastore_path, n_vectors: int):
    """A faiss index file, checked to hold the datastore's `n_vectors` vectors."""
    import faiss

    try:
        built = faiss.read_index(str(index_path))
    except RuntimeError as exc:
        raise ArtifactError(f"{index_path}: cannot be read ({exc}); delete it and rerun its index rule") from exc
    if built.ntotal != n_vectors:
        raise ArtifactError(
            f"{index_path} holds {built.ntotal} vectors but {datastore_path} has {n_vectors} "
            "datastore rows; delete the index and rerun"
        )
    return built


def neighbors(index_path, datastore_path, vectors, queries: dict, out: dict, knn: dict, device: str, rows=None,
               **report_extra) -> None:  # fmt: skip
    """ONE search at the largest k of the grid (knn["k_max"]) for each query split ({split: query vectors}), written to
    out["neighbors"], and the search report (speed, recall@k of an approximate index) to out["report"].

    `vectors` are the indexed datastore rows; where they are a subset (`rows`, the datastore-size study), the
    indices written are rows of the whole datastore. `report_extra` goes into the report as it is."""
    from resmem.knn import search_queries

    built = read_index(index_path, datastore_path, len(vectors))
    k_max = knn["k_max"]
    if k_max > len(vectors):
        raise ConfigError(
            f"config key knn.k: the largest k ({k_max}) exceeds the {len(vectors)} datastore rows; lower it"
        )
    found, report = search_queries(built, vectors, queries, k_max, knn, device)
    if rows is not None:
        for split in queries:
            found[f"{split}_idx"] = rows[found[f"{split}_idx"]]
    io.save_npz(out["neighbors"], **found)
    io.write_json(out["report"], {**report, **report_extra})


def load_neighbors(path, query_rows: dict, k_needed: int, datastore_path) -> dict[str, np.ndarray]:
    """neighbors.npz, checked to have one row per query ({split: count}) and at least `k_needed` columns."""
    found = io.load_npz(path, NEIGHBOR_KEYS)
    for split in QUERY_SPLITS:
        rows, searched = found[f"{split}_idx"].shape
        if rows != query_rows[split] or searched < k_needed:
            raise ArtifactError(
                f"{path}: {rows} × {searched} {split} neighbors do not fit {datastore_path} "
                f"({query_rows[split]} queries) and k up to {k_needed}; delete it and rerun its neighbors rule"
            )
    return found


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
    summary = pd.DataFrame(rows)
    io.write_csv(out["summary_csv"], summary[list(columns)])
    tables = {name: pd.concat(parts, ignore_index=True) for name, parts in tables.items()}
    write_report(summary, tables, experiment, out)
    write_provenance(out["provenance"], experiment, config, runs, summary.device, repo_dir, **provenance_extra)


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def write_provenance(path, experiment: str, config: dict, runs: list[dict], devices, repo_dir, **extra) -> None:
    """What made an experiment's results: its config, the git commit and a hash of the package source (so a
    dirty tree is identifiable), package versions, devices and the runs aggregated."""
    record = {
        "experiment": experiment,
        "config": config,
        "git_commit": io.git_commit(repo_dir),
        "source_sha256": io.source_hash(),
        "versions": io.package_versions(),
        "devices": sorted(set(devices)),
        **extra,
        "runs": [{k: str(v) for k, v in run.items()} for run in runs],
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
