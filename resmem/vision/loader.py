"""Batches of a dataset split for training and embedding, on the device.

In-memory pools (digits, CIFAR) are moved to the device once as uint8 and augmented there with tensor ops
(pad-and-crop, flip), so a GPU never waits on Python. Folder pools (ImageNet, ImageFolder) are decoded by a
DataLoader with torchvision transforms. The batch order of an epoch depends only on the seed it is given.

Evaluation and embedding see the training geometry without its random part (`folder_view`): a network trained
on whole images is scored on whole images, one trained on random-resized crops on the 8/7 center crop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from resmem.config import ConfigError
from resmem.device import accelerated
from resmem.vision.data import Pool

RESIZED_CROP_MIN_SIZE = 64  # folder images at least this large train on random-resized crops by default


def crop_padding(size: int) -> int:
    """Pixels of zero padding around a `size`-px image for its random crops: 4 for 32 px (He et al. 2016)."""
    return max(1, size // 8)


def resolve_augment(augment: str, pool: Pool) -> str:
    """The augmentation `augment` means for a pool: auto = resized_crop_flip for folder datasets of at least
    RESIZED_CROP_MIN_SIZE px (ImageNet training), crop_flip for smaller ones and for in-memory images of 32 px or
    more, none for smaller in-memory images (digits). A folder pool decoded into memory keeps its folder's
    choice, so caching never changes what a network sees."""
    if augment == "auto":
        if pool.paths is not None:
            return "resized_crop_flip" if pool.image_size >= RESIZED_CROP_MIN_SIZE else "crop_flip"
        return "crop_flip" if pool.images.shape[-1] >= 32 else "none"
    if augment == "resized_crop_flip" and pool.images is not None:
        raise ConfigError(
            "train.augment: resized_crop_flip needs the images as files (ImageNet, imagefolder without "
            "dataset.cache); use flip, crop_flip or none for images in memory"
        )
    return augment


class Loader:
    def __init__(
        self,
        pool: Pool,
        indices,
        batch_size: int,
        device: torch.device,
        augment: str = "none",
        num_workers: int = 0,
        channels_last: bool = False,
    ):
        self.pool, self.batch_size, self.device = pool.subset(indices), batch_size, device
        self.augment = resolve_augment(augment, self.pool)
        self.num_workers = num_workers
        self.memory_format = torch.channels_last if channels_last and accelerated(device) else torch.contiguous_format
        self.mean = torch.tensor(self.pool.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(self.pool.std, device=device).view(1, -1, 1, 1)
        if self.pool.images is not None:
            self.images = torch.from_numpy(self.pool.images).to(device)
            self.labels = torch.from_numpy(self.pool.labels).to(device)

    def __len__(self) -> int:
        return len(self.pool)

    def epoch(self, seed: int | None = None, drop_single: bool = False):
        """(x, y) batches: x float32 normalized on the device, y int64. Shuffled and augmented when a seed is
        given (training), in order and in the evaluation view otherwise (evaluation, embedding). In memory or
        streamed from files, the same seed gives the same batches."""
        generator = None
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        n = len(self.pool)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        if self.pool.images is not None:
            batches = self._memory_batches(order, generator)
        else:
            batches = self._folder_batches(order, generator)
        for x, y in batches:
            if drop_single and len(y) < 2:  # a lone example breaks batch norm's batch statistics
                continue
            yield x.contiguous(memory_format=self.memory_format), y

    def _memory_batches(self, order, generator):
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size].to(self.device)
            x = self.images[batch].float() / self.pool.scale
            if generator is not None and self.augment == "crop_flip":
                x = crop_flip(x, generator, crop_padding(x.shape[-1]))
            elif generator is not None and self.augment == "flip":
                x = flip(x, generator)
            yield (x - self.mean) / self.std, self.labels[batch]

    def _folder_batches(self, order, generator):
        from torch.utils.data import DataLoader

        # The workers' random transforms are seeded from the epoch's generator (the global RNG stays untouched).
        worker_seed = 0 if generator is None else int(torch.randint(2**62, (), generator=generator))
        loader = DataLoader(
            _Files(self.pool, self._transform(train=generator is not None)),
            self.batch_size,
            sampler=order.tolist(),
            generator=torch.Generator().manual_seed(worker_seed),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _transform(self, train: bool):
        from torchvision import transforms as T

        view = folder_view(self.augment, self.pool.image_size, train)
        return T.Compose([*view, T.ToTensor(), T.Normalize(self.pool.mean, self.pool.std)])


def folder_view(augment: str, size: int, train: bool) -> list:
    """The torchvision steps from a decoded image to the `size`-pixel view a network sees: in training with the
    random part of `augment`, in evaluation and embedding without it. One function decides both, so the two
    views cannot drift apart: for none, flip and crop_flip the image resized to `size` (its shorter side, then
    the center `size` square: no zoom); only resized_crop_flip, which trains on random-resized crops, is
    evaluated on the ImageNet convention's 8/7 resize and center crop."""
    from torchvision import transforms as T

    if augment == "resized_crop_flip":
        steps = [T.RandomResizedCrop(size)] if train else [T.Resize(round(size / 0.875)), T.CenterCrop(size)]
    else:
        steps = [T.Resize(size), T.CenterCrop(size)]
        if train and augment == "crop_flip":
            steps.append(T.RandomCrop(size, padding=crop_padding(size)))
    if train and augment != "none":
        steps.append(T.RandomHorizontalFlip())
    return steps


