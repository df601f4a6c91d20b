"""Base-model training with per-epoch checkpoints: a killed run resumes where it stopped, bit for bit on CPU.

The recipe (all in the config's `train` section): SGD with Nesterov momentum or AdamW, a linear warm-up then
cosine or step decay (per optimizer step), weight decay, label smoothing, augmentation. On a CUDA device the
same code adds bf16 autocast, channels_last and optionally torch.compile; on the CPU those switches are off
(except under the test switch of `resmem.device.accelerated`).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from tqdm import tqdm

from resmem.device import accelerated
from resmem.io import ArtifactError, atomic_path

log = logging.getLogger(__name__)


class Loader(Protocol):
    """What training asks of a data source: batches (x, y) on `device`, in a seeded order for training."""

    device: torch.device
    memory_format: torch.memory_format  # channels_last when the model should be converted to it

    def __len__(self) -> int: ...

    def epoch(
        self, seed: int | None = None, drop_single: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def make_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    # Decay weight matrices and kernels only, not biases or norm gains (as nanoGPT): those set offsets and scales.
    params = [p for p in model.parameters() if p.requires_grad]  # named_parameters order, tied weights once
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg["weight_decay"]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if cfg["optimizer"] == "adam":
        return torch.optim.AdamW(groups, lr=cfg["lr"])
    return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=True)


def lr_factor(step: int, total_steps: int, cfg: dict, steps_per_epoch: int) -> float:
    """Multiplier of the peak learning rate at an optimizer step: linear warm-up, then cosine to zero or
    step decay by `gamma` at each milestone (a fraction of the epochs)."""
    warmup = cfg["warmup_epochs"] * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if cfg["schedule"] == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    passed = sum(step >= round(m * total_steps) for m in cfg["milestones"])
    return cfg["gamma"] ** passed


def use_amp(cfg: dict, device: torch.device) -> bool:
    return bool(cfg["amp"]) and accelerated(device)


@torch.inference_mode()
def accuracy(model: nn.Module, loader: Loader, amp: bool = False) -> float:
    model.eval()
    correct = total = 0
    with torch.autocast(loader.device.type, dtype=torch.bfloat16, enabled=amp):
        for x, y in loader.epoch():
            correct += (model(x).argmax(-1) == y).sum().item()
            total += y.numel()
    return correct / max(total, 1)


def train(
    model: nn.Module,
    train_loader: Loader,
    val_loader: Loader,
    cfg: dict,
    seed: int,
    device: torch.device,
    checkpoint: Path | None = None,
    resume_from: Path | None = None,
    stop_epoch: int | None = None,
) -> list[dict]:
    """Train `model` in place and return the per-epoch log rows (epoch, loss, train_acc, val_acc, seconds).

    If `checkpoint` holds a run of the same config and seed, training resumes after its last epoch; without one,
    from `resume_from` (the checkpoint a previous segment of the same run ended with), which must hold such a run.
    `stop_epoch`: train up to that epoch only (a segment; the checkpoint then holds its end). The batch order of
    epoch e depends only on (seed, e), so a resumed or segmented run equals an uninterrupted one."""
    model.to(device)
    if train_loader.memory_format == torch.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg["epochs"] == 0:  # used as it is (a pretrained network): one row that says how it scores
        start, amp = time.perf_counter(), use_amp(cfg, device)
        train_acc, val_acc = accuracy(model, train_loader, amp), accuracy(model, val_loader, amp)
        log.info("not trained (epochs 0): train acc %.4f, val acc %.4f", train_acc, val_acc)
        return [{"epoch": 0, "loss": float("nan"), "train_acc": train_acc, "val_acc": val_acc,
                 "seconds": time.perf_counter() - start}]  # fmt: skip
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = max(1, math.ceil(len(train_loader) / cfg["batch_size"]))
    total_steps = cfg["epochs"] * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, cfg, steps_per_epoch)
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
    amp = use_amp(cfg, device)
    forward = torch.compile(model) if cfg["compile"] and accelerated(device) else model
    # The optimizer's layout is part of what a checkpoint must match (v2: biases and norm weights undecayed).
    fingerprint = json.dumps({"cfg": cfg, "seed": seed, "optimizer_groups": "v2"}, sort_keys=True)

    history: list[dict] = []
    state = read_checkpoint(checkpoint, device, fingerprint) if checkpoint is not None else None
    if state is None and resume_from is not None:
        state = read_checkpoint(resume_from, device, fingerprint)
        if state is None:
            raise ArtifactError(f"{resume_from}: not the checkpoint of an earlier segment of this run (another config "
                                "or seed, or not a checkpoint); delete it and rerun its train_segment job")  # fmt: skip
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = state["history"]
        log.info("resuming from %s after epoch %d", state["path"], len(history))
    last = cfg["epochs"] if stop_epoch is None else min(stop_epoch, cfg["epochs"])

    bar = tqdm(
        range(len(history), last),
        desc="train",
        unit="epoch",
        file=sys.stderr,
        initial=len(history),
        total=cfg["epochs"],
        dynamic_ncols=True,
    )
    for epoch in bar:
        start = time.perf_counter()
        model.train()
        total_loss, correct, seen = 0.0, 0, 0
        for x, y in train_loader.epoch(seed=seed * 1_000_003 + epoch, drop_single=True):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = forward(x)  # (batch, classes), or (batch, positions, vocabulary) for a language model
                loss = loss_fn(logits.flatten(0, -2), y.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * y.numel()
            correct += (logits.argmax(-1) == y).sum().item()
            seen += y.numel()
        row = {
            "epoch": epoch + 1,
            "loss": total_loss / seen,
            "train_acc": correct / seen,
            "val_acc": accuracy(forward, val_loader, amp),
            "seconds": time.perf_counter() - start,
        }
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", train=f"{row['train_acc']:.3f}", val=f"{row['val_acc']:.3f}")
        log.info(
            "epoch %(epoch)d: loss %(loss).4f, train acc %(train_acc).4f, val acc %(val_acc).4f, %(seconds).2f s", row
        )
        if checkpoint is not None:
            with atomic_path(checkpoint) as tmp:
                torch.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "history": history,
                        "fingerprint": fingerprint,
                    },
                    tmp,
                )
    bar.close()
    return history


def read_checkpoint(path: Path, device: torch.device, fingerprint: str) -> dict | None:
    """The state in a checkpoint `train` wrote for the run `fingerprint` names (its path under "path"), or None: no
    file, a truncated one or one holding anything else (logged; read as data only, never a pickled call), or one
    written for another config or seed."""
    if not Path(path).exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        state = state if isinstance(state, dict) else {}
    except Exception as exc:
        log.warning("ignoring %s: not a checkpoint this workflow wrote (%s)", path, type(exc).__name__)
        return None
    if state.get("fingerprint") != fingerprint:
        log.info("ignoring %s: it was written for another config or seed", path)
        return None
    return {**state, "path": str(path)}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied weight counts once
