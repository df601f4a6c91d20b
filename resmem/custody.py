"""A checked chain of custody through a results folder.

Every file a workflow job writes gets a record beside it, `<file>.custody.json`: the file's own size and sha256,
the rule that wrote it, the path it was written as (relative to the results folder, so the folder may be copied
or moved whole), and the size and sha256 of each input the job read. Before a job runs, each of its inputs from
the results folder is checked against its record: its bytes (an edit), its place (a file swapped in from another
run together with its record) and its own inputs (a file computed from another version of an input this job
also reads). A mismatch stops the job with the file named and the command that rewrites it, before the stage
reads anything. `python -m resmem.verify` checks a whole folder the same way (`resmem.verify`).

Cost: an output is hashed while it is written (`resmem.digests`; the .npz writers and the index) or read once
more after (small files: JSON, tables, figures, checkpoints); each input is read once before its job, at the
speed of sha256, and that digest serves the job's own readers (bench/bench_custody.py; docs/performance.md).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from resmem.artifacts import RESULTS
from resmem.digests import remembering, sha256
from resmem.io import ArtifactError, write_json

RECORD_SUFFIX = ".custody.json"
RECORD_FORMAT = 1


def record_path(path) -> Path:
    """Where the record of artifact `path` lives: beside it."""
    path = Path(path)
    return path.with_name(path.name + RECORD_SUFFIX)


def artifact_name(path, root=None) -> str | None:
    """The name `path` has in records if it is a workflow artifact: results/<its path in the results folder>.
    Without `root` (in a job), Snakemake's paths are relative to the working directory and an artifact's start
    with results/; with `root` (`resmem.verify`), every path under `root` is one. None for a user's own input."""
    path = Path(path)
    if root is not None:
        return (PurePosixPath(RESULTS) / path.relative_to(root).as_posix()).as_posix()
    parts = PurePosixPath(path.as_posix()).parts
    return None if path.is_absolute() or len(parts) < 2 or parts[0] != RESULTS else PurePosixPath(*parts).as_posix()


def digest(path) -> dict:
    """A file's size in bytes and sha256."""
    return {"bytes": os.path.getsize(path), "sha256": sha256(path)}


def rerun(path) -> str:
    return f"rewrite it and what was computed from it: snakemake --forcerun {path}"


def read_record(path, root=None) -> dict:
    """The record of artifact `path`, checked to be the record of a file written as `path` (`artifact_name`).
    An ArtifactError names what is wrong."""
    recorded = record_path(path)
    if not recorded.is_file():
        raise ArtifactError(f"{path} has no custody record ({recorded.name}): it was not written by this workflow's "
                            f"jobs, or the record was deleted; {rerun(path)}")  # fmt: skip
    try:
        record = json.loads(recorded.read_text())
        written_as, rule = record["path"], record["rule"]
        record["bytes"], record["sha256"], dict(record["inputs"])  # every field a reader uses is there
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{recorded}: not a custody record ({type(exc).__name__}: {exc}); {rerun(path)}") from None
    if record.get("format") != RECORD_FORMAT:
        raise ArtifactError(f"{recorded}: custody record format {record.get('format')!r}, this version reads "
                            f"{RECORD_FORMAT}; {rerun(path)}")  # fmt: skip
    if written_as != artifact_name(path, root):
        raise ArtifactError(f"{path}: its record says rule {rule} wrote it as {written_as}; it was moved or "
                            f"swapped in from there (with its record); {rerun(path)}")  # fmt: skip
    return record


def check_file(path, record: dict) -> dict:
    """`path`'s digest, which must be the one its record holds (the sha256 is computed only if the size is)."""
    size = os.path.getsize(path)
    if size != record["bytes"]:
        what = f"{size} bytes where rule {record['rule']} wrote {record['bytes']}"
    elif (found := sha256(path)) != record["sha256"]:
        what = f"sha256 {found[:16]}… where rule {record['rule']} wrote {record['sha256'][:16]}…"
    else:
        return {"bytes": size, "sha256": found}
    raise ArtifactError(f"{path} is not the file its rule wrote ({what}): it was edited or replaced since; "
                        f"{rerun(path)}")  # fmt: skip


def check_inputs(paths: Iterable, root=None) -> dict[str, dict]:
    """The digest of each input of a job, {name in records: {bytes, sha256}}. An artifact of the results folder
    must match its record (`read_record`, `check_file`), and what its record says of another input of this job
    must be that input's digest now: an input computed from another version of it is stale."""
    digests, records = {}, {}
    for path in dict.fromkeys(str(p) for p in paths):
        name = artifact_name(path, root)
        if name is None:  # a user's own file (embeddings): hashed, recorded as given, nothing to check it against
            digests[path] = digest(path)
            continue
        records[path] = read_record(path, root)
        digests[name] = check_file(path, records[path])
    for path, record in records.items():
        for name, used in record["inputs"].items():
            if name in digests and digests[name] != used:
                raise ArtifactError(f"{path} was computed from another {name} than the one here (sha256 "
                                    f"{used['sha256'][:16]}…, now {digests[name]['sha256'][:16]}…): it is stale; "
                                    f"{rerun(path)}")  # fmt: skip
    return digests


def write_record(path, rule: str, inputs: dict[str, dict]) -> None:
    """Record artifact `path`, just written by `rule` from `inputs` (as `check_inputs` returned them)."""
    name = artifact_name(path)
    if name is None:
        raise ValueError(f"{path} is not under {RESULTS}/: only the workflow's own files get records")
    write_json(record_path(path), {"format": RECORD_FORMAT, "path": name, "rule": rule, **digest(path),
                                   "inputs": inputs})  # fmt: skip


@contextlib.contextmanager
def job(inputs: Iterable, outputs: Iterable, rule: str):
    """Around a workflow job: its inputs checked before it runs, a record of each output written after it
    succeeded. Records of earlier outputs are removed first, so a failed job leaves none behind."""
    outputs = [str(path) for path in outputs]
    for path in outputs:
        record_path(path).unlink(missing_ok=True)
    with remembering():  # each file hashed once in the job: its check here serves its readers, its writer its record
        digests = check_inputs(inputs)
        yield
        for path in outputs:
            write_record(path, rule, digests)


def chain(paths: Iterable) -> list[dict]:
    """Every recorded artifact that `paths` were computed from, `paths` included, down to the user's own inputs:
    [{artifact, rule, sha256}], each once, sorted by artifact (a user's input has rule None). Paths that are no
    workflow artifact, or have no record (a stage called without the workflow), are left out."""
    found, todo = {}, [str(p) for p in paths]
    while todo:
        path = todo.pop()
        if artifact_name(path) is None or path in found or not record_path(path).is_file():
            continue
        record = read_record(path)
        found[path] = {"artifact": path, "rule": record["rule"], "sha256": record["sha256"]}
        for used, entry in record["inputs"].items():
            if artifact_name(used) is None:
                found.setdefault(used, {"artifact": used, "rule": None, "sha256": entry["sha256"]})
            else:
                todo.append(used)
    return [found[name] for name in sorted(found)]
