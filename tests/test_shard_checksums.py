"""Shard checksums (issue 16, item 7): a shard whose bytes differ from its manifest's sha256 (same size,
so the size check misses it) is found by `launch/make_shards.py --verify DIR`, stops a strict run
naming it, and is left out and counted as skipped by a non-strict one."""

from __future__ import annotations

import subprocess

import pytest
from conftest import PYTHON, REPO, TINY, read_metrics, run_env, train

pytestmark = pytest.mark.slow


def test_checksum_mismatch_is_damage(data_root, tmp_path):
    out = tmp_path / "shards"
    make = [PYTHON, str(REPO / "launch" / "make_shards.py")]
    subprocess.run([*make, "--dataset", "mnist", "--root", data_root, "--out", str(out), "--limit", "600",
                    "--samples-per-shard", "200", "--no-progress"], check=True, capture_output=True, env=run_env(data_root))
    ok = subprocess.run([*make, "--verify", str(out)], capture_output=True, text=True, env=run_env(data_root))
    assert ok.returncode == 0 and "3 shards" in ok.stdout, ok.stderr
    shard = sorted(out.glob("*.tar"))[1]
    data = bytearray(shard.read_bytes())
    at = data.index(b"\x93NUMPY") + 200  # inside the first image's pixels: the tar still reads
    data[at] ^= 0xFF
    shard.write_bytes(bytes(data))
    bad = subprocess.run([*make, "--verify", str(out)], capture_output=True, text=True, env=run_env(data_root))
    assert bad.returncode == 2 and str(shard) in bad.stderr and "sha256" in bad.stderr, bad.stderr
    args = ["--config", "configs/vae_mnist.yaml", *TINY, "data.limit=0", f"data.shards={out}", "train.max_steps=2",
            "eval.every=0"]
    strict = train(data_root, 1, *args, f"run.dir={tmp_path / 'strict'}", "data.strict=true", check=False)
    assert strict.returncode == 2 and str(shard) in strict.stderr and "sha256" in strict.stderr, strict.stderr[-2000:]
    train(data_root, 1, *args, f"run.dir={tmp_path / 'lenient'}")
    rows = [r for r in read_metrics(tmp_path / "lenient") if "data/skipped_damaged" in r]
    assert rows[-1]["data/skipped_damaged"] == 200
