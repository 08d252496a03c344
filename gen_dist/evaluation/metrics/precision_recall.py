"""Improved precision and recall (Kynkäänniemi et al. 2019).

Each set's manifold is the union of balls around its points, each ball reaching to the point's
k-th nearest neighbour in the same set. Precision: the share of fake points inside the real
manifold (fidelity). Recall: the share of real points inside the fake manifold (coverage).

Distances are computed `batch_size` rows at a time (memory batch_size x N), the row blocks shared
out between ranks and the results summed, so every rank returns the same numbers. Inputs must be
the same on every rank (see `FeatureBank.gather`).
"""

from __future__ import annotations

from typing import Callable

import torch

from gen_dist.distributed.collectives import all_reduce_sum, rank, world_size
from gen_dist.evaluation.metrics.inception import MetricsError


def _by_row_blocks(n: int, batch_size: int, device, fn: Callable[[slice], torch.Tensor]) -> torch.Tensor:
    """fn(rows) -> values for those rows, over blocks taken in turn by the ranks, summed."""
    out = torch.zeros(n, dtype=torch.float64, device=device)
    for start in range(rank() * batch_size, n, world_size() * batch_size):
        rows = slice(start, min(start + batch_size, n))
        out[rows] = fn(rows).to(torch.float64)
    return all_reduce_sum(out)  # each row was filled by exactly one rank


def knn_radii(feats: torch.Tensor, k: int, batch_size: int = 1024) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point in the same set."""
    # The k+1-th smallest distance in a row: the smallest is the point itself (0).
    return _by_row_blocks(len(feats), batch_size, feats.device,
                          lambda r: torch.cdist(feats[r], feats).kthvalue(k + 1, dim=1).values)


def coverage(queries: torch.Tensor, refs: torch.Tensor, radii: torch.Tensor,
             batch_size: int = 1024) -> float:
    """Share of `queries` within radii[j] of some refs[j]."""
    inside = _by_row_blocks(len(queries), batch_size, queries.device,
                            lambda r: (torch.cdist(queries[r], refs) <= radii.to(refs.dtype)).any(dim=1))
    return float(inside.mean())


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3,
                     batch_size: int = 1024) -> tuple[float, float]:
    """(precision, recall) of `fake` [N, d] against `real` [M, d]."""
    if min(len(real), len(fake)) <= k:
        raise MetricsError(f"precision/recall with k={k} needs more than {k} images per set, "
                           f"got {len(real)} real and {len(fake)} fake")
    fake = fake.to(real.device, real.dtype)
    precision = coverage(fake, real, knn_radii(real, k, batch_size), batch_size)
    recall = coverage(real, fake, knn_radii(fake, k, batch_size), batch_size)
    return precision, recall
