"""Datasets by name, the deterministic split every later stage uses, and batches for training and embedding.

A dataset has a train pool and a test pool of labelled images. Small datasets (digits, CIFAR-100) live in
memory as uint8 arrays (and on the GPU when there is one); folder datasets (ImageNet, any ImageFolder) are
lists of files decoded by a DataLoader, or decoded once into memory by the decode stage (`with_decoded`) when
they fit `dataset.cache_mb`. Validation examples are carved from the train pool; digits has no
test pool of its own, so its test split is carved from the same pool.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from resmem.config import ConfigError
from resmem.digests import sha256
from resmem.io import extract_archive

log = logging.getLogger("resmem")

DATASETS = ("cifar100", "digits", "imagefolder", "imagenet")
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


@dataclass
class Pool:
    """Labelled images: `images` (uint8 N×C×H×W, in memory) and/or `paths` (the files of a folder dataset;
    both where its images were decoded into memory)."""

    labels: np.ndarray
    images: np.ndarray | None = None
    paths: list[str] | None = None
    scale: float = 255.0  # images / scale lies in [0, 1]
    mean: tuple = (0.5,)
    std: tuple = (0.5,)
    image_size: int = 224  # folder datasets: side of the crops fed to the model

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return self.images.shape[1] if self.images is not None else 3

    def subset(self, indices: np.ndarray) -> Pool:
        return Pool(
            self.labels[indices],
            None if self.images is None else self.images[indices],
            None if self.paths is None else [self.paths[i] for i in indices],
            self.scale,
            self.mean,
            self.std,
            self.image_size,
        )


@dataclass
class Dataset:
    name: str
    train: Pool
    test: Pool
    num_classes: int
    test_is_train_pool: bool = False  # digits: the test split is carved from the train pool
    classes: list = field(default_factory=list)


def _digits_file() -> Path:
    """scikit-learn's bundled copy of the UCI handwritten digits, found without importing scikit-learn
    (whose import costs seconds in every job)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("dataset 'digits' needs scikit-learn installed (it ships the data file)")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"


def _digits() -> Dataset:
    table = np.loadtxt(_digits_file(), delimiter=",", dtype=np.uint8)  # 64 pixels (0..16), then the label
    pool = Pool(
        table[:, -1].astype(np.int64), images=table[:, :-1].reshape(-1, 1, 8, 8), scale=16.0, mean=(0.0,), std=(1.0,)
    )
    return Dataset("digits", pool, pool, 10, test_is_train_pool=True, classes=[str(d) for d in range(10)])


def _cifar100(root: Path, download: bool) -> Dataset:
    from torchvision.datasets import CIFAR100
    from torchvision.datasets.utils import download_url

    folder, archive = root / CIFAR100.base_folder, root / CIFAR100.filename
    if not (folder / "train").exists() and not archive.exists() and download:
        try:  # checked against the published md5 before it is kept
            download_url(CIFAR100.url, str(root), CIFAR100.filename, CIFAR100.tgz_md5)
        except (OSError, RuntimeError) as exc:  # no network (URLError is an OSError), a corrupt download
            raise ConfigError(f"CIFAR-100 could not be downloaded into {root} ({exc}); put {CIFAR100.filename} "
                              f"(from {CIFAR100_URL}) there and run again") from None  # fmt: skip
    if not (folder / "train").exists() and archive.exists():
        extract_archive(archive, root, CIFAR100.tgz_md5, CIFAR100_URL)
    if not (folder / "train").exists():
        raise ConfigError(
            f"CIFAR-100 is not under {root}: put {CIFAR100.filename} (from {CIFAR100_URL}) into "
            f"{root} — it is extracted on first use — or set 'dataset.download: true'"
        )
    pools = []
    for train in (True, False):
        try:  # torchvision checks each extracted file's published md5 before it unpickles it
            data = CIFAR100(str(root), train=train, download=False)
        except (OSError, RuntimeError) as exc:  # no network (URLError is an OSError), or a corrupt archive
            raise ConfigError(
                f"CIFAR-100 could not be loaded from {root} ({exc}); put {CIFAR100.filename} "
                f"(from {CIFAR100_URL}) into {root} and run again"
            ) from None
        images = np.ascontiguousarray(data.data.transpose(0, 3, 1, 2))  # N×H×W×C -> N×C×H×W
        pools.append(
            Pool(np.asarray(data.targets, dtype=np.int64), images=images, mean=CIFAR100_MEAN, std=CIFAR100_STD)
        )
    return Dataset("cifar100", *pools, num_classes=100, classes=list(data.classes))


