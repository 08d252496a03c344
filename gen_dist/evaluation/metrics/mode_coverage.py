"""Mode coverage: into which classes do generated samples fall, by a classifier trained on the real data.

A small CNN is trained once per (dataset, stored image size, recipe) on the real training split and
cached on disk (``eval.classifier_cache``) with its accuracy on the real test split and the real class
distribution (the training labels' frequencies). It is a measuring instrument: trained with a fixed
seed at the dataset's own resolution (generated images of any size are resized to it, as the real
images are resized for training), independent of the run's seed, image size and ``data.limit``, so a
28 px VAE and a 64 px GAN are measured by the same classifier, trained once.

Generated samples are classified and counted per class (each rank its strided share; the counts are
summed over ranks). Reported:

- ``coverage/classes_covered``: classes holding at least ``COVERED_SHARE`` (1/4) of their expected share,
  i.e. class c counts when p_gen(c) >= p_real(c) / 4. With 10 balanced classes a class needs 2.5% of
  the samples; a generator that drops a mode or makes it rare loses it.
- ``coverage/kl``: KL(p_gen || p_real) in nats; 0 when the classes come in the real proportions,
  log(10) = 2.30 when every sample is one class of ten balanced ones.
- ``coverage/histogram``: p_gen per class (a list; metrics.jsonl only, W&B takes scalars).
- ``coverage/alarm``: 1 when fewer than ``eval.coverage_alarm`` x the number of classes are covered
  (a mode-collapse alarm the trainer prints), else 0.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gen_dist.data import to_model_range
from gen_dist.data.datasets import load_arrays
from gen_dist.data.shards import read_all
from gen_dist.errors import DataError

RECIPE = "cnn16-bn-adam-onecycle-v1"  # part of the cache key: change it when the network or training changes
COVERED_SHARE = 0.25  # a class is covered when it holds >= 1/4 of its real share of the samples
CLASSIFIER_SEED = 0  # fixed: the instrument must not change with the run's seed
TRAIN_BATCH = 128


class DigitClassifier(nn.Module):
    """Two conv stages with batch norm and a small MLP head at the dataset's stored size (at most 32 px:
    MNIST-like and CIFAR classes are recognisable there); inputs of another size are resized to it."""

    def __init__(self, channels: int, num_classes: int, image_size: int, width: int = 16):
        super().__init__()
        self.work_size = min(image_size, 32)
        side = self.work_size // 4
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * side * side, 128), nn.ReLU(),
                                  nn.Dropout(0.25), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: images in [0, 1], [B, C, S, S] at the run's image size."""
        x = x.float()
        if x.shape[-1] != self.work_size:
            x = F.interpolate(x, size=(self.work_size, self.work_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return self.head(self.features(x * 2 - 1))


@dataclass
class TrainedClassifier:
    model: DigitClassifier
    accuracy: float  # on the real test split
    real_distribution: torch.Tensor  # class frequencies of the real training split (float64)
    path: Path  # the cache file
    trained_now: bool  # False when it was read from the cache
    seconds: float  # how long its training took (when it was trained)


def cache_path(cfg, channels: int, num_classes: int, size: int) -> Path:
    """The file a classifier for this data lives in: dataset, stored image size, training length, recipe."""
    d, e = cfg.data, cfg.eval
    name = f"{d.dataset}-{size}px-e{e.classifier_epochs}"
    if e.classifier_limit:
        name += f"-first{e.classifier_limit}"
    extra = f"{RECIPE}|c{channels}|k{num_classes}"
    if d.dataset == "folder" or d.shards not in (None, "auto"):  # the data is named by a path, not a name
        extra += f"|{Path(d.root).resolve() if d.dataset == 'folder' else d.shards}"
    return Path(e.classifier_cache) / f"{name}-{hashlib.sha1(extra.encode()).hexdigest()[:10]}.pt"


def _training_split(data_cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """The real training split (uint8 images, labels): the run's explicit shards, else the torchvision
    source that `data.shards=auto` converts (the same pixels)."""
    if data_cfg.shards not in (None, "auto"):
        images, labels, _ = read_all(data_cfg.shards)
        return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels).long()
    images, labels, _ = load_arrays(data_cfg.dataset, data_cfg.root, True, data_cfg.download, data_cfg.image_size)
    return images, labels


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, image_size: int,
             device: torch.device, batch: int = 1000) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        x = to_model_range(images[i : i + batch].to(device), image_size, signed=False)
        correct += int((model(x).argmax(1).cpu() == labels[i : i + batch]).sum())
    model.train(was_training)
    return correct / max(1, len(images))


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, image_size: int,
                     epochs: int, device: torch.device) -> DigitClassifier:
    """Adam with a one-cycle schedule, batch 128, `epochs` passes; seeded, and the global RNG state of
    the caller (the training run) is left as it was."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(CLASSIFIER_SEED)
        model = DigitClassifier(images.shape[1], num_classes, image_size).to(device)
        order = torch.Generator().manual_seed(CLASSIFIER_SEED)
        per_epoch = max(1, len(images) // TRAIN_BATCH)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * per_epoch)
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(images), generator=order)
            for b in range(per_epoch):
                idx = perm[b * TRAIN_BATCH : (b + 1) * TRAIN_BATCH]
                x = to_model_range(images[idx].to(device), image_size, signed=False)
                loss = F.cross_entropy(model(x), labels[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return model.eval()


def _save_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # readers see no file or the whole one


def load_or_train(cfg, test_set, device: torch.device) -> TrainedClassifier:
    """The cached classifier for this data, or a new one trained, tested and cached. Call it on each
    node's main process first (the others then read the file it wrote)."""
    num_classes = len(test_set.classes) if test_set.classes else int(test_set.labels.max()) + 1
    size = test_set.images.shape[-1]  # the data's stored size (a folder's: data.image_size)
    path = cache_path(cfg, test_set.channels, num_classes, size)
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            model = DigitClassifier(test_set.channels, num_classes, size).to(device)
            model.load_state_dict(saved["state"])
            return TrainedClassifier(model.eval(), saved["accuracy"],
                                     torch.tensor(saved["real_distribution"], dtype=torch.float64),
                                     path, False, saved["seconds"])
        except Exception as e:  # a damaged or foreign file: train afresh and replace it
            print(f"gen_dist: classifier cache '{path}' unreadable ({type(e).__name__}); training a new one",
                  flush=True)
    images, labels = _training_split(cfg.data)
    if cfg.eval.classifier_limit:
        images, labels = images[: cfg.eval.classifier_limit], labels[: cfg.eval.classifier_limit]
    if images.shape[1:] != test_set.images.shape[1:]:
        raise DataError(f"training images {tuple(images.shape[1:])} and test images {tuple(test_set.images.shape[1:])} "
                        "differ in shape: give data.shards and data.test_shards of the same data")
    if len(images) < TRAIN_BATCH:
        raise DataError(f"{len(images)} training images cannot train the mode-coverage classifier: "
                        "raise eval.classifier_limit (0 = all) or set eval.mode_coverage=false")
    start = time.time()
    model = train_classifier(images, labels, num_classes, size, cfg.eval.classifier_epochs, device)
    seconds = time.time() - start
    acc = accuracy(model, test_set.images, test_set.labels, size, device)
    counts = torch.bincount(labels, minlength=num_classes).double()
    real = counts / counts.sum()
    try:
        _save_atomic({"state": {k: v.cpu() for k, v in model.state_dict().items()}, "accuracy": acc,
                      "real_distribution": real.tolist(), "seconds": seconds, "recipe": RECIPE,
                      "train_images": len(images), "image_size": size}, path)
    except OSError as e:
        raise DataError(f"cannot write the classifier cache '{path}' ({e}): set eval.classifier_cache "
                        "(or GEN_DIST_CLASSIFIER_CACHE) to a writable folder") from None
    print(f"gen_dist: trained the mode-coverage classifier on {len(images)} {cfg.data.dataset} images in "
          f"{seconds:.0f} s: test accuracy {acc:.4f} (cached in {path})", flush=True)
    return TrainedClassifier(model, acc, real, path, True, seconds)


