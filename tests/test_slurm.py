"""The Slurm scripts on a real Slurm cluster: slurm/cluster.sh brings up munged, slurmctld and two slurmd
(emulated nodes n1, n2 on this machine) for this module and takes them down at the end, whatever
happens. Jobs go through sbatch exactly as on a cluster: a 2-node x 1-process run is one 2-rank run, a
1-node x 2-process run too, and a signal to a running job (scancel --signal=USR1/TERM) makes both ranks
checkpoint at one step, the job requeue itself and the requeued job finish with the step count of an
uninterrupted run. Skipped only where Slurm cannot be had (not root, or no Slurm and no apt-get)."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, SHARD_CACHE, TINY, WANDB_ON, read_metrics, run_env

from gen_dist import checkpoint as ckpt

pytestmark = pytest.mark.slow
SLURM = REPO / "slurm"
SCRIPTS = sorted(str(p) for p in SLURM.iterdir() if p.suffix in (".sh", ".sbatch"))
STEPS = 100  # a signal sent after 3 logged steps lands by step ~15 (checked every 5 steps)
CONFIG = "configs/dcgan32_mnist.yaml"
ARGS = [*TINY, *WANDB_ON, "train.checkpoint_every=1000"]  # one run across requeues in W&B too
FID_ONLY = ["eval.sample_quality=true", "eval.fid=true", "eval.kid=false", "eval.precision_recall=false"]
CPU = ["--gpus-per-node=0"]  # the scripts ask for 8 GPUs by default; this cluster has none
TWO_NODES = ["--nodes=2", "--cpus-per-task=1", *CPU]  # 2 nodes x 1 CPU process
ONE_NODE = ["--nodes=1", "--cpus-per-task=2", *CPU]  # 1 node x 2 CPU processes


def _slurm_available() -> str:
    if os.geteuid() != 0:
        return "needs root (slurmd runs jobs as their owner)"
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        return "Slurm is not installed and apt-get is not available"
    return ""


def _cluster_pids(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker.encode() in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def _free_port_run(count: int) -> int:
    """The first of `count` consecutive free TCP ports (so that two test sessions on one machine, or a
    cluster already running there, do not collide)."""
    for _ in range(200):
        base = random.randint(20000, 30000)
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports")


@pytest.fixture(scope="module")
def cluster(data_root):
    """A running two-node cluster for this module; the environment that talks to it."""
    why = _slurm_available()
    if why:
        pytest.skip(why)
    state = tempfile.mkdtemp(prefix="gd_slurm_")  # short: munged's socket path must stay short
    env = run_env(data_root, GEN_DIST_SLURM_DIR=state)
    env.pop("ACCELERATE_USE_CPU")  # the scripts must see for themselves that there is no GPU
    marker = f"GEN_DIST_SLURM_CLUSTER={state}"
    ports = _free_port_run(4)  # slurmctld, slurmd n1 and n2, the multinode rendezvous
    env.update(GEN_DIST_SLURM_CTLD_PORT=str(ports), GEN_DIST_SLURM_NODE_PORTS=f"{ports + 1}-{ports + 2}",
               GEN_DIST_MAIN_PORT=str(ports + 3))
    env.update(SLURM_CONF=f"{state}/slurm.conf", GEN_DIST_SLURM_CLUSTER=state,
               GEN_DIST_VENV=str(Path(PYTHON).parent.parent))  # the jobs use this test's environment
    try:
        up = subprocess.run([str(SLURM / "cluster.sh"), "up"], env=env, capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, f"cluster.sh up failed:\n{up.stdout}\n{up.stderr}"
        yield env
    finally:
        down = subprocess.run([str(SLURM / "cluster.sh"), "down"], env=env, capture_output=True, text=True,
                              timeout=180)
        left = _cluster_pids(marker)
        shutil.rmtree(state, ignore_errors=True)
        assert down.returncode == 0 and not left, f"cluster.sh down: {down.stderr}; still running: {left}"


@pytest.fixture(scope="module")
def shards(cluster):
    """slurm/prepare_offline.sh on the 'login node': the shards the jobs use exist before any job runs."""
    out = subprocess.run([str(SLURM / "prepare_offline.sh"), CONFIG, *ARGS, *FID_ONLY], cwd=REPO,
                         env=dict(cluster, GEN_DIST_SHARDS=SHARD_CACHE), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"export GEN_DIST_SHARDS={Path(SHARD_CACHE).resolve()}" in out.stdout
    assert "export GEN_DIST_INCEPTION_WEIGHTS=" in out.stdout  # FID on: the weights were checked
    for name in ("mnist-train-first512", "mnist-test"):
        assert (Path(SHARD_CACHE) / name / "manifest.json").is_file(), out.stdout
    return SHARD_CACHE


def sbatch(env, log_dir: Path, script: str, sbatch_args, *args) -> str:
    cmd = ["sbatch", "--parsable", f"--output={log_dir}/slurm-%j.out", *sbatch_args, f"slurm/{script}", *args]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def job_info(env, job: str) -> dict:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True, timeout=30)
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def wait_until(what, predicate, timeout: float, interval: float = 0.3, log: Path | None = None):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            tail = log.read_text()[-4000:] if log and log.is_file() else ""
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        time.sleep(interval)


ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL")


def wait_finished(env, job: str, log: Path, timeout: float = 300) -> dict:
    """scontrol's view of the job once it has ended (a requeued job is pending again, not ended)."""
    def ended():
        info = job_info(env, job)
        return info if info.get("JobState") in ENDED else None

    return wait_until(f"job {job} to end", ended, timeout, log=log)


