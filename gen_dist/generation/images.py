"""Sample and reconstruction grids (PNG), drawn on the main process from fixed latents and images."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torchvision.utils import save_image

from gen_dist.data import to_model_range
from gen_dist.noise import fixed_latents


@torch.no_grad()
def generate(model, cfg, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Images in [0, 1] from a GAN generator (tanh range) or a VAE's decoder, in eval mode."""
    was_training = model.training
    model.eval()
    if cfg.model.kind == "gan":
        out = model(z, labels) if cfg.model.conditional else model(z)
        out = (out.float() + 1) / 2
    else:
        out = model.decoder(z).float()
    model.train(was_training)
    return out.clamp(0, 1)


@torch.no_grad()
def sample_grid(generator, cfg, num_classes: int, path: Path, n: int = 16) -> Path:
    """16 images from the same latents at every save, so grids over time are comparable."""
    device = next(generator.parameters()).device
    z = fixed_latents(cfg.seed, n, cfg.model.latent_dim).to(device)
    labels = torch.arange(n, device=device) % max(num_classes, 1)
    images = generate(generator, cfg, z, labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, path, nrow=4)
    return path


@torch.no_grad()
def reconstruction_grid(vae, test_images: torch.Tensor, cfg, path: Path, n: int = 8) -> Path:
    """Top row: the first n test images; bottom row: their reconstructions from the posterior mean."""
    device = next(vae.parameters()).device
    x = to_model_range(test_images[:n].to(device), cfg.data.image_size, signed=False)
    was_training = vae.training
    vae.eval()
    mu, _ = vae.encoder(x)
    recon = vae.decoder(mu).float()
    vae.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat([x, recon]).clamp(0, 1), path, nrow=n)
    return path


def grid_nrow(n: int) -> int:
    """Images per row of a square-ish grid: 16 -> 4x4, 10 -> 4 per row (3 rows)."""
    return math.ceil(math.sqrt(n))


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """One PNG, torchvision's grid (2-pixel padding): width nrow * (W + 2) + 2."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, path, nrow=nrow or grid_nrow(len(images)))
    return path


def save_each(images: torch.Tensor, folder: str | Path, first_index: int = 0) -> list[Path]:
    """One PNG per image, ``sample_00000.png`` ... (a folder ``launch/evaluate.py --compare`` reads)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images, start=first_index):
        paths.append(folder / f"sample_{i:05d}.png")
        save_image(image, paths[-1])
    return paths
