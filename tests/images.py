"""Image data with real structure for tests, in the on-disk formats users bring."""

import numpy as np
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
