"""Memory per rank for DDP and each DeepSpeed ZeRO stage, on a larger generator (DCGAN-64, wide).

    GEN_DIST_DATA=../shared/data python bench/zero_memory.py   # 2 processes on CPU: ddp, zero1..3
    python bench/zero_memory.py --precision bf16
    python bench/zero_memory.py --width 256 --setups zero2 zero3 --nproc 8   # on a GPU machine

Each setup is a real `accelerate launch` of a short gen_dist training run (the trainer's own step) with
the accelerate config file from configs/accelerate/. Each rank reports, after the steps:
  model_state_mb  bytes of every live tensor on the device (parameters, gradients, optimizer states,
                  ZeRO's flat buffers) found by walking the garbage collector, minus the input batch;
                  on CUDA the allocator's peak (torch.cuda.max_memory_allocated) instead
  peak_rss_mb     the process's peak resident memory (includes ~0.5 GB of libraries)
  step_s          seconds per training step (median)
Output: one JSON line per rank and setup, then a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def live_tensor_bytes(device_type: str) -> int:
    import torch

    seen, total = set(), 0
    for obj in gc.get_objects():
        try:
            if torch.is_tensor(obj) and obj.device.type == device_type:
                storage = obj.untyped_storage()
                ptr = storage.data_ptr()
                if ptr and ptr not in seen:
                    seen.add(ptr)
                    total += storage.nbytes()
        except Exception:  # objects that pretend to be tensors
            continue
    return total


def worker(args) -> None:
    import torch

    from gen_dist.config import load_config
    from gen_dist.training.trainer import Trainer

    run = tempfile.mkdtemp(prefix="zero_mem_")
    cfg = load_config(str(REPO / "configs" / "dcgan_mnist.yaml"), [
        f"run.dir={run}", f"model.g_width={args.width}", f"model.d_width={args.width}",
        f"train.batch_size={args.batch}", f"train.max_steps={args.steps}", "data.limit=2048",
        "data.num_workers=0", "tracking.wandb=false", "train.progress_bar=false", "eval.sample_quality=false",
        "train.resume=none", f"train.mixed_precision={args.precision}"])
    trainer = Trainer(cfg)
    e = trainer.engine
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        trainer.train_step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    batch_bytes = sum(t.untyped_storage().nbytes() for t in trainer._micro[0]) * len(trainer._micro)
    params = sum(p.numel() for m in (trainer.G, trainer.D) for p in e.unwrap(m).parameters())
    if e.zero_stage == 3:  # partitioned: count the whole model through DeepSpeed's bookkeeping
        params = sum(getattr(p, "ds_numel", p.numel()) for m in (trainer.G, trainer.D)
                     for p in e.unwrap(m).parameters())
    if torch.cuda.is_available():
        state = torch.cuda.max_memory_allocated()
    else:
        gc.collect()
        state = live_tensor_bytes("cpu") - batch_bytes
    row = {"setup": args.setup, "precision": args.precision, "rank": e.rank, "world": e.world, "params_m": round(params / 1e6, 2),
           "model_state_mb": round(state / 2**20, 1),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "step_s": round(statistics.median(times[1:] or times), 3)}
    e.barrier()
    print("ZERO_MEMORY " + json.dumps(row), flush=True)
    e.end()


def launch(setup: str, nproc: int, extra: list[str]) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), WANDB_MODE="disabled")
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    cmd = [accelerate, "launch", "--config_file", str(REPO / "configs" / "accelerate" / f"{setup}.yaml"),
           "--num_processes", str(nproc), "--main_process_port", "0", __file__, "--worker", "--setup", setup, *extra]
    import torch

    if setup == "ddp" and not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "1"
    else:
        env.pop("ACCELERATE_USE_CPU", None)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    rows = [json.loads(line.split("ZERO_MEMORY ", 1)[1]) for line in proc.stdout.splitlines() if "ZERO_MEMORY " in line]
    if proc.returncode != 0 or not rows:
        print(f"{setup}: failed ({proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
    return sorted(rows, key=lambda r: r["rank"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", nargs="+", default=["ddp", "zero1", "zero2", "zero3"])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--width", type=int, default=128, help="g_width = d_width of the DCGAN-64")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"], help="train.mixed_precision")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--setup", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    extra = ["--width", str(args.width), "--batch", str(args.batch), "--steps", str(args.steps),
             "--precision", args.precision]
    rows = []
    for setup in args.setups:
        for row in launch(setup, args.nproc, extra):
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\n{'setup':8} {'prec':>4} {'rank':>4} {'params (M)':>10} {'model state MB':>15} {'peak RSS MB':>12} {'step s':>7}")
    for r in rows:
        print(f"{r['setup']:8} {r['precision']:>4} {r['rank']:>4} {r['params_m']:>10} {r['model_state_mb']:>15} {r['peak_rss_mb']:>12} "
              f"{r['step_s']:>7}")


if __name__ == "__main__":
    main()
