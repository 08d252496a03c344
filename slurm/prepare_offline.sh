#!/usr/bin/env bash
# Prepare, on a login node (with network), everything a run needs on offline compute nodes: the dataset,
# its WebDataset shards and the FID Inception weights. Run it with the config and overrides you will
# submit, and the same GEN_DIST_DATA / GEN_DIST_SHARDS, on a filesystem the compute nodes see:
#
#   export GEN_DIST_DATA=/shared/gen_dist/data GEN_DIST_SHARDS=/shared/gen_dist/shards
#   export GEN_DIST_INCEPTION_WEIGHTS=/shared/gen_dist/weights/pt_inception-2015-12-05-6726825d.pth
#   slurm/prepare_offline.sh configs/vaegan_mnist.yaml
#   sbatch slurm/train.sbatch configs/vaegan_mnist.yaml      # the jobs inherit the exported variables
#
# 1. downloads the dataset (torchvision) into data.root ($GEN_DIST_DATA) unless it is there;
# 2. writes the shards that data.shards=auto / data.test_shards=auto would write into data.shard_cache
#    ($GEN_DIST_SHARDS), with the same names, so the jobs find them and convert nothing;
# 3. when the config computes FID/KID/precision-recall/IS: downloads pytorch-fid's Inception weights to
#    $GEN_DIST_INCEPTION_WEIGHTS (or eval.inception_weights; else the torch hub cache, ~/.cache/torch)
#    unless that file is there, and checks that the file loads.
# Then it prints the variables to export for the jobs. Exit status 2 with a one-line message on a bad
# config or a failed download. Uses the repo's .venv (or GEN_DIST_VENV, or python3 on PATH).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "$#" -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
  sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 2
fi
[ "$1" = --config ] && shift
python="${GEN_DIST_VENV:-$REPO/.venv}/bin/python"
[ -x "$python" ] || python="$(command -v python3)"
cd "$REPO"

exec "$python" - "$@" <<'PY'
import os
import sys
from pathlib import Path

from gen_dist.config import load_config
from gen_dist.errors import UserError


def main(config, overrides):
    cfg = load_config(config, overrides)
    data = cfg.data
    if data.dataset != "folder":
        from gen_dist.data.datasets import load_arrays

        for train in (True, False):
            load_arrays(data.dataset, data.root, train, True)
        print(f"prepare_offline: dataset {data.dataset} in {Path(data.root).resolve()}")
    from gen_dist.data.datasets import ensure_shards

    for split, spec in (("train", data.shards), ("test", data.test_shards)):
        if spec == "auto":
            print(f"prepare_offline: {split} shards in {Path(ensure_shards(data, split)).resolve()}")
        else:
            print(f"prepare_offline: {split}: data.{'shards' if split == 'train' else 'test_shards'}={spec} (not auto: nothing to write)")

    weights = None
    ev = cfg.eval
    if getattr(ev, "sample_quality", True) and (ev.fid or ev.kid or ev.precision_recall or ev.inception_score):
        import torch
        from pytorch_fid import inception as pfi

        from gen_dist.evaluation.metrics.inception import FID_WEIGHTS_FILE

        target = ev.inception_weights or os.environ.get("GEN_DIST_INCEPTION_WEIGHTS") or \
            str(Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE)
        target = Path(target)
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            print(f"prepare_offline: downloading {pfi.FID_WEIGHTS_URL} -> {target}")
            try:
                torch.hub.download_url_to_file(pfi.FID_WEIGHTS_URL, str(target), progress=False)
            except Exception as e:
                raise UserError(f"could not download the Inception weights ({type(e).__name__}: {e}); "
                                f"copy {FID_WEIGHTS_FILE} to {target} by hand") from None
        try:
            sd = torch.load(target, map_location="cpu", weights_only=True)
            assert isinstance(sd, dict) and "fc.weight" in sd
        except Exception as e:
            raise UserError(f"{target} is not pytorch-fid's Inception state dict ({type(e).__name__}); "
                            "delete it and run again") from None
        weights = target.resolve()
        print(f"prepare_offline: Inception weights {weights}")

    print("prepare_offline: ready; for the jobs (sbatch passes your environment on):")
    print(f"  export GEN_DIST_DATA={Path(data.root).resolve()}")
    print(f"  export GEN_DIST_SHARDS={Path(data.shard_cache).resolve()}")
    if weights:
        print(f"  export GEN_DIST_INCEPTION_WEIGHTS={weights}")
    print("  export WANDB_MODE=offline   # then, from a node with network: wandb sync RUN_DIR/wandb/offline-run-*")


if __name__ == "__main__":
    try:
        main(sys.argv[1], sys.argv[2:])
    except UserError as e:
        print(f"prepare_offline: error: {e}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))
PY
