"""Image data with real structure for tests, in the on-disk formats users bring."""

import numpy as np
import torch
from PIL import Image

from resmem.vision.data import load_dataset, make_split


def digits_jpeg_folders(root, size: int = 32, test_fraction: float = 0.25, seed: int = 0, quality: int = 95) -> dict:
    """The UCI digits (scikit-learn's copy) rendered as `size`-px RGB JPEGs in class folders, root/train/<digit>/
    and root/test/<digit>/. The test folder holds exactly the test split that the in-memory digits path carves
    with the same `test_fraction` and `seed`, so the two paths can be compared. Returns {split: pool rows}."""
    digits = load_dataset({"name": "digits"})
    test = make_split(digits, test_fraction, 0.2, seed)["test_idx"]
    rows = {"train": np.setdiff1d(np.arange(len(digits.train)), test), "test": test}
    for split, indices in rows.items():
        for i in indices:
            gray = (digits.train.images[i, 0].astype(np.float32) * (255 / 16)).round().astype(np.uint8)
            image = Image.fromarray(gray).resize((size, size), Image.BILINEAR).convert("RGB")
            folder = root / split / str(digits.train.labels[i])
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{i:04d}.jpg", quality=quality)
    return rows


def decoded(paths) -> torch.Tensor:
    """The images as PIL decodes them, N×3×H×W in [0, 1]: what a plain 32-px pipeline feeds a network."""
    images = [np.array(Image.open(p).convert("RGB")) for p in paths]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 255


def mean_std(pool) -> tuple[torch.Tensor, torch.Tensor]:
    """A pool's normalization constants, shaped to broadcast over N×3×H×W."""
    return tuple(torch.tensor(v).view(1, 3, 1, 1) for v in (pool.mean, pool.std))


def plain_inputs(pool, paths) -> torch.Tensor:
    """The decoded images normalized with the pool's constants: a network's input without any resizing."""
    mean, std = mean_std(pool)
    return (decoded(paths) - mean) / std
