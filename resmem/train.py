"""Base-model training with per-epoch checkpoints: a killed run resumes where it stopped, bit for bit on CPU."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from resmem.io import atomic_path

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def make_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    if cfg["optimizer"] == "adam":
        return torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    return torch.optim.SGD(
        model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], nesterov=True, weight_decay=cfg["weight_decay"]
    )


def _batches(n: int, batch_size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        batch = order[start : start + batch_size]
        if len(batch) > 1:  # a lone example breaks batch norm's batch statistics
            yield batch


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    model.eval()
    correct = sum(
        (model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
        for i in range(0, len(x), batch_size)
    )
    return correct / max(len(x), 1)


def train(
    model: nn.Module,
    x_train,
    y_train,
    x_val,
    y_val,
    cfg: dict,
    seed: int,
    device: torch.device,
    checkpoint: Path | None = None,
) -> list[dict]:
    """Train `model` in place and return the per-epoch log rows (epoch, loss, train_acc, val_acc, seconds).

    If `checkpoint` holds a run of the same config and seed, training resumes after its last epoch.
    The batch order of epoch e depends only on (seed, e), so a resumed run equals an uninterrupted one."""
    model.to(device)
    x_train, y_train = torch.as_tensor(x_train, device=device), torch.as_tensor(y_train, device=device)
    x_val, y_val = torch.as_tensor(x_val, device=device), torch.as_tensor(y_val, device=device)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = max(1, math.ceil(len(x_train) / cfg["batch_size"]))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg["epochs"] * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    fingerprint = json.dumps({"cfg": cfg, "seed": seed}, sort_keys=True)

    history: list[dict] = []
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history = state["history"]
            log.info("resuming from %s after epoch %d", checkpoint, len(history))
        else:
            log.info("ignoring %s: it was written for another config or seed", checkpoint)

    generator = torch.Generator()
    bar = tqdm(
        range(len(history), cfg["epochs"]),
        desc="train",
        unit="epoch",
        file=sys.stderr,
        initial=len(history),
        total=cfg["epochs"],
        dynamic_ncols=True,
    )
    for epoch in bar:
        start = time.perf_counter()
        generator.manual_seed(seed * 1_000_003 + epoch)
        model.train()
        total_loss, correct, seen = 0.0, 0, 0
        for batch in _batches(len(x_train), cfg["batch_size"], generator):
            batch = batch.to(device)
            logits = model(x_train[batch])
            loss = loss_fn(logits, y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(batch)
            correct += (logits.argmax(1) == y_train[batch]).sum().item()
            seen += len(batch)
        row = {
            "epoch": epoch + 1,
            "loss": total_loss / seen,
            "train_acc": correct / seen,
            "val_acc": accuracy(model, x_val, y_val),
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


@torch.inference_mode()
def extract(model: nn.Module, x, batch_size: int, device: torch.device):
    """Penultimate-layer features and logits (both float32 numpy) of every row of x, in eval mode."""
    model.to(device).eval()
    feats, logits = [], []
    for start in range(0, len(x), batch_size):
        batch = torch.as_tensor(x[start : start + batch_size], device=device)
        f = model.features(batch)
        feats.append(f.float().cpu())
        logits.append(model.head(f).float().cpu())
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()
