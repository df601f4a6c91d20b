"""Benchmark: the CPU-side rates of the planner's time model (resmem/timing.py), measured on this machine.

    .venv/bin/python bench/bench_timing.py            # writes bench/results/bench_timing.json
    .venv/bin/python bench/bench_timing.py --quick    # fewer images and repeats, for a check in seconds

- decode: ImageNet-sized JPEGs (500x375 px, quality 90, photo-like noise) through the workflow's own folder
  transforms (`resmem.vision.loader.folder_view`: RandomResizedCrop(224) + flip for training, the 8/7 resize and
  center crop for evaluation), ToTensor and Normalize, in one process: images per second per core;
- start-up: a fresh interpreter that imports what a job imports (torch, faiss, the resmem stage modules), the
  minimum of several starts;
- exact scan: faiss.knn on one thread (the brute-force recall reference, `resmem.knn.exact_search`, when it runs
  on the CPU), GFLOP/s at 2·n·d per query and row.

Each figure is the best of --repeats, as faiss's benchmarks time, with the machine record (`bench_record.py`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_record import RESULTS, machine, machine_line, write

DATA = Path(__file__).resolve().parent / "data"
IMAGENET_SIDE = (500, 375)  # ImageNet's typical image size (width, height)
JOB_IMPORTS = "import torch, faiss, resmem.vision.stages, resmem.lm.stages"


def jpeg_folder(n: int, seed: int = 0) -> list[Path]:
    """`n` photo-like 500x375 JPEGs in bench/data/jpeg500x375_<n>/ (made once, reused)."""
    from PIL import Image

    root = DATA / f"jpeg500x375_{n}"
    paths = [root / f"{i:05d}.jpg" for i in range(n)]
    if (root / "done").exists():
        return paths
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = IMAGENET_SIDE
    for path in paths:
        coarse = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
        pixels = (field + rng.normal(0, 12, field.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, quality=90)
    (root / "done").write_text("")
    return paths


def decode_rate(paths: list[Path], train: bool, repeats: int) -> float:
    """Images per second in one process: open, decode and transform each file as the streamed loader does."""
    import torch
    from PIL import Image
    from torchvision import transforms as T

    from resmem.vision.loader import folder_view

    torch.set_num_threads(1)
    view = folder_view("resized_crop_flip", 224, train)
    transform = T.Compose([*view, T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for path in paths:
            with Image.open(path) as image:
                transform(image.convert("RGB"))
        best = min(best, time.perf_counter() - start)
    return len(paths) / best


def startup_seconds(repeats: int) -> float:
    """A fresh interpreter importing a job's modules, the fastest of `repeats` starts."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", JOB_IMPORTS], check=True)
        times.append(time.perf_counter() - start)
    return min(times)


def scan_gflops(repeats: int, n: int = 200_000, d: int = 256, q: int = 256) -> float:
    """faiss.knn on one thread over n rows of width d for q queries: GFLOP/s at 2·n·d·q."""
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    rows, queries = (rng.standard_normal((m, d), dtype=np.float32) for m in (n, q))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        faiss.knn(queries, rows, 64)
        best = min(best, time.perf_counter() - start)
    return 2 * n * d * q / best / 1e9


def table(results: dict) -> str:
    rows = [
        ("JPEG decode + RandomResizedCrop(224) + flip, one core", f"{results['decode_train_per_core']:,.0f} images/s"),
        ("JPEG decode + 8/7 resize + center crop (224), one core", f"{results['decode_eval_per_core']:,.0f} images/s"),
        (f"job start-up (`{JOB_IMPORTS}`)", f"{results['startup_seconds']:.1f} s"),
        ("exact scan (faiss.knn, one thread)", f"{results['scan_gflops_per_core']:,.1f} GFLOP/s"),
    ]
    return "\n".join(["| rate | measured |", "|---|---:|", *(f"| {name} | {value} |" for name, value in rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 images, 2 repeats (writes only with --out)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    paths = jpeg_folder(200 if args.quick else 1000)
    results = {
        "images": len(paths),
        "image_size": list(IMAGENET_SIDE),
        "decode_train_per_core": decode_rate(paths, True, repeats),
        "decode_eval_per_core": decode_rate(paths, False, repeats),
        "startup_seconds": startup_seconds(repeats + 2),
        "scan_gflops_per_core": scan_gflops(repeats),
    }
    print(table(results))
    out = args.out or (None if args.quick else RESULTS / "bench_timing.json")
    if out is not None:
        report = write(out, args, machine("cpu"), results)
        print(machine_line(report))


if __name__ == "__main__":
    main()
