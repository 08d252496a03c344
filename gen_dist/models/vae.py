"""VAEs: the seed's MLP VAE (784-400-20) and a convolutional VAE sized by image size.

Both expose ``encoder(x) -> (mu, logvar)``, ``decoder(z) -> image in [0, 1]`` and
``forward(x, eps) -> (recon, mu, logvar)``. The noise ``eps`` comes from the caller so that the
engine can draw it world-size-invariantly (sample i gets the same noise on 1 or 8 GPUs).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): sampling that gradients can flow through."""
    if eps is None:
        eps = torch.randn_like(mu)
    return mu + eps.to(mu.dtype) * torch.exp(0.5 * logvar)


class VAEBase(nn.Module):
    latent_dim: int

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None):
        mu, logvar = self.encoder(x)
        recon = self.decoder(reparameterize(mu, logvar, eps))
        return recon, mu, logvar


class MLPEncoder(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, latent_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.fc_mu = nn.Linear(hidden_dim, latent_dim)
        self.fc_logvar = nn.Linear(hidden_dim, latent_dim)

    def forward(self, x: torch.Tensor):
        h = F.relu(self.fc1(x.flatten(1)))
        return self.fc_mu(h), self.fc_logvar(h)


class MLPDecoder(nn.Module):
    def __init__(self, latent_dim: int, hidden_dim: int, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = shape
        self.fc1 = nn.Linear(latent_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, shape[0] * shape[1] * shape[2])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(F.relu(self.fc1(z)))).view(-1, *self.shape)

    def output_layer(self) -> nn.Module:
        """The layer that makes the pixels (the VAE-GAN's adaptive weight compares gradients there)."""
        return self.fc2


class MLPVAE(VAEBase):
    """The seed's VAE: 784-400-20 for MNIST (input_dim = channels x size x size)."""

    def __init__(self, channels: int = 1, image_size: int = 28, hidden_dim: int = 400, latent_dim: int = 20):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = MLPEncoder(channels * image_size * image_size, hidden_dim, latent_dim)
        self.decoder = MLPDecoder(latent_dim, hidden_dim, (channels, image_size, image_size))


def conv_stages(image_size: int) -> tuple[int, int]:
    """(number of stride-2 stages, smallest feature-map size): 28 -> 14 -> 7 and 2^k -> 4."""
    if image_size == 28:
        return 2, 7
    stages = (image_size // 4).bit_length() - 1
    if 4 * 2**stages != image_size:
        raise ValueError(f"image size {image_size} is neither 28 nor a power of two >= 8")
    return stages, 4


class ConvEncoder(nn.Module):
    def __init__(self, channels: int, image_size: int, latent_dim: int, width: int):
        super().__init__()
        stages, base = conv_stages(image_size)
        layers, c_in = [], channels
        for i in range(stages):
            c_out = width * 2**i
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2)]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.fc_mu = nn.Linear(c_in * base * base, latent_dim)
        self.fc_logvar = nn.Linear(c_in * base * base, latent_dim)

    def forward(self, x: torch.Tensor):
        h = self.features(x)
        return self.fc_mu(h), self.fc_logvar(h)


class ConvDecoder(nn.Module):
    def __init__(self, channels: int, image_size: int, latent_dim: int, width: int):
        super().__init__()
        stages, base = conv_stages(image_size)
        c_top = width * 2 ** (stages - 1)
        self.start = (c_top, base, base)
        self.fc = nn.Linear(latent_dim, c_top * base * base)
        layers, c_in = [], c_top
        for i in reversed(range(stages - 1)):
            layers += [nn.ConvTranspose2d(c_in, width * 2**i, 4, 2, 1), nn.ReLU()]
            c_in = width * 2**i
        layers += [nn.ConvTranspose2d(c_in, channels, 4, 2, 1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(F.relu(self.fc(z)).view(-1, *self.start))

    def output_layer(self) -> nn.Module:
        """The layer that makes the pixels (the VAE-GAN's adaptive weight compares gradients there)."""
        return self.net[-2]


class ConvVAE(VAEBase):
    """Convolutional VAE: stride-2 convs down to 7x7 (28 px) or 4x4, mirrored by the decoder."""

    def __init__(self, channels: int = 1, image_size: int = 28, latent_dim: int = 20, width: int = 32):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = ConvEncoder(channels, image_size, latent_dim, width)
        self.decoder = ConvDecoder(channels, image_size, latent_dim, width)
