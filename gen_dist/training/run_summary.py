"""The block a run prints when it ends: where its files are, what it reached, where the time went, and
the exact commands to sample from it, evaluate it and train it further."""

from __future__ import annotations

import shlex

from gen_dist import checkpoint as ckpt
from gen_dist.progress import fmt_seconds

SHOWN = ("fid", "kid", "precision", "recall", "test/loss", "test/mse", "test/kl", "coverage/classes_covered")


def _launch(world: int) -> str:
    if world > 1:
        return f"accelerate launch --multi_gpu --num_processes {world} launch/train.py"
    return "accelerate launch launch/train.py"


def commands(t) -> dict[str, str]:
    """Commands for this run, from the repository root in the environment that trained it."""
    run, q = t.run_dir, shlex.quote
    final = t.ckpt_dir / "final.pt"
    steps = ckpt.list_steps(t.ckpt_dir)
    model = final if final.is_file() else (steps[0] if steps else None)
    best = t.ckpt_dir / "best.pt"
    out = {}
    if model is not None:
        out["sample"] = (f"python launch/sample.py --checkpoint {q(str(model))} --num 64 --grid "
                         f"--out {q(str(run / 'samples' / 'sampled_64.png'))}")
        judged = best if best.is_file() else model
        out["evaluate"] = (f"python launch/evaluate.py --checkpoint {q(str(judged))} "
                           f"--out {q(str(run / ('eval_' + judged.stem + '.json')))}")
    more = "" if t.step < t.max_steps else f" train.max_steps={2 * t.max_steps}"  # finished: train as long again
    out["resume"] = f"{_launch(t.engine.world)} --config {q(str(run / 'config.yaml'))} train.resume=auto{more}"
    return out


def end_of_run_block(t, train_seconds: float, steps_this_run: int) -> str:
    images = t.images_seen
    epoch_size = max(1, t.loader.stats.samples_per_epoch)
    spent = {"training": train_seconds, **t.seconds}
    wall = sum(spent.values())
    lines = [f"gen_dist: run {'finished' if t.step >= t.max_steps else 'stopped'}: {t.run_dir}",
             f"  steps {t.step:,} of {t.max_steps:,} ({steps_this_run:,} in this launch), {images:,} images seen "
             f"({images / epoch_size:.2f} epochs)",
             "  wall time " + fmt_seconds(wall) + ": "
             + ", ".join(f"{k} {fmt_seconds(v)}" for k, v in spent.items())]
    if t.best is not None:
        lines.append(f"  best {t.best['metric']} {t.best['value']:.4g} at step {t.best['step']:,} "
                     f"({t.ckpt_dir / 'best.pt'})")
    m = t.last_metrics
    shown = [f"{k}={m[k]:.4g}" for k in SHOWN if isinstance(m.get(k), (int, float))]
    if shown:
        lines.append(f"  metrics at step {m['step']:,}: " + ", ".join(shown))
    files = ["metrics.jsonl", "config.yaml", "samples/", "checkpoints/"]
    if (t.run_dir / "wandb").is_dir():
        files.append("wandb/ (offline runs: wandb sync " + str(t.run_dir / "wandb") + "/offline-run-*)")
    lines.append(f"  files in {t.run_dir}: " + ", ".join(files))
    for name, command in commands(t).items():
        lines.append(f"  {name + ':':9} {command}")
    return "\n".join(lines)
