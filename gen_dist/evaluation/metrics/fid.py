"""FID: streaming feature statistics summed across ranks, the Fréchet distance, a statistics cache.

Each rank feeds its share of features to a `FeatureStats`; `all_reduce()` sums the float64 sums
across ranks (so the result does not depend, beyond rounding, on how many ranks computed it); rank 0
takes the Fréchet distance and broadcasts it, so every rank returns the same number.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from gen_dist.distributed.collectives import all_reduce_sum, broadcast_float, rank
from gen_dist.evaluation.metrics.inception import FEATURE_DIM, MetricsError


class FeatureStats:
    """Count, sum and sum of outer products of features, in float64.

    Memory is dim^2 doubles (32 MB at 2048) whatever the number of images; float64 because the
    covariance is a difference of large sums (outer/n - mean mean^T), which float32 would ruin.
    """

    def __init__(self, dim: int = FEATURE_DIM, device: torch.device | str = "cpu"):
        self.dim, self.device = dim, torch.device(device)
        self.count = 0
        self.sum = torch.zeros(dim, dtype=torch.float64, device=self.device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=self.device)

    def update(self, features: torch.Tensor) -> "FeatureStats":
        x = features.detach().reshape(-1, self.dim).to(self.device, torch.float64)
        self.count += len(x)
        self.sum += x.sum(0)
        self.outer.addmm_(x.T, x)
        return self

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Add another accumulator's images to this one (e.g. two halves of a set)."""
        self.count += other.count
        self.sum += other.sum.to(self.device)
        self.outer += other.outer.to(self.device)
        return self

    def all_reduce(self) -> "FeatureStats":
        """Sum over ranks in place (no-op when not distributed). Call exactly once, after the last
        update: calling it twice would count every image world_size times."""
        n = torch.tensor([float(self.count)], dtype=torch.float64, device=self.device)
        for t in (n, self.sum, self.outer):
            all_reduce_sum(t)
        self.count = int(n.item())
        return self

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean [dim] and unbiased covariance [dim, dim] (as numpy.cov), float64 numpy arrays."""
        if self.count < 2:
            raise MetricsError(f"FID needs at least 2 images, got {self.count}; raise eval.limit")
        mu = self.sum / self.count
        cov = (self.outer - self.count * torch.outer(mu, mu)) / (self.count - 1)
        return mu.cpu().numpy(), cov.cpu().numpy()


def _checked(mu1, sigma1, mu2, sigma2):
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise MetricsError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
                           f"sigma {s1.shape} vs {s2.shape}; were both made with the same network?")
    return mu1, s1, mu2, s2


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(s1) + tr(s2) - 2 tr(sqrt(s1 s2)), via two symmetric eigensolves.

    With s1 = V W V^T, s1 s2 is similar to sqrt(s1) s2 sqrt(s1) and, V being orthogonal, to
    U^T s2 U with U = V sqrt(W): symmetric positive semi-definite, so tr(sqrt(s1 s2)) is the sum of
    the square roots of its eigenvalues. Only the r directions where s1 is not numerically zero
    enter U (r = n - 1 for n < dims images), so the second eigensolve is r x r. At 2048-d on one
    core: ~1.5 s for 200 images, ~3.5 s at full rank, against 18-27 s for the Schur-based
    `scipy.linalg.sqrtm` pytorch-fid uses, with no epsilon or imaginary-part clean-up for singular
    covariances, where it is also the more accurate of the two.
    """
    mu1, s1, mu2, s2 = _checked(mu1, sigma1, mu2, sigma2)
    w, v = np.linalg.eigh(s1)
    keep = w > w.max(initial=0.0) * len(w) * np.finfo(np.float64).eps  # s1's numerical rank
    u = v[:, keep] * np.sqrt(w[keep])
    m = u.T @ s2 @ u
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(ev, 0, None)).sum()  # rounding can make tiny eigenvalues < 0
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


Stats = Union[FeatureStats, tuple]


def compute_fid(fake: Stats, real: Stats, device: Optional[torch.device] = None) -> float:
    """FID between two already all-reduced `FeatureStats` (or (mu, sigma) pairs), the same on every
    rank: rank 0 computes, the others receive it (on `device`, else the stats' device, else the CPU)."""
    device = device or next((s.device for s in (fake, real) if isinstance(s, FeatureStats)), torch.device("cpu"))
    # Validate on every rank: an error raised on rank 0 alone would leave the others waiting.
    (mu1, s1), (mu2, s2) = [s.mean_cov() if isinstance(s, FeatureStats) else s for s in (fake, real)]
    checked = _checked(mu1, s1, mu2, s2)
    value = frechet_distance(*checked) if rank() == 0 else None
    return broadcast_float(value, device)


def save_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, key: str = "") -> None:
    """Write `mu`, `sigma` (pytorch-fid's .npz layout, so `python -m pytorch_fid` reads it) plus a
    cache `key` (e.g. a hash of dataset, preprocessing and weights). Atomic: readers never see half
    a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:  # a file object, or numpy would append ".npz" to the temp name
        np.savez(f, mu=mu, sigma=sigma, key=np.array(key))
    os.replace(tmp, path)


def load_stats(path: str | os.PathLike, key: Optional[str] = None) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(mu, sigma) from a .npz (ours or pytorch-fid's); None when the file is absent or was made
    under another `key` (a stale cache, to be recomputed)."""
    if not Path(path).is_file():
        return None
    with np.load(path) as f:
        stored = str(f["key"]) if "key" in f.files else ""
        if key is not None and stored != key:
            return None
        return f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
