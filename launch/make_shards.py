"""Convert a dataset split into WebDataset shards with a manifest (see gen_dist/data/shard_writer.py).

    python launch/make_shards.py --dataset mnist --split train --root ../shared/data \\
        --out data/shards/mnist-train --samples-per-shard 10000
    python launch/make_shards.py --dataset folder --root my_images --image-size 64 --out data/shards/mine \\
        --samples-per-shard 5000 --format png
    python launch/make_shards.py --dataset dsprites --split train --out data/shards/dsprites-train \
        --dsprites-orientations 40 --dsprites-positions 32     # the full dSprites grid (drawn, no --root)

Then train with data.shards=data/shards/mnist-train (the folder, its manifest.json, or a pattern such
as 'data/shards/mnist-train/mnist-train-{000000..000005}.tar'). A bad argument or a missing dataset
exits with status 2 and one line naming the problem and the fix.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from gen_dist.data import dsprites
from gen_dist.data.datasets import DATASETS, load_source
from gen_dist.data.shard_writer import ENCODINGS, write_shards
from gen_dist.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line (argparse prints the usage too), same status 2
        self.exit(2, f"make_shards: error: {message} (see --help)\n")


def parse_args(argv=None) -> argparse.Namespace:
    p = _Parser(description=__doc__.split("\n")[0])
    p.add_argument("--verify", metavar="DIR", help="check the shards in DIR against its manifest's sizes and "
                   "sha256 (exit 2 naming each damaged shard); writes nothing")
    p.add_argument("--dataset", choices=DATASETS)
    p.add_argument("--split", default="train", choices=("train", "test"))
    p.add_argument("--root", default=os.environ.get("GEN_DIST_DATA"),
                   help="folder holding the torchvision layout (MNIST/raw, ...) or the image folder "
                        "(default: $GEN_DIST_DATA)")
    p.add_argument("--out", help="output folder for the shards and manifest.json")
    p.add_argument("--samples-per-shard", type=int, default=10000)
    p.add_argument("--format", default="npy", choices=ENCODINGS,
                   help="npy: raw uint8, fastest to read (default); png: smaller files")
    p.add_argument("--limit", type=int, default=0, help="write only the first N samples (0 = all)")
    p.add_argument("--image-size", type=int, default=0, help="folder only: resize and center-crop to N x N")
    p.add_argument("--channels", type=int, default=3, choices=(1, 3), help="folder only: 1 = grayscale, 3 = RGB")
    p.add_argument("--dsprites-orientations", type=int, default=10, help="dsprites only: angles (full grid: 40)")
    p.add_argument("--dsprites-positions", type=int, default=16, help="dsprites only: x and y values (full grid: 32)")
    p.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.verify:
        return args
    if not args.dataset or not args.out:
        p.error("--dataset and --out are required (or --verify DIR)")
    if not args.root and args.dataset != "dsprites":  # dsprites is drawn, not read
        p.error("--root is required (or set GEN_DIST_DATA): the folder that holds the dataset")
    return args


def verify(folder: str) -> int:
    """--verify DIR: every shard's size and sha256 against DIR/manifest.json."""
    from gen_dist.data.shards import resolve_shards, verify_checksums

    try:
        shard_set = resolve_shards(os.path.join(folder, "manifest.json"), count=False)
    except UserError as e:
        print(f"make_shards: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    bad = verify_checksums(shard_set)
    unchecked = sum(1 for s in shard_set.shards if not s.sha256)
    for shard, problem in bad:
        print(f"make_shards: error: shard {shard.url} {problem}: restore it or rewrite the shards", file=sys.stderr)
    if bad:
        return 2
    print(f"{len(shard_set.shards) - unchecked} shards in {folder} match their manifest's sha256"
          + (f" ({unchecked} without a checksum)" if unchecked else ""))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.verify:
        return verify(args.verify)
    t0 = time.perf_counter()
    try:
        if args.dataset == "dsprites":
            source = dsprites.source(args.split, dsprites.Grid(args.dsprites_orientations, args.dsprites_positions))
        else:
            source = load_source(args.dataset, args.split, args.root, image_size=args.image_size,
                                 channels=args.channels)
        manifest = write_shards(source, args.out, samples_per_shard=args.samples_per_shard, encoding=args.format,
                                limit=args.limit, overwrite=args.overwrite, progress=not args.no_progress)
    except UserError as e:
        print(f"make_shards: error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"wrote {manifest['num_samples']} samples in {len(manifest['shards'])} shards to {args.out} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
