"""Disk full while checkpointing (issue 16, item 6), on a real small tmpfs (needs root to mount it):
one line and exit 2, the temporary file removed, the previous checkpoints intact; temporary files of
unfinished saves are removed at the next start."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import TINY, train

from gen_dist import checkpoint as ckpt

pytestmark = pytest.mark.slow
ARGS = ["--config", "configs/vae_mnist.yaml", "train.checkpoint_every=2", "tracking.wandb=false", *TINY]


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_while_checkpointing(data_root, small_disk):
    run = small_disk / "run"
    train(data_root, 1, *ARGS, f"run.dir={run}", "train.max_steps=2")
    step2 = ckpt.step_path(run / "checkpoints", 2)
    before = step2.read_bytes()
    # fill the disk, leaving room for logs and samples but not for another checkpoint
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\0" * (free - len(before) // 2))
    proc = train(data_root, 1, *ARGS, f"run.dir={run}", "train.max_steps=4", "eval.every=0",
                 "eval.best_metric=none_such", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gen_dist: error:")]
    assert len(errors) == 1 and "no space left" in errors[0] and "step_000000004.pt" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert step2.read_bytes() == before and not ckpt.step_path(run / "checkpoints", 4).exists()
    assert not [p.name for p in (run / "checkpoints").iterdir() if ".tmp" in p.name]
    # a temporary file left by a killed save is removed at the next start
    (small_disk / "filler").unlink()
    stale = run / "checkpoints" / ".step_000000004.pt.tmp4242"
    stale.write_bytes(b"half")
    proc = train(data_root, 1, *ARGS, f"run.dir={run}", "train.max_steps=4", "eval.every=0")
    assert not stale.exists() and "removed 1 temporary file" in proc.stdout
    assert ckpt.load(ckpt.step_path(run / "checkpoints", 4))["step"] == 4
