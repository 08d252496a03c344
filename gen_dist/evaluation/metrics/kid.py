"""KID (Bińkowski et al. 2018): unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3.

Unlike FID it needs raw features: collect them per rank in a `FeatureBank` (bounded memory) and
`gather()` them, then call `kid` on every rank. The subsets are shared out between ranks and their
values summed, so every rank returns the same numbers, whatever the number of ranks.
"""

from __future__ import annotations

import numpy as np
import torch

from gen_dist.distributed.collectives import all_reduce_sum, rank, world_size
from gen_dist.evaluation.metrics.inception import MetricsError


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 of two equal-sized samples: the within-set means leave out the diagonal
    (k(x_i, x_i) is not a sample of E k(x, x')); the cross term keeps all m^2 pairs."""
    m = len(x)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return within - 2 * kxy.mean()


def kid(fake: torch.Tensor, real: torch.Tensor, subset_size: int = 1000, num_subsets: int = 100,
        seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 over `num_subsets` random subsets of
    min(subset_size, len(fake), len(real)) rows drawn without replacement from each set.

    `fake` and `real` [N, d] must be the same on every rank (gathered). Subset s is drawn from a
    generator seeded by (seed, s), so the subsets do not depend on which rank computes them. std has
    ddof=0, as in torch-fidelity.
    """
    m = min(subset_size, len(fake), len(real))
    if m < 2:
        raise MetricsError(f"KID needs at least 2 images per set, got {len(fake)} and {len(real)}")
    x_all, y_all = fake.to(torch.float64), real.to(fake.device, torch.float64)
    values = torch.zeros(num_subsets, dtype=torch.float64, device=fake.device)
    for s in range(rank(), num_subsets, world_size()):
        rng = np.random.default_rng([seed, s])
        ix = torch.from_numpy(rng.choice(len(x_all), m, replace=False)).to(fake.device)
        iy = torch.from_numpy(rng.choice(len(y_all), m, replace=False)).to(fake.device)
        values[s] = mmd2_unbiased(x_all[ix], y_all[iy])
    all_reduce_sum(values)  # each subset was filled by exactly one rank; the others hold 0
    return float(values.mean()), float(values.std(correction=0))
