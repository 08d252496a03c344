"""The one dataset registry: the dataset names, how each is read (torchvision, CIFAR-10 by gen_dist,
an image folder, dSprites drawn by gen_dist) in memory (``load_arrays``) or as a random-access source
for the shard writer (``load_source``), and which data a run reads, prepared once: WebDataset shards
(the default) or the source itself.

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

from gen_dist.data import dsprites
from gen_dist.data.arrays import ArrayLoader, load_folder, load_torchvision
from gen_dist.data.base import Source
from gen_dist.data.cifar import load_cifar10
from gen_dist.data.shard_writer import MANIFEST, write_shards
from gen_dist.data.shards import ShardLoader, read_all, read_text, resolve_shards
from gen_dist.errors import DataError


# --- the registry: every dataset name, and how each is read -------------------------------------
DATASETS = ("mnist", "fashion_mnist", "cifar10", "folder", "dsprites")
TORCHVISION = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}  # class names
_TORCHVISION_DIRS = {"mnist": "MNIST/raw", "fashion_mnist": "FashionMNIST/raw", "cifar10": "cifar-10-batches-py"}


def load_arrays(dataset: str, root: str, train: bool, download: bool, image_size: int = 0):
    """-> (images uint8 [N, C, H, W], labels int64 [N], class names)."""
    if dataset == "folder":
        return load_folder(root, train, image_size)
    if dataset == "dsprites":  # drawn by gen_dist, default grid (load_dataset honours data.dsprites_*)
        images, labels, classes, _factors = dsprites.load_split("train" if train else "test")
        return images, labels, classes
    if dataset == "cifar10":  # read by gen_dist (torchvision's class md5-checks every batch file)
        return load_cifar10(root, train, download)
    return load_torchvision(TORCHVISION[dataset], dataset, root, train, download)


def load_source(dataset: str, split: str, root: str, *, image_size: int = 0, channels: int = 3) -> Source:
    """Open a split without copying it. Torchvision sets are read from ``root`` in torchvision's
    layout (never downloaded); ``folder`` is an image folder (class = subfolder; ``root/split`` is
    used when it exists), decoded lazily so a folder larger than memory converts too."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset '{dataset}': choose one of {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise DataError(f"unknown split '{split}': choose train or test")
    if dataset == "folder":
        return folder_source(root, split, image_size, channels)
    if dataset == "dsprites":  # drawn by gen_dist (default grid; dsprites.source takes another)
        return dsprites.source(split)
    try:
        images, labels, classes = load_arrays(dataset, root, split == "train", False)
    except DataError:
        raise DataError(f"{dataset} not found under --root '{root}' (expected {root}/{_TORCHVISION_DIRS[dataset]}): "
                        f"pass --root the folder that holds {_TORCHVISION_DIRS[dataset].split('/')[0]}/") from None
    arr = images.numpy()
    return Source(dataset, split, classes, labels.numpy(), lambda i: arr[i])


def folder_source(root: str, split: str, image_size: int, channels: int) -> Source:
    """An image folder as a Source, each image decoded when the writer asks for it."""
    import torchvision.datasets as tvd  # heavy (~1 s): only image folders need torchvision here
    import torchvision.transforms.v2 as T

    if channels not in (1, 3):
        raise DataError(f"--channels {channels} is not supported: use 1 (grayscale) or 3 (RGB)")
    base = Path(root)
    folder = base / split if (base / split).is_dir() else base
    if not folder.is_dir():
        raise DataError(f"image folder --root '{root}' does not exist: point --root at a folder of class subfolders")
    size = image_size or None
    tf = T.Compose([T.PILToTensor()] + ([T.Resize(size, antialias=True), T.CenterCrop(size)] if size else []))
    mode = "L" if channels == 1 else "RGB"
    try:
        ds = tvd.ImageFolder(str(folder), transform=tf, loader=lambda p: open_image(p, mode))
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"no images in '{folder}' ({e}): use one subfolder per class") from None
    return Source("folder", split, list(ds.classes), np.asarray(ds.targets, np.int64), lambda i: ds[i][0].numpy())


def open_image(path: str, mode: str):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert(mode)


# --- what a run reads ----------------------------------------------------------------------------
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
        images, labels, classes, factors = dsprites.load_split("train" if train else "test", dsprites.Grid.of(cfg))
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
    out = auto_shard_dir(cfg, split)
    if (out / MANIFEST).is_file():
        return str(out)
    if cfg.dataset == "dsprites":  # drawn by gen_dist: nothing to download
        source = dsprites.source(split, dsprites.Grid.of(cfg))
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
    manifest = resolve_shards(spec, count=False).manifest
    if manifest and not manifest.startswith("pipe:"):
        try:
            return list(json.loads(read_text(manifest)).get("classes", []))
        except Exception:
            return []
    return []


def _read_test_shards(spec: str, strict: bool) -> Dataset:
    images, labels, keys = read_all(spec, strict=strict)
    classes = _classes_of(spec) or [str(c) for c in range(int(labels.max()) + 1 if len(labels) else 0)]
    return Dataset(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels).long(), classes,
                   dsprites.factors_of(spec, keys))


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


def first_train_images(cfg, train: str | Dataset | None, n: int) -> torch.Tensor:
    """The first n training images in split order (uint8 [n, C, H, W]): what a VAE's latent mixture prior is
    fit to (gen_dist/generation/latent_prior.py). ``train``: the Sources' training split (None: load it)."""
    if train is None:
        train = ensure_shards(cfg, "train") if cfg.shards == "auto" else cfg.shards
        train = train if train is not None else load_dataset(cfg, train=True)
    if isinstance(train, Dataset):
        return train.images[:n]
    images, _, _ = read_all(train, strict=cfg.strict)
    return torch.from_numpy(np.ascontiguousarray(images[:n]))


def build_train_loader(cfg, sources: Sources, batch_size: int, rank: int, world: int, seed: int, pin: bool):
    if isinstance(sources.train, Dataset):
        return ArrayLoader(sources.train.images, sources.train.labels, batch_size, rank, world, seed,
                           pin_memory=pin)
    loader = ShardLoader(sources.train, batch_size=batch_size, rank=rank, world_size=world,
                         num_workers=cfg.num_workers, seed=seed, strict=cfg.strict, pin_memory=pin)
    if loader.batches_per_epoch() == 0:
        raise DataError(f"the shards '{sources.train}' cannot fill one batch of {batch_size} x {world} "
                        "processes: lower train.batch_size or use more data")
    return loader
