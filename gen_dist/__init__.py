"""gen_dist: distributed training and evaluation of VAEs, GANs and VAE-GAN hybrids."""

__version__ = "0.1.0"
