"""Sample and reconstruction grids (PNG), drawn on the main process from fixed latents and images.

A training run's grids are enlarged (nearest neighbour: every pixel stays a visible square) to at least
GRID_MIN_WIDTH pixels and carry a caption strip (run, step, images seen, the latest FID / test loss),
also stored as the PNG's "caption" text. launch/sample.py keeps torchvision's exact grid (pixel for
pixel the generator's output) unless asked to enlarge it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

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


GRID_MIN_WIDTH = 512  # pixels: 28 px digits at 1x are too small to judge


@torch.no_grad()
def sample_grid(generator, cfg, num_classes: int, path: Path, n: int = 64, caption: list[str] | None = None,
                latents: torch.Tensor | None = None) -> Path:
    """n images (8 x 8) from the same latents at every save, so grids over time are comparable
    (``latents``: others, e.g. a VAE's mixture prior's first n evaluation samples)."""
    device = next(generator.parameters()).device
    z = (fixed_latents(cfg.seed, n, cfg.model.latent_dim) if latents is None else latents).to(device)
    labels = torch.arange(n, device=device) % max(num_classes, 1)
    images = generate(generator, cfg, z, labels)
    return captioned_grid(images, path, grid_nrow(n), caption or [])


@torch.no_grad()
def reconstruction_grid(vae, test_images: torch.Tensor, cfg, path: Path, n: int = 8,
                        caption: list[str] | None = None) -> Path:
    """Top row: the first n test images; bottom row: their reconstructions from the posterior mean."""
    device = next(vae.parameters()).device
    x = to_model_range(test_images[:n].to(device), cfg.data.image_size, signed=False)
    was_training = vae.training
    vae.eval()
    mu, _ = vae.encoder(x)
    recon = vae.decoder(mu).float()
    vae.train(was_training)
    return captioned_grid(torch.cat([x, recon]).clamp(0, 1), path, n, caption or [])


def captioned_grid(images: torch.Tensor, path: str | Path, nrow: int, caption: list[str],
                   min_width: int = GRID_MIN_WIDTH) -> Path:
    """torchvision's grid of ``images`` in [0, 1] (2-pixel padding, the same rounding as save_image),
    enlarged by a whole factor to at least ``min_width`` pixels, under a caption strip of one line per
    entry of ``caption``; written atomically."""
    from PIL import Image, ImageDraw, ImageFont
    from PIL.PngImagePlugin import PngInfo

    grid = make_grid(images.detach().float().cpu(), nrow=nrow)
    pixels = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    picture = Image.fromarray(pixels).convert("RGB")
    k = max(1, math.ceil(min_width / picture.width))
    picture = picture.resize((picture.width * k, picture.height * k), Image.NEAREST)
    font = ImageFont.load_default(size=max(12, picture.width // 45))
    line_h = int(font.size * 1.4)
    strip_h = line_h * len(caption) + (8 if caption else 0)
    out = Image.new("RGB", (picture.width, picture.height + strip_h), (24, 24, 24))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(caption):
        draw.text((8, 4 + i * line_h), line, fill=(240, 240, 240), font=font)
    out.paste(picture, (0, strip_h))
    info = PngInfo()
    info.add_text("caption", "\n".join(caption))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    out.save(tmp, format="PNG", pnginfo=info)
    tmp.replace(path)  # a grid being read (W&B, a browser) is never half written
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
