"""Data sources: every one yields equal per-rank uint8 batches (see base.py for the contract)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gen_dist.data.arrays import ArrayLoader
from gen_dist.data.base import BatchLoader, DataPosition, DataStats
from gen_dist.data.datasets import (Dataset, Sources, build_train_loader, first_train_images, load_arrays, load_dataset,
                                   prepare_sources)

__all__ = ["ArrayLoader", "BatchLoader", "DataPosition", "DataStats", "Dataset", "Sources", "build_train_loader",
           "first_train_images", "load_arrays", "load_dataset", "prepare_sources", "to_model_range"]


def to_model_range(images: torch.Tensor, image_size: int, signed: bool) -> torch.Tensor:
    """uint8 batch -> float in [0, 1] (VAEs) or [-1, 1] (GAN generators end in tanh), resized.

    Resizing runs on the batch on the device (bilinear with antialias, like PIL's resize)."""
    x = images.float().div_(255)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True,
                          align_corners=False).clamp_(0, 1)
    return x.mul_(2).sub_(1) if signed else x
