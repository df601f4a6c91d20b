"""Render the docs' benchmark tables from the benchmarks' own output, bench/results/*.json.

    .venv/bin/python bench/render_tables.py            # rewrite every table block in README.md and docs/*.md
    .venv/bin/python bench/render_tables.py --check    # exit 1 naming each block that differs from its JSON

A block in a doc is

    <!-- table: NAME -->
    ...
    <!-- /table -->

and holds what TABLES[NAME] renders from its JSON files: a paragraph saying what the numbers are, the table
(the one the benchmark prints), and under it the machine of each file's run (`bench_record.machine_line`).
A block whose files do not exist yet says so and names the command that writes them; a table of several runs
has a row saying so for each run not made yet. A block `results/<experiment>` holds the first table of
docs/results/<experiment>/summary.md (a run of the offline default) as the workflow wrote it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bench_cpu_determinism
import bench_custody
import bench_datastore
import bench_image_cache
import bench_model_memory
import bench_plan
import bench_scale
import bench_select
import bench_stats
import bench_suite
import bench_sweep
import bench_timing
from bench_record import REPO, RESULTS, machine_line

DOCS = REPO / "docs"
PAGES = (REPO / "README.md", *sorted(DOCS.glob("*.md")))  # what is rendered when no file is named
RUN_RESULTS = DOCS / "results"  # <experiment>/summary.md and provenance.json of one run of the offline default
OPEN = re.compile(r"^<!-- table: (?P<name>\S+) -->$", re.M)  # markers on lines of their own
BLOCK = re.compile(r"(?P<open>^<!-- table: (?P<name>\S+) -->\n)(?P<body>.*?)(?P<close>^<!-- /table -->$)", re.S | re.M)
Runs = list[tuple[str, "dict | None"]]  # (label, report or None where its file does not exist)


@dataclass(frozen=True)
class Table:
    render: Callable[[Runs], str]
    files: tuple[tuple[str, str, str], ...]  # (file stem under bench/results, row label, the command that writes it)


def scale_part(runs: Runs, part: int) -> str:
    """One of the three tables bench_scale.py prints (cases, per-stage fits, paper extrapolation), with its caption."""
    r = runs[0][1]
    n, d = r["qk_size"]
    captions = [
        f"Peaks in MB, one fresh process per stage, its anonymous resident memory sampled every 2 ms; baseline: the "
        f"process after its imports; VmHWM also counts file pages; predicted: the bound plus the interpreter; request: "
        f"what the job would ask for; s: the stage call's wall time. N, Q and k vary one at a time at N = {n:,}, "
        f"d = {d}; Q on an index row is only the run's query count. The whole run took {r['seconds'] / 60:.1f} min.",
        "Per stage, the peak beyond the baseline against the bound: the worst ratio, the slope and intercept of a "
        "least-squares fit, and how the ratio changes with N and with Q·k (in brackets the peak's growth per MB of "
        f"the bound's); a stage is flagged when its ratio rises by more than {bench_scale.RISE_LIMIT:.0%} while its "
        "peak grows faster than its bound.",
        "Extrapolated to the largest run of each paper config: expected = the bound × the stage's worst ratio or "
        "slope, whichever is larger, plus the interpreter; a run expected above its request would be flagged.",
    ]
    tables = bench_scale.tables(r["cases"], r["fits"], r["extrapolation"]).split("\n\n")
    return captions[part] + "\n\n" + tables[part]


def model_memory_part(runs: Runs, part: int) -> str:
    """The cases bench_model_memory.py measured, or the memory an image more a batch adds."""
    r = runs[0][1]
    if part == 0:
        return (
            "Peaks in MB of one training epoch and one embedding pass, each in a fresh process sampled every 2 ms; "
            "beyond torch: the peak minus the process with torch imported; stated: `model_memory_bytes`; ratio: "
            f"beyond torch ÷ stated (worst {r['worst_ratio']:.2f}); request: what the job would ask for "
            f"(jobs above it: {', '.join(r['over_request']) or 'none'}).\n\n" + bench_model_memory.table(r["cases"])
        )
    return (
        "The memory an image more in a batch adds (between the two batches a model was measured at), in float32 "
        "values and in the units the statement charges for it.\n\n" + bench_model_memory.slopes_table(r["slopes"])
    )


def plan_part(runs: Runs, part: int) -> str:
    """The anchors beside the planner, the paper configs' totals, or their per-rule plans (bench_plan.py)."""
    r = runs[0][1]["results"]
    if part == 0:
        return (
            "Each published throughput beside the planner's on the same work (`resmem.timing.ANCHORS`). A share of "
            "peak is fitted to each anchor marked calibrates, so those agree by construction; the ones marked "
            f"checks are held out, with a goal of ±{r['goal']:.0%}.\n\n" + bench_plan.anchors_table(r["anchors"])
        )
    if part == 1:
        return (
            "Per paper config, as the time model estimates them (`python -m resmem.plan CONFIG --gpu h100` for the "
            "H100 column): its GPU jobs' hours on each class, the disk all its jobs ask for, its longest runtime "
            "request (estimate × 1.5) and the most segments a training runs as.\n\n"
            + bench_plan.totals_table(r["plans"])
        )
    return bench_plan.rules_tables(r["plans"])


