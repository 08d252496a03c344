"""A run.dir holding a run's outputs is never overwritten silently (issue 16, items 2-4):
train.resume=auto with no intact step checkpoint resumes from best_state.pt, or exits 2 naming the
folder and the choices; train.overwrite=true moves the old outputs aside."""

from __future__ import annotations

import pytest
from conftest import TINY, read_metrics, train

from gen_dist import checkpoint as ckpt

pytestmark = pytest.mark.slow
ARGS = ["--config", "configs/vae_mnist.yaml", "train.checkpoint_every=2", "eval.every=2", *TINY]


def _damage_step_checkpoints(run):
    for path in ckpt.list_steps(run / "checkpoints"):
        path.write_bytes(path.read_bytes()[:1000])  # truncated, as by a full disk


def test_auto_without_step_checkpoint_resumes_best_state_or_refuses(data_root, tmp_path):
    run = tmp_path / "run"
    train(data_root, 1, *ARGS, f"run.dir={run}", "train.max_steps=4")
    assert (run / "checkpoints" / "best_state.pt").is_file()
    _damage_step_checkpoints(run)
    # the best intact state there is
    proc = train(data_root, 1, *ARGS, f"run.dir={run}", "train.max_steps=6")
    best_step = ckpt.load(run / "checkpoints" / "best_state.pt")["step"]
    assert "resumed from" in proc.stdout and "best_state.pt" in proc.stdout, proc.stdout[-2000:]
    steps = [r["step"] for r in read_metrics(run) if "loss/vae" in r or "loss/VAE" in r or "loss/total" in r]
    assert steps == sorted(set(steps)), "metrics rows appended twice"
    # nothing intact at all: exit 2 naming the folder and the choices; nothing touched
    _damage_step_checkpoints(run)
    (run / "checkpoints" / "best_state.pt").unlink()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and "wandb" not in p.parts and p.name != "run.lock"}
    proc = train(data_root, 1, *ARGS, f"run.dir={run}", "train.max_steps=6", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert str(run) in proc.stderr and "train.overwrite=true" in proc.stderr and "train.resume=none" in proc.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and "wandb" not in p.parts and p.name != "run.lock"} == before
    # train.overwrite=true: the old outputs moved aside, a fresh run
    proc = train(data_root, 1, *ARGS, f"run.dir={run}", "train.max_steps=2", "train.overwrite=true")
    aside = [p for p in run.iterdir() if p.name.startswith("previous_")]
    assert len(aside) == 1 and (aside[0] / "metrics.jsonl").read_bytes() == before[run / "metrics.jsonl"]
    assert (aside[0] / "checkpoints" / "final.pt").read_bytes() == before[run / "checkpoints" / "final.pt"]
    assert [r["step"] for r in read_metrics(run)][0] == 1 and ckpt.load(ckpt.list_steps(run / "checkpoints")[0])["step"] == 2
    assert best_step >= 2


def test_torn_last_metrics_line_is_dropped_on_resume(data_root, tmp_path):
    run = tmp_path / "run"
    train(data_root, 1, *ARGS, f"run.dir={run}", "train.max_steps=4", "eval.every=0")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss/vae": 12')  # the process died mid-write
    proc = train(data_root, 1, *ARGS, f"run.dir={run}", "train.max_steps=6", "eval.every=0")
    assert "resumed from" in proc.stdout and "not complete JSON" in proc.stderr, proc.stderr[-2000:]
    rows = read_metrics(run)  # every line parses again
    assert rows[-1]["step"] == 6


def test_optimizer_overrides_win_on_resume(data_root, tmp_path):
    run = tmp_path / "run"
    train(data_root, 1, *ARGS, f"run.dir={run}", "train.max_steps=2", "eval.every=0")
    proc = train(data_root, 1, *ARGS, f"run.dir={run}", "train.max_steps=4", "eval.every=0", "optim.g.lr=0.000123",
                 "optim.g.betas=[0.9,0.99]")
    assert "resumed optimizer settings replaced by the config" in proc.stdout and "0.000123" in proc.stdout
    assert [r["lr/G"] for r in read_metrics(run) if r["step"] > 2 and "lr/G" in r] == [0.000123, 0.000123]
    group = ckpt.load(ckpt.list_steps(run / "checkpoints")[0])["optimizers"]["G"]["param_groups"][0]
    assert group["lr"] == 0.000123 and tuple(group["betas"]) == (0.9, 0.99)
