"""Benchmark: what the chain of custody (`resmem.custody`) costs. A job hashes each .npz and index it writes while
writing it (`resmem.digests.HashingWriter`) and each input once before reading it; this measures sha256 per GB
beside the work it rides on, writing the same bytes (np.save, flushed to the disk; the workflow's own hashing
.npz writer) and reading them back (np.load), the whole chain of a results folder, and the split job's check
that no test image is a byte copy of a training image (`resmem.vision.data.check_no_copies`) per file.

    .venv/bin/python bench/bench_custody.py                    # 2 GiB; writes bench/results/bench_custody.json
    .venv/bin/python bench/bench_custody.py --results results  # also verify that folder (run the workflow first)
    .venv/bin/python bench/bench_custody.py --gib 0.25 --out /tmp/c.json  # a quick look

Each time is the fastest of repeats that add up to at least MIN_SECONDS. The hash reads from the page cache (the
file was just written, or is read by the job anyway); a cold read runs at the disk's speed whatever follows it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_record import RESULTS, machine, machine_line, write

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from resmem.digests import file_hash  # noqa: E402
from resmem.io import fsync_path, save_npz  # noqa: E402
from resmem.verify import verify  # noqa: E402
from resmem.vision.data import Dataset, Pool, check_no_copies  # noqa: E402

MIN_SECONDS = 3.0
MIN_REPEATS = 5  # a write now and then waits on the flush of the one before it
PAPER_DATASTORE_GB = 180  # the largest datastore of the paper configs (`python -m resmem.plan config/paper/lm.yaml`)
IMAGENET_FILES = 1_281_167 + 50_000  # ILSVRC-2012 train and val


def fastest(run) -> float:
    times, start = [], time.perf_counter()
    while len(times) < MIN_REPEATS or time.perf_counter() - start < MIN_SECONDS:
        begin = time.perf_counter()
        run()
        times.append(time.perf_counter() - begin)
    return min(times)


def file_costs(gib: float, folder: Path) -> dict:
    """Seconds to write (np.save + fsync), read (np.load) and sha256 one float16 array of `gib` GiB."""
    array = np.random.default_rng(0).standard_normal(int(gib * 2**30) // 2, dtype=np.float32).astype(np.float16)
    path = folder / "array.npy"

    def save():
        np.save(path, array)
        fsync_path(path)

    costs = {"bytes": 0, "write_seconds": fastest(save)}
    costs["bytes"] = os.path.getsize(path)

    def savez():
        with open(folder / "plain.npz", "wb") as file:
            np.savez(file, keys=array)
        fsync_path(folder / "plain.npz")

    costs["savez_seconds"] = fastest(savez)
    costs["hashed_write_seconds"] = fastest(lambda: save_npz(folder / "array.npz", keys=array))
    costs["read_seconds"] = fastest(lambda: np.load(path))
    costs["sha256_seconds"] = fastest(lambda: file_hash(path))
    return costs


def copy_check_costs(folder: Path, train: int, test: int) -> dict:
    """Seconds for `check_no_copies` over `train` and `test` files of random bytes whose sizes all lie within
    2,000 bytes, so that (as in ImageNet, whose JPEG sizes overlap) nearly every file's ends are read; the page
    cache holds them (a cold disk adds its own seek time per file)."""
    rng = np.random.default_rng(0)
    paths = {}
    for split, count in (("train", train), ("test", test)):
        (folder / split).mkdir()
        paths[split] = [str(folder / split / f"{i:06d}.jpg") for i in range(count)]
        for path in paths[split]:
            Path(path).write_bytes(rng.bytes(int(rng.integers(10_000, 12_000))))
    data = Dataset("bench", *(Pool(np.zeros(len(paths[s]), np.int64), paths=paths[s]) for s in paths), 1)
    return {"train_files": train, "test_files": test, "seconds": fastest(lambda: check_no_copies(data))}


def folder_costs(folder: Path) -> dict:
    """Seconds for `resmem.verify` over a results folder, the bytes it hashes and the sum of its jobs' times."""
    hashed = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and "logs" not in p.parts)
    job_seconds = 0.0
    for tsv in folder.rglob("benchmarks/*.tsv"):
        job_seconds += float(tsv.read_text().splitlines()[1].split("\t")[0])
    begin = time.perf_counter()
    problems, _, matched = verify(folder)
    return {"folder": str(folder), "bytes": hashed, "artifacts": matched, "problems": len(problems),
            "verify_seconds": time.perf_counter() - begin, "job_seconds": job_seconds}  # fmt: skip


def table(results: dict) -> str:
    f = results["file"]
    gb = f["bytes"] / 1e9
    lines = ["| work | on | seconds | GB/s | sha256 beside it |", "|---|---|---:|---:|---:|"]
    for name, key in (("write (np.save, flushed)", "write_seconds"), ("read (np.load)", "read_seconds"),
                      ("sha256", "sha256_seconds"),
                      ("write (np.savez to a file, flushed)", "savez_seconds")):  # fmt: skip
        share = "" if key == "sha256_seconds" else f"{f['sha256_seconds'] / f[key]:.2f}×"
        lines.append(f"| {name} | {gb:.2f} GB | {f[key]:.2f} | {gb / f[key]:.2f} | {share} |")
    hashed = f["hashed_write_seconds"]
    lines.append(f"| write, hashed while written (`resmem.io.save_npz`, flushed) | {gb:.2f} GB | {hashed:.2f} | "
                 f"{gb / hashed:.2f} | {hashed / (f['savez_seconds'] + f['sha256_seconds']):.2f}× np.savez, then "
                 "sha256 |")  # fmt: skip
    per_gb = f["sha256_seconds"] / gb
    lines.append(f"| sha256 of a {PAPER_DATASTORE_GB} GB datastore | (from the rate above) | "
                 f"{per_gb * PAPER_DATASTORE_GB:.0f} | {1 / per_gb:.2f} | |")  # fmt: skip
    c = results["copies"]
    files = c["train_files"] + c["test_files"]
    lines.append(f"| no test image a copy of a training image: {c['train_files']:,} + {c['test_files']:,} files | "
                 f"{files:,} files | {c['seconds']:.2f} | | {c['seconds'] / files * 1e6:.0f} µs a file, "
                 f"{c['seconds'] / files * IMAGENET_FILES:.0f} s for ImageNet's {IMAGENET_FILES:,} |")  # fmt: skip
    if "folder" in results:
        r = results["folder"]
        lines.append(f"| `resmem.verify {r['folder']}`: {r['artifacts']} artifacts | {r['bytes'] / 1e6:.1f} MB | "
                     f"{r['verify_seconds']:.2f} | {r['bytes'] / 1e9 / r['verify_seconds']:.2f} | "
                     f"{r['verify_seconds'] / r['job_seconds']:.3f}× its jobs' {r['job_seconds']:.0f} s |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2.0, help="size of the array written, read and hashed")
    parser.add_argument("--train-files", type=int, default=20_000, help="training files of the copy check")
    parser.add_argument("--results", type=Path, default=None, help="a results folder to verify as well")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_custody.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as folder:
        results = {"file": file_costs(args.gib, Path(folder))}
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as folder:
        results["copies"] = copy_check_costs(Path(folder), args.train_files, args.train_files // 10)
    if args.results is not None:
        results["folder"] = folder_costs(args.results)
    print(table(results))
    print(machine_line(write(args.out, args, machine("cpu"), results)))


if __name__ == "__main__":
    main()