def _folders(name: str, train_dir: Path, test_dir: Path, image_size: int) -> Dataset:
    missing = [d for d in (train_dir, test_dir) if not d.is_dir()]
    if missing:
        raise ConfigError(
            f"dataset {name}: {', '.join(map(str, missing))} not found; it needs class folders "
            f"under {train_dir} and {test_dir} (set 'dataset.root')"
        )
    (classes, train, train_files), (test_classes, test, test_files) = (class_folders(name, train_dir),
                                                                       class_folders(name, test_dir))  # fmt: skip
    if classes != test_classes:
        raise ConfigError(f"dataset {name}: {train_dir} and {test_dir} hold different class folders")
    check_disjoint(name, train_files, test_files, test)
    pools = [
        Pool(
            np.array([label for _, label in samples], dtype=np.int64),
            paths=[path for path, _ in samples],
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            image_size=image_size,
        )
        for samples in (train, test)
    ]
    return Dataset(name, *pools, num_classes=len(classes), classes=classes)


def class_folders(name: str, directory: Path) -> tuple[list[str], list[tuple[str, int]], list[str]]:
    """torchvision's ImageFolder listing, without importing torchvision (seconds in every job that lists a
    folder): the class folders in name order, and (path, class index) of each image file under each class
    folder, its subfolders too, in name order, and the file each of them resolves to. Links are followed only
    where they stay inside `directory`; a link out of it, a loop, an image name that is not a regular file (a
    FIFO, a device) or not UTF-8, a folder without classes and a class without an image are each a ConfigError
    naming the path."""
    top = os.path.realpath(directory)
    classes = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    if not classes:
        raise ConfigError(f"dataset {name}: {directory} holds no class folders; put each class's images in a "
                          "folder of its own under it")  # fmt: skip
    samples, resolved, empty = [], [], []
    for index, cls in enumerate(classes):
        found = _image_files(name, os.path.join(directory, cls), top)
        samples += [(path, index) for path, _ in found]
        resolved += [real for _, real in found]
        empty += [] if found else [cls]
    if empty:
        raise ConfigError(f"dataset {name}: no image file ({', '.join(IMAGE_EXTENSIONS)}) in the class folders "
                          f"{', '.join(empty)} of {directory}; add images or remove those folders")  # fmt: skip
    return classes, samples, resolved


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


def _image_files(name: str, folder: str, top: str) -> list[tuple[str, str]]:
    """(path, the file it resolves to) of the image files under `folder` in os.walk's order sorted by folder,
    then by name (ImageFolder's), each folder entered once and only inside `top` (a link to `..` would list the
    other split's images as a class)."""
    listed, pending, entered = [], [folder], set()
    while pending:
        root = pending.pop()
        real = os.path.realpath(root)
        if not _inside(real, top):
            raise ConfigError(f"dataset {name}: {root} links to {real}, outside {top}; links in an image folder "
                              "must stay inside it (copy or move the images there instead)")  # fmt: skip
        if real in entered:
            raise ConfigError(f"dataset {name}: {root} leads back to {real}, a folder this class already lists (a "
                              "link loop); remove the link")  # fmt: skip
        entered.add(real)
        files = []
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            path = os.path.join(root, entry.name)
            try:
                entry.name.encode("utf-8")
            except UnicodeEncodeError:
                raise ConfigError(f"dataset {name}: {ascii(path)} has a name that is not UTF-8; rename it") from None
            if entry.is_dir():
                pending.append(path)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                if not entry.is_file():
                    raise ConfigError(f"dataset {name}: {path} is not a regular file (a FIFO, socket, device or a "
                                      "broken link); an image must be a file: remove it")  # fmt: skip
                target = os.path.realpath(path) if entry.is_symlink() else os.path.join(real, entry.name)
                if not _inside(target, top):
                    raise ConfigError(f"dataset {name}: {path} links to {target}, outside {top}; links in an image "
                                      "folder must stay inside it")  # fmt: skip
                files.append((path, target))
        listed.append((root, files))
    return [file for _, files in sorted(listed) for file in files]


