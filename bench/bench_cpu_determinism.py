"""Benchmark: do two x86-64 CPUs give the same bytes? The smoke config run cold on this machine's native kernels,
on the same machine limited to what an AVX2-only CPU has, and under candidate settings that pin every library's
kernels to AVX2; the tables each writes compared byte for byte, and the cost in time.

    .venv/bin/python bench/bench_cpu_determinism.py            # native, avx2_cpu, pinned, torch_faiss_pinned
    .venv/bin/python bench/bench_cpu_determinism.py --repeat 2 # each twice: a variant must also agree with itself

torch (ATen's own kernels, oneDNN's convolutions, MKL's matrix products), faiss, numpy (and its OpenBLAS) and
glibc's libm each pick kernels by the CPU's instruction set at run time. `avx2_cpu` switches every one of them to
what it would pick on an AVX2-only CPU (the emulated second machine: `resmem.device.AVX2_CPU_EMULATION`);
`pinned` sets all but glibc's (`resmem.device.CPU_KERNELS`, what a CPU run sets by default: glibc's choice is made
when a process starts, before it can set anything), and `torch_faiss_pinned` only torch's and faiss's. Every run sets
`cpu_kernels: native`, so that the workflow pins nothing itself and each variant's environment decides. A variant
reproduces the AVX2 machine where its tables equal avx2_cpu's. Tables: every .csv, .md, .tex and selected.json
under results/ (train logs without their wall-time column; not the provenance, logs, benchmarks or figures, which
record times and paths); arrays: every
.npz, compared too, to say where the bytes first differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_record import machine, machine_line, run_record

from resmem.device import AVX2_CPU_EMULATION, CPU_KERNELS

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
DEFAULT_WORK = REPO / "bench" / "scale_cache" / "determinism"
DEFAULT_OUT = REPO / "bench" / "results" / "bench_cpu_determinism.json"  # --out for another config
# torch's and faiss's pins alone: without numpy's and OpenBLAS's
TORCH_FAISS = {k: CPU_KERNELS[k] for k in ("ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                                           "MKL_CBWR", "FAISS_OPT_LEVEL")}  # fmt: skip
VARIANTS = {"native": {}, "avx2_cpu": AVX2_CPU_EMULATION, "pinned": CPU_KERNELS, "torch_faiss_pinned": TORCH_FAISS}
TABLES = (".csv", ".md", ".tex")


def run(variant: str, work: Path, config: Path) -> dict:
    """One cold run of the smoke config under a variant's environment: its wall time and the hash of each file."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONHASHSEED": "0", **VARIANTS[variant]}
    start = time.perf_counter()
    command = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(work), "--cores", "2",
               "--configfile", str(config), "--config", "cpu_kernels=native"]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    return {"variant": variant, "seconds": seconds, "files": hashed_files(work)}


def hashed_files(work: Path) -> dict[str, str]:
    """sha256 of each compared file of a finished run in `work`."""
    files = {}
    for path in sorted((work / "results").rglob("*")):
        parts = path.relative_to(work).parts
        if path.is_file() and not {"logs", "benchmarks", "figures"} & set(parts) and path.name != "provenance.json":
            if path.suffix in (*TABLES, ".npz") or path.name == "selected.json":
                data = path.read_bytes()
                if path.name == "train_log.csv":  # its last column is each epoch's wall time
                    data = b"\n".join(line.rsplit(b",", 1)[0] for line in data.splitlines())
                files[str(path.relative_to(work))] = hashlib.sha256(data).hexdigest()
    return files


def differing(a: dict, b: dict, tables: bool) -> list[str]:
    keep = [name for name in a["files"] if name.endswith(TABLES) or name.endswith("selected.json")]
    names = keep if tables else [name for name in a["files"] if name.endswith(".npz")]
    return [name for name in names if a["files"][name] != b["files"].get(name)]


def unstable(runs: list[dict], variant: str) -> list[str]:
    """The tables that differ between repeated runs of a variant."""
    first = next(r for r in runs if r["variant"] == variant)
    return sorted({name for r in runs if r["variant"] == variant for name in differing(first, r, tables=True)})


def table(report: dict) -> str:
    """The Markdown table of a report: per variant its wall time and the files that differ from the reference's."""
    tables, arrays = report["tables"], report["arrays"]
    lines = [f"Reference: `{report['reference']}`; wall time: the minimum over the runs of each variant; "
             "tables ≠ own repeat: tables that differed between runs of the same variant (0 where it ran once).",
             "", "| variant | wall s | × native | tables ≠ reference | arrays ≠ reference | tables ≠ own repeat |",
             "|---|--:|--:|--:|--:|--:|"]  # fmt: skip
    for row in report["rows"]:
        lines.append(f"| {row['variant']} | {row['seconds']:.0f} | {row['time_vs_native']:.2f} | "
                     f"{len(row['tables_differing_from_reference'])} of {tables} | "
                     f"{len(row['arrays_differing_from_reference'])} of {arrays} | "
                     f"{len(row['tables_differing_between_repeats'])} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--config", type=Path, default=REPO / "config" / "smoke.yaml", help="the config run")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from " + ", ".join(VARIANTS))
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    runs = []
    for repeat in range(args.repeat):
        for variant in args.variants.split(","):
            runs.append(run(variant, args.work / f"{variant}_{repeat}", args.config))
            print(f"{variant} (run {repeat + 1}): {runs[-1]['seconds']:.0f} s", flush=True)
    first = {r["variant"]: r for r in reversed(runs)}  # each variant's first run
    reference = first.get("avx2_cpu", first["pinned"])  # without the emulation, the pinned run is the reference
    print(f"reference: {reference['variant']}")
    rows = []
    for variant, result in first.items():
        seconds = min(r["seconds"] for r in runs if r["variant"] == variant)
        rows.append({"variant": variant, "seconds": seconds, "time_vs_native": None,
                     "tables_differing_from_reference": differing(result, reference, tables=True),
                     "arrays_differing_from_reference": differing(result, reference, tables=False),
                     "tables_differing_between_repeats": unstable(runs, variant)})  # fmt: skip
    native = next(r["seconds"] for r in rows if r["variant"] == "native")
    for row in rows:
        row["time_vs_native"] = row["seconds"] / native
    config = str(args.config.resolve().relative_to(REPO))
    result = {**run_record(args), "machine": machine(), "config": config, "reference": reference["variant"],
              "variants": {k: VARIANTS[k] for k in VARIANTS}, "rows": rows,
              "tables": len([n for n in reference["files"] if not n.endswith(".npz")]),
              "arrays": len([n for n in reference["files"] if n.endswith(".npz")])}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{machine_line(result)}\n{table(result)}")
    for row in rows:
        if row["tables_differing_from_reference"]:
            print(
                f"{row['variant']}: tables differing from the reference: {row['tables_differing_from_reference'][:8]}"
            )


if __name__ == "__main__":
    main()
