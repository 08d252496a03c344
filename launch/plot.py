"""Draw the loss curves and evaluation metrics (against images seen) of one or several runs into a PNG.

    python launch/plot.py runs/vaegan_mnist_cpu runs/conv_vae_main_budget --out curves.png
    python launch/plot.py runs/a runs/b --metrics fid test/mse --out fid.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gen_dist.errors import UserError  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (each with its metrics.jsonl)")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--metrics", nargs="+", help="only these keys (default: every loss/*, then FID, KID, ... when logged)")
    args = p.parse_args(argv)
    try:
        if not args.out.lower().endswith(".png"):
            raise UserError(f"--out '{args.out}' must name a .png file: e.g. --out curves.png")
        from gen_dist.study.curves import plot_runs

        written = plot_runs(args.runs, args.out, args.metrics)
    except UserError as e:
        print(f"gen_dist: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    print(f"wrote {written}: {len(args.runs)} run(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
