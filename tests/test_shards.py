"""Shard writer and ShardLoader on real MNIST (the first 4,000 training images).

Ranks are simulated in one process (loaders with rank=0 and rank=1, each with 2 worker processes);
the multi-process launch is tested with the trainer. Samples are identified by their key, which the
writer sets to the index in the source split.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from gen_dist.data.datasets import load_source
from gen_dist.data.shard_writer import write_shards
from gen_dist.data.shards import DamagedShardError, ShardError, ShardLoader, check_shards, read_all
from gen_dist.data.tar_reader import TarFormatError, tar_samples

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("GEN_DIST_DATA", REPO.parent / "shared" / "data"))
N = 4000
SHARD_SIZES = {4: 1000, 5: 800, 3: 1400}  # shards -> samples per shard (3 shards: 1400, 1400, 1200)

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def mnist():
    if not (DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"MNIST not found under {DATA}/MNIST/raw: set GEN_DIST_DATA to the data folder")
    return load_source("mnist", "train", str(DATA))


@pytest.fixture(scope="module")
def shards(mnist, tmp_path_factory) -> dict:
    """{number of shards: folder} of the first N images."""
    base = tmp_path_factory.mktemp("shards")
    for n, per in SHARD_SIZES.items():
        write_shards(mnist, base / f"s{n}", samples_per_shard=per, limit=N, progress=False)
    return {n: base / f"s{n}" for n in SHARD_SIZES}


def epoch(loader) -> list:
    """One pass: [(keys as ints, images, labels)] per batch."""
    return [([int(k) for k in loader.last_keys], x, y) for x, y in loader]


def ranks(spec, world=2, **kw) -> list:
    return [ShardLoader(spec, rank=r, world_size=world, **kw) for r in range(world)]


def copy_shards(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- writer


def test_writer_is_deterministic(mnist, shards, tmp_path):
    write_shards(mnist, tmp_path / "again", samples_per_shard=1000, limit=N, progress=False)
    files = sorted(p.name for p in shards[4].iterdir())
    assert files == sorted(p.name for p in (tmp_path / "again").iterdir())
    for name in files:
        assert (shards[4] / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


def test_manifest_describes_the_shards(mnist, shards):
    m = json.loads((shards[3] / "manifest.json").read_text())
    assert (m["dataset"], m["split"], m["encoding"], m["num_samples"]) == ("mnist", "train", "npy", N)
    assert m["image_shape"] == [1, 28, 28] and m["channels"] == 1 and m["image_size"] == [28, 28]
    assert len(m["classes"]) == 10
    assert [s["name"] for s in m["shards"]] == [f"mnist-train-{i:06d}.tar" for i in range(3)]
    assert [s["samples"] for s in m["shards"]] == [1400, 1400, 1200]
    for s in m["shards"]:
        data = (shards[3] / s["name"]).read_bytes()
        assert len(data) == s["bytes"] and hashlib.sha256(data).hexdigest() == s["sha256"]
    # Plain WebDataset reads them too; keys are source indices, pixels and labels are the source's.
    import webdataset as wds

    first = next(iter(wds.WebDataset(str(shards[3] / m["shards"][1]["name"]), shardshuffle=False).decode()))
    assert first["__key__"] == "00001400" and int(first["cls"]) == mnist.labels[1400]
    assert np.array_equal(first["npy"], mnist.image(1400))


def test_png_shards_decode_to_the_same_pixels(mnist, tmp_path):
    write_shards(mnist, tmp_path / "png", samples_per_shard=100, limit=300, encoding="png", progress=False)
    loader = ShardLoader(tmp_path / "png", rank=0, world_size=1, batch_size=50, num_workers=0)
    for keys, x, y in epoch(loader):
        assert np.array_equal(x.numpy(), np.stack([mnist.image(k) for k in keys]))
        assert y.tolist() == [int(mnist.labels[k]) for k in keys]
    assert loader.position.epoch == 1


def test_reads_tars_from_other_writers(tmp_path):
    """webdataset's TarWriter (pax headers via tarfile), keys in folders, no manifest: counted."""
    import webdataset as wds

    with wds.TarWriter(str(tmp_path / "other.tar")) as w:
        for i in range(30):
            w.write({"__key__": f"{'deep/' * 30}s{i:03d}", "npy": np.full((3, 8, 8), i, np.uint8), "cls": i % 3})
    loader = ShardLoader(tmp_path / "other.tar", rank=0, world_size=1, batch_size=10, num_workers=0, shuffle=False)
    x, y = next(iter(loader))
    assert x.shape == (10, 3, 8, 8) and x[:, 0, 0, 0].tolist() == list(range(10)) and y.tolist() == [0, 1, 2] * 3 + [0]
    assert loader.last_keys[0].endswith("/s000") and loader.stats.extra["counts_from"] == "reading the shards"