def part(render: Callable[[Runs, int], str], index: int) -> Callable[[Runs], str]:
    return lambda runs: render(runs, index)


SWEEP = "python bench/bench_sweep.py"
SCALE = (("bench_scale", "", "python bench/bench_scale.py"),)
MODEL_MEMORY = (("bench_model_memory", "", "python bench/bench_model_memory.py"),)
PLAN = (("bench_plan", "", "python bench/bench_plan.py"),)
TABLES = {
    "bench_sweep": Table(bench_sweep.table, (("bench_sweep", "CPU, with the baseline", SWEEP),
                                             ("bench_sweep_engine_only", "CPU, engine only", f"{SWEEP} --engine-only"),
                                             ("bench_sweep_cuda_engine_only", "CUDA, engine only",
                                              f"{SWEEP} --device cuda --engine-only"))),
    "bench_datastore": Table(lambda runs: bench_datastore.table(runs[0][1]),
                             (("bench_datastore", "", "python bench/bench_datastore.py"),)),
    "bench_image_cache": Table(bench_image_cache.table, tuple(
        (f"bench_image_cache_{augment}", augment, f"python bench/bench_image_cache.py --augment {augment}")
        for augment in ("crop_flip", "none"))),
    "bench_scale": Table(part(scale_part, 0), SCALE),
    "bench_scale:fits": Table(part(scale_part, 1), SCALE),
    "bench_scale:extrapolation": Table(part(scale_part, 2), SCALE),
    "bench_plan:anchors": Table(part(plan_part, 0), PLAN),
    "bench_select": Table(lambda runs: bench_select.table(runs[0][1]["results"]),
                          (("bench_select", "", "python bench/bench_select.py"),)),
    "bench_custody": Table(lambda runs: bench_custody.table(runs[0][1]["results"]),
                           (("bench_custody", "", "python bench/bench_custody.py --results results"),)),
    "bench_stats": Table(lambda runs: bench_stats.tables(runs[0][1]["results"]),
                         (("bench_stats", "", "python bench/bench_stats.py"),)),
    "bench_timing": Table(lambda runs: bench_timing.table(runs[0][1]["results"]),
                          (("bench_timing", "", "python bench/bench_timing.py"),)),
    "bench_plan:totals": Table(part(plan_part, 1), PLAN),
    "bench_plan:rules": Table(part(plan_part, 2), PLAN),
    "bench_model_memory": Table(part(model_memory_part, 0), MODEL_MEMORY),
    "bench_model_memory:slopes": Table(part(model_memory_part, 1), MODEL_MEMORY),
    "bench_cpu_determinism": Table(lambda runs: bench_cpu_determinism.table(runs[0][1]),
                                   (("bench_cpu_determinism", "",
                                     "python bench/bench_cpu_determinism.py --repeat 2"),)),
    "bench_cpu_determinism_default": Table(lambda runs: bench_cpu_determinism.table(runs[0][1]),
                                           (("bench_cpu_determinism_default", "",
                                             "python bench/bench_cpu_determinism.py --config config/config.yaml "
                                             "--variants native,pinned --out bench/results/"
                                             "bench_cpu_determinism_default.json"),)),
    "bench_suite": Table(lambda runs: bench_suite.table(runs[0][1]),
                         (("bench_suite", "", "python bench/bench_suite.py --baseline COMMIT"),)),
}  # fmt: skip


