"""Is data loading or logging the bottleneck? A short real run's images/s against the step alone.

For each config, three figures on the same settings (1 process, the config's batch size and workers):

  loader_img_s  the shard loader alone (ShardLoader over WebDataset shards, data.num_workers workers),
                images/s of iterating it with nothing else to do
  step_img_s    the training step alone (``Trainer.train_step`` on in-memory batches, as in
                bench/train_step.py), wall clock, the mean of a measurement before and one after the run
  e2e_img_s     a real ``launch/train.py`` run (shards, workers, metrics.jsonl, W&B offline, the tqdm
                bar): the median ``img_per_s`` of metrics.jsonl rows after the first (which holds the
                loop's start-up)

e2e / step near 1 means data loading and logging cost nothing the step does not hide; a loader
slower than the step means the run is data-bound. All wall clock: the loader's workers are other
processes, so on a machine shared with other work the figures move together with its load.

    OMP_NUM_THREADS=1 python bench/end_to_end.py                   # vae_mnist, dcgan32_mnist, vaegan_mnist
    python bench/end_to_end.py --configs dcgan_mnist --device cuda
    python bench/end_to_end.py --quick                              # tiny models, seconds (smoke test)

stdout: one JSON object per config; stderr: a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from train_step import build_trainer, feed, fixed_batches, json_stdout, prepare_env, sync

QUICK = ["model.g_width=8", "model.d_width=8", "model.hidden_dim=32", "train.batch_size=16", "data.limit=1024"]


def loader_img_s(trainer, batches: int) -> float:
    """Images/s of the trainer's own shard loader, workers started, first batch excluded."""
    it = iter(trainer.loader)
    first = next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            images, _ = next(it)
        except StopIteration:  # a short epoch: what was read is enough
            break
        n += images.shape[0]
    elapsed = time.perf_counter() - t0
    del it, first
    return n / elapsed


def step_img_s(trainer, steps: int) -> tuple[float, float]:
    """(images/s, seconds per step) of the step alone on in-memory batches, after 2 warm-up steps."""
    feed(trainer, fixed_batches(trainer, 4))
    batch = trainer.cfg.train.batch_size
    for _ in range(2):
        trainer.train_step()
    sync(trainer.engine.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    sync(trainer.engine.device)
    elapsed = time.perf_counter() - t0
    return steps * batch * trainer.batches_per_step / elapsed, elapsed / steps


def real_run(config: str, overrides: list[str], steps: int, log_every: int, run_dir: str) -> list[dict]:
    """launch/train.py as a user runs it; returns its metrics.jsonl rows that carry img_per_s."""
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    cmd = [sys.executable, str(REPO / "launch" / "train.py"), "--config", str(REPO / "configs" / f"{config}.yaml"),
           f"run.dir={run_dir}", f"train.max_steps={steps}", f"train.log_every={log_every}", "train.resume=none",
           "eval.sample_quality=false", "eval.mode_coverage=false", "eval.limit=256", "eval.every=0",
           f"train.sample_every={10 * steps}", f"train.checkpoint_every={10 * steps}", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{config}: training failed ({proc.returncode})\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
    return [r for r in rows if "img_per_s" in r]


def bench_config(config: str, args, tmp: Path) -> dict:
    overrides = (QUICK if args.quick else []) + args.set
    data = ["data.shards=auto", "data.test_shards=auto", f"data.num_workers={args.workers}"]
    trainer = build_trainer(config, [*data, *overrides], str(tmp / f"{config}_step"))
    workers = trainer.cfg.data.num_workers
    loader = loader_img_s(trainer, args.loader_batches)
    step_steps = 3 if args.quick else args.step_steps
    before, step_s = step_img_s(trainer, step_steps)
    # a run of about --seconds, logged 6 times at least
    steps = max(6, round(args.seconds / step_s)) if not args.quick else 6
    log_every = max(1, steps // 6)
    rows = real_run(config, [f"data.num_workers={workers}", *overrides], steps, log_every, str(tmp / config))
    after, _ = step_img_s(trainer, step_steps)  # the step alone before and after the run: load drifts
    trainer.tracker.finish()
    step = (before + after) / 2
    rates = [r["img_per_s"] for r in rows[1:]] or [r["img_per_s"] for r in rows]
    e2e = statistics.median(rates)
    return {"config": config, "device": trainer.engine.device.type, "batch": trainer.cfg.train.batch_size,
            "workers": workers, "loader_img_s": round(loader, 1), "step_img_s": round(step, 1),
            "step_img_s_before_after": [round(before, 1), round(after, 1)],
            "e2e_img_s": round(e2e, 1), "e2e_over_step": round(e2e / step, 3),
            "bound": "data" if loader < step else "step", "run_steps": steps, "log_every": log_every,
            "logged_rows": len(rows)}


def print_table(rows: list[dict]) -> None:
    out = sys.stderr
    print(f"\n{'config':16} {'dev':>4} {'batch':>5} {'workers':>7} {'loader img/s':>13} {'step img/s':>11} "
          f"{'run img/s':>10} {'run/step':>9} {'bound':>6}", file=out)
    for r in rows:
        print(f"{r['config']:16} {r['device']:>4} {r['batch']:>5} {r['workers']:>7} {r['loader_img_s']:>13} "
              f"{r['step_img_s']:>11} {r['e2e_img_s']:>10} {r['e2e_over_step']:>9} {r['bound']:>6}", file=out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["vae_mnist", "dcgan32_mnist", "vaegan_mnist"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (OMP_NUM_THREADS for the run)")
    parser.add_argument("--workers", type=int, default=2, help="data.num_workers (the configs' default: 2)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each real run")
    parser.add_argument("--step-steps", type=int, default=10, help="steps timed for the step-alone figure")
    parser.add_argument("--loader-batches", type=int, default=100, help="batches timed for the loader figure")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--quick", action="store_true", help="tiny models, 6-step runs (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.loader_batches, args.workers = 10, 0
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    prepare_env(args.device)
    out = json_stdout()
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_e2e_") as tmp:
        # shards made once for this bench (not in the repository), by the first config, reused after
        os.environ["GEN_DIST_SHARDS"] = str(Path(tmp) / "shards")
        for config in args.configs:
            row = bench_config(config, args, Path(tmp))
            print(json.dumps(row), file=out, flush=True)
            rows.append(row)
    print_table(rows)


if __name__ == "__main__":
    main()
