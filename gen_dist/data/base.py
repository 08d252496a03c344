"""The contract every training data source keeps, whatever it reads (torchvision arrays or shards).

A loader is built once per process with its rank and the world size. Each epoch it yields the same
number of batches on every rank (a rank that runs out early would hang DDP's all-reduce), each batch a
pair ``(images, labels)``: images ``uint8 [B, C, H, W]`` (scaled to the model's range on the device,
which is cheaper than moving floats) and labels ``int64 [B]``.

Position is (epoch, batches consumed in that epoch); ``set_position`` before iterating makes a resumed
run continue the epoch where the checkpoint left it, with the same sample order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import numpy as np
import torch


@dataclass
class DataPosition:
    """Where a loader stands: saved in checkpoints, restored on resume."""

    epoch: int = 0
    batches_consumed: int = 0  # in the current epoch, per rank (equal on all ranks)

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_consumed": self.batches_consumed}


@dataclass
class DataStats:
    """Counters a loader reports for logging (metrics.jsonl and W&B)."""

    samples_per_epoch: int = 0  # used across all ranks in one epoch
    dropped_per_epoch: int = 0  # left out so that every rank gets whole, equal batches
    repeated_per_epoch: int = 0  # drawn twice to fill equal batches (0 for array sources)
    skipped_damaged: int = 0  # damaged samples skipped so far (shards only)
    extra: dict = field(default_factory=dict)


class BatchLoader(Protocol):
    batch_size: int  # per rank
    position: DataPosition
    stats: DataStats

    def batches_per_epoch(self) -> int: ...

    def set_position(self, epoch: int, batches_consumed: int) -> None: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the remaining batches of the current epoch, advancing ``position`` as it goes;
        after the last batch the position moves to the next epoch."""
        ...


@dataclass
class Source:
    """A dataset split as random access: ``image(i)`` -> uint8 [C, H, W], ``labels[i]``."""

    dataset: str
    split: str
    classes: list
    labels: np.ndarray
    image: Callable[[int], np.ndarray]
    factors: np.ndarray | None = None  # int [N, K] ground-truth factor classes (dSprites), written as KEY.factors
    factor_info: dict | None = None  # the manifest's "factors" entry: names, sizes, values

    def __len__(self) -> int:
        return len(self.labels)
