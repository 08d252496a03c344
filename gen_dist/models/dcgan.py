"""DCGAN generator and discriminators (the seed's architectures, sized by image size).

At 64 px with widths 64 these are exactly the seed's DCGAN: G 100 -> 512x4x4 -> 256x8x8 -> 128x16x16
-> 64x32x32 -> Cx64x64 with BatchNorm+ReLU and a Tanh output; D the mirror with LeakyReLU(0.2).
D returns logits: the seed's ``Sigmoid`` + ``BCELoss`` is computed as ``BCEWithLogits`` in the loss
(same value, numerically stable, safe under autocast); the parameters are the same.
Conditional variants concatenate a label embedding to z (G) and a label map as an extra image
channel (D). The discriminators can append minibatch-statistics channels before their head
(``minibatch.py``; off by default, when the parameters are exactly as before) and return their last
feature map with the score (``with_features=True``) for feature matching.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils import spectral_norm

from gen_dist.models.minibatch import MinibatchStats
from gen_dist.models.vae import conv_stages


def _norm(kind: str, channels: int, size: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":  # per-sample normalisation: valid with a gradient penalty
        return nn.GroupNorm(1, channels)
    return nn.Identity()


class DCGANGenerator(nn.Module):
    def __init__(self, latent_dim: int = 100, channels: int = 1, image_size: int = 64, width: int = 64,
                 num_classes: int = 0, embed_dim: int = 100):
        super().__init__()
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        stages, base = conv_stages(image_size)
        self.embedding = nn.Embedding(num_classes, embed_dim) if num_classes else None
        c_in = latent_dim + (embed_dim if num_classes else 0)
        c = width * 2 ** (stages - 1)
        layers = [nn.ConvTranspose2d(c_in, c, base, 1, 0, bias=False), nn.BatchNorm2d(c), nn.ReLU(True)]
        for _ in range(stages - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU(True)]
            c //= 2
        layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embedding is not None:
            z = torch.cat([z, self.embedding(labels).to(z.dtype)], dim=1)
        return self.main(z.view(z.size(0), -1, 1, 1))


class LabelMap(nn.Module):
    """Class label -> one extra image channel, so a conditional D sees the label with the image."""

    def __init__(self, num_classes: int, image_size: int):
        super().__init__()
        self.size = image_size
        self.embedding = nn.Embedding(num_classes, image_size * image_size)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        label_map = self.embedding(labels).view(-1, 1, self.size, self.size).to(x.dtype)
        return torch.cat([x, label_map], dim=1)


def _minibatch(channels: int, size: int, std_group: int, disc_kernels: int, disc_dim: int):
    if not (std_group or disc_kernels):
        return None
    return MinibatchStats(channels, size, std_group, disc_kernels, disc_dim)


class DCGANDiscriminator(nn.Module):
    def __init__(self, channels: int = 1, image_size: int = 64, width: int = 64, norm: str = "batch",
                 num_classes: int = 0, mbstd_group: int = 0, mbdisc_kernels: int = 0, mbdisc_dim: int = 5):
        super().__init__()
        stages, base = conv_stages(image_size)
        self.label_map = LabelMap(num_classes, image_size) if num_classes else None
        c_in = channels + (1 if num_classes else 0)
        layers: list[nn.Module] = [nn.Conv2d(c_in, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        c, size = width, image_size // 2
        for _ in range(stages - 1):
            size //= 2
            layers += [nn.Conv2d(c, c * 2, 4, 2, 1, bias=False), _norm(norm, c * 2, size),
                       nn.LeakyReLU(0.2, inplace=True)]
            c *= 2
        self.features = nn.Sequential(*layers)  # kept apart: feature matching reads it
        self.minibatch = _minibatch(c, base, mbstd_group, mbdisc_kernels, mbdisc_dim)
        extra = self.minibatch.extra_channels if self.minibatch is not None else 0
        self.head = nn.Conv2d(c + extra, 1, base, 1, 0, bias=False)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, with_features: bool = False):
        if self.label_map is not None:
            x = self.label_map(x, labels)
        h = self.features(x)
        score = self.head(self.minibatch(h) if self.minibatch is not None else h).view(-1)
        return (score, h.flatten(1)) if with_features else score

    def feature_map(self, x: torch.Tensor, layer: int = -1, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The activation after conv block ``layer`` (1 = the first; -1 = the last, before the head):
        the VAE-GAN's learned similarity (Larsen et al.'s Dis_l) compares images there."""
        blocks = sum(isinstance(m, nn.LeakyReLU) for m in self.features)
        if layer == -1:
            layer = blocks
        if not 1 <= layer <= blocks:
            raise ValueError(f"D has {blocks} conv blocks: loss.similarity_layer must be in 1..{blocks} or -1")
        if self.label_map is not None:
            x = self.label_map(x, labels)
        for m in self.features:
            x = m(x)
            if isinstance(m, nn.LeakyReLU):
                layer -= 1
                if layer == 0:
                    return x
        raise AssertionError("unreachable")


class SNDiscriminator(nn.Module):
    """The seed's StableDiscriminator: two spectral-norm convs and a spectral-norm linear layer."""

    def __init__(self, channels: int = 1, image_size: int = 32, width: int = 64, num_classes: int = 0,
                 mbstd_group: int = 0, mbdisc_kernels: int = 0, mbdisc_dim: int = 5):
        super().__init__()
        self.label_map = LabelMap(num_classes, image_size) if num_classes else None
        c_in = channels + (1 if num_classes else 0)
        self.conv1 = spectral_norm(nn.Conv2d(c_in, width, 4, 2, 1))
        self.conv2 = spectral_norm(nn.Conv2d(width, width * 2, 4, 2, 1))
        self.minibatch = _minibatch(width * 2, image_size // 4, mbstd_group, mbdisc_kernels, mbdisc_dim)
        extra = self.minibatch.extra_channels if self.minibatch is not None else 0
        self.fc = spectral_norm(nn.Linear((width * 2 + extra) * (image_size // 4) ** 2, 1))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, with_features: bool = False):
        if self.label_map is not None:
            x = self.label_map(x, labels)
        h = self.act(self.conv2(self.act(self.conv1(x))))
        score = self.fc((self.minibatch(h) if self.minibatch is not None else h).flatten(1)).view(-1)
        return (score, h.flatten(1)) if with_features else score

    def feature_map(self, x: torch.Tensor, layer: int = -1, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The activation after conv ``layer`` (1 or 2; -1 = the last): see DCGANDiscriminator.feature_map."""
        if layer not in (1, 2, -1):
            raise ValueError("the spectral-norm D has 2 conv blocks: loss.similarity_layer must be 1, 2 or -1")
        if self.label_map is not None:
            x = self.label_map(x, labels)
        h = self.act(self.conv1(x))
        return h if layer == 1 else self.act(self.conv2(h))


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN paper initialisation: conv weights N(0, 0.02), norm scales N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and not hasattr(m, "weight_orig"):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
