"""The one place gen_dist.human_eval reaches into the rest of gen_dist: checkpoints, samples, test images.

Everything else in this subpackage imports from here, so a re-layout of gen_dist changes these
imports only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from gen_dist.data import prepare_sources, to_model_range  # the public loader evaluation uses
from gen_dist.errors import CheckpointError, UserError
from gen_dist.generation.latent_prior import prior_of
from gen_dist.generation.sampling import load_trained, sample_images

__all__ = ["CheckpointError", "Model", "UserError", "load_model", "generated", "real_test_images"]


@dataclass
class Model:
    name: str
    path: str
    trained: object  # gen_dist.generation.sampling.Trained

    @property
    def cfg(self):
        return self.trained.cfg

    @property
    def num_classes(self) -> int:
        return self.trained.num_classes


def load_model(name: str, path: str) -> Model:
    """A checkpoint's generator, refusing missing files, checkpoints without a generator and
    non-finite weights with a one-line UserError."""
    try:
        trained = load_trained(path)
    except (KeyError, TypeError, AttributeError) as e:  # a gen_dist state whose models hold no generator
        raise CheckpointError(f"checkpoint '{path}' holds no generator ({type(e).__name__}: {e}): "
                              "pass a checkpoint of a GAN, VAE or VAE-GAN run") from None
    for key, value in trained.model.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"checkpoint '{path}' has non-finite weights ({key}): "
                                  "pass an earlier checkpoint of the run (checkpoints/step_*.pt)")
    return Model(name, str(path), trained)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] in [0, 1] -> uint8 with torchvision save_image's rounding."""
    return images.mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


def generated(model: Model, n: int, seed: int) -> torch.Tensor:
    """Samples 0..n-1 as the evaluation draws them (sample i from latent i of ``seed``, through the run's
    latent mixture when it evaluated with ``eval.prior=gmm``; a conditional model's sample i has class
    i % classes): uint8 [n, C, H, W]."""
    return _to_uint8(sample_images(model.trained, None, n, seed, prior=prior_of(model.trained)))


def real_test_images(model: Model, count: int, seed: int) -> tuple[torch.Tensor, list[int], list[str]]:
    """``count`` distinct test-split images (the split evaluation compares with), picked by a seeded
    permutation, at the model's image size as the model sees them: (uint8 [count, C, H, W], their
    indices in the split, the dataset's class names)."""
    test = prepare_sources(model.cfg.data, train=False).test
    if count > len(test.images):
        raise UserError(f"the test split has {len(test.images)} images, fewer than the {count} real images "
                        "a round needs: lower --images")
    indices = torch.randperm(len(test.images), generator=torch.Generator().manual_seed(seed))[:count]
    images = to_model_range(test.images[indices], model.cfg.data.image_size, signed=False)
    return _to_uint8(images), indices.tolist(), list(test.classes)


def dataset_name(model: Model) -> str:
    names = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "dsprites": "dSprites"}
    return names.get(model.cfg.data.dataset, model.cfg.data.dataset)


def is_finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def run_dir_of(path: str | Path) -> Path:
    """A run's folder: the parent of checkpoints/ when the checkpoint sits there, else its folder."""
    p = Path(path).resolve()
    folder = p.parent if p.is_file() or p.suffix else p
    return folder.parent if folder.name == "checkpoints" else folder
