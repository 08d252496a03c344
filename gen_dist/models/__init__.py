"""Model zoo: plain nn.Modules sized by config; nothing here knows about distribution."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from gen_dist.config import ModelConfig, RemediesConfig
from gen_dist.models.dcgan import DCGANDiscriminator, DCGANGenerator, SNDiscriminator, init_dcgan_weights
from gen_dist.models.vae import ConvVAE, MLPVAE, VAEBase

__all__ = ["Models", "build_models", "DCGANGenerator", "DCGANDiscriminator", "SNDiscriminator",
           "MLPVAE", "ConvVAE", "VAEBase"]


@dataclass
class Models:
    generator: nn.Module  # a GAN generator, or the VAE (encoder + decoder)
    discriminator: nn.Module | None  # None for a plain VAE


def build_models(cfg: ModelConfig, channels: int, image_size: int, num_classes: int,
                 remedies: RemediesConfig | None = None) -> Models:
    """``remedies`` adds D's minibatch-statistics layers (training needs it to build the D it saved;
    loading only G, as the evaluation and the seed's inference do, does not)."""
    classes = num_classes if cfg.conditional else 0
    r = remedies or RemediesConfig()
    mb = dict(mbstd_group=r.minibatch_std_group if r.minibatch_std else 0,
              mbdisc_kernels=r.minibatch_disc_kernels, mbdisc_dim=r.minibatch_disc_dim)
    if cfg.generator == "mlp_vae":
        gen: nn.Module = MLPVAE(channels, image_size, cfg.hidden_dim, cfg.latent_dim)
    elif cfg.generator == "conv_vae":
        gen = ConvVAE(channels, image_size, cfg.latent_dim, cfg.g_width)
    else:
        gen = DCGANGenerator(cfg.latent_dim, channels, image_size, cfg.g_width, classes, cfg.embed_dim)
        init_dcgan_weights(gen)
    disc = None
    if cfg.kind != "vae":
        if cfg.discriminator == "sn":
            disc = SNDiscriminator(channels, image_size, cfg.d_width, classes, **mb)
        else:
            disc = DCGANDiscriminator(channels, image_size, cfg.d_width, cfg.d_norm, classes, **mb)
            init_dcgan_weights(disc)
    return Models(gen, disc)
