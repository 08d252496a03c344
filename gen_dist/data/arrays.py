"""Torchvision datasets held in memory as uint8 arrays, served as equal per-rank batches.

MNIST, Fashion-MNIST and CIFAR-10 fit in memory (47-150 MB), so indexing one tensor beats a
DataLoader that decodes PIL images one by one. Image folders are read once, resized, and kept
the same way (for small custom sets; shards are the path for large ones).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from gen_dist.data.base import DataPosition, DataStats
from gen_dist.errors import DataError

def load_torchvision(class_name: str, dataset: str, root: str, train: bool, download: bool):
    """A torchvision dataset class (``class_name``, e.g. "MNIST") -> (images uint8 [N, C, H, W], labels, class names)."""
    import torchvision.datasets as tvd  # heavy (~1 s): only the torchvision sources need it

    cls = getattr(tvd, class_name)
    try:
        ds = cls(root, train=train, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found. You can use download=True ..."
        fix = "set data.root to the folder that holds it" + ("" if download else " or data.download=true")
        raise DataError(f"{dataset} not found under data.root='{root}' ({str(e).splitlines()[0]}): {fix}") from None
    except OSError as e:  # download failed: offline, or root not writable
        raise DataError(f"could not download {dataset} into data.root='{root}' ({e}): "
                        "download it on a machine with network, then point data.root at it") from None
    data = torch.as_tensor(np.asarray(ds.data))
    images = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return images.contiguous(), labels, list(ds.classes)


def load_folder(root: str, train: bool, image_size: int):
    """An ImageFolder (class = subfolder); 'train'/'test' subfolders are used when present."""
    import torchvision.datasets as tvd
    import torchvision.transforms.v2 as T

    base = Path(root)
    split = base / ("train" if train else "test")
    folder = split if split.is_dir() else base
    if not folder.is_dir():
        raise DataError(f"image folder data.root='{root}' does not exist: point data.root at a folder of class subfolders")
    size = image_size or None
    tf = T.Compose([T.PILToTensor()] + ([T.Resize(size, antialias=True), T.CenterCrop(size)] if size else []))
    try:
        ds = tvd.ImageFolder(str(folder), transform=tf)
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"no images in data.root='{folder}' ({e}): use one subfolder per class") from None
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    labels = torch.tensor(ds.targets, dtype=torch.int64)
    return images, labels, list(ds.classes)


class ArrayLoader:
    """Per-epoch shuffled, rank-strided batches of an in-memory dataset (implements BatchLoader).

    The epoch's permutation depends only on (seed, epoch). Rank r takes every world-th index, so a
    global batch holds the same images whatever the world size: batch j of a 2 x 64 run equals batch j
    of a 1 x 128 run. The remainder that does not fill a whole global batch is dropped (and counted).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle: bool = True, pin_memory: bool = False):
        self.images, self.labels = images, labels
        self.batch_size, self.rank, self.world = batch_size, rank, world_size
        self.seed, self.shuffle, self.pin_memory = seed, shuffle, pin_memory
        self.position = DataPosition()
        n = len(images)
        if self.batches_per_epoch() == 0:
            raise DataError(f"{n} images cannot fill one batch of {batch_size} x {world_size} processes: "
                            "lower train.batch_size or use more data (data.limit)")
        used = self.batches_per_epoch() * batch_size * world_size
        self.stats = DataStats(samples_per_epoch=used, dropped_per_epoch=n - used)

    def batches_per_epoch(self) -> int:
        return len(self.images) // (self.batch_size * self.world)

    def set_position(self, epoch: int, batches_consumed: int) -> None:
        self.position = DataPosition(epoch, batches_consumed)

    def _epoch_indices(self, epoch: int) -> torch.Tensor:
        n = len(self.images)
        if not self.shuffle:
            order = torch.arange(n)
        else:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=g)
        used = self.batches_per_epoch() * self.batch_size * self.world
        return order[:used][self.rank :: self.world]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self._epoch_indices(self.position.epoch)
        for j in range(self.position.batches_consumed, self.batches_per_epoch()):
            sel = idx[j * self.batch_size : (j + 1) * self.batch_size]
            images, labels = self.images[sel], self.labels[sel]
            if self.pin_memory:
                images, labels = images.pin_memory(), labels.pin_memory()
            self.position.batches_consumed = j + 1
            yield images, labels
        self.position = DataPosition(self.position.epoch + 1, 0)
