"""Batches of a dataset split for training and embedding, on the device.

In-memory pools (digits, CIFAR) are moved to the device once as uint8 and augmented there with tensor ops
(pad-and-crop, flip), so a GPU never waits on Python. Folder pools (ImageNet, ImageFolder) are decoded by a
DataLoader with torchvision transforms. The batch order of an epoch depends only on the seed it is given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from resmem.config import ConfigError
from resmem.vision.data import Pool

CROP_PADDING = 4  # pixels of zero padding for the random 32×32 crops of CIFAR (He et al. 2016)


def resolve_augment(augment: str, pool: Pool) -> str:
    if augment == "auto":
        if pool.images is None:
            return "resized_crop_flip"
        return "crop_flip" if pool.images.shape[-1] >= 32 else "none"
    if augment == "resized_crop_flip" and pool.images is not None:
        raise ConfigError(
            "train.augment: resized_crop_flip is for folder datasets (ImageNet, imagefolder); "
            "use crop_flip or none for in-memory images"
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
        self.memory_format = torch.channels_last if channels_last and device.type == "cuda" else torch.contiguous_format
        self.mean = torch.tensor(self.pool.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(self.pool.std, device=device).view(1, -1, 1, 1)
        if self.pool.images is not None:
            self.images = torch.from_numpy(self.pool.images).to(device)
            self.labels = torch.from_numpy(self.pool.labels).to(device)

    def __len__(self) -> int:
        return len(self.pool)

    def epoch(self, seed: int | None = None, drop_single: bool = False):
        """(x, y) batches: x float32 normalized on the device, y int64. Shuffled and augmented when a seed is
        given (training), in order and plain otherwise (evaluation, embedding)."""
        generator = None
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        batches = self._memory_batches(generator) if self.pool.images is not None else self._folder_batches(generator)
        for x, y in batches:
            if drop_single and len(y) < 2:  # a lone example breaks batch norm's batch statistics
                continue
            yield x.contiguous(memory_format=self.memory_format), y

    def _memory_batches(self, generator):
        n = len(self.pool)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for start in range(0, n, self.batch_size):
            batch = order[start : start + self.batch_size].to(self.device)
            x = self.images[batch].float() / self.pool.scale
            if generator is not None and self.augment == "crop_flip":
                x = crop_flip(x, generator)
            yield (x - self.mean) / self.std, self.labels[batch]

    def _folder_batches(self, generator):
        from torch.utils.data import DataLoader

        loader = DataLoader(
            _Files(self.pool, self._transform(train=generator is not None)),
            self.batch_size,
            shuffle=generator is not None,
            generator=generator,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _transform(self, train: bool):
        from torchvision import transforms as T

        size = self.pool.image_size
        if train and self.augment == "resized_crop_flip":
            steps = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        elif train and self.augment == "crop_flip":
            steps = [
                T.Resize(size),
                T.CenterCrop(size),
                T.RandomCrop(size, padding=size // 8),
                T.RandomHorizontalFlip(),
            ]
        else:  # the standard evaluation view: resize to 8/7 of the crop, then a center crop
            steps = [T.Resize(round(size / 0.875)), T.CenterCrop(size)]
        return T.Compose([*steps, T.ToTensor(), T.Normalize(self.pool.mean, self.pool.std)])


class _Files(torch.utils.data.Dataset):
    def __init__(self, pool: Pool, transform):
        self.paths, self.labels, self.transform = pool.paths, pool.labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), int(self.labels[i])


def crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-example random crop of the zero-padded image and random horizontal flip, all in tensor ops."""
    b, c, h, w = x.shape
    padded = F.pad(x, (CROP_PADDING,) * 4)
    dy = torch.randint(0, 2 * CROP_PADDING + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * CROP_PADDING + 1, (b,), generator=generator).to(x.device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = dx[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]
