"""Estimate the GPU hours of a paper config from counted FLOPs (an estimate, not a measurement).

    .venv/bin/python bench/estimate_gpu_hours.py config/paper/cifar100.yaml config/paper/imagenet.yaml

Training costs 3 forward passes' FLOPs per image and epoch (forward + backward), counted with
torch.utils.flop_counter on one image of the dataset's size; embedding one forward pass per datastore, val and
test image; the neighbour search 2·d·N·Q. The sum is divided by an assumed sustained throughput:
--tflops (default 100 TFLOP/s, about a third of an H100's dense bf16 peak, what ImageNet-size convnets with
bf16 autocast and channels_last sustain) for images larger than 64 px, and --tflops-small (default 10 TFLOP/s)
for 32×32 images, where narrow convolutions are bound by memory and kernel launches rather than arithmetic.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from resmem.config import load
from resmem.models import build_model

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--tflops", type=float, default=100.0, help="assumed sustained TFLOP/s, large images")
    parser.add_argument("--tflops-small", type=float, default=10.0, help="assumed sustained TFLOP/s, 32x32 images")
    args = parser.parse_args()
    for path in args.configs:
        print("\n".join(estimate(path, args.tflops, args.tflops_small)))


if __name__ == "__main__":
    main()
