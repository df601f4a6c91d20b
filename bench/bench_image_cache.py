"""Benchmark: training epochs on a JPEG folder, streamed (every epoch decodes every file) vs decoded once into
memory (dataset.cache), with the same loader, model and recipe the workflow uses.

    .venv/bin/python bench/bench_image_cache.py                  # 20,000 32-px JPEGs, small_cnn width 4, crop_flip
    .venv/bin/python bench/bench_image_cache.py --augment none    # also checks that both sides feed the same pixels
    .venv/bin/python bench/bench_image_cache.py --quick           # 2,000 images, for a check in seconds

The folder is generated once into bench/data/jpeg32_<n>/ (its name encodes its size) and reused. Each epoch is
one pass of SGD over every image; the streamed side decodes and augments with `--workers` DataLoader processes
(torchvision transforms on each PIL image), the decoded side augments batches with tensor ops. The script prints
the one-off decode time, the seconds per epoch of each side (the minimum over `--epochs`) and their ratio; with
`--augment none` it checks that both sides feed the network the same pixels in the same order. It writes them
with the machine record (`bench_record.py`) to bench/results/bench_image_cache_<augment>.json (--quick: only with
--out), which bench/render_tables.py renders into the docs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from bench_record import RESULTS, machine, machine_line, write

DATA = Path(__file__).resolve().parent / "data"
CLASSES = 10
BATCH = 128


def make_folder(n: int, size: int = 32, seed: int = 0) -> Path:
    """`n` JPEGs in 10 class folders (train/ only is timed; test/ holds one image a class): each class a smooth
    random colour field of its own, with noise, so the files compress like photos rather than like constants."""
    from PIL import Image

    root = DATA / f"jpeg{size}_{n}"
    if (root / "done").exists():
        return root
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (CLASSES, 4, 4, 3)).astype(np.float32)
    for split, count in (("train", n), ("test", CLASSES)):
        for i in range(count):
            label = i % CLASSES
            coarse = base[label] + rng.normal(0, 40, (4, 4, 3))
            field = np.asarray(
                Image.fromarray(coarse.clip(0, 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
            )
            pixels = (field + rng.normal(0, 12, field.shape)).clip(0, 255).astype(np.uint8)
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=90)
    (root / "done").write_text("")
    return root


def epoch_seconds(loader, model, epochs: int) -> tuple[float, list]:
    """The fastest of `epochs` SGD epochs over the loader, and the first epoch's first batch (for the check)."""
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    best, first = float("inf"), None
    for epoch in range(epochs):
        start = time.perf_counter()
        for x, y in loader.epoch(seed=epoch, drop_single=True):
            if first is None:
                first = x.clone()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        best = min(best, time.perf_counter() - start)
    return best, first


def table(runs: list[tuple[str, dict | None]]) -> str:
    """The docs' table of (augment, report) runs, as bench/render_tables.py writes it (a run without a report: a
    row that says so)."""
    setups = {}
    for _, report in runs:
        if report:
            r = report["results"]
            setups.setdefault(f"{r['images']:,} JPEGs of {r['side']} px in {r['classes']} class folders, small_cnn "
                              f"width {r['width']}, batch {r['batch']}, {r['workers']} decoding processes on the "
                              f"streamed side", r["epochs"])  # fmt: skip
    lines = [f"{setup}. Seconds of wall time: decoding the folder once into memory (one run), and one SGD epoch over "
             f"every image streamed from the files (each epoch decodes and augments every file) and served decoded "
             f"from memory (tensor-op augmentation), each the fastest of {epochs} epochs."
             for setup, epochs in setups.items()]  # fmt: skip
    lines += ["", "| augment | decode once s | images/s | epoch, streamed s | epoch, decoded s | speed-up per epoch | "
              "same pixels, same order |", "|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for augment, report in runs:
        if report is None:
            lines.append(f"| `{augment}` | not run yet |" + " |" * 5)
            continue
        r = report["results"]
        same = {True: "yes", False: "no"}.get(r["same_pixels"], "– (random augmentation)")
        lines.append(f"| `{r['augment']}` | {r['decode_seconds']:.1f} | {r['images'] / r['decode_seconds']:,.0f} | "
                     f"{r['streamed_epoch_seconds']:.2f} | {r['decoded_epoch_seconds']:.2f} | "
                     f"{r['streamed_epoch_seconds'] / r['decoded_epoch_seconds']:.1f}× | {same} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 images instead of 20,000")
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per side (the minimum is reported)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader decoding processes (streamed side)")
    parser.add_argument("--width", type=int, default=4, help="small_cnn width")
    parser.add_argument("--augment", default="crop_flip", choices=["none", "flip", "crop_flip"])
    parser.add_argument("--out", type=Path, help="the JSON (default: bench/results/bench_image_cache_<augment>.json; "
                        "none written with --quick unless given)")  # fmt: skip
    args = parser.parse_args()

    import torch

    from resmem.vision.data import load_dataset
    from resmem.vision.loader import Loader
    from resmem.vision.models import build_model
    from resmem.vision.stages import decode, with_decoded

    n = 2_000 if args.quick else 20_000
    root = make_folder(n)
    dataset = {"name": "imagefolder", "root": str(root), "image_size": 32, "cache": "memory", "cache_mb": 4096}
    cache = root / "images.npz"
    start = time.perf_counter()
    decode(cache, dataset, args.augment, threads=args.workers)
    decode_seconds = time.perf_counter() - start
    cpu = torch.device("cpu")
    sides = {}
    for name, data in (("streamed", load_dataset(dataset)), ("decoded", with_decoded(load_dataset(dataset), cache))):
        loader = Loader(data.train, np.arange(len(data.train)), BATCH, cpu, args.augment, num_workers=args.workers)
        torch.manual_seed(0)
        model = build_model({"arch": "small_cnn", "width": args.width}, CLASSES, 3)
        sides[name] = epoch_seconds(loader, model, args.epochs)
    same = torch.equal(sides["streamed"][1], sides["decoded"][1])
    assert same or args.augment != "none", "the two sides fed different pixels"
    streamed, decoded = sides["streamed"][0], sides["decoded"][0]
    results = {"images": n, "side": 32, "classes": CLASSES, "width": args.width, "batch": BATCH,
               "workers": args.workers, "epochs": args.epochs, "augment": args.augment,
               "decode_seconds": decode_seconds, "streamed_epoch_seconds": streamed, "decoded_epoch_seconds": decoded,
               "same_pixels": same if args.augment == "none" else None}  # fmt: skip
    out = args.out or (None if args.quick else RESULTS / f"bench_image_cache_{args.augment}.json")
    host = machine("cpu")
    report = write(out, args, host, results) if out else {"machine": host, "results": results}
    print(table([(args.augment, report)]) + "\n\n" + machine_line(report))
    print(f"wrote {out}" if out else "no JSON written (--quick without --out)")


if __name__ == "__main__":
    main()
