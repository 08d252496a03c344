"""Draw images from a trained generator or VAE decoder (EMA weights when the run kept them).

    # a 4x4 grid of 16 samples; the same seed gives the same images, on any number of processes
    python launch/sample.py --checkpoint runs/dcgan32_mnist/checkpoints/final.pt --num 16 --grid --out grid.png
    # one PNG per image (a folder launch/evaluate.py --compare can read), shared by 2 processes
    accelerate launch --num_processes 2 launch/sample.py --checkpoint runs/x/checkpoints/best_state.pt \
        --num 10000 --out samples/
    # a class-conditional model: every image of class 3
    python launch/sample.py --checkpoint runs/cgan_mnist/checkpoints/final.pt --num 16 --grid --class 3 --out threes.png
    # a VAE's samples from a Gaussian mixture fit to its training codes instead of N(0, I)
    python launch/sample.py --checkpoint runs/vaegan_mnist_cpu/checkpoints/final.pt --num 64 --grid --prior gmm --out g.png
    # a strip of 10 images walking the latent space from seed 1's sample to seed 2's
    python launch/sample.py --checkpoint runs/vae_mnist/checkpoints/final.pt --interpolate 1 2 --steps 10 --out walk.png

Sample i's latent depends only on (--seed, i); with --seed equal to the run's `seed` these are the
images its FID was computed on. Exit status: 0 done, 2 bad input (one line says what to fix).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gen_dist.errors import UserError  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--checkpoint", required=True, help="step_*.pt / best_state.pt, or final.pt / best.pt")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--num", type=int, help="number of images")
    what.add_argument("--interpolate", nargs=2, type=int, metavar=("SEED_A", "SEED_B"),
                      help="a strip from SEED_A's single sample to SEED_B's")
    p.add_argument("--out", required=True, help="a .png file (--grid, --interpolate) or a folder (one PNG per image)")
    p.add_argument("--grid", action="store_true", help="write one grid PNG instead of one PNG per image")
    p.add_argument("--seed", type=int, default=0, help="latent seed: sample i comes from (seed, i)")
    p.add_argument("--class", dest="label", type=int, help="class of every image (conditional models)")
    p.add_argument("--steps", type=int, default=8, help="--interpolate: images in the strip")
    p.add_argument("--linear", action="store_true", help="--interpolate: a straight line instead of slerp")
    p.add_argument("--nrow", type=int, help="--grid: images per row (default: a square grid)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--prior", choices=["standard", "gmm"],
                   help="a VAE's latents: N(0, I), or a mixture fit to the training codes (default: the run's eval.prior)")
    return p.parse_args(argv)


def check_args(args) -> None:
    """What can be checked before anything is loaded: the same verdict on every rank."""
    if args.num is not None and args.num < 1:
        raise UserError(f"--num {args.num}: ask for at least 1 image")
    if args.interpolate is not None and args.steps < 2:
        raise UserError(f"--steps {args.steps}: an interpolation needs at least 2 steps (its two ends)")
    if args.batch_size < 1 or (args.nrow is not None and args.nrow < 1):
        raise UserError("--batch-size and --nrow must be at least 1")
    one_file = args.grid or args.interpolate is not None
    is_png = args.out.lower().endswith(".png")
    if one_file and not is_png:
        raise UserError(f"--out '{args.out}' must name a .png file for a grid or a strip: e.g. --out samples.png")
    if one_file and os.path.isdir(args.out):
        raise UserError(f"--out '{args.out}' is an existing folder, not a .png file: choose a file name")
    if not one_file and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out '{args.out}' is an existing file, not a folder for one PNG per image: "
                        "choose a folder, or add --grid with a .png name")
    if not one_file and is_png:
        raise UserError(f"--out '{args.out}' is a .png file but --grid is not given: add --grid for one grid "
                        "image, or give a folder for one PNG per image")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_args(args)
        from gen_dist.generation.loading import load_trained
        from gen_dist.generation.sampling import check_class

        trained = load_trained(args.checkpoint, [f"eval.prior={args.prior}"] if args.prior else [])
        check_class(trained.num_classes, args.label)
        return run(args, trained)
    except UserError as e:
        if os.environ.get("RANK", "0") == "0":  # every rank reaches the same verdict; say it once
            print(f"gen_dist: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code


def run(args, trained) -> int:
    from gen_dist.distributed.engine import Engine
    from gen_dist.generation import images as pngs, sampling
    from gen_dist.generation.latent_prior import prior_of

    engine = Engine("no", trained.cfg.seed)  # sampling runs in float32
    trained.model.to(engine.device)
    prior = None
    if args.interpolate is not None:
        images = sampling.interpolate(trained, None, *args.interpolate, steps=args.steps, label=args.label,
                                      spherical=not args.linear, batch_size=args.batch_size, engine=engine)
    else:
        prior = prior_of(trained, engine)  # the run's eval.prior (or --prior): a VAE's fitted mixture, or None
        images = sampling.sample_images(trained, None, args.num, args.seed, args.label,
                                        batch_size=args.batch_size, engine=engine, progress_bar=True, prior=prior)
    if engine.is_main:
        if args.interpolate is not None:
            written = pngs.save_grid(images, args.out, nrow=len(images))
        elif args.grid:
            written = pngs.save_grid(images, args.out, nrow=args.nrow)
        else:
            written = pngs.save_each(images, args.out)[0].parent
        weights = {True: "EMA", False: "raw"}.get(trained.ema, "exported")
        latents = " latents from the fitted mixture," if prior is not None else ""
        print(f"wrote {written}: {len(images)} images {tuple(images.shape[1:])} from {args.checkpoint} "
              f"(step {trained.step}, {weights} weights,{latents} {engine.world} process(es))")
    engine.end()
    return 0


if __name__ == "__main__":
    from gen_dist.distributed.teardown import exit_process

    exit_process(main())
