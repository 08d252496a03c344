"""What raters see: the image pools of a study (rendered once, held in memory as PNG bytes) and each
rater's round of tasks.

real-or-fake: every model's samples 0..n-1 (latent i of the evaluation's seed, as the evaluation
draws them) and, per model, n distinct real test images; one image per task, the whole round
shuffled. pairwise: for every pair of models and i in 0..n-1, model A's sample i beside model B's
sample i (the same latent and, for conditional models, the same class), sides drawn at random.

Tasks and images are named by fresh random tokens: nothing a page receives says where an image came
from. Every image of a study has the same size, mode and PNG encoding (stored, uncompressed deflate
blocks), so real and generated images are also the same number of bytes.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import secrets
from dataclasses import dataclass, field

import torch

from gen_dist.human_eval.db import PROTOCOLS, REAL
from gen_dist.human_eval.sources import Model, UserError, dataset_name, generated, real_test_images

QUESTION_REAL_OR_FAKE = "Is this a real image from the dataset, or a generated one?"


def token() -> str:
    return secrets.token_urlsafe(18)


def png(image: torch.Tensor, scale: int) -> bytes:
    """uint8 [C, H, W] -> PNG bytes, nearest-neighbour upscaled by ``scale``, with no compression
    (so the size depends on the dimensions only)."""
    from PIL import Image

    big = image.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    array = big[0].numpy() if big.shape[0] == 1 else big.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(array, mode="L" if big.shape[0] == 1 else "RGB").save(buf, format="PNG", compress_level=0)
    return buf.getvalue()


@dataclass
class Study:
    protocol: str
    models: list[Model]
    n: int  # images per model (real-or-fake) or comparisons per pair of models (pairwise)
    seed: int  # latent seed of the samples; also picks the real test images
    display: int  # shown size in pixels (at least; an integer multiple of the image size)
    images: dict = field(default_factory=dict)  # (source, index) -> PNG bytes
    real_indices: dict = field(default_factory=dict)  # model name -> its block's test-split indices
    classes: list = field(default_factory=list)

    def describe(self) -> str:
        """What a stored round refers to: a restart must serve the same pools."""
        return json.dumps({"protocol": self.protocol, "models": [m.name for m in self.models], "n": self.n,
                           "seed": self.seed}, sort_keys=True)

    @property
    def scale(self) -> int:
        return max(1, math.ceil(self.display / self.models[0].cfg.data.image_size))

    def render(self) -> "Study":
        for m in self.models:
            for i, image in enumerate(generated(m, self.n, self.seed)):
                self.images[(m.name, i)] = png(image, self.scale)
        if self.protocol == "real-or-fake":
            real, indices, self.classes = real_test_images(self.models[0], self.n * len(self.models), self.seed)
            for k, m in enumerate(self.models):
                self.real_indices[m.name] = indices[k * self.n:(k + 1) * self.n]
            for index, image in zip(indices, real):
                self.images[(REAL, index)] = png(image, self.scale)
        else:
            _, _, self.classes = real_test_images(self.models[0], 1, self.seed)
        return self

    def question(self, index: int) -> str:
        if self.protocol == "real-or-fake":
            return QUESTION_REAL_OR_FAKE
        data = dataset_name(self.models[0])
        if all(m.num_classes for m in self.models) and self.classes:
            return f"Which looks more like a real {data} image of class \u201c{self.classes[index % len(self.classes)]}\u201d?"
        return f"Which looks more like a real {data} image?"

    def draw_round(self) -> list[dict]:
        """A fresh round for one rater, in the order it is shown."""
        rng = secrets.SystemRandom()
        tasks = []
        if self.protocol == "real-or-fake":
            for m in self.models:
                shown = [(m.name, i) for i in range(self.n)] + [(REAL, j) for j in self.real_indices[m.name]]
                tasks += [{"block": m.name, "source_a": s, "index_a": i} for s, i in shown]
        else:
            for a, b in itertools.combinations([m.name for m in self.models], 2):
                for i in range(self.n):
                    left, right = (a, b) if rng.random() < 0.5 else (b, a)
                    tasks.append({"block": f"{a}|{b}", "source_a": left, "index_a": i, "source_b": right,
                                  "index_b": i, "image_b": token()})
        rng.shuffle(tasks)
        for t in tasks:
            t.update(id=token(), image_a=token(), question=self.question(t["index_a"]))
        return tasks


def check_models(protocol: str, models: list[Model]) -> None:
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown --protocol '{protocol}': use {' or '.join(PROTOCOLS)}")
    if protocol == "pairwise" and len(models) < 2:
        raise UserError("--protocol pairwise compares models: give at least two --checkpoint")
    names = [m.name for m in models]
    if len(set(names)) != len(names) or REAL in names:
        raise UserError(f"model names {names} must be distinct and not '{REAL}': name them NAME=PATH")
    first = models[0].cfg.data
    for m in models[1:]:
        d = m.cfg.data
        if (d.dataset, d.image_size) != (first.dataset, first.image_size):
            raise UserError(f"'{m.name}' was trained on {d.dataset} at {d.image_size} px, '{models[0].name}' on "
                            f"{first.dataset} at {first.image_size} px: rate models of one dataset and size together")
