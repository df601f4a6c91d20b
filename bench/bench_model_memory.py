"""Benchmark: do the image train and embed jobs stay within the memory that `resmem.vision.sizes.model_memory_bytes`
states, and do their requests cover it, across architectures, image sizes and batches?

    .venv/bin/python bench/bench_model_memory.py           # every case of CASES (~5 min on 2 cores)
    .venv/bin/python bench/bench_model_memory.py --quick   # the two smallest models: a smoke check

A synthetic class-folder dataset (JPEGs of random noise, 10 classes; one per image size, cached under --cache) is
decoded into memory as the workflow's decode stage does (dataset.cache: memory). Each case then runs the REAL
stages `resmem.vision.stages.train` (one epoch) and `embed` on the CPU, each in a fresh spawned process whose
RssAnon the parent samples every 2 ms (bench/bench_scale.py's `measure`). The peak beyond the baseline (the
interpreter with torch imported) is compared with the stated peak and the request (`resmem.bounds.request_mb`).
DataLoader workers (files decoded on the fly) are not measured: their term is an estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from bench_record import machine, machine_line, run_record
from bench_scale import DEFAULT_CACHE, measure, status_mb

from resmem import bounds
from resmem.config import validate
from resmem.vision import sizes

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "bench_model_memory.json"
CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS = 10, 48, 12  # 480 training images: several steps at every batch
THREADS = os.cpu_count()
# (name, model spec, image side, train batch, embed batch): widths, depths and batches that move each term
CASES = [
    ("small_cnn_w32", {"arch": "small_cnn", "width": 32}, 32, 256, 1024),
    ("cifar_resnet20", {"arch": "cifar_resnet", "depth": 20}, 32, 128, 1024),
    ("cifar_resnet56", {"arch": "cifar_resnet", "depth": 56}, 32, 128, 1024),
    ("resnet18_b32", {"arch": "resnet18", "pretrained": False}, 64, 32, 256),
    ("resnet18_b128", {"arch": "resnet18", "pretrained": False}, 64, 128, 512),
    ("resnet50_b32", {"arch": "resnet50", "pretrained": False}, 96, 32, 128),
    ("resnet50_b64", {"arch": "resnet50", "pretrained": False}, 96, 64, 256),
    ("vit_tiny_b32", {"arch": "timm", "name": "vit_tiny_patch16_224", "img_size": 64, "patch_size": 8}, 64, 32, 128),
    ("vit_tiny_b64", {"arch": "timm", "name": "vit_tiny_patch16_224", "img_size": 64, "patch_size": 8}, 64, 64, 256),
]
QUICK = ["small_cnn_w32", "cifar_resnet20"]
# what `sizes.model_memory_bytes` charges an image more a batch: train twice its activation values, embed
# EVAL_LIVE of its largest activation
STATED = {"train": (2, "activation values"), "embed": (sizes.EVAL_LIVE, "largest activations")}


def write_folder(root: Path, side: int) -> None:
    """A class-folder dataset of noise JPEGs (train/ and test/), written once."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for label in range(CLASSES):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    (root / "complete").touch()


def experiment_of(root: Path, side: int, spec: dict, train_batch: int, embed_batch: int) -> dict:
    """The case's experiment, with the schema's defaults filled as the workflow sees it."""
    config = {"experiments": {"bench": {
        "dataset": {"name": "imagefolder", "root": str(root), "image_size": side, "cache": "memory"},
        "models": {"model": spec}, "train_fractions": [1.0], "seeds": [0],
        "train": {"epochs": 1, "batch_size": train_batch, "num_workers": 0, "augment": "flip"},
        "embed": {"batch_size": embed_batch}}}}  # fmt: skip
    return validate(config)["experiments"]["bench"]


def stage_job(job: dict, queue) -> None:
    """In a fresh process: torch imported, the baseline, then the stage call alone, timed."""
    import torch

    from resmem.vision import stages

    log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 2)
    torch.set_num_threads(THREADS)
    experiment, work = job["experiment"], Path(job["work"])
    baseline = status_mb(os.getpid())["RssAnon"]
    start = time.perf_counter()
    run = {"model": work / "model.pt", "train_log": work / "train_log.csv", "meta": work / "train_meta.json",
           "train_rows": work / "train_rows.npz"}  # fmt: skip
    if job["stage"] == "train":
        stages.train(job["split"], run, experiment["dataset"], experiment["models"]["model"], experiment["train"],
                     1.0, 0, "cpu", THREADS, {}, images_path=job["images"])  # fmt: skip
    else:
        stages.embed(job["split"], run["model"], run["train_rows"], work / "embeddings.npz", experiment["dataset"],
                     experiment["train"], experiment["embed"]["batch_size"], "cpu", THREADS, job["images"])  # fmt: skip
    seconds = time.perf_counter() - start
    queue.put({"baseline_mb": baseline, "seconds": seconds})


