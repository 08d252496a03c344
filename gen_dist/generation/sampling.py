"""Images from a trained generator or VAE decoder: fixed-seed samples and latent interpolations.

Sample i's latent depends only on (seed, i) (``noise.latents_for``, the evaluation's latents: with
``seed=cfg.seed`` these are the images FID was computed on). Samples are cut into blocks of
``batch_size`` consecutive indices and block b is drawn by rank b % world, then gathered: every image
is computed in the same batch whatever the number of processes, so 1 and N processes write
identical pixels. launch/sample.py is the command line; other code (reports) calls these functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from gen_dist.config import Config
from gen_dist.errors import UserError
from gen_dist.generation.images import generate
from gen_dist.generation.loading import Trained, load_trained
from gen_dist.noise import latents_for
from gen_dist.progress import Progress


def _resolve(source, cfg: Config | None) -> tuple[nn.Module, Config, int]:
    if isinstance(source, (str, Path)):
        source = load_trained(source)
    if isinstance(source, Trained):
        return source.model, source.cfg, source.num_classes
    if cfg is None:
        raise TypeError("sample_images(model, cfg, ...): a model needs its config")
    return source, cfg, getattr(source, "num_classes", 0)


def check_class(num_classes: int, label: int | None, option: str = "--class") -> None:
    """A class label is only meaningful for a conditional model, and within its classes."""
    if label is None:
        return
    if num_classes == 0:
        raise UserError(f"{option} {label} given, but this model is unconditional (model.conditional=false): "
                        f"drop {option}, or use a checkpoint of a conditional model such as cgan_mnist")
    if not 0 <= label < num_classes:
        raise UserError(f"{option} {label} is out of range: this model knows classes 0..{num_classes - 1}")


def _labels(num_classes: int, n: int, labels) -> torch.Tensor | None:
    """None -> classes 0, 1, ... in turn (as the evaluation draws them); an int -> that class for all."""
    if labels is None:
        return torch.arange(n) % num_classes if num_classes else None
    if isinstance(labels, int):
        check_class(num_classes, labels, "class")
        return torch.full((n,), labels, dtype=torch.long)
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    if len(labels) != n:
        raise UserError(f"{len(labels)} labels for {n} images: give one label per image, or one int")
    for value in labels.unique().tolist():
        check_class(num_classes, value, "class")
    return labels


@torch.no_grad()
def _render(model: nn.Module, cfg: Config, n: int, latents: Callable[[torch.Tensor], torch.Tensor],
            labels: torch.Tensor | None, batch_size: int, engine, progress_bar: bool = False) -> torch.Tensor:
    """Images [n, C, H, W] in [0, 1] on the CPU; with an engine, blocks are shared by its ranks and
    every rank returns all n."""
    if batch_size < 1:
        raise UserError(f"batch size {batch_size} must be at least 1")
    rank, world = (engine.rank, engine.world) if engine is not None else (0, 1)
    device = next(model.parameters()).device
    mine = []
    progress = Progress(main=rank == 0, enabled=progress_bar)
    with progress.stage("generating", n) as stage:
        for block, start in enumerate(range(0, n, batch_size)):
            if block % world != rank:
                continue
            idx = torch.arange(start, min(start + batch_size, n))
            y = labels[idx].to(device) if labels is not None else None
            mine.append((start, generate(model, cfg, latents(idx).to(device), y).cpu()))
            stage.update(len(idx) * world)  # the ranks take blocks in turn: the main one sees 1/world of them
    if world > 1:
        mine = [part for parts in engine.gather_object(mine) for part in parts]
    return torch.cat([images for _, images in sorted(mine, key=lambda part: part[0])])


def sample_images(source, cfg: Config | None = None, n: int = 16, seed: int = 0, labels=None, *,
                  batch_size: int = 64, engine=None, progress_bar: bool = False, prior=None) -> torch.Tensor:
    """n images [n, C, H, W] in [0, 1] from a checkpoint path, a ``Trained``, or a model with its cfg.

    labels: None (conditional models cycle through the classes), one class for all, or one per image.
    engine: a ``gen_dist.distributed.engine.Engine`` to share the work across its processes (all get all images).
    prior: a VAE's fitted latent mixture (gen_dist/generation/latent_prior.py) instead of N(0, I).
    """
    if n < 1:
        raise UserError(f"asked for {n} images: ask for at least 1")
    model, cfg, num_classes = _resolve(source, cfg)
    y = _labels(num_classes, n, labels)
    def latents(idx):
        return prior.latents(idx, seed) if prior is not None else latents_for(idx, cfg.model.latent_dim, seed)

    return _render(model, cfg, n, latents, y, batch_size, engine, progress_bar)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (White 2016): stays at the norm typical of Gaussian latents, where a
    straight line passes through the low-norm middle. t=0 and t=1 give a and b exactly."""
    a64, b64, t64 = a.double(), b.double(), t.double()[:, None]
    cos = torch.dot(a64, b64) / (a64.norm() * b64.norm())
    theta = torch.arccos(cos.clamp(-1, 1))
    if theta.abs() < 1e-6:  # (nearly) the same direction: a straight line is the same path
        return ((1 - t64) * a64 + t64 * b64).to(a.dtype)
    out = (torch.sin((1 - t64) * theta) * a64 + torch.sin(t64 * theta) * b64) / torch.sin(theta)
    out[t64[:, 0] == 0], out[t64[:, 0] == 1] = a64, b64  # exact ends, whatever the rounding of sin
    return out.to(a.dtype)


def interpolate(source, cfg: Config | None = None, seed_a: int = 0, seed_b: int = 1, steps: int = 8,
                label: int | None = None, *, spherical: bool = True, batch_size: int = 64,
                engine=None) -> torch.Tensor:
    """``steps`` images [steps, C, H, W] walking the latent space from seed_a's single sample (sample 0
    of ``sample_images(seed=seed_a)``) to seed_b's. A conditional model keeps one class (default 0)."""
    if steps < 2:
        raise UserError(f"--steps {steps}: an interpolation needs at least 2 steps (its two ends)")
    model, cfg, num_classes = _resolve(source, cfg)
    first = torch.zeros(1, dtype=torch.long)
    z_a = latents_for(first, cfg.model.latent_dim, seed_a)[0]
    z_b = latents_for(first, cfg.model.latent_dim, seed_b)[0]
    t = torch.linspace(0, 1, steps)
    z = slerp(z_a, z_b, t) if spherical else torch.lerp(z_a, z_b, t[:, None])
    y = _labels(num_classes, steps, label if label is not None or not num_classes else 0)
    return _render(model, cfg, steps, lambda idx: z[idx], y, batch_size, engine)


# --- writing PNGs -----------------------------------------------------------------------------
