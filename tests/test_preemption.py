"""Preemption without Slurm: SIGUSR1 to the workers, or SIGTERM to the launcher (what Slurm does),
makes both ranks stop at the same step with a checkpoint and a PREEMPTED marker; resuming finishes
with the step count of an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from conftest import REPO, TINY, read_metrics, run_env, train, train_cmd

from gen_dist import checkpoint as ckpt

pytestmark = pytest.mark.slow
STEPS = 400
ARGS = ["--config", "configs/dcgan32_mnist.yaml", f"train.max_steps={STEPS}", "train.checkpoint_every=1000",
        "train.log_every=1", *TINY]


def _start_and_signal(data_root, run, to_workers: bool, sig) -> str:
    proc = subprocess.Popen(train_cmd(2, *ARGS, f"run.dir={run}"), cwd=REPO, env=run_env(data_root),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 240
    while not (run / "metrics.jsonl").is_file() or len(read_metrics(run)) < 3:  # training is under way
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:] if proc.poll() else "slow"
        time.sleep(0.05)
    if to_workers:
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2, workers
        for pid in workers:
            subprocess.run(["kill", f"-{sig.name[3:]}", pid], check=True)
    else:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return out + err


@pytest.mark.parametrize("to_workers, sig", [(True, signal.SIGUSR1), (False, signal.SIGTERM)],
                         ids=["USR1-to-workers", "TERM-to-launcher"])
def test_signal_checkpoints_at_one_step_then_resume_finishes(data_root, tmp_path, to_workers, sig):
    run = tmp_path / "run"
    output = _start_and_signal(data_root, run, to_workers, sig)
    marker = json.loads((run / "PREEMPTED").read_text())
    stopped = marker["step"]
    assert 0 < stopped < STEPS and sig.name in marker["reason"]
    assert [p.name for p in ckpt.list_steps(run / "checkpoints")] == [f"step_{stopped:09d}.pt"]
    assert ckpt.load(ckpt.step_path(run / "checkpoints", stopped))["step"] == stopped
    assert f"stopped early at step {stopped}" in output
    # the requeued job: same command, resume=auto, ends where an uninterrupted run ends
    train(data_root, 2, *ARGS, f"run.dir={run}")
    assert not (run / "PREEMPTED").exists()
    final = ckpt.load(ckpt.list_steps(run / "checkpoints")[0])
    assert final["step"] == STEPS
    steps = [r["step"] for r in read_metrics(run) if "loss/D" in r]
    assert steps == list(range(1, STEPS + 1))