class _Files(torch.utils.data.Dataset):
    def __init__(self, pool: Pool, transform):
        self.paths, self.labels, self.transform = pool.paths, pool.labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(open_image(self.paths[i])), int(self.labels[i])


# Formats an image file may have, whatever its name says: PIL identifies files by content, and some of its other
# plugins run external programs (EPS: Ghostscript). Larger images are refused, not warned about.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
MAX_IMAGE_PIXELS = 89_478_485  # PIL's own warning threshold (a decompression bomb's 3 GB of RGB above it)


def open_image(path):
    """An image file of a dataset folder, decoded to RGB, or a ConfigError naming the file. It must be a regular
    file when it is opened, not only when the folder was listed: a FIFO put there since would block forever."""
    import os
    import stat
    import warnings

    from PIL import Image

    try:
        # O_NONBLOCK: a FIFO opens at once (without it, open waits for a writer); a regular file reads as usual
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise ConfigError(f"{path}: not a regular file (a FIFO, socket or device); an image must be a file: "
                                  "remove it from the dataset folder")  # fmt: skip
            os.set_blocking(file.fileno(), True)
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(file, formats=IMAGE_FORMATS) as image:
                    if image.width * image.height > MAX_IMAGE_PIXELS:
                        raise Image.DecompressionBombError(f"{image.width} × {image.height} pixels")
                    return image.convert("RGB")
    except (OSError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:  # UnidentifiedImageError
        raise ConfigError(
            f"{path}: not an image this workflow reads ({exc}; formats {', '.join(IMAGE_FORMATS)}, at most "
            f"{MAX_IMAGE_PIXELS:,} pixels); remove it from the dataset folder or convert it"
        ) from None


def flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-example random horizontal flip, in tensor ops."""
    mirrored = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
    return torch.where(mirrored[:, None, None, None], x.flip(3), x)


def crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int) -> torch.Tensor:
    """Per-example random crop of the image zero-padded by `padding` pixels and random horizontal flip, all in
    tensor ops."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = dx[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def decode(pool: Pool, workers: int, batch_size: int = 256):
    """The pool's images decoded in order by `workers` processes (one: this process, which a single worker
    would only add a copy of every batch to), as uint8 N×3×S×S blocks of the evaluation view
    of none, flip and crop_flip (resized to the pool's image_size and center-cropped): what the in-memory path
    then augments with tensor ops, pixel for pixel what the streamed path would feed."""
    from torch.utils.data import DataLoader
    from torchvision import transforms as T

    view = T.Compose([*folder_view("none", pool.image_size, train=False), T.PILToTensor()])
    for x, _ in DataLoader(_Files(pool, view), batch_size, num_workers=workers if workers > 1 else 0):
        yield x.numpy()
