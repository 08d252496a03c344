"""Two jobs on one run.dir, and a launcher that dies (issue 16, item 3): the running job holds a lock
naming its host and PID, a second 2-process job on the folder exits on every rank naming the holder;
when the first job's launcher is SIGKILLed, its ranks notice (parent gone) and stop at one step with a
checkpoint, like a preemption."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest
from conftest import REPO, TINY, read_metrics, run_env, train, train_cmd

from gen_dist import checkpoint as ckpt

pytestmark = pytest.mark.slow
# long enough that the first job is still training when the second one has started (400 steps once
# finished first on a fast CI machine, and the second job then found a finished run and exited 0)
STEPS = 100_000
ARGS = ["--config", "configs/dcgan32_mnist.yaml", f"train.max_steps={STEPS}", f"train.checkpoint_every={STEPS}",
        "eval.mode_coverage=false", *TINY]


def test_second_job_refused_and_orphaned_ranks_stop_with_a_checkpoint(data_root, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(train_cmd(2, *ARGS, f"run.dir={run}"), cwd=REPO, env=run_env(data_root),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not (run / "metrics.jsonl").is_file() or len(read_metrics(run)) < 3:  # training is under way
            assert first.poll() is None and time.time() < deadline, "first run ended or is slow"
            time.sleep(0.05)
        workers = subprocess.run(["pgrep", "-P", str(first.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2, workers
        # a second job on the same folder: refused on every rank, naming the holder
        second = train(data_root, 2, *ARGS, f"run.dir={run}", check=False, timeout=120)
        assert second.returncode != 0
        lines = [line for line in second.stderr.splitlines() if line.startswith("gen_dist: error:")]
        assert lines and all("in use by another run" in line for line in lines), second.stderr[-3000:]
        holder = f"host {socket.gethostname()} pid "
        assert holder in lines[0] and any(f"pid {w}" in lines[0] for w in workers), lines[0]
        assert f'File "{REPO}/gen_dist' not in second.stderr and f'File "{REPO}/launch' not in second.stderr, second.stderr[-3000:]
        # the launcher dies without a word: its ranks stop at one step with a checkpoint
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        deadline = time.time() + 120
        while any(os.path.exists(f"/proc/{w}") for w in workers):
            assert time.time() < deadline, "the orphaned ranks kept training"
            time.sleep(0.2)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    marker = json.loads((run / "PREEMPTED").read_text())
    assert 0 < marker["step"] < STEPS and "parent process gone" in marker["reason"]
    assert [p.name for p in ckpt.list_steps(run / "checkpoints")] == [f"step_{marker['step']:09d}.pt"]
