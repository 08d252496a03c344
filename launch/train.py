"""Train a VAE, GAN or VAE-GAN: one process, many GPUs or many nodes, with the same command.

    # one process (CPU or one GPU)
    python launch/train.py --config configs/vaegan_mnist.yaml
    # 8 GPUs (DDP)
    accelerate launch --multi_gpu --num_processes 8 launch/train.py --config configs/vaegan_mnist.yaml \
        train.batch_size=128 run.dir=runs/vaegan
    # 2 processes on a CPU-only machine (gloo)
    ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 \
        launch/train.py --config configs/vaegan_mnist.yaml
    # show the resolved config and exit
    python launch/train.py --config configs/vaegan_mnist.yaml --print-config

Overrides are dotted key=value pairs (train.max_steps=100 loss.adv_lambda=0.5).
Exit status: 0 done, 2 bad config or input (a one-line message says what to fix), 3 a non-finite loss or
gradient stopped the run (nothing non-finite saved; the line names the step, phase, loss and the last healthy
checkpoint), other: a crash.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gen_dist.config import load_config, to_yaml  # noqa: E402
from gen_dist.errors import UserError  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config", help="YAML file in configs/")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        from gen_dist.training.preflight import preflight

        preflight(cfg)
        from gen_dist.distributed.teardown import keep_until_exit
        from gen_dist.training.trainer import Trainer

        keep_until_exit(Trainer(cfg)).train()  # collected before the exit, its DDP reducer could hang the rank
    except UserError as e:
        if not getattr(e, "quiet", False):  # a non-finite loss: every rank stops, the main one says why
            print(f"gen_dist: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    return 0


if __name__ == "__main__":
    from gen_dist.distributed.teardown import exit_process

    exit_process(main())
