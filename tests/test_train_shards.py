"""Training on real MNIST WebDataset shards with 2 processes: uneven shard counts never hang DDP,
damaged shards are skipped and counted (or stop the run by name in strict mode)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, TINY, read_metrics, run_env, train

pytestmark = pytest.mark.slow


def _make_shards(data_root: str, out: Path, n: int, per_shard: int) -> Path:
    subprocess.run([PYTHON, str(REPO / "launch" / "make_shards.py"), "--dataset", "mnist", "--split", "train",
                    "--root", data_root, "--out", str(out), "--samples-per-shard", str(per_shard),
                    "--limit", str(n), "--no-progress"], check=True, capture_output=True, env=run_env(data_root))
    return out


@pytest.mark.parametrize("n_shards", [3, 4, 5])
def test_two_processes_two_workers_on_uneven_shard_counts(data_root, tmp_path, n_shards):
    """3 shards (fewer than 2 ranks x 2 workers), 4 (divisible) and 5 (not): a hang fails the timeout."""
    shards = _make_shards(data_root, tmp_path / "shards", 1000, -(-1000 // n_shards))
    assert len(list(shards.glob("*.tar"))) == n_shards
    run = tmp_path / "run"
    tiny = [t for t in TINY if not t.startswith(("data.limit", "data.num_workers"))]
    # 1000 // (16 x 2) = 31 batches per epoch: 40 steps cross an epoch boundary
    train(data_root, 2, "--config", "configs/vae_mnist.yaml", f"run.dir={run}", f"data.shards={shards}",
          "data.num_workers=2", "train.max_steps=40", "train.log_every=10", *tiny, timeout=300)
    rows = read_metrics(run)
    first = next(r for r in rows if "data/samples_per_epoch" in r)
    assert first["data/samples_per_epoch"] == 31 * 32 and first["data/dropped_per_epoch"] == 1000 - 31 * 32
    assert first["data/coverage"] == pytest.approx(31 * 32 / 1000)
    assert rows[-1]["sync/params_identical"] == 1
    assert max(r.get("epoch", 0) for r in rows) == 1
    assert all(r.get("data/skipped_damaged", 0) == 0 for r in rows)


def test_truncated_shard_is_skipped_and_counted_or_strict_stops(data_root, tmp_path):
    shards = _make_shards(data_root, tmp_path / "shards", 800, 200)
    victim = sorted(shards.glob("*.tar"))[1]
    victim.write_bytes(victim.read_bytes()[: int(victim.stat().st_size * 0.4)])
    run = tmp_path / "run"
    tiny = [t for t in TINY if not t.startswith("data.limit")]
    train(data_root, 2, "--config", "configs/vae_mnist.yaml", f"run.dir={run}", f"data.shards={shards}",
          "train.max_steps=30", *tiny, timeout=300)
    rows = [r for r in read_metrics(run) if "data/skipped_damaged" in r]
    assert rows[-1]["data/skipped_damaged"] > 0  # counted, summed over ranks, and training went on
    assert rows[-1]["step"] == 30

    proc = train(data_root, 2, "--config", "configs/vae_mnist.yaml", f"run.dir={tmp_path / 'strict'}",
                 f"data.shards={shards}", "data.strict=true", "train.max_steps=30", *tiny, check=False)
    assert proc.returncode != 0
    assert victim.name in proc.stderr
    assert not (tmp_path / "strict" / "checkpoints").exists()


def test_missing_shards_exit_2_before_launch(data_root, tmp_path):
    proc = subprocess.run([PYTHON, str(REPO / "launch" / "train.py"), "--config", "configs/vae_mnist.yaml",
                           f"run.dir={tmp_path}", f"data.shards={tmp_path}/nope-{{000000..000003}}.tar"],
                          cwd=REPO, env=run_env(data_root), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "nope-" in proc.stderr and "Traceback" not in proc.stderr
