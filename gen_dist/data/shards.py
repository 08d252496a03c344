"""Sharded WebDataset input with equal batches on every rank (implements base.BatchLoader).

WebDataset's own splitting (whole shards per rank, then per worker) gives ranks unequal batch counts
when shards do not divide evenly, and DDP then hangs; resampling fixes the counts but repeats data.
Here the split is planned in samples instead, from the per-shard counts of the manifest:

* each epoch, the shard order is shuffled by (seed, epoch) and read as one sequence of N samples;
* every rank takes a contiguous range of ``B * batch_size`` samples, ``B = N // (world * batch)``,
  so ranks yield exactly B batches and each sample is used at most once; the ``N - world * B *
  batch`` left over are dropped (counted in ``stats``); a shard may be cut between two workers, who
  each skip the samples outside their range;
* within a rank, global batch k is made by stream ``k % S`` (S = max(1, num_workers)), one stream
  per DataLoader worker, each shuffling its range with a buffer seeded by (seed, epoch, rank, stream).

Resume: ``set_position(epoch, k)`` re-plans the same epoch; each stream re-reads its range and skips
its batches before k (without collating them), and the workers are rotated so that the DataLoader's
round robin yields batch k first. The order depends on (seed, epoch, world_size, batch_size,
num_workers, shuffle_buffer): resume with the same values. ``seed`` must be equal on all ranks.

Damage: a truncated or corrupt shard, or a sample without an image or label, is skipped with a
warning and counted (``stats.skipped_damaged``, this rank). Its stream then re-reads its own range
to refill the missing samples (counted in ``stats.repeated_per_epoch``), so the batch count stays
equal on every rank. ``strict=True`` raises ``DamagedShardError`` naming the shard instead; with a
manifest, a local shard whose size differs from the manifest is caught when the loader is built.

Without a manifest (a list of URLs, a pattern with no manifest.json beside it), every process reads
each shard once when the loader is built, to count its samples.

Reading: ``tar_reader.tar_samples`` (webdataset's ``gopen`` for URLs, a small tar parser instead of
Python's tarfile, which is ~7x slower; figures in tar_reader). Any WebDataset tar works (key.ext
members; images as .npy, .png, .jpg; labels as .cls). The plan is in ``shard_plan``.
``read_all`` reads a whole shard set in order (evaluation on a test split).
"""

from __future__ import annotations

import glob
import io
import json
import os
import random
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gen_dist.data.base import DataPosition, DataStats
from gen_dist.data.shard_plan import slices as plan_slices
from gen_dist.data.shard_plan import stream_plan
from gen_dist.data.tar_reader import READ_ERRORS, is_url as _is_url, tar_samples
from gen_dist.errors import DataError

MANIFEST = "manifest.json"
IMAGE_EXTS = ("npy", "png", "jpg", "jpeg", "webp")
_FIX = "check the path, or write shards with launch/make_shards.py"


class ShardError(DataError):  # DataError is a ValueError; launchers exit 2 with the message
    """Shards that cannot be used; the one-line message names the problem and the fix."""


class DamagedShardError(ShardError):
    """strict=True: a shard is truncated or corrupt, or holds a sample that cannot be decoded."""


# ----------------------------------------------------------------------------- resolving the spec


@dataclass(frozen=True)
class Shard:
    url: str  # a local path or a URL webdataset's gopen opens (pipe:, http(s)://, fsspec schemes)
    samples: int
    nbytes: int = -1  # from the manifest; -1 = unknown
    sha256: str = ""  # from the manifest; "" = unknown


@dataclass(frozen=True)
class ShardSet:
    shards: tuple
    shape: tuple = ()  # C, H, W; () = taken from the first sample
    manifest: str = ""  # where the counts came from; "" = counted by reading