def known(name: str) -> bool:
    """A block of a benchmark's table (TABLES), or `results/<experiment>` of a run under docs/results/."""
    return name in TABLES or (name.startswith("results/") and (RUN_RESULTS / name.removeprefix("results/")).is_dir())


def run_results_block(name: str) -> str:
    """The first table of docs/results/<experiment>/summary.md, as the workflow wrote it, and the run's provenance."""
    folder = RUN_RESULTS / name.removeprefix("results/")
    lines = (folder / "summary.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    stop = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    provenance = json.loads((folder / "provenance.json").read_text())
    versions = provenance.get("versions", {})
    kernels = "CPU kernels pinned to AVX2's" if provenance.get("cpu_kernels") else "native CPU kernels"
    devices = ", ".join(provenance.get("devices") or ["?"])
    source = (
        f"From docs/results/{folder.name}/summary.md: commit {provenance.get('git_commit', '?')[:10]}, "
        f"devices {devices}, {kernels}, torch {versions.get('torch', '?')}, faiss {versions.get('faiss', '?')}."
    )
    return "\n".join(lines[start:stop]) + "\n\n" + source + "\n"


def load(results: Path, stem: str) -> dict | None:
    path = results / f"{stem}.json"
    return json.loads(path.read_text()) if path.exists() else None


def render_block(name: str, results: Path = RESULTS) -> str:
    """The body of block `name`, rendered from the JSON files under `results` (or from docs/results/)."""
    if name.startswith("results/"):
        return run_results_block(name)
    table = TABLES[name]
    runs = [(label, load(results, stem)) for stem, label, _ in table.files]
    if all(report is None for _, report in runs):
        missing = " and ".join(f"bench/results/{stem}.json" for stem, _, _ in table.files)  # no code span: the docs'
        # tests check that every repository path in one exists
        commands = "; ".join(f"`.venv/bin/{command}`" for _, _, command in table.files)
        return (f"No results yet: {missing} not written. Run {commands}; then "
                "`.venv/bin/python bench/render_tables.py` renders them here.\n")  # fmt: skip
    parts = [table.render(runs)]
    for (stem, label, command), (_, report) in zip(table.files, runs, strict=True):
        if report is None:
            parts.append(f"{label}: not run yet (`.venv/bin/{command}` writes bench/results/{stem}.json).")
        else:
            parts.append(machine_line(report).replace("Machine:", f"Machine ({label}):" if label else "Machine:", 1))
    return "\n\n".join(parts) + "\n"


def rewrite(text: str, results: Path = RESULTS) -> tuple[str, list[str], list[str]]:
    """`text` with every known block rendered anew; the names of the blocks whose body changed, and of those that
    TABLES does not know (left as they are)."""
    opened = [m["name"] for m in OPEN.finditer(text)]
    if opened != [m["name"] for m in BLOCK.finditer(text)]:
        raise SystemExit(f"a table block without its closing <!-- /table -->, among {opened}")
    stale, unknown = [], [name for name in opened if not known(name)]

    def fresh(match: re.Match) -> str:
        if not known(match["name"]):
            return match[0]
        body = "\n" + render_block(match["name"], results) + "\n"
        if body != match["body"]:
            stale.append(match["name"])
        return match["open"] + body + match["close"]

    return BLOCK.sub(fresh, text), stale, unknown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if any block is stale")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the folder of the benchmarks' JSON files")
    parser.add_argument("docs", nargs="*", type=Path, help="the Markdown files (default: README.md and docs/*.md)")
    args = parser.parse_args(argv)
    failed = False
    for doc in args.docs or PAGES:
        text = doc.read_text()
        new, stale, unknown = rewrite(text, args.results)
        shown = doc.resolve().relative_to(REPO) if doc.resolve().is_relative_to(REPO) else doc
        for name in unknown:
            failed = True
            print(f"{shown}: table block {name} is unknown: no entry in TABLES of bench/render_tables.py "
                  f"(known: {', '.join(TABLES)})")  # fmt: skip
        for name in stale:
            failed = failed or args.check
            verb = "is stale: it differs from what its JSON renders" if args.check else "rewritten"
            print(f"{shown}: table block {name} {verb}")
        if not args.check and new != text:
            doc.write_text(new)
    if failed and args.check:
        print("run .venv/bin/python bench/render_tables.py to render the tables from bench/results/*.json")
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