@torch.no_grad()
def class_counts(model: nn.Module, batches, num_classes: int) -> torch.Tensor:
    """Predicted-class counts (float64) over (indices, images in [0, 1]) batches of this rank."""
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for _idx, images in batches:
        pred = model(images).argmax(1).cpu()
        counts += torch.bincount(pred, minlength=num_classes).double()
    return counts


def coverage_metrics(counts: torch.Tensor, real: torch.Tensor, alarm_fraction: float) -> dict:
    """The reported figures from class counts summed over ranks and the real class distribution."""
    counts, real = counts.double().cpu(), real.double().cpu()
    gen = counts / counts.sum().clamp_min(1)
    covered = int((gen >= COVERED_SHARE * real).sum())
    nz = gen > 0  # 0 log 0 = 0; real has every class, so the KL from gen to real is finite
    kl = float((gen[nz] * (gen[nz] / real[nz]).log()).sum())
    alarm = covered < alarm_fraction * len(real)
    return {"coverage/classes_covered": covered, "coverage/num_classes": len(real),
            "coverage/kl": kl, "coverage/histogram": [round(float(p), 6) for p in gen],
            "coverage/alarm": int(alarm)}


def alarm_message(metrics: dict, alarm_fraction: float) -> str:
    """One line for the console when `coverage/alarm` is set."""
    hist = metrics.get("coverage/histogram") or []
    top = max(range(len(hist)), key=lambda i: hist[i]) if hist else -1
    need = math.ceil(alarm_fraction * metrics["coverage/num_classes"])
    return (f"mode-collapse alarm: generated samples cover {metrics['coverage/classes_covered']} of "
            f"{metrics['coverage/num_classes']} classes (alarm below {need}); class {top} takes "
            f"{hist[top]:.0%} of them, KL to the real class distribution {metrics['coverage/kl']:.3f} nats")
