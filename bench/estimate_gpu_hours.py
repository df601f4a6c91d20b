"""Estimate the GPU hours of a paper config from counted FLOPs (an estimate, not a measurement).

    .venv/bin/python bench/estimate_gpu_hours.py config/paper/cifar100.yaml config/paper/imagenet.yaml \
        config/paper/lm.yaml

Training costs 3 forward passes' FLOPs per image and epoch (forward + backward), counted with
torch.utils.flop_counter on one image of the dataset's size; embedding one forward pass per datastore, val and
test image; the neighbor search 2·d·N·Q. The sum is divided by an assumed sustained throughput:
--tflops (default 100 TFLOP/s, about a third of an H100's dense bf16 peak, what ImageNet-size convnets with
bf16 autocast and channels_last sustain) for images larger than 64 px, and --tflops-small (default 10 TFLOP/s)
for 32×32 images, where narrow convolutions are bound by memory and kernel launches rather than arithmetic.

Language models: forward FLOPs per token counted on one window of `context` tokens; training 3 forward passes
per token and epoch over the train split's byte budget (byte tokens; a BPE tokenizer has about 4 bytes per
token, so this overestimates), the datastore one forward pass per kept position and query, the search
2·d·N·Q per datastore fraction (exact-search FLOPs: an upper bound for IVF-PQ), at --tflops.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from resmem.config import load
from resmem.lm.model import build_lm
from resmem.vision.models import build_model

# Images per pool of the real datasets (the config's split carves val from train).
POOLS = {"cifar100": (50_000, 10_000, 100, 32), "imagenet": (1_281_167, 50_000, 1000, None)}


def forward_flops_and_dim(spec: dict, num_classes: int, size: int) -> tuple[float, int]:
    model = build_model(spec, num_classes, 3).eval()
    x = torch.zeros(1, 3, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        dim = model.features(x).shape[1]
        model.head(torch.zeros(1, dim))
    return float(counter.get_total_flops()), dim


def estimate(path: str, tflops: float, tflops_small: float) -> list[str]:
    config = load(path)
    lines = []
    for name, exp in config["experiments"].items():
        n_train_pool, n_test, classes, size = POOLS[exp["dataset"]["name"]]
        size = size or exp["dataset"]["image_size"]
        n_val = round(exp["dataset"]["val_fraction"] * n_train_pool)
        total, runs = 0.0, 0
        for spec in exp["models"].values():
            flops, dim = forward_flops_and_dim(spec, classes, size)
            for fraction in exp["train_fractions"]:
                n_train = round(fraction * (n_train_pool - n_val))
                per_run = 3 * flops * n_train * exp["train"]["epochs"]  # training
                per_run += flops * (n_train + n_val + n_test)  # embedding
                per_run += 2 * dim * n_train * (n_val + n_test)  # one exact search at k_max
                total += per_run * len(exp["seeds"])
                runs += len(exp["seeds"])
        rate = tflops_small if size <= 64 else tflops
        hours = total / (rate * 1e12) / 3600
        lines.append(
            f"{path} [{name}]: {runs} runs, {total / 1e15:,.0f} PFLOP, "
            f"about {hours:,.0f} GPU hours at {rate:g} TFLOP/s sustained (estimate)"
        )
    return lines


def lm_forward_flops_per_token(spec: dict, vocab_size: int, context: int) -> float:
    model = build_lm(spec, vocab_size, context).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, context, dtype=torch.long))
    return float(counter.get_total_flops()) / context


def estimate_lm(path: str, tflops: float) -> list[str]:
    config = load(path)
    lines = []
    for name, exp in config["lm_experiments"].items():
        budget = exp["corpus"]["max_bytes"]
        if any(budget[s] is None for s in ("train", "val", "test")):
            lines.append(f"{path} [{name}]: set corpus.max_bytes for every split to estimate")
            continue
        n_train = budget["train"] // exp["datastore"]["stride"]
        n_store = min(n_train, exp["datastore"]["max_tokens"] or n_train)
        n_query = 2 * min(exp["eval_tokens"], budget["val"], budget["test"])
        total, runs = 0.0, 0
        for spec in exp["models"].values():
            flops = lm_forward_flops_per_token(spec, 256, exp["context"])
            per_seed = 3 * flops * budget["train"] * exp["train"]["epochs"]  # training
            per_seed += flops * (n_store + n_query)  # datastore keys and query states
            per_seed += sum(2 * spec["n_embd"] * f * n_store * n_query for f in exp["datastore"]["fractions"])
            total += per_seed * len(exp["seeds"])
            runs += len(exp["seeds"])
        hours = total / (tflops * 1e12) / 3600
        lines.append(
            f"{path} [{name}]: {runs} models × seeds, {total / 1e15:,.0f} PFLOP, "
            f"about {hours:,.0f} GPU hours at {tflops:g} TFLOP/s sustained (estimate)"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--tflops", type=float, default=100.0, help="assumed sustained TFLOP/s, large images")
    parser.add_argument("--tflops-small", type=float, default=10.0, help="assumed sustained TFLOP/s, 32x32 images")
    args = parser.parse_args()
    for path in args.configs:
        print("\n".join(estimate(path, args.tflops, args.tflops_small) + estimate_lm(path, args.tflops)))


if __name__ == "__main__":
    main()