def _webdataset_samples(url: str) -> list:
    """(key, {ext: bytes}) of a shard by webdataset's own tar iteration (Python's tarfile)."""
    from webdataset import tariterators as ti

    files = ti.tar_file_expander([{"url": url, "stream": open(url, "rb")}], eof_value=None)
    return [(s.pop("__key__"), {k: v for k, v in s.items() if not k.startswith("__")})
            for s in ti.group_by_keys(files)]


def test_tar_reader_matches_webdataset(shards, tmp_path):
    """The hand-written reader (tar_reader.py) against tarfile/webdataset, on tars written by tarfile
    (USTAR: our writer; GNU long names; gzip) and webdataset's TarWriter (pax), plus damage."""
    import gzip

    import webdataset as wds

    urls = [str(shards[5] / "mnist-train-000001.tar")]
    with wds.TarWriter(str(tmp_path / "pax.tar")) as w:  # pax headers, keys longer than 100 bytes
        for i in range(20):
            w.write({"__key__": f"{'dir/' * 40}s{i:03d}", "npy": np.full((3, 4, 4), i, np.uint8), "cls": i,
                     "TXT": "x" * (i * 100)})  # upper-case extension: lower-cased by both
    with tarfile.open(tmp_path / "gnu.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        tar.add(urls[0], arcname="ignored-member-with-no-dot")
        for i in range(10):
            for ext, data in (("cls", b"%d" % i), ("json", b"{}" * i)):
                info = tarfile.TarInfo(f"{'long/' * 30}k{i}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (tmp_path / "gz.tar.gz").write_bytes(gzip.compress((tmp_path / "pax.tar").read_bytes()))
    urls += [str(tmp_path / n) for n in ("pax.tar", "gnu.tar", "gz.tar.gz")]
    for url in urls:
        ours = [(k, f) for _, k, f in tar_samples(url)]
        assert ours == _webdataset_samples(url) and len(ours) >= 10, url
        assert [(i, k) for i, k, _ in tar_samples(url, 3, 7)] == [(i, ours[i][0]) for i in range(3, 7)]

    data = Path(urls[0]).read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(EOFError):
        list(tar_samples(str(tmp_path / "cut.tar")))
    bad = bytearray(data)
    bad[_member_offset(Path(urls[0]), "00000850.cls") + 3] ^= 1  # a name byte: the checksum fails
    (tmp_path / "bad.tar").write_bytes(bytes(bad))
    with pytest.raises(TarFormatError):
        list(tar_samples(str(tmp_path / "bad.tar")))


def test_read_all_reads_every_sample_in_order(shards, mnist, tmp_path):
    images, labels, keys = read_all(shards[3])
    assert images.dtype == np.uint8 and images.shape == (N, 1, 28, 28) and labels.dtype == np.int64
    assert [int(k) for k in keys] == list(range(N))  # manifest order, every sample once
    assert np.array_equal(images[::397], np.stack([mnist.image(i) for i in range(0, N, 397)]))
    assert np.array_equal(labels, mnist.labels[:N])

    d = copy_shards(shards[3], tmp_path / "s3")
    victim = d / "mnist-train-000002.tar"
    victim.write_bytes(victim.read_bytes()[: _member_offset(victim, "00003000.npy")])  # 200 of 1200 left
    with pytest.warns(RuntimeWarning):
        images, labels, keys = read_all(d)
    assert len(images) == len(labels) == len(keys) == 3000
    with pytest.raises(DamagedShardError, match="mnist-train-000002.tar"):
        read_all(d, strict=True)


# ----------------------------------------------------------------------------- equal batches


@pytest.mark.parametrize("n_shards,batch", [(4, 100), (5, 96), (3, 96)])
def test_every_rank_gets_equal_batches(shards, mnist, n_shards, batch):
    loaders = ranks(shards[n_shards], batch_size=batch, num_workers=2, seed=3)
    per_rank = [epoch(l) for l in loaders]
    expected = N // (2 * batch)
    assert [len(b) for b in per_rank] == [expected, expected] == [l.batches_per_epoch() for l in loaders]
    keys = [k for batches in per_rank for ks, _, _ in batches for k in ks]
    assert len(keys) == len(set(keys)) == loaders[0].stats.samples_per_epoch  # each sample at most once
    stats = loaders[0].stats
    assert stats.dropped_per_epoch == N - len(keys) < 2 * batch  # only the last partial global batch
    assert stats.extra["coverage"] == len(keys) / N and stats.repeated_per_epoch == 0
    if n_shards == 4 and batch == 100:
        assert sorted(keys) == list(range(N))  # 4 equal shards, 2 ranks: every sample exactly once
    for ks, x, y in per_rank[0][:3]:  # pixels and labels are the source's
        assert x.dtype == torch.uint8 and x.shape == (batch, 1, 28, 28) and y.dtype == torch.int64
        assert np.array_equal(x.numpy(), np.stack([mnist.image(k) for k in ks]))
        assert y.tolist() == [int(mnist.labels[k]) for k in ks]
    assert all(l.position.epoch == 1 and l.position.batches_consumed == 0 for l in loaders)


def test_epochs_reshuffle_and_seeds_repeat(shards):
    a, = ranks(shards[5], world=1, batch_size=100, num_workers=2, seed=1)
    b, = ranks(shards[5], world=1, batch_size=100, num_workers=2, seed=1)
    first, second = [k for ks, _, _ in epoch(a) for k in ks], [k for ks, _, _ in epoch(a) for k in ks]
    assert sorted(first) == sorted(second) == list(range(N)) and first != second
    assert [k for ks, _, _ in epoch(b) for k in ks] == first  # same seed and epoch: same order


# ----------------------------------------------------------------------------- resume


def test_resume_mid_epoch_gives_the_same_batches(shards):
    kw = dict(rank=1, world_size=2, batch_size=64, num_workers=2, seed=7)
    full = epoch(ShardLoader(shards[5], **kw))
    assert len(full) == 31
    for k in (7, 8):  # an odd and an even start: the worker rotation matters
        resumed = ShardLoader(shards[5], **kw)
        resumed.set_position(0, k)
        rest = epoch(resumed)
        assert [ks for ks, _, _ in rest] == [ks for ks, _, _ in full[k:]]
        assert all(torch.equal(x, fx) and torch.equal(y, fy) for (_, x, y), (_, fx, fy) in zip(rest, full[k:]))
    # Stopping mid-epoch and iterating again continues where it stopped.
    loader = ShardLoader(shards[5], **kw)
    head = []
    for _ in loader:
        head.append(list(map(int, loader.last_keys)))
        if len(head) == 5:
            break
    assert loader.position.as_dict() == {"epoch": 0, "batches_consumed": 5}
    assert head + [ks for ks, _, _ in epoch(loader)] == [ks for ks, _, _ in full]
    assert loader.position.as_dict() == {"epoch": 1, "batches_consumed": 0}
    with pytest.raises(ValueError):
        loader.set_position(0, 32)


# ----------------------------------------------------------------------------- damage


def drop_checksums(folder: Path) -> None:
    """A manifest without sha256 (another writer's): damage is then found by reading, as tested below
    (with checksums the damaged shard is left out whole: tests/test_shard_checksums.py)."""
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    for s in m["shards"]:
        s.pop("sha256", None)
    path.write_text(json.dumps(m))


def test_truncated_shard_is_skipped_and_counted(shards, tmp_path):
    d = copy_shards(shards[4], tmp_path / "s4")
    drop_checksums(d)
    victim = d / "mnist-train-000001.tar"
    data = victim.read_bytes()
    victim.write_bytes(data[: int(len(data) * 0.4)])
    with pytest.warns(RuntimeWarning, match="mnist-train-000001.tar"):
        loaders = ranks(d, batch_size=100, num_workers=2)
    per_rank = [epoch(l) for l in loaders]
    assert [len(b) for b in per_rank] == [20, 20]  # still equal
    skipped = sum(l.stats.skipped_damaged for l in loaders)
    repeated = sum(l.stats.repeated_per_epoch for l in loaders)
    assert 550 <= skipped <= 650 and repeated == skipped  # ~60% of 1000 lost, refilled from the same stream
    keys = [k for b in per_rank for ks, _, _ in b for k in ks]
    assert len(keys) == N and len(keys) - len(set(keys)) == repeated
    assert not set(range(1000, 2000)) <= set(keys)


def _member_offset(path: Path, name: str) -> int:
    with tarfile.open(path) as tar:
        return tar.getmember(name).offset


def test_corrupt_header_and_missing_image(shards, tmp_path):
    d = copy_shards(shards[4], tmp_path / "s4")
    drop_checksums(d)
    # A corrupt header in shard 1 (same size, so only reading finds it): unreadable from sample 1500.
    victim = d / "mnist-train-000001.tar"
    with open(victim, "r+b") as f:
        f.seek(_member_offset(victim, "00001500.npy"))
        f.write(b"\xff" * 512)
    # Shard 2 loses one image member (its size changes: a warning when the loader is built).
    shard2 = d / "mnist-train-000002.tar"
    with tarfile.open(shard2) as src, tarfile.open(tmp_path / "x.tar", "w", format=tarfile.USTAR_FORMAT) as dst:
        for m in src.getmembers():
            if m.name != "00002500.npy":
                dst.addfile(m, src.extractfile(m))
    shutil.move(tmp_path / "x.tar", shard2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader, = ranks(d, world=1, batch_size=100, num_workers=0)  # in-process: warnings are catchable
        batches = epoch(loader)
    messages = " | ".join(str(w.message) for w in caught)
    assert "mnist-train-000001.tar" in messages and "sample 00002500: no image" in messages
    assert len(batches) == 40 and loader.stats.skipped_damaged == 500 + 1 == loader.stats.repeated_per_epoch

    # strict: the same damage raises, naming the shard, from a worker process too.
    with pytest.raises(ShardError, match="mnist-train-000002.tar"):  # size check, before any reading
        ShardLoader(d, rank=0, world_size=1, batch_size=100, strict=True)
    shutil.copy(shards[4] / "mnist-train-000002.tar", shard2)
    strict = ShardLoader(d, rank=0, world_size=1, batch_size=100, num_workers=2, strict=True)
    with pytest.raises(DamagedShardError, match="mnist-train-000001.tar"):
        epoch(strict)


# ----------------------------------------------------------------------------- specs


def test_specs_patterns_urls_and_errors(shards, mnist, tmp_path):
    s5 = shards[5]
    # A brace pattern of 3 of the 5 shards: counts come from the manifest beside them.
    sub = ShardLoader(str(s5 / "mnist-train-{000000..000002}.tar"), rank=0, world_size=1, batch_size=100,
                      num_workers=0)
    assert sub.stats.extra["samples_total"] == 2400 and sub.stats.extra["counts_from"].endswith("manifest.json")
    # URLs: file:// finds the manifest beside the shards; pipe: has none, so each shard is counted.
    url = ShardLoader(f"file://{s5}/mnist-train-{{000003..000004}}.tar", rank=0, world_size=1, batch_size=100)
    assert url.stats.extra["counts_from"] == f"file://{s5}/manifest.json" and url.batches_per_epoch() == 16
    urls = [f"pipe:cat {s5}/mnist-train-00000{i}.tar" for i in (3, 4)]
    piped = ShardLoader(urls, rank=0, world_size=1, batch_size=100, num_workers=2)
    assert piped.stats.extra["counts_from"] == "reading the shards"
    keys = [k for ks, _, _ in epoch(piped) for k in ks]
    assert sorted(keys) == list(range(2400, 4000))

    (tmp_path / "empty").mkdir()
    bad = [tmp_path / "nowhere" / "mnist-train-{000000..000004}.tar", tmp_path / "empty" / "*.tar",
           tmp_path / "empty", tmp_path / "nowhere" / "manifest.json"]
    for spec in bad:
        for attempt in (lambda: check_shards(spec),
                        lambda: ShardLoader(spec, rank=0, world_size=1, batch_size=10)):
            with pytest.raises(ShardError) as e:
                attempt()
            assert isinstance(e.value, ValueError) and "\n" not in str(e.value) and str(e.value)
    with pytest.raises(ShardError, match="cannot fill one batch"):
        ShardLoader(s5, rank=0, world_size=2, batch_size=3000)
    check_shards(s5)  # fine


# ----------------------------------------------------------------------------- CLI


def make_shards(*args):
    return subprocess.run([sys.executable, str(REPO / "launch" / "make_shards.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_make_shards_cli(mnist, tmp_path, capsys):
    out = tmp_path / "cli"
    ok = make_shards("--dataset", "mnist", "--split", "test", "--root", DATA, "--out", out,
                     "--samples-per-shard", 100, "--limit", 250, "--no-progress")
    assert ok.returncode == 0, ok.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert [s["samples"] for s in m["shards"]] == [100, 100, 50] and m["split"] == "test"
    missing = make_shards("--dataset", "cifar10", "--root", DATA, "--out", tmp_path / "c")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "cifar-10-batches-py" in missing.stderr

    # The other refusals in-process (each subprocess pays seconds of torch import).
    sys.path.insert(0, str(REPO / "launch"))
    try:
        from make_shards import main
    finally:
        sys.path.pop(0)
    failures = {
        "bad choice": ["--dataset", "imagenet", "--root", DATA, "--out", out],
        "existing shards": ["--dataset", "mnist", "--root", DATA, "--out", out, "--limit", 10],
        "bad count": ["--dataset", "mnist", "--root", DATA, "--out", tmp_path / "z", "--samples-per-shard", 0],
        "no root": ["--dataset", "folder", "--root", tmp_path / "nowhere", "--out", tmp_path / "z"],
    }
    for what, args in failures.items():
        try:
            code = main([str(a) for a in args] + ["--no-progress"])
        except SystemExit as e:  # argparse
            code = e.code
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("make_shards: error:"), (what, lines)
