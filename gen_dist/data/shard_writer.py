"""Write an image dataset as WebDataset shards (plain tar files) plus a manifest.

Each sample is two tar members sharing a key, the sample's index in the source (8 digits):
``KEY.npy`` (uint8 [C, H, W] in NumPy's .npy format: the reader caches the 128-byte header, so
decoding is one ``np.frombuffer``) or ``KEY.png`` (smaller, decoded by PIL), and ``KEY.cls``
(the class index as ASCII), plus ``KEY.factors`` for a source with ground-truth factors (dSprites:
the factor class indices, space-separated ASCII; the manifest then has a ``factors`` entry). Any
WebDataset reader can read them; ``gen_dist.data.shards`` uses the manifest's per-shard counts to
give every rank equal batches.

``DIR/manifest.json`` lists the shards (name, samples, bytes, sha256) and the dataset, split,
encoding, image shape, classes and total. The same input gives byte-identical files: samples go in
index order, tar headers have fixed mtime/uid/gid/names (USTAR format), the manifest has no time.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np

from gen_dist.data.base import Source
from gen_dist.errors import DataError
from gen_dist.progress import Progress

ENCODINGS = ("npy", "png")
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def _encoder(encoding: str, shape: tuple) -> Callable[[np.ndarray], bytes]:
    if encoding == "npy":
        buf = io.BytesIO()
        np.save(buf, np.zeros(shape, np.uint8))
        header = buf.getvalue()[: -int(np.prod(shape))]  # identical for every sample of this shape
        return lambda img: header + np.ascontiguousarray(img).tobytes()
    from PIL import Image

    def png(img: np.ndarray) -> bytes:
        out = io.BytesIO()
        Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)).save(out, format="PNG")
        return out.getvalue()

    return png


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _previous_output(out: Path, prefix: str) -> list:
    """Files an earlier run wrote here: its manifest, the shards it lists, and our naming pattern."""
    found = set(out.glob(f"{prefix}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"))
    if (out / MANIFEST).exists():
        found.add(out / MANIFEST)
        try:
            found.update(out / s["name"] for s in json.loads((out / MANIFEST).read_text())["shards"])
        except (ValueError, KeyError, TypeError):
            pass  # unreadable manifest: it is replaced anyway
    return sorted(p for p in found if p.is_file() and p.parent == out)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_shards(source: Source, out: str | os.PathLike, *, samples_per_shard: int, encoding: str = "npy",
                 limit: int = 0, overwrite: bool = False, progress: bool = True) -> dict:
    """Write ``source`` (its first ``limit`` samples if > 0) as shards under ``out``; return the
    manifest (also written to ``out/manifest.json``, last, so a folder with a manifest is complete)."""

    if encoding not in ENCODINGS:
        raise DataError(f"unknown --format '{encoding}': choose one of {', '.join(ENCODINGS)}")
    if samples_per_shard < 1:
        raise DataError(f"--samples-per-shard {samples_per_shard} must be at least 1")
    n = min(len(source), limit) if limit > 0 else len(source)
    if n == 0:
        raise DataError(f"{source.dataset} {source.split} has no samples to write: check --root and --limit")
    out = Path(out)
    prefix = f"{source.dataset}-{source.split}"
    old = sorted(out.glob("*.tar")) + ([out / MANIFEST] if (out / MANIFEST).exists() else [])
    if old and not overwrite:
        raise DataError(f"--out '{out}' already holds shards ({old[0].name}): pass --overwrite or choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    for p in _previous_output(out, prefix):  # stale shards would be picked up by a glob or brace pattern
        p.unlink()

    first = np.asarray(source.image(0))
    shape = tuple(int(s) for s in first.shape)
    encode = _encoder(encoding, shape)
    shards = []
    with Progress(main=progress).stage(f"writing {prefix}", n) as bar:
        for start in range(0, n, samples_per_shard):
            name = f"{prefix}-{len(shards):06d}.tar"
            tmp = out / (name + ".tmp")
            stop = min(start + samples_per_shard, n)
            try:
                with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                    for i in range(start, stop):
                        img = np.asarray(source.image(i))
                        if img.shape != shape or img.dtype != np.uint8:
                            raise DataError(f"sample {i} is {img.dtype} {tuple(img.shape)}, sample 0 is uint8 {shape}: "
                                            "pass --image-size to resize every image to one size")
                        key = f"{i:08d}"
                        _add(tar, f"{key}.{encoding}", encode(img))
                        _add(tar, f"{key}.cls", str(int(source.labels[i])).encode())
                        if source.factors is not None:
                            _add(tar, f"{key}.factors", " ".join(str(int(v)) for v in source.factors[i]).encode())
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            tmp.replace(out / name)
            shards.append({"name": name, "samples": stop - start, "bytes": (out / name).stat().st_size,
                           "sha256": _sha256(out / name)})
            bar.update(stop - start)

    manifest = {
        "format_version": MANIFEST_VERSION,
        "dataset": source.dataset,
        "split": source.split,
        "encoding": encoding,
        "image_shape": list(shape),  # C, H, W
        "channels": shape[0],
        "image_size": list(shape[1:]),  # H, W
        "classes": [str(c) for c in source.classes],
        "num_samples": n,
        "key": "index of the sample in the source split, 8 digits",
        "shards": shards,
    }
    if source.factor_info is not None:  # only datasets with ground-truth factors: other manifests are unchanged
        manifest["factors"] = source.factor_info
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(out / MANIFEST)
    return manifest