def check_disjoint(name: str, train: list[str], test: list[str], test_paths: list[tuple[str, int]]) -> None:
    """No image file is both a training and a test image: `train` and `test` are the files the splits' images
    resolve to (a link into the other split, or one split's folder inside the other's, would share one)."""
    train_files = set(train)
    shared = next((i for i, real in enumerate(test) if real in train_files), None)
    if shared is not None:
        raise ConfigError(f"dataset {name}: {test_paths[shared][0]} is also a training image ({test[shared]}); a "
                          "test image must not be in the training split")  # fmt: skip


COPY_PROBE_BYTES = 4096  # a file's first and last this many bytes are compared before its whole sha256
COPY_CHECK_THREADS = 8  # the check waits on the disk (small reads of many files), not on the CPU
COPIES_SHOWN = 5


def check_no_copies(data: Dataset) -> None:
    """No test image of a folder dataset has the same bytes as a training image under another name: a copy
    leaks the test set as surely as a link (which `check_disjoint` catches from the paths alone). Files are
    compared in rounds that read more of fewer: their sizes (a stat each), their first and last
    COPY_PROBE_BYTES (for the files whose size a file of the other split has), their whole sha256 (for those
    whose ends match too). Near-copies (the same picture re-encoded or resized) are not detected. Runs in the
    split job, once per dataset (bench/bench_custody.py times it per file)."""
    from concurrent.futures import ThreadPoolExecutor

    if data.train.paths is None:
        return
    candidates = {"train": data.train.paths, "test": data.test.paths}
    with ThreadPoolExecutor(COPY_CHECK_THREADS) as pool:
        for key, what in ((os.path.getsize, "sizes"), (_ends_digest, "first and last bytes"), (sha256, "sha256")):
            read = sum(map(len, candidates.values()))
            keyed = {split: _grouped(pool, key, paths) for split, paths in candidates.items()}
            shared = keyed["train"].keys() & keyed["test"].keys()
            candidates = {split: [p for k in shared for p in groups[k]] for split, groups in keyed.items()}
            log.info("byte copies across the splits: %s of %d files read, %d test files alike a training file",
                     what, read, len(candidates["test"]))  # fmt: skip
    if shared:
        copies = sorted((test_path, keyed["train"][k][0]) for k in shared for test_path in keyed["test"][k])
        shown = "; ".join(f"{test_path} = {train_path}" for test_path, train_path in copies[:COPIES_SHOWN])
        more = f" and {len(copies) - COPIES_SHOWN} more" if len(copies) > COPIES_SHOWN else ""
        raise ConfigError(f"dataset {data.name}: {len(copies)} test images have the same bytes as a training image "
                          f"({shown}{more}); a test image must not be in the training split: remove one copy "
                          "of each")  # fmt: skip


def _grouped(pool, key, paths: list[str]) -> dict:
    """{key(path): [paths with that key]}, the keys computed by the threads of `pool` in chunks (Python 3.11's
    Executor.map would queue a future for each of a million files at once)."""
    groups: dict = {}
    for start in range(0, len(paths), 4096):
        chunk = paths[start : start + 4096]
        for path, value in zip(chunk, pool.map(key, chunk), strict=True):
            groups.setdefault(value, []).append(path)
    return groups


def _ends_digest(path: str) -> bytes:
    """A digest of the file's first and last COPY_PROBE_BYTES (all of it when it is shorter than both)."""
    import hashlib

    with open(path, "rb") as file:
        head = file.read(COPY_PROBE_BYTES)
        file.seek(max(COPY_PROBE_BYTES, os.fstat(file.fileno()).st_size - COPY_PROBE_BYTES))
        return hashlib.sha256(head + file.read()).digest()


