"""Minibatch-statistics layers for a discriminator (mode-collapse remedies).

Both see the whole micro-batch a discriminator is called on and append channels to its last feature
map, so D can tell a batch of near-identical fakes from a varied real batch:

* ``MinibatchStdDev`` (Karras et al. 2018, ProGAN): split the batch into groups, take each feature's
  standard deviation over the group, average it into one number per group, and append it as a
  constant channel to every member of the group.
* ``MinibatchDiscrimination`` (Salimans et al. 2016): project each sample's flattened features through
  a learned tensor T (A x B x C) to B rows of C, and for each kernel b sum exp(-L1 distance) to every
  other sample of the batch; the B sums are appended as constant channels.

Under DDP each rank calls D on its own micro-batch, so these statistics are per rank (per group
within the local batch), never across ranks: a 2 x 64 run's D sees batches of 64, a 1 x 128 run's of
128. D is called separately on reals and fakes, so a group never mixes the two.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def group_size_for(batch: int, wanted: int) -> int:
    """The largest group size <= wanted that divides the batch (Karras et al. require divisibility;
    a smaller last micro-batch or the VAE-GAN's 2B fakes still get equal groups)."""
    g = min(wanted, batch)
    while batch % g:
        g -= 1
    return g


class MinibatchStdDev(nn.Module):
    def __init__(self, group_size: int = 4, eps: float = 1e-8):
        super().__init__()
        self.group_size, self.eps = group_size, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, 1, H, W]: sample n gets the statistic of group n % (N / G), as in
        Karras et al.'s reshape to [G, N/G, ...] (groups are strided through the batch)."""
        n, _, h, w = x.shape
        g = group_size_for(n, self.group_size)
        y = x.float().reshape(g, n // g, *x.shape[1:])
        std = (y.var(dim=0, unbiased=False) + self.eps).sqrt()  # per group and feature: [N/G, C, H, W]
        stat = std.mean(dim=(1, 2, 3))  # one number per group: [N/G]
        return stat.repeat(g).view(n, 1, 1, 1).expand(n, 1, h, w).to(x.dtype)


class MinibatchDiscrimination(nn.Module):
    def __init__(self, in_features: int, kernels: int, dim: int):
        super().__init__()
        self.kernels, self.dim = kernels, dim
        # scaled so that the projections start on the features' scale (exp(-L1) then is not all 0)
        self.T = nn.Parameter(torch.randn(in_features, kernels * dim) / in_features ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, B, H, W]: o_b(x_i) = sum over j != i of exp(-||M_i,b - M_j,b||_1)."""
        n, _, h, w = x.shape
        m = (x.flatten(1).float() @ self.T.float()).view(n, self.kernels, self.dim)
        l1 = (m.unsqueeze(0) - m.unsqueeze(1)).abs().sum(dim=3)  # [N, N, B]
        o = torch.exp(-l1).sum(dim=1) - 1.0  # drop j = i (exp(0) = 1)
        return o.view(n, self.kernels, 1, 1).expand(n, self.kernels, h, w).to(x.dtype)


class MinibatchStats(nn.Module):
    """The configured minibatch layers, applied to D's last feature map: returns it with the extra
    channels appended (``extra_channels`` of them)."""

    def __init__(self, channels: int, size: int, std_group: int = 0, disc_kernels: int = 0, disc_dim: int = 5):
        super().__init__()
        self.std = MinibatchStdDev(std_group) if std_group else None
        self.disc = MinibatchDiscrimination(channels * size * size, disc_kernels, disc_dim) if disc_kernels else None
        self.extra_channels = (1 if std_group else 0) + disc_kernels

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        parts = [h]
        if self.std is not None:
            parts.append(self.std(h))
        if self.disc is not None:
            parts.append(self.disc(h))
        return torch.cat(parts, dim=1)