def run_case(cache: Path, name: str, spec: dict, side: int, train_batch: int, embed_batch: int) -> list[dict]:
    from resmem.vision import stages

    root = cache / f"folder_s{side}_c{CLASSES}_n{TRAIN_PER_CLASS}x{TEST_PER_CLASS}"
    if not (root / "complete").exists():
        write_folder(root, side)
    experiment = experiment_of(root, side, spec, train_batch, embed_batch)
    work = cache / "work" / f"model_{name}"
    work.mkdir(parents=True, exist_ok=True)
    split, images = work / "split.npz", work / "images.npz"
    stages.split(split, experiment["dataset"])
    stages.decode(images, experiment["dataset"], experiment["train"]["augment"], 1)
    cases = []
    for stage in ("train", "embed"):
        job = {"stage": stage, "experiment": experiment, "work": str(work), "split": split, "images": images,
               "log": work / f"{stage}.log"}  # fmt: skip
        measured = measure(job, stage_job)
        stated = sizes.model_memory_bytes(experiment, "model", stage, images.stat().st_size) / bounds.MB
        parameters, values, largest = sizes.model_footprint(spec, CLASSES, 3, side)
        extra = measured["peak_mb"] - measured["baseline_mb"]
        case = {"case": name, "stage": stage, "spec": spec, "side": side,
                "batch": train_batch if stage == "train" else embed_batch, "parameters": parameters,
                "activation_values": values, "largest_activation": largest, **measured, "extra_mb": extra,
                "stated_mb": stated, "extra_ratio": extra / stated,
                "request_mb": bounds.request_mb(stated * bounds.MB, "torch")}  # fmt: skip
        case["over_request"] = case["peak_mb"] > case["request_mb"]
        print(f"{name:15} {stage:5} batch {case['batch']:5}: peak {case['peak_mb']:6.0f} MB (base "
              f"{case['baseline_mb']:4.0f}), stated {stated:6.0f} beyond it, ratio {case['extra_ratio']:.2f}, "
              f"request {case['request_mb']:6}, {case['seconds']:5.1f} s", flush=True)  # fmt: skip
        cases.append(case)
    return cases


def slopes(cases: list[dict]) -> list[dict]:
    """Per model and stage measured at two batches: the memory an image more a batch adds, in float32 values and
    in units of what the statement scales with (train: the activation values; embed: the largest activation)."""
    found = []
    for stage in ("train", "embed"):
        families = {}
        for c in cases:
            if c["stage"] == stage:
                families.setdefault((json.dumps(c["spec"], sort_keys=True), c["side"]), []).append(c)
        for group in families.values():
            if len(group) == 2:
                small, large = sorted(group, key=lambda c: c["batch"])
                per_image = (large["extra_mb"] - small["extra_mb"]) * bounds.MB / (large["batch"] - small["batch"]) / 4
                unit = small["activation_values"] if stage == "train" else small["largest_activation"]
                found.append({"model": small["case"].rsplit("_b", 1)[0], "stage": stage,
                              "values_per_image": per_image, "per_unit": per_image / unit})  # fmt: skip
    return found


def table(cases: list[dict]) -> str:
    rows = ["| case | stage | side | batch | parameters | peak MB | beyond torch MB | stated MB | ratio | request MB |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]  # fmt: skip
    for c in cases:
        rows.append(f"| {c['case']} | {c['stage']} | {c['side']} | {c['batch']} | {c['parameters']:,} | "
                    f"{c['peak_mb']:,.0f} | {c['extra_mb']:,.0f} | {c['stated_mb']:,.0f} | {c['extra_ratio']:.2f} | "
                    f"{c['request_mb']:,} |")  # fmt: skip
    return "\n".join(rows)


def slopes_table(growth: list[dict]) -> str:
    rows = ["| model | stage | float32 values an image | measured | stated |", "|---|---|---:|---|---:|"]
    for g in growth:
        stated, unit = STATED[g["stage"]]
        rows.append(f"| {g['model']} | {g['stage']} | {g['values_per_image']:,.0f} | {g['per_unit']:.2f} {unit} | "
                    f"{stated} |")  # fmt: skip
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only " + ", ".join(QUICK))
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    cases = []
    for name, spec, side, train_batch, embed_batch in CASES:
        if not args.quick or name in QUICK:
            cases += run_case(args.cache, name, spec, side, train_batch, embed_batch)
    worst = max(c["extra_ratio"] for c in cases)
    over = [c["case"] + "/" + c["stage"] for c in cases if c["over_request"]]
    growth = slopes(cases)
    result = {**run_record(args), "machine": machine(), "cases": cases, "slopes": growth, "worst_ratio": worst,
              "over_request": over}  # fmt: skip
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(table(cases) + "\n\n" + slopes_table(growth))
    print(f"worst (peak - baseline) / stated: {worst:.2f}; over the request: {over or 'none'}")
    print(machine_line(result))


if __name__ == "__main__":
    main()
