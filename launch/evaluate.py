"""Evaluate a checkpoint, or compare two image sets, with the distributed metrics training uses.

    # a trained model: FID/KID/precision-recall (+ VAE metrics); 1 process or many, same numbers
    accelerate launch --multi_gpu --num_processes 8 launch/evaluate.py \
        --checkpoint runs/vaegan/checkpoints/best_state.pt --num-samples 10000
    python launch/evaluate.py --checkpoint runs/vaegan/checkpoints/final.pt eval.iwae_k=5000
    # two image sets (folders of images, or shards), like `python -m pytorch_fid A B`
    python launch/evaluate.py --compare real_pngs/ generated_pngs/

The checkpoint's own config is used, with `key=value` overrides on top (e.g. data.root=...,
eval.inception_weights=... on an offline node). A table goes to the console and the numbers to JSON
(--out, default: next to the checkpoint). --compare prints `FID: <value>` as its last line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gen_dist.errors import UserError  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="a step_*.pt / best_state.pt resume state, or best.pt / final.pt")
    what.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two image folders or shard specs")
    p.add_argument("--num-samples", type=int, help="generated samples (eval.num_samples)")
    p.add_argument("--out", help="JSON file for the results")
    p.add_argument("--batch-size", type=int, default=50, help="--compare: images per Inception batch")
    p.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    return p.parse_args(argv)


def print_table(metrics: dict) -> None:
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")


def check_args(args) -> None:
    """What can be checked before anything is loaded (the evaluation may take long)."""
    if args.num_samples is not None and args.num_samples < 1:
        raise UserError(f"--num-samples {args.num_samples}: ask for at least 1 sample")
    if args.out:
        out = Path(args.out)
        if out.is_dir():
            raise UserError(f"--out '{args.out}' is a folder: name a JSON file, e.g. --out {out / 'eval.json'}")
        if not out.parent.is_dir():
            raise UserError(f"--out '{args.out}': the folder '{out.parent}' does not exist: create it or choose another")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_args(args)
        from gen_dist.evaluation.offline import compare_image_sets, evaluate_checkpoint

        if args.compare:
            metrics = compare_image_sets(*args.compare, args.overrides, batch_size=args.batch_size)
            out = args.out
        else:
            overrides = list(args.overrides) + ([f"eval.num_samples={args.num_samples}"] if args.num_samples else [])
            metrics = evaluate_checkpoint(args.checkpoint, overrides)
            out = args.out or str(Path(args.checkpoint).with_suffix(".eval.json"))
    except UserError as e:
        print(f"gen_dist: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    if metrics is not None:  # the main process reports
        print_table(metrics)
        if out:
            Path(out).write_text(json.dumps(metrics, indent=2) + "\n")
            print(f"wrote {out}")
        if args.compare:
            print(f"FID: {metrics['fid']}")
    return 0


if __name__ == "__main__":
    from gen_dist.distributed.teardown import exit_process

    exit_process(main())
