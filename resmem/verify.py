"""Check a results folder, yours or someone else's, against its chain of custody (`resmem.custody`).

    python -m resmem.verify RESULTS_DIR

RESULTS_DIR is a workflow's results/ folder (or a copy of it under any name) or one experiment's folder in it.
Every artifact must match its record (size, sha256, the place it was written as) and every input its record
names must be there and match: an edited, swapped, stale or deleted artifact is reported with the file and the
command that rewrites it. Logs and benchmark timings are not artifacts. A user's own inputs (an embeddings file
outside the results) are checked where they exist at their recorded path, and listed as not checked where
they do not (another machine's files).

Prints one line per problem and a last line with the counts; the exit status is 0 when everything matches, 1
when something does not, 2 when RESULTS_DIR is no folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path, PurePosixPath

from resmem.artifacts import RESULTS
from resmem.custody import RECORD_SUFFIX, artifact_name, check_file, digest, read_record, rerun
from resmem.io import ArtifactError

NOT_ARTIFACTS = ("logs", "benchmarks")  # folders of a job's log and timing, which no stage reads


def results_root(folder: Path, records: list[Path]) -> Path:
    """The folder that stands for results/ in `folder`'s records: the one that most records' paths fit (a record
    that fits another is of a file moved or swapped, which `read_record` then names)."""
    roots = Counter()
    for record in records:
        try:
            written_as = PurePosixPath(json.loads(record.read_text())["path"]).parts[1:]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # read_record names it
        artifact = record.with_name(record.name.removesuffix(RECORD_SUFFIX)).parts
        if written_as and len(artifact) > len(written_as) and artifact[-len(written_as) :] == written_as:
            roots[Path(*artifact[: -len(written_as)])] += 1
    return roots.most_common(1)[0][0] if roots else folder


def verify(folder) -> tuple[list[str], list[str], int]:
    """(problems, user inputs not checked, artifacts that match) for the results folder `folder`."""
    folder = Path(folder)
    records = sorted(folder.rglob(f"*{RECORD_SUFFIX}"))
    root = results_root(folder, records)
    problems, unchecked, matched, digests = [], Counter(), 0, {}

    def current(path: Path) -> dict:
        if path not in digests:
            digests[path] = digest(path)
        return digests[path]

    for record_file in records:
        artifact = record_file.with_name(record_file.name.removesuffix(RECORD_SUFFIX))
        if not artifact.is_file():
            problems.append(f"{artifact}: recorded ({record_file.name}) but missing; {rerun(artifact)}")
            continue
        try:
            record = read_record(artifact, root)
            digests[artifact] = check_file(artifact, record)
        except ArtifactError as exc:
            problems.append(str(exc))
            continue
        stale = []
        for name, used in record["inputs"].items():
            is_artifact = artifact_name(name) is not None
            path = root.joinpath(*PurePosixPath(name).parts[1:]) if is_artifact else Path(name)
            if not path.is_file():
                if is_artifact:
                    stale.append(f"{path} (missing)")
                else:
                    unchecked[name] += 1
            elif current(path) != used:
                stale.append(f"{path} (sha256 {current(path)['sha256'][:16]}…, recorded {used['sha256'][:16]}…)")
        if stale:
            problems.append(f"{artifact} is stale: what it was computed from changed since: {', '.join(stale)}; "
                            f"{rerun(artifact)}")  # fmt: skip
        else:
            matched += 1
    recorded = {r.with_name(r.name.removesuffix(RECORD_SUFFIX)) for r in records}
    for path in sorted(folder.rglob("*")):
        parts = path.relative_to(folder).parts
        if not path.is_file() or path.name.endswith(RECORD_SUFFIX) or path in recorded:
            continue
        if any(part in NOT_ARTIFACTS or part.startswith(".") for part in parts):
            continue
        problems.append(f"{path} has no custody record: not written by this workflow's jobs, or its record was "
                        f"deleted; {rerun(path)}")  # fmt: skip
    return (
        problems,
        [f"{name} (read by {n} artifacts; not on this machine)" for name, n in sorted(unchecked.items())],
        matched,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resmem.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", help=f"a {RESULTS}/ folder, an experiment's folder in it, or a copy")
    args = parser.parse_args(argv)
    folder = Path(args.results_dir)
    if not folder.is_dir():
        print(f"{folder}: no such folder; give a workflow's {RESULTS}/ folder or one experiment's", file=sys.stderr)
        return 2
    problems, unchecked, matched = verify(folder)
    for line in problems:
        print(f"MISMATCH {line}")
    for line in unchecked:
        print(f"not checked: {line}")
    print(f"{matched} artifacts match their records, {len(problems)} problems" + (f", {len(unchecked)} inputs of "
          "the user's not checked" if unchecked else ""))  # fmt: skip
    return 1 if problems or not matched else 0


if __name__ == "__main__":
    sys.exit(main())
