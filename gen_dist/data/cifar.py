"""CIFAR-10 from torchvision's download layout (``root/cifar-10-batches-py``), read by gen_dist itself.

torchvision downloads the archive (checking its md5) when the folder is missing; the batches are
then read here, not by ``torchvision.datasets.CIFAR10``, which checks the md5 of all six batch files
(~180 MB) on every open and so refuses any other file in the same format (a subset, a test fixture).
Instead each file's structure is checked (uint8 ``data`` [N, 3072], ``labels`` of N classes), and
the pickles are opened with an unpickler that builds only NumPy arrays and plain values, never runs
other code (the same spirit as ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from gen_dist.errors import DataError

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
META_FILE = "batches.meta"
IMAGE_SHAPE = (3, 32, 32)

# what a CIFAR pickle (written by Python 2's cPickle, or Python 3 with protocol 2) refers to
_ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
            ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: a CIFAR batch holds only arrays and lists")
        if module == "numpy.core.multiarray":  # NumPy 2 keeps these under numpy._core
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnly(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DataError(f"CIFAR-10 file '{path}' is unreadable ({type(e).__name__}: {e}): "
                        f"delete {path.parent} and run again to download it") from None
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR-10 file '{path}' is not a CIFAR batch (a {type(obj).__name__}): "
                        f"delete {path.parent} and run again to download it")
    return obj


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _read_pickle(path)
    data, labels = batch.get("data"), batch.get("labels", batch.get("fine_labels"))
    pixels = int(np.prod(IMAGE_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        shown = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"CIFAR-10 file '{path}' has 'data' {shown}, expected uint8 [N, {pixels}]: "
                        f"delete {path.parent} and run again to download it")
    if labels is None or len(labels) != len(data):
        raise DataError(f"CIFAR-10 file '{path}' has {0 if labels is None else len(labels)} labels for "
                        f"{len(data)} images: delete {path.parent} and run again to download it")
    # rows are 1024 red, 1024 green, 1024 blue values, each plane row-major: exactly [3, 32, 32]
    return data.reshape(-1, *IMAGE_SHAPE), np.asarray(labels, dtype=np.int64)


def _download(root: str, train: bool) -> None:
    import torchvision.datasets as tvd

    try:
        tvd.CIFAR10(root, train=train, download=True)  # fetches and checks the archive's md5
    except (OSError, RuntimeError) as e:
        raise DataError(f"could not download cifar10 into data.root='{root}' ({str(e).splitlines()[0]}): "
                        f"download it on a machine with network, then point data.root at the folder "
                        f"that holds {FOLDER}/") from None


def load_cifar10(root: str, train: bool, download: bool):
    """-> (images uint8 [N, 3, 32, 32], labels int64 [N], class names), from ``root/cifar-10-batches-py``."""
    folder = Path(root) / FOLDER
    names = (TRAIN_FILES if train else TEST_FILES) + [META_FILE]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing and download:
        _download(root, train)
        missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        fix = "set data.root to the folder that holds it" + ("" if download else " or data.download=true")
        raise DataError(f"cifar10 not found under data.root='{root}' ({folder / missing[0]} is missing): {fix}")
    parts = [_read_batch(folder / n) for n in names[:-1]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    classes = [str(c) for c in _read_pickle(folder / META_FILE).get("label_names", [])]
    if not classes or labels.min() < 0 or labels.max() >= len(classes):
        raise DataError(f"CIFAR-10 labels in '{folder}' do not match the {len(classes)} class names of "
                        f"{META_FILE}: delete {folder} and run again to download it")
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels), classes
