"""Architectures: the seed's shapes, every size the configs use, and conditional inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from gen_dist.config import ModelConfig
from gen_dist.models import ConvVAE, DCGANDiscriminator, DCGANGenerator, MLPVAE, SNDiscriminator, build_models


def _layers(module, kinds):
    return [m for m in module.modules() if isinstance(m, kinds)]


def test_mlp_vae_is_784_400_20():
    vae = MLPVAE(1, 28, 400, 20)
    shapes = [tuple(m.weight.shape) for m in _layers(vae, nn.Linear)]
    assert shapes == [(400, 784), (20, 400), (20, 400), (400, 20), (784, 400)]
    recon, mu, logvar = vae(torch.rand(3, 1, 28, 28))
    assert recon.shape == (3, 1, 28, 28) and mu.shape == logvar.shape == (3, 20)
    assert 0 <= recon.min() and recon.max() <= 1


def test_dcgan_64_is_the_seeds():
    G, D = DCGANGenerator(100, 1, 64, 64), DCGANDiscriminator(1, 64, 64)
    g = [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0]) for m in _layers(G, nn.ConvTranspose2d)]
    assert g == [(100, 512, 4, 1), (512, 256, 4, 2), (256, 128, 4, 2), (128, 64, 4, 2), (64, 1, 4, 2)]
    d = [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0]) for m in _layers(D, nn.Conv2d)]
    assert d == [(1, 64, 4, 2), (64, 128, 4, 2), (128, 256, 4, 2), (256, 512, 4, 2), (512, 1, 4, 1)]
    assert len(_layers(G, nn.BatchNorm2d)) == 4 and len(_layers(D, nn.BatchNorm2d)) == 3
    assert all(m.bias is None for m in _layers(G, nn.ConvTranspose2d) + _layers(D, nn.Conv2d))
    x = G(torch.randn(2, 100))
    assert x.shape == (2, 1, 64, 64) and D(x).shape == (2,)


def test_sn_discriminator_is_the_seeds_at_32():
    D = SNDiscriminator(1, 32)
    assert [tuple(m.weight_orig.shape) for m in _layers(D, (nn.Conv2d, nn.Linear))] == \
        [(64, 1, 4, 4), (128, 64, 4, 4), (1, 128 * 8 * 8)]
    assert D(torch.randn(4, 1, 32, 32)).shape == (4,)


@pytest.mark.parametrize("size", [28, 32, 64])
def test_sizes(size):
    G, D = DCGANGenerator(16, 3, size, 8), DCGANDiscriminator(3, size, 8, norm="layer")
    assert G(torch.randn(2, 16)).shape == (2, 3, size, size)
    assert D(torch.randn(2, 3, size, size)).shape == (2,)
    vae = ConvVAE(3, size, 8, 8)
    assert vae(torch.rand(2, 3, size, size))[0].shape == (2, 3, size, size)


def test_conditional_models_use_the_label():
    cfg = ModelConfig(kind="gan", generator="dcgan", latent_dim=8, g_width=8, d_width=8, conditional=True, embed_dim=4)
    models = build_models(cfg, 1, 32, 10)
    G, D = models.generator.eval(), models.discriminator.eval()
    z = torch.randn(1, 8).repeat(2, 1)
    a, b = G(z, torch.tensor([0, 1]))
    assert not torch.allclose(a, b)  # same z, different class -> different image
    x = torch.rand(1, 1, 32, 32).repeat(2, 1, 1, 1)
    s = D(x, torch.tensor([0, 1]))
    assert s[0] != s[1]


def test_all_parameters_are_used():
    """DDP fails on a parameter that gets no gradient; every model here uses all of its own."""
    for cfg in [ModelConfig(kind="vaegan", generator="conv_vae", g_width=8, d_width=8),
                ModelConfig(kind="gan", generator="dcgan", discriminator="sn", g_width=8, d_width=8, conditional=True)]:
        m = build_models(cfg, 1, 28 if cfg.kind == "vaegan" else 32, 10)
        size = 28 if cfg.kind == "vaegan" else 32
        labels = torch.tensor([1, 2])
        if cfg.kind == "vaegan":
            out = m.generator(torch.rand(2, 1, size, size))[0]
            loss = m.discriminator(out).sum()
        else:
            loss = m.discriminator(m.generator(torch.randn(2, cfg.latent_dim), labels), labels).sum()
        loss.backward()
        for net in (m.generator, m.discriminator):
            assert all(p.grad is not None for p in net.parameters())