def check_one_run(run: Path, steps: int, ranks: int = 2) -> None:
    """One run of `ranks` processes: every step logged once, the ranks' parameters identical at the end,
    the final checkpoint at the last step."""
    rows = read_metrics(run)
    assert [r["step"] for r in rows if "loss/D" in r] == list(range(1, steps + 1))
    last = rows[-1]
    assert last["sync/params_identical"] == 1, last
    assert len(last["sync/param_hashes"]) == ranks and len(set(last["sync/param_hashes"])) == 1, last
    newest = ckpt.load(ckpt.list_steps(run / "checkpoints")[0])
    assert newest["step"] == steps and newest["world_size"] == ranks
    assert (run / "checkpoints" / "final.pt").is_file()
    assert not (run / "PREEMPTED").exists()


def test_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (CI installs it)")
    out = subprocess.run(["shellcheck", *SCRIPTS], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    assert {Path(s).name for s in SCRIPTS} >= {"train.sbatch", "train_multinode.sbatch", "evaluate.sbatch",
                                               "cluster.sh", "node_launch.sh", "prepare_offline.sh"}


def test_multinode_job_is_one_run_across_two_nodes(cluster, shards, tmp_path):
    run = tmp_path / "run"
    job = sbatch(cluster, tmp_path, "train_multinode.sbatch", TWO_NODES, CONFIG, *ARGS, "train.max_steps=20",
                 f"run.dir={run}")
    log = tmp_path / f"slurm-{job}.out"
    info = wait_finished(cluster, job, log)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text[-4000:]
    assert info["NodeList"] == "n[1-2]" and info["NumNodes"] == "2", info
    # one launcher per node, machine rank from SLURM_NODEID, together one 2-process run
    assert "node n1 rank 0 of 2: 1 processes (CPU, no GPU)" in text, text[-4000:]
    assert "node n2 rank 1 of 2: 1 processes (CPU, no GPU)" in text, text[-4000:]
    check_one_run(run, 20, ranks=2)


def test_single_node_job_with_two_processes_then_evaluate(cluster, shards, tmp_path):
    run = tmp_path / "run"
    job = sbatch(cluster, tmp_path, "train.sbatch", ONE_NODE, CONFIG, *ARGS, "train.max_steps=20", f"run.dir={run}")
    log = tmp_path / f"slurm-{job}.out"
    info = wait_finished(cluster, job, log)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text[-4000:]
    assert info["NumNodes"] == "1" and "rank 0 of 1: 2 processes (CPU, no GPU)" in text, text[-4000:]
    check_one_run(run, 20, ranks=2)
    # slurm/evaluate.sbatch on the final checkpoint (1 process: FID on 32 samples)
    out = tmp_path / "eval.json"
    final = str(run / "checkpoints" / "final.pt")
    job = sbatch(cluster, tmp_path, "evaluate.sbatch", ["--cpus-per-task=1", *CPU], final,
                 "--num-samples", "32", "--out", str(out), *FID_ONLY, "eval.limit=32")
    log = tmp_path / f"slurm-{job}.out"
    info = wait_finished(cluster, job, log)
    assert info["JobState"] == "COMPLETED", log.read_text()[-4000:]
    result = json.loads(out.read_text())
    assert result["step"] == 20 and result["num_samples"] == 32 and result["fid"] > 0, result


PREEMPTIONS = [
    # script, sbatch options, signal, how scancel sends it
    ("train_multinode.sbatch", TWO_NODES, "USR1", "--batch"),  # what --signal=B:USR1@300 does before the limit
    ("train_multinode.sbatch", TWO_NODES, "TERM", "--batch"),
    ("train.sbatch", ONE_NODE, "TERM", "--full"),  # the batch script, the launcher and the trainers at once
    # (train.sbatch with USR1 --batch runs the same trap as TERM --full; left out to keep the time down)
]


def start_training(env, tmp_path: Path, script: str, sbatch_args) -> tuple[str, Path, Path]:
    """A job that trains STEPS steps, once it has logged a few of them: (job id, run dir, log)."""
    run = tmp_path / "run"
    job = sbatch(env, tmp_path, script, sbatch_args, CONFIG, *ARGS, f"train.max_steps={STEPS}", f"run.dir={run}")
    log = tmp_path / f"slurm-{job}.out"
    wait_until("training under way", lambda: (run / "metrics.jsonl").is_file() and len(read_metrics(run)) >= 3,
               240, 0.1, log)
    return job, run, log


def check_preempted_then_resumed(env, job: str, run: Path, log: Path, sig: str) -> str:
    """The first run stopped with one checkpoint (both ranks' state) at the marker's step and requeued
    the job; the requeued job resumed there, ended where an uninterrupted run ends, in the same W&B run."""
    line = wait_until("the requeue", lambda: re.search(r"preempted \((\{.*\})\): requeueing job", log.read_text()),
                      120, log=log)
    marker = json.loads(line.group(1))
    stopped = marker["step"]
    assert 0 < stopped < STEPS and marker["reason"] == f"preempted by SIG{sig}", marker
    assert [p.name for p in ckpt.list_steps(run / "checkpoints")] == [f"step_{stopped:09d}.pt"]
    state = ckpt.load(ckpt.step_path(run / "checkpoints", stopped))
    assert state["step"] == stopped and state["world_size"] == 2 and len(state["rng"]) == 2
    assert f"stopped early at step {stopped}" in log.read_text()
    # (no `scontrol update StartTime=now` to skip the ~10 s wait for the old credential: issued while the
    # first run was still being cleaned up on the node, it made the restart fail to launch here)

    info = wait_finished(env, job, log, timeout=300)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", text[-4000:]
    resumed = f"resumed from {ckpt.step_path(run / 'checkpoints', stopped)} at step {stopped}"
    assert "restart 1" in text and resumed in text, text[-4000:]
    check_one_run(run, STEPS, ranks=2)
    run_id = ckpt.load(ckpt.list_steps(run / "checkpoints")[0])["wandb_run_id"]
    folders = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and all(f.endswith(f"-{run_id}") for f in folders), (run_id, folders)
    return text


PREEMPTIONS = [
    # script, sbatch options, signal, how scancel sends it
    ("train_multinode.sbatch", TWO_NODES, "USR1", "--batch"),  # what --signal=B:USR1@300 does before the limit
    ("train_multinode.sbatch", TWO_NODES, "TERM", "--batch"),
    ("train.sbatch", ONE_NODE, "TERM", "--full"),  # the batch script, the launcher and the trainers at once
    # (train.sbatch with USR1 --batch runs the same trap as TERM --full; left out to keep the time down)
]


@pytest.mark.parametrize("script, sbatch_args, sig, how", PREEMPTIONS,
                         ids=[f"{s.split('.')[0]}-{sig}{how}" for s, _, sig, how in PREEMPTIONS])
def test_signal_checkpoints_requeues_and_resumes(cluster, shards, tmp_path, script, sbatch_args, sig, how):
    job, run, log = start_training(cluster, tmp_path, script, sbatch_args)
    subprocess.run(["scancel", f"--signal={sig}", how, job], env=cluster, check=True, timeout=30)
    text = check_preempted_then_resumed(cluster, job, run, log, sig)
    if script == "train_multinode.sbatch" and sig == "TERM":  # relayed to the trainers alone: W&B unharmed
        assert "W&B disabled" not in text, text[-4000:]


def test_slurm_preemption_requeues_and_resumes(cluster, shards, tmp_path):
    """Slurm's own preemption: a job in partition `urgent` needs both nodes; Slurm sends SIGTERM to the
    training job's steps (PreemptMode=CANCEL, GraceTime 15 s), the trainers checkpoint, the script
    requeues the job, the urgent job runs, then the training job resumes."""
    job, run, log = start_training(cluster, tmp_path, "train_multinode.sbatch", TWO_NODES)
    out = subprocess.run(["sbatch", "--parsable", "--partition=urgent", "--nodes=2", "--exclusive",
                          f"--output={tmp_path}/urgent-%j.out", "--wrap", "echo urgent job on $SLURMD_NODENAME"],
                         cwd=tmp_path, env=cluster, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    urgent = out.stdout.strip().split(";")[0]
    check_preempted_then_resumed(cluster, job, run, log, "TERM")
    info = job_info(cluster, urgent)
    assert info["JobState"] == "COMPLETED" and info["NodeList"] == "n[1-2]", info
    assert job_info(cluster, job)["StartTime"] >= info["EndTime"]  # the training job came back after it


def test_cancelled_job_checkpoints_but_is_not_requeued(cluster, shards, tmp_path):
    """`scancel JOB` is the user's cancel, not a preemption: the trainers still stop with a checkpoint
    (Slurm sends SIGTERM before SIGKILL), but the job stays cancelled."""
    job, run, log = start_training(cluster, tmp_path, "train.sbatch", ONE_NODE)
    subprocess.run(["scancel", job], env=cluster, check=True, timeout=30)
    wait_until("the batch script's decision", lambda: re.search(r"not requeued|requeueing job", log.read_text()),
               60, log=log)
    wait_finished(cluster, job, log)
    time.sleep(2)  # a wrong requeue would show by now
    info = job_info(cluster, job)
    text = log.read_text()
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", (info, text[-4000:])
    assert "not requeued" in text and "requeueing" not in text, text[-4000:]
    stopped = json.loads((run / "PREEMPTED").read_text())["step"]
    assert [p.name for p in ckpt.list_steps(run / "checkpoints")] == [f"step_{stopped:09d}.pt"]
