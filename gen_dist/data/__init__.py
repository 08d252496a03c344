"""Data sources: every one yields equal per-rank uint8 batches (see base.py for the contract)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gen_dist.data.arrays import ArrayLoader, load_arrays
from gen_dist.data.base import BatchLoader, DataPosition, DataStats

__all__ = ["ArrayLoader", "BatchLoader", "DataPosition", "DataStats", "Dataset", "load_dataset", "to_model_range"]


@dataclass
class Dataset:
    """One split in memory: images uint8 [N, C, H, W] at their stored size, labels int64 [N]."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list

    @property
    def channels(self) -> int:
        return self.images.shape[1]


def load_dataset(cfg, train: bool) -> Dataset:
    """cfg: the `data` section of the config."""
    images, labels, classes = load_arrays(cfg.dataset, cfg.root, train, cfg.download, cfg.image_size)
    if train and cfg.limit:
        images, labels = images[: cfg.limit], labels[: cfg.limit]
    return Dataset(images, labels, classes)


def to_model_range(images: torch.Tensor, image_size: int, signed: bool) -> torch.Tensor:
    """uint8 batch -> float in [0, 1] (VAEs) or [-1, 1] (GAN generators end in tanh), resized.

    Resizing runs on the batch on the device (bilinear with antialias, like PIL's resize)."""
    x = images.float().div_(255)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True,
                          align_corners=False).clamp_(0, 1)
    return x.mul_(2).sub_(1) if signed else x
