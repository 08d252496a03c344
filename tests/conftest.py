"""Shared test helpers: where the real data is, and how to launch the real training script."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ACCELERATE = str(Path(PYTHON).with_name("accelerate"))

# Small models so that a multi-process launch takes seconds on two CPU cores. W&B off: its start and
# finish cost 1.5-3 s per launch here; the tests about W&B turn it back on (WANDB_ON, after TINY).
TINY = ["data.limit=512", "train.batch_size=16", "eval.limit=64", "eval.batch_size=64", "model.g_width=8",
        "model.d_width=8", "model.hidden_dim=32", "train.progress_bar=false", "train.log_every=1",
        "data.num_workers=0", "eval.sample_quality=false", "eval.coverage_samples=256", "tracking.wandb=false"]
WANDB_ON = ["tracking.wandb=true"]
NO_FID = ["eval.sample_quality=false"]  # Inception costs ~0.13 s per image here: only where a test needs it

WEIGHTS = os.environ.get("GEN_DIST_INCEPTION_WEIGHTS",
                         str(REPO.parent / "shared" / "weights" / "pt_inception-2015-12-05-6726825d.pth"))

# Shards that `data.shards=auto` writes go to a folder of this test session, removed at exit.
SHARD_CACHE = tempfile.mkdtemp(prefix="gen_dist_shards_")
atexit.register(shutil.rmtree, SHARD_CACHE, ignore_errors=True)
# Mode coverage is on for every GAN run: its digit classifier is trained once per session, here, not
# in the checkout (in-process tests read the variable too, hence os.environ).
CLASSIFIER_CACHE = tempfile.mkdtemp(prefix="gen_dist_classifiers_")
atexit.register(shutil.rmtree, CLASSIFIER_CACHE, ignore_errors=True)
os.environ["GEN_DIST_CLASSIFIER_CACHE"] = CLASSIFIER_CACHE
# W&B stages every model artifact (tracking.wandb_artifacts) under its data folder until `wandb sync`:
# this session's copies go to a folder removed at exit, not to ~/.local/share/wandb
WANDB_DATA = tempfile.mkdtemp(prefix="gen_dist_wandb_data_")
atexit.register(shutil.rmtree, WANDB_DATA, ignore_errors=True)
os.environ["WANDB_DATA_DIR"] = WANDB_DATA


def _has_mnist(root: Path, name: str = "MNIST") -> bool:
    return (root / name / "raw").is_dir() and any((root / name / "raw").iterdir())


@pytest.fixture(scope="session")
def data_root() -> str:
    """GEN_DIST_DATA (default ../shared/data); if MNIST is not there, download it once to a cache."""
    root = Path(os.environ.get("GEN_DIST_DATA", REPO.parent / "shared" / "data"))
    if _has_mnist(root) and _has_mnist(root, "FashionMNIST"):
        return str(root)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gen_dist" / "data"
    try:
        import torchvision.datasets as tvd

        for cls in (tvd.MNIST, tvd.FashionMNIST):
            for train in (True, False):
                cls(str(cache), train=train, download=True)
    except Exception as e:  # offline and no local copy: these tests cannot run
        pytest.fail(f"MNIST is not under {root} and could not be downloaded ({e}); set GEN_DIST_DATA")
    return str(cache)


def run_env(data_root: str, **extra) -> dict:
    env = dict(os.environ)
    env.update(GEN_DIST_DATA=data_root, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               WANDB_MODE="offline", WANDB_SILENT="true", ACCELERATE_USE_CPU="1", PYTHONUNBUFFERED="1",
               GEN_DIST_SHARDS=SHARD_CACHE, GEN_DIST_INCEPTION_WEIGHTS=WEIGHTS, WANDB_DATA_DIR=WANDB_DATA)
    env.update(extra)
    return env


def train_cmd(nproc: int, *args: str, script: str = "train.py") -> list[str]:
    script = [str(REPO / "launch" / script), *args]
    if nproc == 1:
        return [PYTHON, *script]
    return [ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(nproc), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", *script]


def train(data_root: str, nproc: int, *args: str, timeout: int = 300, check: bool = True, env=None,
          script: str = "train.py"):
    proc = subprocess.run(train_cmd(nproc, *args, script=script), cwd=REPO, env=env or run_env(data_root),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]


def kill_when_exists(cmd: list[str], env: dict, target: Path, timeout: float = 240) -> None:
    """Start a launch in its own session and SIGKILL all of it the moment `target` exists: a crash
    at the worst time, right after a checkpoint was written."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + timeout
    while not target.exists():
        assert proc.poll() is None, f"run ended before the kill: {proc.stderr.read().decode()[-3000:]}"
        assert time.time() < deadline, f"{target} did not appear"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
