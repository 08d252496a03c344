"""A diverging run (issue 16, item 1): a non-finite loss or gradient is seen by every rank at the same
step; the run stops with exit status 3 and one line naming the step, the phase, the loss and the last
healthy checkpoint; nothing non-finite is written and the healthy checkpoints stay. train.nonfinite=skip
skips such steps (counted) and stops after train.nonfinite_patience in a row. Sampling and evaluation
refuse a checkpoint with non-finite weights (exit 2)."""

from __future__ import annotations

import subprocess

import pytest
import torch
from conftest import PYTHON, REPO, TINY, read_metrics, run_env, train

from gen_dist import checkpoint as ckpt

pytestmark = pytest.mark.slow
ARGS = ["--config", "configs/wgan_gp_mnist.yaml", "train.checkpoint_every=2", "train.keep_checkpoints=2",
        "eval.mode_coverage=false", *TINY]
DIVERGE = ["train.max_steps=10", "loss.gp_weight=1e38"]  # the critic's loss overflows at once


def _healthy(data_root, run):
    train(data_root, 2, *ARGS, f"run.dir={run}", "train.max_steps=4")
    return {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}


def test_nonfinite_stops_every_rank_and_keeps_the_healthy_checkpoints(data_root, tmp_path):
    run = tmp_path / "run"
    before = _healthy(data_root, run)
    assert {"step_000000002.pt", "step_000000004.pt", "final.pt"} <= set(before)
    proc = train(data_root, 2, *ARGS, f"run.dir={run}", *DIVERGE, check=False)
    assert proc.returncode != 0, "a diverged run must not succeed"
    lines = [line for line in proc.stderr.splitlines() if line.startswith("gen_dist: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]  # one line (the main rank), no crash of the other rank
    line = lines[0]
    assert "non-finite" in line and "at step 5 in phase D" in line and "loss" in line, line
    assert str(run / "checkpoints" / "step_000000004.pt") in line, line
    # the other rank stopped at the same step with status 3 too (the launcher reports each failed rank),
    # not with a crash in a collective its peer left
    assert "exitcode: 3" in proc.stderr.replace("exitcode  :", "exitcode:"), proc.stderr[-3000:]
    assert f'File "{REPO}/gen_dist' not in proc.stderr and f'File "{REPO}/launch' not in proc.stderr, proc.stderr[-3000:]  # the venv may live in REPO
    # nothing rewritten, nothing rotated out, no NaN anywhere on disk
    after = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    assert after == before
    for path in (run / "checkpoints").iterdir():
        state = torch.load(path, map_location="cpu", weights_only=True)
        weights = state["models"] if "models" in state else {"G": state["G_state"], "D": state["D_state"]}
        assert not ckpt.nonfinite_tensors(weights), path
    assert read_metrics(run)[-1].get("nonfinite/stopped") == 1


def test_nonfinite_exit_status_3_and_skip_mode(data_root, tmp_path):
    run = tmp_path / "one"
    proc = train(data_root, 1, *ARGS, f"run.dir={run}", *DIVERGE, check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "at step 1 in phase D" in proc.stderr and "no checkpoint was written yet" in proc.stderr
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())
    # skip: no update on a bad step, counted, then a stop after the patience
    run = tmp_path / "skip"
    proc = train(data_root, 1, *ARGS, f"run.dir={run}", *DIVERGE, "train.nonfinite=skip",
                 "train.nonfinite_patience=3", check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "3 steps in a row" in proc.stderr and "the last at step 3" in proc.stderr
    rows = read_metrics(run)
    assert [r["nonfinite/skipped_steps"] for r in rows if "nonfinite/skipped_steps" in r] == [1, 2, 3]
    assert not any("loss/D" in r for r in rows)  # the critic's losses were all skipped: none logged as null
    assert all(r["loss/G"] is not None for r in rows if "loss/G" in r)


@pytest.mark.parametrize("script", ["sample.py", "evaluate.py"])
def test_sampling_and_evaluation_refuse_nonfinite_weights(data_root, tmp_path, script):
    run = tmp_path / "run"
    train(data_root, 1, "--config", "configs/vae_mnist.yaml", f"run.dir={run}", "train.max_steps=2", *TINY)
    final = torch.load(run / "checkpoints" / "final.pt", map_location="cpu", weights_only=True)
    name = next(k for k, v in final["G_state"].items() if v.is_floating_point())
    final["G_state"][name][0] = float("nan")
    bad = tmp_path / "nan.pt"
    torch.save(final, bad)
    args = (["--num", "4", "--out", str(tmp_path / "out")] if script == "sample.py"
            else ["--out", str(tmp_path / "e.json"), "eval.sample_quality=false"])
    proc = subprocess.run([PYTHON, str(REPO / "launch" / script), "--checkpoint", str(bad), *args], cwd=REPO,
                          env=run_env(data_root), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "non-finite weights" in proc.stderr and name in proc.stderr and str(bad) in proc.stderr
    assert not (tmp_path / "out").exists()
