"""Training noise that does not depend on how many processes share the batch.

Every draw is keyed (step, phase, micro-step, name): the full global batch of noise is generated from
that key on every rank, and rank r keeps rows r, r + world, ... -- the same rows whose images it holds
(see ArrayLoader). So a 2 x 64 run and a 1 x 128 run draw identical noise for identical images, and a
resumed run draws what the uninterrupted run would have drawn, without saving any generator state.
"""

from __future__ import annotations

import torch

_NAMES = {"z": 1, "eps": 2, "alpha": 3, "z_prior": 4, "labels": 5}


def _key_seed(seed: int, *parts: int) -> int:
    h = seed & 0xFFFFFFFF
    for p in parts:  # a simple polynomial hash: distinct small tuples give distinct seeds
        h = (h * 1_000_003 + p + 1) % (2**62)
    return h


class Noise:
    def __init__(self, seed: int, rank: int, world: int, device: torch.device):
        self.seed, self.rank, self.world, self.device = seed, rank, world, device

    def _generator(self, key: tuple[int, ...], name: str) -> torch.Generator:
        return torch.Generator().manual_seed(_key_seed(self.seed, *key, _NAMES[name]))

    def normal(self, key: tuple[int, ...], name: str, batch: int, *shape: int) -> torch.Tensor:
        full = torch.randn(batch * self.world, *shape, generator=self._generator(key, name))
        return full[self.rank :: self.world].to(self.device, non_blocking=True)

    def uniform(self, key: tuple[int, ...], name: str, batch: int, *shape: int) -> torch.Tensor:
        full = torch.rand(batch * self.world, *shape, generator=self._generator(key, name))
        return full[self.rank :: self.world].to(self.device, non_blocking=True)


def fixed_latents(seed: int, n: int, dim: int) -> torch.Tensor:
    """The latents of the sample grids: the same images at every save, on every world size."""
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(_key_seed(seed, 7, 7, 7)))


def latents_for(indices: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """Evaluation latents: sample i's latent depends only on (seed, i), so N samples are the same
    images whatever the number of ranks that share them."""
    return torch.stack([torch.randn(dim, generator=torch.Generator().manual_seed(_key_seed(seed, 99, int(i))))
                        for i in indices])
