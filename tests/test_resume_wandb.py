"""Checkpoints and tracking for real: SIGKILL mid-run then train.resume=auto ends where an
uninterrupted run ends (same parameters, same W&B run id); W&B offline holds scalars and images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY, WANDB_ON, kill_when_exists, read_metrics, run_env, train, train_cmd
from wandb_reader import history, run_id

from gen_dist import checkpoint as ckpt

pytestmark = pytest.mark.slow
STEPS = 40
# the main job's VAE-GAN: adaptive weight, pixel + learned similarity (D's features in the reconstruction)
ARGS = ["--config", "configs/vaegan_mnist.yaml", f"train.max_steps={STEPS}", "train.checkpoint_every=2",
        "train.keep_checkpoints=3", "train.sample_every=10", "eval.every=10", "loss.disc_start=0",
        "loss.similarity=both", *TINY, *WANDB_ON]


def _final_state(run: Path) -> dict:
    return ckpt.load(ckpt.step_path(run / "checkpoints", STEPS))


def _kill_after_checkpoint(data_root: str, run: Path, step: int) -> None:
    """Start the 2-process run, SIGKILL the whole launch as soon as checkpoint `step` exists."""
    kill_when_exists(train_cmd(2, *ARGS, f"run.dir={run}"), run_env(data_root),
                     ckpt.step_path(run / "checkpoints", step))
    assert not ckpt.step_path(run / "checkpoints", STEPS).exists(), "the run finished before it was killed"


def test_sigkill_then_resume_equals_uninterrupted(data_root, tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    train(data_root, 2, *ARGS, f"run.dir={straight}")
    _kill_after_checkpoint(data_root, broken, step=4)
    killed_at = ckpt.load(ckpt.list_steps(broken / "checkpoints")[0])["step"]
    assert killed_at < STEPS
    first_id = ckpt.load(ckpt.list_steps(broken / "checkpoints")[0])["wandb_run_id"]

    proc = train(data_root, 2, *ARGS, f"run.dir={broken}", "train.resume=auto")
    assert f"at step {killed_at}" in proc.stdout + proc.stderr

    a, b = _final_state(straight), _final_state(broken)
    assert a["step"] == b["step"] == STEPS and a["images_seen"] == b["images_seen"]
    assert a["data"] == b["data"]
    for part in ("G", "D"):
        for name, tensor in a["models"][part].items():
            torch.testing.assert_close(b["models"][part][name], tensor, rtol=0, atol=1e-6, msg=f"{part}.{name}")
    # the resumed run logs under the same W&B run: two offline folders (before/after) with one id
    assert b["wandb_run_id"] == first_id
    ids = {run_id(f) for f in (broken / "wandb").glob("offline-run-*/run-*.wandb")}
    assert ids == {first_id}
    # metrics.jsonl has each step once, ending at the last step
    steps = [r["step"] for r in read_metrics(broken) if "loss/D" in r]
    assert steps == list(range(1, STEPS + 1))


def test_damaged_checkpoint(data_root, tmp_path):
    run = tmp_path / "run"
    train(data_root, 1, "--config", "configs/vae_mnist.yaml", f"run.dir={run}", "train.max_steps=4",
          "train.checkpoint_every=2", *TINY, *WANDB_ON)
    newest = ckpt.step_path(run / "checkpoints", 4)
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a full disk
    # an explicit path names the problem and exits 2
    proc = train(data_root, 1, "--config", "configs/vae_mnist.yaml", f"run.dir={run}", "train.max_steps=6",
                 f"train.resume={newest}", *TINY, *WANDB_ON, check=False)
    assert proc.returncode == 2 and "is damaged" in proc.stderr and str(newest) in proc.stderr
    # auto skips it with a warning and resumes from the previous one
    proc = train(data_root, 1, "--config", "configs/vae_mnist.yaml", f"run.dir={run}", "train.max_steps=6", *TINY, *WANDB_ON)
    assert "resumed from" in proc.stdout and "step_000000002.pt" in proc.stdout
    assert "is damaged" in proc.stderr


def test_wandb_offline_run_holds_scalars_and_images(data_root, tmp_path):
    run = tmp_path / "run"
    train(data_root, 2, "--config", "configs/vaegan_mnist.yaml", f"run.dir={run}", "train.max_steps=4",
          "loss.disc_start=0", "train.sample_every=2", "eval.every=2", *TINY, *WANDB_ON)
    files = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    rows = history(files[0])
    logged = {k for r in rows for k in r}
    for key in ("loss/D", "loss/EG", "vae/kl", "images_seen", "test/loss", "samples/path", "reconstructions/path"):
        assert key in logged, (key, sorted(logged))
    # the scalars W&B holds are the ones in metrics.jsonl
    jsonl = {r["step"]: r for r in read_metrics(run) if "loss/D" in r}
    for r in rows:
        if "loss/D" in r:
            assert r["loss/D"] == pytest.approx(jsonl[r["_step"]]["loss/D"])
    images = list((run / "wandb").glob("offline-run-*/files/media/images/*.png"))
    assert {p.name.split("_")[0] for p in images} == {"samples", "reconstructions"}


def test_wandb_can_be_switched_off(data_root, tmp_path):
    run = tmp_path / "run"
    train(data_root, 1, "--config", "configs/vae_mnist.yaml", f"run.dir={run}", "train.max_steps=2",
          *TINY, *WANDB_ON, "tracking.wandb=false")
    assert not (run / "wandb").exists() and read_metrics(run)
