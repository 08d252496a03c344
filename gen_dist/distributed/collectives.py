"""The three collectives the metrics need, each a no-op when torch.distributed is not initialised.

Tensors travel on the device they live on, so keep metric state on the device the process group's
backend accepts (CUDA for NCCL, CPU or CUDA for Gloo): `accelerator.device` in practice.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks in place; every rank gets the total."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_float(value: Optional[float], device: torch.device) -> float:
    """Rank 0's `value` on every rank.

    Used for results of float64 linear algebra computed once on rank 0: ranks computing it
    themselves could differ in the last bits and then disagree on e.g. which checkpoint is best.
    """
    if not is_distributed():
        return float(value)
    t = torch.tensor([value if rank() == 0 else 0.0], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


class FeatureBank:
    """Rows kept on each rank up to `capacity`, gathered onto every rank on demand.

    Raw features (KID, precision/recall) or logits (IS) cannot be summarised into sums like FID's
    statistics, so memory is bounded by a cap instead: `capacity` rows per rank (10k rows of
    2048 float32 are 80 MB). Rows past the cap are dropped and counted in `dropped`.

    Pass each row's global sample index to `add` and `gather` returns rows sorted by it, so the
    gathered set and its order -- and any seeded subset drawn from it -- do not depend on the number
    of ranks (as long as no rank hit its cap).
    """

    def __init__(self, dim: int, capacity: int, device: torch.device | str = "cpu"):
        self.dim, self.capacity, self.device = dim, capacity, torch.device(device)
        self._rows: list[torch.Tensor] = []
        self._index: list[torch.Tensor] = []
        self.count = 0
        self.dropped = 0

    def add(self, rows: torch.Tensor, indices: Optional[torch.Tensor] = None) -> None:
        rows = rows.detach().reshape(len(rows), self.dim)
        keep = max(0, min(len(rows), self.capacity - self.count))
        self.dropped += len(rows) - keep
        if keep == 0:
            return
        if indices is None:  # assume strided sharding: this rank's n-th sample is n*world+rank
            indices = torch.arange(self.count, self.count + keep) * world_size() + rank()
        self._rows.append(rows[:keep].to(self.device, torch.float32))
        self._index.append(torch.as_tensor(indices)[:keep].to(self.device, torch.int64))
        self.count += keep

    def local(self) -> torch.Tensor:
        if not self._rows:
            return torch.empty(0, self.dim, device=self.device)
        return torch.cat(self._rows)

    def gather(self) -> torch.Tensor:
        """All ranks' rows [N, dim] on every rank, ordered by sample index."""
        rows, index = self.local(), torch.cat(self._index) if self._index else \
            torch.empty(0, dtype=torch.int64, device=self.device)
        if is_distributed():
            # all_gather needs equal shapes: pad every rank to the largest count, then trim.
            counts = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(world_size())]
            dist.all_gather(counts, torch.tensor([len(rows)], device=self.device))
            n_max = int(max(c.item() for c in counts))
            pad_rows = torch.zeros(n_max, self.dim, device=self.device)
            pad_rows[: len(rows)] = rows
            pad_index = torch.zeros(n_max, dtype=torch.int64, device=self.device)
            pad_index[: len(index)] = index
            all_rows = [torch.empty_like(pad_rows) for _ in counts]
            all_index = [torch.empty_like(pad_index) for _ in counts]
            dist.all_gather(all_rows, pad_rows)
            dist.all_gather(all_index, pad_index)
            rows = torch.cat([r[: int(c.item())] for r, c in zip(all_rows, counts)])
            index = torch.cat([i[: int(c.item())] for i, c in zip(all_index, counts)])
        return rows[torch.argsort(index, stable=True)]