def _expand(spec: str) -> list:
    import braceexpand

    if _is_url(spec):
        return list(braceexpand.braceexpand(spec))
    urls = []
    for p in braceexpand.braceexpand(os.path.expanduser(spec)):
        urls += sorted(glob.glob(p)) if glob.has_magic(p) else [p]
    if not urls:
        raise ShardError(f"shard pattern '{spec}' matches no files: {_FIX}")
    missing = [u for u in urls if not os.path.isfile(u)]
    if missing:
        raise ShardError(f"{len(missing)} of {len(urls)} shards of '{spec}' do not exist (first: {missing[0]}): {_FIX}")
    return urls


def read_text(url: str) -> str:
    if _is_url(url):
        from webdataset import gopen

        with gopen(url, "rb") as f:
            return f.read().decode()
    with open(url) as f:
        return f.read()


def _load_manifest(path: str) -> dict:
    try:
        m = json.loads(read_text(path))
        for s in m["shards"]:
            s["name"], s["samples"] = str(s["name"]), int(s["samples"])
        return m
    except FileNotFoundError:
        raise ShardError(f"manifest '{path}' does not exist: {_FIX}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ShardError(f"manifest '{path}' is unreadable ({type(e).__name__}: {e}): "
                         "rewrite it with launch/make_shards.py") from None


def _from_manifest(path: str, names: Sequence[str] | None = None) -> ShardSet:
    """Shards listed in the manifest at ``path`` (only ``names``, in that order, when given)."""
    m = _load_manifest(path)
    base = path[: path.rfind("/") + 1] if _is_url(path) else os.path.dirname(os.path.abspath(path)) + os.sep
    entries = {s["name"]: s for s in m["shards"]}
    chosen = [entries[n] for n in names] if names is not None else m["shards"]
    shards = tuple(Shard(base + s["name"], s["samples"], int(s.get("bytes", -1)), str(s.get("sha256") or ""))
                   for s in chosen)
    if not _is_url(path):
        missing = [s.url for s in shards if not os.path.isfile(s.url)]
        if missing:
            raise ShardError(f"{len(missing)} shards listed in '{path}' do not exist (first: {missing[0]}): "
                             "copy them next to the manifest or rewrite it with launch/make_shards.py")
    return ShardSet(shards, tuple(m.get("image_shape", ())), path)


def _sibling_manifest(urls: list) -> str:
    """manifest.json in the folder of the shards (local or URL, not pipe:), when it lists them all."""
    if any(u.startswith("pipe:") for u in urls):
        return ""
    if _is_url(urls[0]):
        folders = {u[: u.rfind("/") + 1] for u in urls}
    else:
        folders = {os.path.dirname(os.path.abspath(u)) + os.sep for u in urls}
    if len(folders) != 1:
        return ""
    path = folders.pop() + MANIFEST
    if not _is_url(path) and not os.path.isfile(path):
        return ""
    try:
        listed = {s["name"] for s in _load_manifest(path)["shards"]}
    except Exception:  # a remote folder without a manifest (curl's exit status, HTTP 404, ...)
        if not _is_url(path):
            raise
        return ""
    return path if all(u.split("/")[-1] in listed for u in urls) else ""


def resolve_shards(spec, *, count: bool = True) -> ShardSet:
    """``spec``: a shard path or URL, a brace/glob pattern, a manifest.json (path or URL), a folder
    holding one, or a list of those shard paths/URLs. ``count=False`` skips reading shards that have
    no manifest (their counts are then 0): cheap validation only."""
    if isinstance(spec, (list, tuple)):
        urls = [u for s in spec for u in _expand(os.fspath(s))]
    else:
        spec = os.fspath(spec)
        if not spec:
            raise ShardError(f"no shards given: pass a shard folder, manifest or pattern ({_FIX})")
        if not _is_url(spec) and os.path.isdir(spec):
            path = os.path.join(spec, MANIFEST)
            if not os.path.isfile(path):
                raise ShardError(f"folder '{spec}' holds no {MANIFEST}: pass a shard pattern such as "
                                 f"'{spec}/name-{{000000..000009}}.tar', or {_FIX}")
            return _from_manifest(path)
        if spec.endswith(".json"):
            if not _is_url(spec) and not os.path.isfile(spec):
                raise ShardError(f"manifest '{spec}' does not exist: {_FIX}")
            return _from_manifest(spec)
        urls = _expand(spec)
    if not urls:
        raise ShardError(f"no shards given: pass a shard folder, manifest or pattern ({_FIX})")
    manifest = _sibling_manifest(urls)
    if manifest:
        return _from_manifest(manifest, [u.split("/")[-1] for u in urls])
    return ShardSet(tuple(Shard(u, _count_samples(u) if count else 0) for u in urls))


