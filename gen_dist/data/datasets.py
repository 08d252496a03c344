"""Which data a run reads, prepared once: WebDataset shards (the default) or the torchvision source.

``data.shards=auto`` converts the torchvision source (MNIST, Fashion-MNIST, CIFAR-10, an image folder)
into shards under ``data.shard_cache`` the first time, on the main process of each node (written to a
temporary folder and renamed, so a crash or a second node never leaves half a shard set), and reuses
them afterwards. Training reads shards with ``ShardLoader``; evaluation reads every test sample
through the same shard reader. ``data.shards=null`` reads the torchvision arrays directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gen_dist.data.arrays import ArrayLoader, load_arrays
from gen_dist.errors import DataError


@dataclass
class Dataset:
    """One split in memory: images uint8 [N, C, H, W] at their stored size, labels int64 [N]."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list
    factors: object = None  # dsprites.FactorTable: ground-truth factors per image (dSprites), else None

    @property
    def channels(self) -> int:
        return self.images.shape[1]


@dataclass
class Sources:
    train: str | Dataset | None  # a shard spec, or the training split in memory (None: evaluation only)
    test: Dataset  # evaluation reads every test image
    channels: int
    classes: list


def load_dataset(cfg, train: bool) -> Dataset:
    """The torchvision (or image folder) split in memory; cfg is the `data` section."""
    if cfg.dataset == "dsprites":  # drawn, with its factors (gen_dist/data/dsprites.py)
        from gen_dist.data.dsprites import Grid, load_split

        images, labels, classes, factors = load_split("train" if train else "test", Grid.of(cfg))
        if train and cfg.limit:
            images, labels, factors.classes = images[: cfg.limit], labels[: cfg.limit], factors.classes[: cfg.limit]
        return Dataset(images, labels, classes, factors)
    images, labels, classes = load_arrays(cfg.dataset, cfg.root, train, cfg.download, cfg.image_size)
    if train and cfg.limit:
        images, labels = images[: cfg.limit], labels[: cfg.limit]
    return Dataset(images, labels, classes)


def auto_shard_dir(cfg, split: str) -> Path:
    """Shards made by `auto` are keyed by what they hold: dataset, split, sample limit (and folder)."""
    name = f"{cfg.dataset}-{split}"
    if cfg.dataset == "dsprites":  # the grid decides what the shards hold
        name = f"dsprites-o{cfg.dsprites_orientations}-p{cfg.dsprites_positions}-{split}"
    if cfg.dataset == "folder":
        name += f"-{cfg.image_size}px-" + hashlib.sha1(str(Path(cfg.root).resolve()).encode()).hexdigest()[:8]
    if split == "train" and cfg.limit:
        name += f"-first{cfg.limit}"
    return Path(cfg.shard_cache) / name


def ensure_shards(cfg, split: str) -> str:
    """The auto shard folder for a split, written from the torchvision source if it is not there yet."""
    from gen_dist.data.shard_writer import MANIFEST, load_source, write_shards

    out = auto_shard_dir(cfg, split)
    if (out / MANIFEST).is_file():
        return str(out)
    if cfg.dataset == "dsprites":  # drawn by gen_dist: nothing to download
        from gen_dist.data.dsprites import Grid, source as dsprites_source

        source = dsprites_source(split, Grid.of(cfg))
    else:
        if cfg.dataset != "folder":  # download when allowed (load_source itself never downloads)
            load_arrays(cfg.dataset, cfg.root, split == "train", cfg.download)
        source = load_source(cfg.dataset, split, cfg.root, image_size=cfg.image_size)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        write_shards(source, tmp, samples_per_shard=cfg.samples_per_shard, overwrite=True, progress=True,
                     limit=cfg.limit if split == "train" else 0)
        tmp.rename(out)  # atomic: readers see no folder or the whole set
    except OSError as e:
        if not (out / MANIFEST).is_file():  # not just another node that finished first
            raise DataError(f"cannot write shards to data.shard_cache='{cfg.shard_cache}' ({e}): "
                            "set data.shard_cache (or GEN_DIST_SHARDS) to a writable folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def _classes_of(spec: str) -> list:
    from gen_dist.data.shards import resolve_shards

    manifest = resolve_shards(spec, count=False).manifest
    if manifest and not manifest.startswith("pipe:"):
        try:
            from gen_dist.data.shards import _read_text

            return list(json.loads(_read_text(manifest)).get("classes", []))
        except Exception:
            return []
    return []


def _read_test_shards(spec: str, strict: bool) -> Dataset:
    from gen_dist.data.shards import read_all

    from gen_dist.data.dsprites import factors_of

    images, labels, keys = read_all(spec, strict=strict)
    classes = _classes_of(spec) or [str(c) for c in range(int(labels.max()) + 1 if len(labels) else 0)]
    return Dataset(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels).long(), classes,
                   factors_of(spec, keys))


def prepare_sources(cfg, train: bool = True) -> Sources:
    """Run on every rank, the node's main process first (it converts or downloads, the others reuse).
    ``train=False``: the test split only (standalone evaluation)."""
    if not train:
        train = None
    elif cfg.shards == "auto":
        train = ensure_shards(cfg, "train")
    elif cfg.shards is None:
        train = load_dataset(cfg, train=True)
    else:
        train = cfg.shards
    test_spec = cfg.test_shards
    if test_spec == "auto":
        test_spec = ensure_shards(cfg, "test")
    test = load_dataset(cfg, train=False) if test_spec is None else _read_test_shards(test_spec, cfg.strict)
    if isinstance(train, Dataset):
        classes = train.classes
    else:
        classes = (_classes_of(train) if train else []) or test.classes
    return Sources(train, test, test.channels, classes)


def build_train_loader(cfg, sources: Sources, batch_size: int, rank: int, world: int, seed: int, pin: bool):
    if isinstance(sources.train, Dataset):
        return ArrayLoader(sources.train.images, sources.train.labels, batch_size, rank, world, seed,
                           pin_memory=pin)
    from gen_dist.data.shards import ShardLoader

    loader = ShardLoader(sources.train, batch_size=batch_size, rank=rank, world_size=world,
                         num_workers=cfg.num_workers, seed=seed, strict=cfg.strict, pin_memory=pin)
    if loader.batches_per_epoch() == 0:
        raise DataError(f"the shards '{sources.train}' cannot fill one batch of {batch_size} x {world} "
                        "processes: lower train.batch_size or use more data")
    return loader
