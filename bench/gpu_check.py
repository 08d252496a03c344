"""ONE script to run on a machine with a CUDA GPU: about 8 minutes, one table of what only a GPU shows.

    python bench/gpu_check.py                 # the table on stdout (and as JSON with --json FILE)
    python bench/gpu_check.py --budget-s 300  # stop starting checks after 300 s

Rows, each a subprocess with its own time limit (a failing or slow check is a row that says so, not a
crash of the script):
  1. DCGAN-64 images/s of gen_dist's training step against the seed's plain loop (fp32, verbatim) for
     fp32, bf16 and fp16, with the GPU fast paths (speed.*: channels_last, compile, fused Adam, TF32,
     cuDNN benchmark, device noise) on and off; peak memory of each (bench/train_step.py).
  2. fp16 with two optimizers and one GradScaler: a 300-step DCGAN-64 run; finite losses, and the
     optimizer steps skipped by the scaler after a 100-step warm-up (amp/skipped_steps; 0 expected).
  3. A 1-GPU DDP run over NCCL: `accelerate launch` refuses --multi_gpu with one process, so torchrun
     (what `accelerate launch --multi_gpu` runs underneath) starts it; Accelerate then sets up DDP over
     NCCL for the one rank. Reports the backend it used, exit status, ranks in sync.
  4. FID of 10,000 vs 10,000 MNIST images: `launch/evaluate.py --compare` against `python -m pytorch_fid`
     on the same PNG folders, wall time of the whole commands and the two values.
On a machine without a CUDA GPU it prints that and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
DATA = os.environ.get("GEN_DIST_DATA", str(REPO.parent / "shared" / "data"))
WEIGHTS = os.environ.get("GEN_DIST_INCEPTION_WEIGHTS",
                         str(REPO.parent / "shared" / "weights" / "pt_inception-2015-12-05-6726825d.pth"))
FAST_OFF = ["speed.channels_last=false", "speed.compile=false", "speed.fused_adam=false", "speed.tf32=false",
            "speed.cudnn_benchmark=false", "speed.device_noise=false"]


class Clock:
    def __init__(self, budget_s: float):
        self.t0, self.budget = time.time(), budget_s

    def left(self) -> float:
        return self.budget - (time.time() - self.t0)


def run(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int | str, str, str, float]:
    """(exit status or 'timeout', stdout, stderr, seconds)."""
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=REPO, env=env or os.environ.copy(), capture_output=True, text=True,
                           timeout=max(1.0, timeout))
        return p.returncode, p.stdout, p.stderr, time.time() - t0
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return "timeout", out, "", time.time() - t0


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""


def step_rates(clock: Clock) -> list[dict]:
    rows = []
    for precision in ("bf16", "fp32", "fp16"):
        for fast in (True, False):
            name = f"DCGAN-64 step, {precision}, fast paths {'on' if fast else 'off'}"
            if clock.left() < 30:
                rows.append({"check": name, "result": "skipped (time budget)"})
                continue
            cmd = [PY, "bench/train_step.py", "--device", "cuda", "--models", "dcgan64", "--seed-loop",
                   "--repeats", "5", "--run-s", "0.5", "--warmup", "5"]
            sets = ([] if fast else FAST_OFF) + (["train.mixed_precision=fp16"] if precision == "fp16" else [])
            if precision == "bf16":
                cmd.append("--bf16")
            if sets:
                cmd += ["--set", *sets]
            rc, out, err, secs = run(cmd, min(120, clock.left()))
            found = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            if rc != 0 or not found:
                rows.append({"check": name, "result": f"FAILED ({rc}): {last_line(err or out)}"})
                continue
            r = found[-1]
            rows.append({"check": name, "result": (f"{r['gen_dist_img_s']:.0f} img/s vs seed loop (fp32) "
                                                   f"{r['seed_img_s']:.0f}: {r['speedup_vs_seed']:.2f}x; peak "
                                                   f"{r.get('peak_mem_mb', float('nan')):.0f} MB"), **r})
    return rows


def train_env() -> dict:
    return dict(os.environ, GEN_DIST_DATA=DATA, WANDB_MODE="disabled", PYTHONUNBUFFERED="1")


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def fp16_scaler(clock: Clock, tmp: Path) -> dict:
    name = "fp16, two optimizers, one GradScaler (300 steps)"
    if clock.left() < 40:
        return {"check": name, "result": "skipped (time budget)"}
    run_dir = tmp / "fp16"
    cmd = [PY, "launch/train.py", "--config", "configs/dcgan_mnist.yaml", f"run.dir={run_dir}",
           "train.mixed_precision=fp16", "train.max_steps=300", "train.log_every=10", "eval.every=0",
           "eval.sample_quality=false", "eval.mode_coverage=false", "train.checkpoint_every=1000",
           "train.sample_every=1000", "train.progress_bar=false", "tracking.wandb=false"]
    rc, out, err, secs = run(cmd, min(150, clock.left()), train_env())
    rows = metrics(run_dir)
    losses = [v for r in rows for k, v in r.items() if k.startswith("loss/")]
    amp = [(r["step"], r["amp/skipped_steps"], r["amp/scale"]) for r in rows if "amp/skipped_steps" in r]
    if rc != 0 or not amp:
        return {"check": name, "result": f"FAILED ({rc}): {last_line(err or out)}"}
    at_100 = max((s for st, s, _ in amp if st <= 100), default=0)
    after = amp[-1][1] - at_100
    finite = all(v is not None and math.isfinite(v) for v in losses)
    ok = finite and after == 0
    return {"check": name, "result": (f"{'ok' if ok else 'PROBLEM'}: losses {'finite' if finite else 'NOT finite'}, "
                                      f"{amp[-1][1]} skipped steps in all ({after} after step 100), "
                                      f"final scale {amp[-1][2]:.0f}, {secs:.0f} s"),
            "skipped_total": amp[-1][1], "skipped_after_warmup": after, "finite": finite}


def ddp_one_gpu(clock: Clock, tmp: Path) -> dict:
    name = "1-GPU DDP (torchrun --nproc_per_node 1), bf16"
    if clock.left() < 40:
        return {"check": name, "result": "skipped (time budget)"}
    run_dir = tmp / "ddp"
    cmd = [str(Path(PY).with_name("torchrun")), "--standalone", "--nproc_per_node", "1", "launch/train.py",
           "--config", "configs/vaegan_mnist.yaml", f"run.dir={run_dir}", "train.mixed_precision=bf16",
           "train.max_steps=100", "train.log_every=10",
           "eval.every=0", "eval.sample_quality=false", "train.progress_bar=false", "tracking.wandb=false"]
    rc, out, err, secs = run(cmd, min(150, clock.left()), train_env())
    rows = metrics(run_dir)
    info = next((r for r in rows if "dist/backend" in r), {})
    sync = [r["sync/params_identical"] for r in rows if "sync/params_identical" in r]
    if rc != 0 or not info:
        return {"check": name, "result": f"FAILED ({rc}): {last_line(err or out)}"}
    return {"check": name, "result": (f"exit {rc}, backend {info['dist/backend']}, type {info['dist/type']}, "
                                      f"world {info['dist/world']}, ranks in sync: {bool(sync and sync[-1])}, "
                                      f"{secs:.0f} s"), **info}


def fid_10k(clock: Clock, tmp: Path) -> list[dict]:
    name = "FID 10,000 vs 10,000 MNIST, whole commands"
    if clock.left() < 90:
        return [{"check": name, "result": "skipped (time budget)"}]
    import torchvision
    from PIL import Image

    dirs = []
    for train in (True, False):
        folder = tmp / ("train" if train else "test")
        folder.mkdir()
        for i, img in enumerate(torchvision.datasets.MNIST(DATA, train=train, download=False).data[:10000].numpy()):
            Image.fromarray(img, mode="L").save(folder / f"{i:05d}.png")
        dirs.append(str(folder))
    hub = tmp / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / Path(WEIGHTS).name).symlink_to(Path(WEIGHTS).resolve())  # where pytorch-fid looks, offline
    env = dict(os.environ, TORCH_HOME=str(tmp / "torch"), GEN_DIST_FID_CACHE=str(tmp / "fid_cache"))
    cmds = {"python -m pytorch_fid (cuda)": [PY, "-m", "pytorch_fid", *dirs, "--device", "cuda", "--batch-size", "200"],
            "launch/evaluate.py --compare": [PY, "launch/evaluate.py", "--compare", *dirs, "--batch-size", "200",
                                             f"eval.inception_weights={WEIGHTS}", "eval.kid=false",
                                             "eval.precision_recall=false"]}
    rows, base = [], None
    for label, cmd in cmds.items():
        rc, out, err, secs = run(cmd, min(180, clock.left()), env)
        found = re.findall(r"^FID:\s+([0-9.eE+-]+)\s*$", out, re.M)
        if rc != 0 or not found:
            rows.append({"check": f"{name}: {label}", "result": f"FAILED ({rc}): {last_line(err or out)}"})
            continue
        base = base or secs
        rows.append({"check": f"{name}: {label}", "result": f"FID {float(found[-1]):.4f} in {secs:.1f} s "
                     f"({secs / base:.2f}x pytorch-fid's time)", "fid": float(found[-1]), "seconds": secs})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=float, default=450, help="no new check starts after this many seconds")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU on this machine (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda or 'none'}): nothing to check; run it where `nvidia-smi` shows a GPU")
        return 0
    clock = Clock(args.budget_s)
    gpu = torch.cuda.get_device_name(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        tmp = Path(tmp)
        rows += step_rates(clock)
        rows.append(fp16_scaler(clock, tmp))
        rows.append(ddp_one_gpu(clock, tmp))
        rows += fid_10k(clock, tmp)
    date = time.strftime("%Y-%m-%d")
    print(f"\ngpu_check {date} on {gpu} (torch {torch.__version__}, CUDA {torch.version.cuda}), "
          f"{time.time() - clock.t0:.0f} s\n")
    print("| check | result |\n|---|---|")
    for r in rows:
        print(f"| {r['check']} | {r['result']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": gpu, "date": date, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