def file_digest(pool: Pool) -> str:
    """sha256 of a folder pool's file list (relative to the folder that holds them all, so the dataset may move)
    and labels: what a decoded copy of it must match."""
    import hashlib
    import os

    top = os.path.commonpath(pool.paths) if pool.paths else ""
    digest = hashlib.sha256()
    for path, label in zip(pool.paths, pool.labels.tolist(), strict=True):
        digest.update(f"{os.path.relpath(path, top)}\t{label}\n".encode())
    return digest.hexdigest()


def load_dataset(cfg: dict) -> Dataset:
    """The dataset of a config's `dataset` section, subsampled per class when `subsample` asks."""
    name, root = cfg["name"], Path(cfg.get("root", "data"))
    if name == "digits":
        data = _digits()
    elif name == "cifar100":
        data = _cifar100(root, cfg.get("download", False))
    elif name == "imagenet":  # torchvision's ImageNet layout, or train/ and val/ class folders: the same here
        data = _folders(name, root / "train", root / "val", cfg.get("image_size", 224))
    elif name == "imagefolder":
        data = _folders(name, root / "train", root / "test", cfg.get("image_size", 224))
    else:
        raise ConfigError(f"config key dataset.name: unknown dataset {name!r}; known: {list(DATASETS)}")
    subsample = cfg.get("subsample") or {}
    rng = np.random.default_rng(cfg.get("split_seed", 0))
    for split in ("train", "test"):
        if subsample.get(split) and not data.test_is_train_pool:
            pool = getattr(data, split)
            keep = per_class_take(pool.labels, np.arange(len(pool)), subsample[split], rng)
            setattr(data, split, pool.subset(keep))
    return data


def per_class_take(labels: np.ndarray, candidates: np.ndarray, count: int, rng) -> np.ndarray:
    """Up to `count` of `candidates` from every class, chosen by `rng`, sorted."""
    taken = [rng.permutation(candidates[labels[candidates] == c])[:count] for c in np.unique(labels[candidates])]
    return np.sort(np.concatenate(taken))


def stratified_take(labels: np.ndarray, candidates: np.ndarray, fraction: float, rng) -> np.ndarray:
    """About `fraction` of `candidates` from every class (at least one of each class with two or more)."""
    taken = []
    for cls in np.unique(labels[candidates]):
        members = rng.permutation(candidates[labels[candidates] == cls])
        count = int(round(fraction * len(members)))
        taken.append(members[: min(max(count, 1), len(members) - 1) if len(members) > 1 else 0])
    return np.sort(np.concatenate(taken))


def make_split(data: Dataset, test_fraction: float, val_fraction: float, seed: int) -> dict:
    """Stratified, disjoint index arrays: train_idx and val_idx into the train pool, test_idx into the test
    pool, each sorted. val_fraction is a fraction of the training data; test_fraction is used only when the
    dataset has no test pool of its own."""
    labels = data.train.labels
    rng = np.random.default_rng(seed)
    everything = np.arange(len(labels))
    if data.test_is_train_pool:
        test = stratified_take(labels, everything, test_fraction, rng)
        rest = np.setdiff1d(everything, test)
    else:
        test, rest = np.arange(len(data.test)), everything
    val = stratified_take(labels, rest, val_fraction, rng)
    return {"train_idx": np.setdiff1d(rest, val), "val_idx": val, "test_idx": test}


def train_subset(train_idx: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified `fraction` of the training split for the training-set-size study. Subsets are nested:
    every example of a smaller fraction is in every larger one, so the study varies only the size."""
    if fraction >= 1.0:
        return train_idx
    rng = np.random.default_rng(seed)
    kept = []
    for cls in np.unique(labels[train_idx]):
        members = rng.permutation(train_idx[labels[train_idx] == cls])
        kept.append(members[: max(1, int(round(fraction * len(members))))])
    return np.sort(np.concatenate(kept))