def check_shards(spec, *, strict: bool = False) -> None:
    """Raise ShardError if ``spec`` names no usable shards, without reading them (run it before
    starting processes). Local shards whose size differs from their manifest: an error when
    ``strict``, else a warning (the loader will skip their damaged samples)."""
    _check_sizes(resolve_shards(spec, count=False), strict)


def _check_sizes(shard_set: ShardSet, strict: bool) -> None:
    for s in shard_set.shards:
        if s.nbytes < 0 or _is_url(s.url):
            continue
        size = os.path.getsize(s.url)
        if size != s.nbytes:
            msg = (f"shard {s.url} is {size} bytes but its manifest says {s.nbytes} (truncated or replaced): "
                   "restore it or rewrite the shards with launch/make_shards.py")
            if strict:
                raise DamagedShardError(msg)
            warnings.warn(msg + "; its damaged samples will be skipped", RuntimeWarning, stacklevel=3)


def verify_checksums(shard_set: ShardSet) -> list:
    """(shard, problem) for each local shard whose size or sha256 differs from its manifest's."""
    import hashlib

    bad = []
    for s in shard_set.shards:
        if _is_url(s.url) or not s.sha256:
            continue
        if s.nbytes >= 0 and os.path.getsize(s.url) != s.nbytes:
            bad.append((s, f"is {os.path.getsize(s.url)} bytes, the manifest says {s.nbytes}"))
            continue
        with open(s.url, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != s.sha256:
            bad.append((s, f"has sha256 {digest[:12]}..., the manifest says {s.sha256[:12]}..."))
    return bad


def _check_checksums(shard_set: ShardSet, strict: bool) -> tuple[ShardSet, int]:
    """Shards are verified against the manifest's sha256 when a loader first opens them: a mismatch is
    damage, like a truncated shard: strict raises naming it; otherwise the shard is left out (warned),
    and the number of samples left out returned to be counted as skipped."""
    bad = verify_checksums(shard_set)
    if not bad:
        return shard_set, 0
    msg = (f"shard {bad[0][0].url} {bad[0][1]} (damaged or replaced; {len(bad)} shard(s) in all): restore it "
           "or rewrite the shards with launch/make_shards.py (check them with launch/make_shards.py --verify DIR)")
    if strict:
        raise DamagedShardError(msg)
    warnings.warn(msg + "; left out of training", RuntimeWarning, stacklevel=3)
    urls = {s.url for s, _ in bad}
    kept = tuple(s for s in shard_set.shards if s.url not in urls)
    if not kept:
        raise DamagedShardError(msg + "; no intact shard is left")
    return ShardSet(kept, shard_set.shape, shard_set.manifest), sum(s.samples for s, _ in bad)


# ----------------------------------------------------------------------------- reading shards


def _count_samples(url: str) -> int:
    try:
        return sum(1 for _ in tar_samples(url))  # a stream is read through anyway
    except READ_ERRORS as e:
        raise ShardError(f"cannot read shard {url} ({type(e).__name__}: {e}): {_FIX}") from None


class _Decoder:
    """Sample fields -> (uint8 [C, H, W], label). Raises ValueError for a sample it cannot use."""

    def __init__(self, shape: tuple):
        self.shape = tuple(shape)
        self._npy_headers: dict = {}  # header bytes -> (dtype, shape, offset): shards repeat one header

    def __call__(self, fields: dict) -> tuple:
        ext = next((e for e in IMAGE_EXTS if e in fields), None)
        if ext is None:
            raise ValueError(f"no image (members: {sorted(fields) or 'none'})")
        if "cls" not in fields:
            raise ValueError("no .cls label")
        img = self._npy(fields[ext]) if ext == "npy" else self._pil(fields[ext])
        if not self.shape:
            self.shape = img.shape  # no manifest: the first sample fixes the shape
        if img.shape != self.shape:
            raise ValueError(f"image shape {img.shape}, expected {self.shape}")
        return img, int(fields["cls"])

    def _npy(self, data: bytes) -> np.ndarray:
        if data[:6] != b"\x93NUMPY" or data[6] not in (1, 2):
            raise ValueError("not a version 1 or 2 .npy file")
        size_bytes = 2 if data[6] == 1 else 4
        head = data[: 8 + size_bytes + int.from_bytes(data[8 : 8 + size_bytes], "little")]
        meta = self._npy_headers.get(head)
        if meta is None:
            f = io.BytesIO(head)
            fmt = np.lib.format
            read = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read(f)
            meta = self._npy_headers.setdefault(head, (dtype, shape, len(head), fortran, int(np.prod(shape))))
        dtype, shape, offset, fortran, nbytes = meta
        if dtype != np.uint8 or fortran or len(data) - offset != nbytes:
            raise ValueError(f".npy of {dtype} {shape} with {len(data) - offset} data bytes, expected uint8 C-order")
        img = np.frombuffer(data, np.uint8, offset=offset).reshape(shape)
        return self._chw(img)

    def _pil(self, data: bytes) -> np.ndarray:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            mode = "L" if (self.shape and self.shape[0] == 1) or (not self.shape and im.mode in ("L", "1")) else "RGB"
            return self._chw(np.asarray(im.convert(mode)))

    @staticmethod
    def _chw(img: np.ndarray) -> np.ndarray:
        if img.ndim == 2:
            return img[None]
        if img.ndim == 3 and img.shape[0] not in (1, 3, 4) and img.shape[-1] in (1, 3, 4):
            return img.transpose(2, 0, 1)  # H, W, C (a PNG, or another writer's .npy)
        return img


def _read_ranges(shards: Sequence[Shard], ranges: list, decode: _Decoder, strict: bool,
                 on_skip: Callable[[int], None] | None) -> Iterator[tuple]:
    """Decoded (key, image, label) of the (shard, lo, hi) ranges; damaged samples skipped. With
    ``on_skip``, each shard's loss is warned about and passed to it, or raised when ``strict``."""
    for s, lo, hi in ranges:
        url, read, problem = shards[s].url, 0, ""
        try:
            for _index, key, fields in tar_samples(url, lo, hi):
                try:
                    img, label = decode(fields)
                except (ValueError, OSError) as e:  # OSError: PIL on a corrupt image
                    problem = problem or f"sample {key}: {e}"
                    if on_skip and strict:
                        break
                    continue
                read += 1
                yield key, img, label
        except READ_ERRORS as e:  # ValueError: TarFormatError, bad numbers
            problem = problem or f"unreadable after {lo + read} samples ({type(e).__name__}: {e})"
        if on_skip and read < hi - lo:
            problem = problem or f"ends after {lo + read} samples"
            msg = (f"shard {url}: {problem}; {hi - lo - read} of samples {lo}..{hi - 1} skipped "
                   f"(manifest/count says {shards[s].samples})")
            if strict:
                raise DamagedShardError(msg + ": restore the shard or pass strict=False to skip damage")
            warnings.warn(msg, RuntimeWarning)
            on_skip(hi - lo - read)


def read_all(spec, *, strict: bool = False) -> tuple:
    """Every sample of a shard set, in order (shards as listed by the manifest or ``spec``, samples in
    tar order): (images uint8 [N, C, H, W], labels int64 [N], keys). For evaluation, which must see
    the whole split. Damaged samples are skipped with a warning (N is then smaller than the
    manifest's total); ``strict=True`` raises DamagedShardError naming the shard instead."""
    shard_set = resolve_shards(spec)
    _check_sizes(shard_set, strict)
    decode = _Decoder(shard_set.shape)
    ranges = [(i, 0, s.samples) for i, s in enumerate(shard_set.shards) if s.samples]
    keys, images, labels = [], [], []
    for key, img, label in _read_ranges(shard_set.shards, ranges, decode, strict, lambda n: None):
        keys.append(key)
        images.append(img)
        labels.append(label)
    if not images:
        raise DamagedShardError(f"no readable sample in the {len(shard_set.shards)} shards of '{spec}': "
                                "rewrite them with launch/make_shards.py")
    return np.stack(images), np.asarray(labels, np.int64), keys


# ----------------------------------------------------------------------------- one epoch, in workers


class _EpochStream(IterableDataset):
    """One epoch of one rank from batch ``start`` on. Each worker is one stream and yields
    (images, labels, keys, (skipped, repeated)): the counts are this batch's share of the damage."""

    def __init__(self, loader: "ShardLoader", epoch: int, start: int):
        self.shards, self.shape = loader.shard_set.shards, loader.shard_set.shape
        self.counts = [s.samples for s in self.shards]
        self.epoch, self.start = epoch, start
        self.cfg = dict(seed=loader.seed, rank=loader.rank, world_size=loader.world_size,
                        batch_size=loader.batch_size, streams=loader.streams, shuffle=loader.shuffle)
        self.buffer, self.strict = loader.shuffle_buffer, loader.strict
        self.skipped = self.repeated = 0

    def __iter__(self):
        worker = get_worker_info()
        streams = self.cfg["streams"]
        # Worker w plays stream (w + start) % S, so the DataLoader's round robin (worker 0 first)
        # yields batch `start` first, then start + 1, ...
        stream = ((worker.id if worker else 0) + self.start) % streams
        slices, batches = stream_plan(self.counts, epoch=self.epoch, stream=stream, **self.cfg)
        samples = self._shuffled(self._fill(slices, batches * self.cfg["batch_size"]), stream)
        bs = self.cfg["batch_size"]
        for m in range(batches):
            batch = [next(samples) for _ in range(bs)]
            counts, self.skipped, self.repeated = (self.skipped, self.repeated), 0, 0
            if stream + m * streams < self.start:
                continue  # before the resume point: read (the shuffle needs it) but not collated
            images = torch.from_numpy(np.stack([b[1] for b in batch]))
            labels = torch.tensor([b[2] for b in batch], dtype=torch.int64)
            yield images, labels, [b[0] for b in batch], counts

    def _fill(self, slices: list, need: int) -> Iterator[tuple]:
        """Exactly ``need`` samples: the stream's range, then (if damage lost some) its own range
        again, or the whole epoch if its range held nothing readable."""
        got = 0
        for sample in self._read(slices, count=True):
            got += 1
            yield sample
        refill = slices if got else plan_slices(self.counts, range(len(self.counts)), 0, sum(self.counts))
        while got < need:
            before = got
            for sample in self._read(refill, count=False):
                self.repeated += 1
                got += 1
                yield sample
                if got == need:
                    break
            if got == before:
                raise DamagedShardError(f"no readable sample in any of the {len(self.shards)} shards: "
                                        "rewrite them with launch/make_shards.py")

    def _read(self, ranges: list, count: bool) -> Iterator[tuple]:
        def skipped(n: int) -> None:
            self.skipped += n

        return _read_ranges(self.shards, ranges, _Decoder(self.shape), self.strict, skipped if count else None)

    def _shuffled(self, samples: Iterator, stream: int) -> Iterator:
        """Buffer shuffle, seeded per (seed, epoch, rank, stream) so a re-read gives the same order."""
        if not self.cfg["shuffle"] or self.buffer <= 1:
            yield from samples
            return
        rng = random.Random(f"gen_dist.samples:{self.cfg['seed']}:{self.epoch}:{self.cfg['rank']}:{stream}")
        buf = []
        for s in samples:
            if len(buf) < self.buffer:
                buf.append(s)
                continue
            i = rng.randrange(len(buf))
            buf[i], s = s, buf[i]
            yield s
        rng.shuffle(buf)
        yield from buf


def _as_is(batch):
    return batch


# ----------------------------------------------------------------------------- the loader


class ShardLoader:
    """Equal per-rank uint8 batches from WebDataset shards (see the module docstring).

    ``last_keys`` holds the sample keys of the batch last yielded (the writer's keys are the source
    indices), for checks and debugging."""

    def __init__(self, shards, *, batch_size: int, rank: int, world_size: int, num_workers: int = 2,
                 seed: int = 0, strict: bool = False, pin_memory: bool = False, shuffle: bool = True,
                 shuffle_buffer: int = 2000):
        if not (0 <= rank < world_size) or batch_size < 1 or num_workers < 0:
            raise ShardError(f"bad loader arguments rank={rank} world_size={world_size} batch_size={batch_size} "
                             f"num_workers={num_workers}: need 0 <= rank < world_size, batch_size >= 1")
        self.shard_set, left_out = _check_checksums(resolve_shards(shards), strict)
        _check_sizes(self.shard_set, strict)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.num_workers, self.streams = num_workers, max(1, num_workers)
        self.seed, self.strict, self.pin_memory = seed, strict, pin_memory
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        self.position = DataPosition()
        self.last_keys: list = []
        total = sum(s.samples for s in self.shard_set.shards)
        if self.batches_per_epoch() == 0:
            raise ShardError(f"{total} samples in {len(self.shard_set.shards)} shards cannot fill one batch of "
                             f"{batch_size} x {world_size} processes: lower the batch size or add shards")
        used = self.batches_per_epoch() * batch_size * world_size
        self.stats = DataStats(samples_per_epoch=used, dropped_per_epoch=total - used, extra={
            "shards": len(self.shard_set.shards), "samples_total": total, "coverage": used / total,
            "counts_from": self.shard_set.manifest or "reading the shards"})
        if rank == 0:  # counted once: the trainer sums the ranks' counts
            self.stats.skipped_damaged += left_out

    def batches_per_epoch(self) -> int:
        return sum(s.samples for s in self.shard_set.shards) // (self.batch_size * self.world_size)

    def set_position(self, epoch: int, batches_consumed: int) -> None:
        if not 0 <= batches_consumed <= self.batches_per_epoch():
            raise ValueError(f"batches_consumed={batches_consumed} outside 0..{self.batches_per_epoch()}")
        self.position = DataPosition(epoch, batches_consumed)

    def __iter__(self) -> Iterator[tuple]:
        epoch, start = self.position.epoch, self.position.batches_consumed
        if start >= self.batches_per_epoch():  # resumed at the end of an epoch
            self.position = DataPosition(epoch + 1, 0)
            return
        if start == 0:
            self.stats.repeated_per_epoch = 0
        # A fresh DataLoader per pass: the worker rotation depends on the start batch.
        batches = DataLoader(_EpochStream(self, epoch, start), batch_size=None, collate_fn=_as_is,
                             num_workers=self.num_workers, pin_memory=self.pin_memory)
        for images, labels, keys, (skipped, repeated) in batches:
            self.stats.skipped_damaged += skipped
            self.stats.repeated_per_epoch += repeated
            self.last_keys = keys
            self.position.batches_consumed += 1
            yield images, labels
        if self.position.batches_consumed != self.batches_per_epoch():  # would hang DDP: fail loudly
            raise RuntimeError(f"rank {self.rank} got {self.position.batches_consumed} batches in epoch {epoch}, "
                               f"planned {self.batches_per_epoch()}")
        self.position = DataPosition(epoch + 1, 0)
