"""Training noise that does not depend on how many processes share the batch.

Every draw is keyed (step, phase, micro-step, name): the full global batch of noise is generated from
that key on every rank, and rank r keeps rows r, r + world, ... -- the same rows whose images it holds
(see ArrayLoader). So a 2 x 64 run and a 1 x 128 run draw identical noise for identical images, and a
resumed run draws what the uninterrupted run would have drawn, without saving any generator state.

By default the noise is drawn on the CPU (the same numbers on any device) and copied over. With
``on_device`` (``speed.device_noise``, on by default on CUDA) it is drawn by a generator on the
training device instead: no host work and no synchronous copy from pageable memory per draw, the
same keys and the same world-size invariance, but other numbers than the CPU's (a CUDA run and a CPU
run of one seed see different noise; runs on the same kind of device still agree).
"""

from __future__ import annotations

import torch

_NAMES = {"z": 1, "eps": 2, "alpha": 3, "z_prior": 4, "labels": 5,
          "replay": 6, "z_unroll": 7, "eps_unroll": 8, "alpha_unroll": 9}  # remedies (gen_dist/remedies)


def _key_seed(seed: int, *parts: int) -> int:
    h = seed & 0xFFFFFFFF
    for p in parts:  # a simple polynomial hash: distinct small tuples give distinct seeds
        h = (h * 1_000_003 + p + 1) % (2**62)
    return h


class Noise:
    def __init__(self, seed: int, rank: int, world: int, device: torch.device, on_device: bool = False):
        self.seed, self.rank, self.world, self.device = seed, rank, world, torch.device(device)
        self.on_device = on_device and self.device.type != "cpu"
        # one generator, re-seeded per draw: manual_seed resets its whole state (the CPU's Mersenne
        # Twister, CUDA's Philox seed and offset), so a draw depends on its key only
        self._gen = torch.Generator(device=self.device if self.on_device else "cpu")

    def _generator(self, key: tuple[int, ...], name: str) -> torch.Generator:
        return self._gen.manual_seed(_key_seed(self.seed, *key, _NAMES[name]))

    def _mine(self, full: torch.Tensor) -> torch.Tensor:
        rows = full if self.world == 1 else full[self.rank :: self.world]
        return rows if self.on_device else rows.to(self.device, non_blocking=True)

    def normal(self, key: tuple[int, ...], name: str, batch: int, *shape: int) -> torch.Tensor:
        return self._mine(torch.randn(batch * self.world, *shape, generator=self._generator(key, name),
                                      device=self._gen.device))

    def uniform(self, key: tuple[int, ...], name: str, batch: int, *shape: int) -> torch.Tensor:
        return self._mine(torch.rand(batch * self.world, *shape, generator=self._generator(key, name),
                                     device=self._gen.device))


def fixed_latents(seed: int, n: int, dim: int) -> torch.Tensor:
    """The latents of the sample grids: the same images at every save, on every world size."""
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(_key_seed(seed, 7, 7, 7)))


def latents_for(indices: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """Evaluation latents: sample i's latent depends only on (seed, i), so N samples are the same
    images whatever the number of ranks that share them. One generator re-seeded per sample and rows
    written in place (the same numbers as a fresh generator per sample, at half the cost)."""
    gen = torch.Generator()
    out = torch.empty(len(indices), dim)
    for row, i in zip(out, torch.as_tensor(indices).tolist()):
        torch.randn(dim, generator=gen.manual_seed(_key_seed(seed, 99, int(i))), out=row)
    return out


def uniforms_for(indices: torch.Tensor, seed: int) -> torch.Tensor:
    """One uniform in [0, 1) per evaluation sample, keyed by (seed, i) like ``latents_for`` (a mixture prior's
    choice of component for sample i)."""
    gen = torch.Generator()
    return torch.tensor([torch.rand(1, generator=gen.manual_seed(_key_seed(seed, 98, int(i)))).item()
                         for i in torch.as_tensor(indices).tolist()])
