"""Evaluation outside training (launch/evaluate.py): a saved model, or two sets of images.

Both run on every rank of the launch with the same strided split and reductions as training, so the
numbers do not depend on the number of processes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from gen_dist.config import load_config
from gen_dist.data import prepare_sources
from gen_dist.data.shards import read_all
from gen_dist.distributed.engine import Engine
from gen_dist.errors import DataError
from gen_dist.evaluation.evaluator import Evaluator, strided
from gen_dist.generation.loading import MACHINE_LOCAL, load_generator_weights
from gen_dist.models import build_models

IMAGE_EXTENSIONS = {"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"}  # pytorch-fid's


def evaluate_checkpoint(path: str, overrides: list[str]) -> dict | None:
    """All metrics of the saved generator / VAE; the result on the main process, None elsewhere."""
    weights, saved, info = load_generator_weights(path)
    for section, key in MACHINE_LOCAL:  # where things are on *this* machine: defaults and env, not the saved run's
        saved.get(section, {}).pop(key, None)
    cfg = load_config(None, overrides, base=saved, training=False)
    engine = Engine("no", cfg.seed)  # evaluation runs in float32
    with engine.accelerator.local_main_process_first():
        sources = prepare_sources(cfg.data, train=False)
    model = build_models(cfg.model, sources.channels, cfg.data.image_size, len(sources.classes)).generator
    model.load_state_dict(weights)
    model.to(engine.device)
    metrics = Evaluator(cfg, engine, sources.test, len(sources.classes)).evaluate(model)
    out = {"checkpoint": str(path), "step": info.get("step"), "num_samples": cfg.eval.num_samples,
           "world_size": engine.world, **metrics}
    engine.end()
    return out if engine.is_main else None


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)


def _load_files(files: list[Path]) -> torch.Tensor:
    """uint8 [N, 3, H, W], read as pytorch-fid reads them (PIL, converted to RGB)."""
    from PIL import Image

    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    if len({a.shape for a in arrays}) > 1:
        raise DataError(f"images of different sizes in {files[0].parent}: resize them to one size first")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class _ImageSet:
    """A folder of images (read lazily, each rank only its share) or shards (read whole)."""

    def __init__(self, spec: str):
        path = Path(spec)
        if path.is_dir() and not (path / "manifest.json").is_file():
            self.files = _image_files(path)
            if not self.files:
                raise DataError(f"no images in '{spec}' (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}): "
                                "pass a folder of images or a shard set")
            self.images = None
        else:
            images, _labels, _keys = read_all(spec)
            self.files, self.images = None, torch.from_numpy(np.ascontiguousarray(images))

    def content_hash(self) -> str:
        """A hash of the set's names and bytes (files) or pixels (shards): its cache identity."""
        h = hashlib.sha1()
        if self.files is not None:
            for f in self.files:
                h.update(f.name.encode() + b"\0" + f.read_bytes())
        else:
            h.update(self.images.numpy().tobytes())
        return h.hexdigest()

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else len(self.images)

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        if self.files is not None:
            return _load_files([self.files[i] for i in idx.tolist()])
        return self.images[idx]


def compare_image_sets(a: str, b: str, overrides: list[str], batch_size: int = 50) -> dict | None:
    """FID (and KID, precision/recall) between two image sets, like `python -m pytorch_fid A B`."""
    # the metrics package loads pytorch-fid, torchvision and scipy (seconds): only when computing
    from gen_dist.evaluation.metrics import compute_fid, kid, precision_recall

    cfg = load_config(None, overrides, training=False)
    engine = Engine("no", cfg.seed)
    evaluator = Evaluator(cfg, engine, None, 0)
    results = []
    for spec in (a, b):  # each set's statistics come from eval.stats_cache when its content was seen before
        images = _ImageSet(spec)
        key = evaluator.set_key(images.content_hash(), len(images))
        cached = evaluator.cached_set("set", key)
        if cached is None:
            batches = ((idx, images.batch(idx).to(engine.device))
                       for idx in strided(len(images), engine.rank, engine.world, batch_size))
            cached = evaluator.cache_set("set", key, *evaluator.features(batches))
        results.append((cached, len(images)))
    ((mua, sga, fa), na), ((mub, sgb, fb), nb) = results
    out: dict = {"a": a, "b": b, "images_a": na, "images_b": nb, "world_size": engine.world}
    if cfg.eval.kid and min(len(fa), len(fb)) >= 2:
        out["kid"], out["kid_std"] = kid(fa, fb, cfg.eval.kid_subset_size, cfg.eval.kid_subsets, seed=cfg.seed)
    if cfg.eval.precision_recall and min(len(fa), len(fb)) > cfg.eval.pr_k:
        out["precision"], out["recall"] = precision_recall(fb, fa, k=cfg.eval.pr_k)  # b is the reference
    out["fid"] = compute_fid((mua, sga), (mub, sgb), device=engine.device)
    engine.end()
    return out if engine.is_main else None
