"""Peak memory of one training process for each shipped config.

Each config runs in its own fresh process (so one config's peak cannot hide another's): a real
Trainer on 1 process, built from configs/<name>.yaml as shipped (batch size, model widths, image
size, the shard loader), then ``--steps`` real training steps (``Trainer.train_step``). Reported:

  params_m         parameters of G (or the VAE) and D, in millions
  state_mb         parameters + gradients + Adam's two moments, fp32: 16 bytes per parameter
  rss_built_mb     resident memory once the trainer is built (libraries, data, models)
  peak_rss_mb      the process's peak resident memory during the steps (Linux: the peak is reset after
                   the build through /proc/self/clear_refs, so a transient of the build, such as the
                   first shard conversion, is not counted; elsewhere ru_maxrss, which includes it)
  step_extra_mb    peak_rss_mb - rss_built_mb: what training steps add (activations, gradients, Adam)
  cuda_peak_mb     torch.cuda.max_memory_allocated over the steps (on a GPU), else null

The shard-reading worker processes (data.num_workers) are separate processes, not counted here.

    OMP_NUM_THREADS=1 python bench/memory.py                 # every shipped config with data here
    python bench/memory.py --configs dcgan_mnist vaegan_mnist --device cuda
    python bench/memory.py --quick                           # two configs, tiny widths (smoke test)

stdout: one JSON object per config; stderr: a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MARK = "MEMORY_ROW "


def shipped_configs() -> list[str]:
    """configs/*.yaml that train on the data this repository has (CIFAR-10 is not shipped with it)."""
    names = (p.stem for p in (REPO / "configs").glob("*.yaml"))
    return sorted(n for n in names
                  if not n.startswith("ablation_") and not n.endswith("_cifar10") and "dsprites" not in n)


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def reset_peak() -> float:
    """The current resident memory, after resetting the peak to it where Linux allows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS (VmHWM), Linux >= 4.0
    except OSError:
        pass
    return _status_mb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_mb() -> float:
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(args) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from train_step import build_trainer, prepare_env

    prepare_env(args.device)
    import torch

    torch.set_num_threads(args.threads)
    overrides = ["data.shards=auto", "data.test_shards=auto", *args.set]
    with tempfile.TemporaryDirectory(prefix="bench_mem_") as run:
        trainer = build_trainer(args.worker, overrides, run)
        e = trainer.engine
        params = sum(p.numel() for m in (trainer.G, trainer.D) if m is not None for p in e.unwrap(m).parameters())
        built = reset_peak()
        if e.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.steps):
            trainer.train_step()
            trainer.step += 1
        cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if e.device.type == "cuda" else None
        peak = peak_mb()
        row = {"config": args.worker, "device": e.device.type, "batch": trainer.cfg.train.batch_size,
               "image_size": trainer.cfg.data.image_size, "params_m": round(params / 1e6, 3),
               "state_mb": round(16 * params / 2**20, 1), "rss_built_mb": round(built, 1),
               "peak_rss_mb": round(peak, 1), "step_extra_mb": round(peak - built, 1),
               "cuda_peak_mb": None if cuda_peak is None else round(cuda_peak, 1), "steps": args.steps}
        trainer.tracker.finish()
    print(MARK + json.dumps(row), flush=True)


def measure(config: str, args, shard_cache: str) -> dict | None:
    """One config in a fresh interpreter; the shards made by the first are reused by the others."""
    cmd = [sys.executable, __file__, "--worker", config, "--steps", str(args.steps), "--device", args.device,
           "--threads", str(args.threads), "--set", *args.set]
    env = dict(os.environ, GEN_DIST_SHARDS=shard_cache, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    rows = [json.loads(line[len(MARK):]) for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not rows:
        print(f"{config}: failed ({proc.returncode})\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return rows[0]


def print_table(rows: list[dict]) -> None:
    out = sys.stderr
    print(f"\n{'config':26} {'dev':>4} {'batch':>5} {'px':>3} {'params M':>9} {'state MB':>9} {'built MB':>9} "
          f"{'peak RSS MB':>12} {'steps add MB':>12} {'CUDA peak MB':>13}", file=out)
    for r in rows:
        cuda = "-" if r["cuda_peak_mb"] is None else r["cuda_peak_mb"]
        print(f"{r['config']:26} {r['device']:>4} {r['batch']:>5} {r['image_size']:>3} {r['params_m']:>9} "
              f"{r['state_mb']:>9} {r['rss_built_mb']:>9} {r['peak_rss_mb']:>12} {r['step_extra_mb']:>12} "
              f"{cuda:>13}", file=out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=None, help="config names (default: every shipped one)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    parser.add_argument("--quick", action="store_true", help="vae_mnist and dcgan32_mnist, tiny widths, 1 step")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    configs = args.configs or shipped_configs()
    if args.quick:
        configs = args.configs or ["vae_mnist", "dcgan32_mnist"]
        args.steps = 1
        args.set = ["model.g_width=8", "model.d_width=8", "model.hidden_dim=32", "train.batch_size=16",
                    "data.limit=512", "data.num_workers=0", *args.set]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_mem_shards_") as shard_cache:
        for config in configs:
            row = measure(config, args, shard_cache)
            if row is not None:
                print(json.dumps(row), flush=True)
                rows.append(row)
    print_table(rows)
    if len(rows) < len(configs):
        sys.exit(1)


if __name__ == "__main__":
    main()
