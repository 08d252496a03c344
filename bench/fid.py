"""Wall time of our FID against pytorch-fid's own pipeline, and of the Fréchet step alone.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/fid.py            # 200 vs 200 images
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/fid.py --n 1000 --skip-reference

Images: MNIST train[:n] vs test[:n] (GEN_DIST_DATA, default ../shared/data), written as PNG folders.
In process: ours (tensors -> `extract_features`, batch 50 -> `FeatureStats` -> eigen-route Fréchet),
with `FastInception` (eval.fast_inception=true, the default) and with pytorch-fid's network as it
is, vs pytorch-fid's `calculate_fid_given_paths` (batch 50, as its CLI). Whole commands, one after
another, each with OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1, start-up included:

    TORCH_HOME=<tmp> python -m pytorch_fid A B --device cpu --batch-size 50 --num-workers 0
    python launch/evaluate.py --compare A B eval.inception_weights=W eval.kid=false eval.precision_recall=false
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no launch/evaluate.py --compare A B ...   # same overrides

(TORCH_HOME's hub/checkpoints/ holds a symlink to the weights, where pytorch-fid looks.) Then the
Fréchet step alone at 2048-d on (a) the statistics just computed (singular: n < 2048) and (b)
full-rank random statistics: eigen route vs scipy sqrtm. With 1000 vs 1000 the FID is 15.898
(FIELD_NOTES.md). --skip-reference runs ours only (in process and our commands).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from gen_dist.evaluation.metrics import FeatureStats, extract_features, frechet_distance, load_inception

REPO = Path(__file__).resolve().parents[1]
DATA = os.environ.get("GEN_DIST_DATA", str(REPO.parent / "shared" / "data"))
WEIGHTS = os.environ.get("GEN_DIST_INCEPTION_WEIGHTS",
                         str(REPO.parent / "shared" / "weights" / "pt_inception-2015-12-05-6726825d.pth"))
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


def mnist(train: bool, n: int) -> torch.Tensor:
    return torchvision.datasets.MNIST(DATA, train=train, download=False).data[:n]  # uint8 [n, 28, 28]


def write_pngs(images: torch.Tensor, folder: Path) -> str:
    folder.mkdir()
    for i, img in enumerate(images.numpy()):
        Image.fromarray(img, mode="L").save(folder / f"{i:05d}.png")
    return str(folder)


def ours(a: torch.Tensor, b: torch.Tensor, fast: bool = True) -> tuple[float, float, list]:
    t0 = time.perf_counter()
    model = load_inception(WEIGHTS, fast=fast)
    stats = []
    for images in (a, b):
        s = FeatureStats()
        for batch in images.split(50):
            s.update(extract_features(model, batch[:, None].float() / 255))
        stats.append(s.mean_cov())
    fid = frechet_distance(*stats[0], *stats[1])
    return fid, time.perf_counter() - t0, stats


def reference(dirs: list[str]) -> tuple[float, float]:
    from pytorch_fid.fid_score import calculate_fid_given_paths

    t0 = time.perf_counter()
    fid = calculate_fid_given_paths(dirs, batch_size=50, device="cpu", dims=2048, num_workers=0)
    return float(fid), time.perf_counter() - t0


def command(cmd: list[str], env: dict) -> tuple[float, float]:
    """Run one command to the end; its wall seconds and the FID it printed last."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    found = re.findall(r"^FID:\s+([0-9.eE+-]+)\s*$", proc.stdout, re.M)
    if proc.returncode != 0 or not found:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return float(found[-1]), wall


def commands(dirs: list[str], torch_home: Path, skip_reference: bool) -> list[tuple[str, int, float, float]]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               TORCH_HOME=str(torch_home), PYTHONUNBUFFERED="1")
    evaluate = ["launch/evaluate.py", "--compare", *dirs, f"eval.inception_weights={WEIGHTS}",
                "eval.kid=false", "eval.precision_recall=false"]
    runs = [] if skip_reference else [
        ("python -m pytorch_fid", 1, [sys.executable, "-m", "pytorch_fid", *dirs, "--device", "cpu",
                                      "--batch-size", "50", "--num-workers", "0"], env)]
    runs += [("launch/evaluate.py --compare", 1, [sys.executable, *evaluate], env),
             ("accelerate launch ... --compare", 2,
              [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", *evaluate],
              dict(env, ACCELERATE_USE_CPU="1"))]
    rows = []
    for i, (name, procs, cmd, e) in enumerate(runs):
        # --compare caches each set's statistics: a fresh cache per command, or later ones would read it
        fid, wall = command(cmd, dict(e, GEN_DIST_FID_CACHE=str(torch_home.parent / f"fid_stats{i}")))
        rows.append((name, procs, wall, fid))
        print(f"  done: {name} ({procs} proc) {wall:.1f} s, FID {fid:.6f}", flush=True)
    return rows


def frechet_step(mu1, s1, mu2, s2) -> tuple[float, float, float, float]:
    from pytorch_fid.fid_score import calculate_frechet_distance

    t0 = time.perf_counter()
    ours_v = frechet_distance(mu1, s1, mu2, s2)
    t1 = time.perf_counter()
    ref_v = calculate_frechet_distance(mu1, s1, mu2, s2)
    t2 = time.perf_counter()
    return ours_v, t1 - t0, float(ref_v), t2 - t1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="images per set (default 200)")
    p.add_argument("--skip-reference", action="store_true", help="time ours only")
    args = p.parse_args()
    print(f"threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; "
          f"MNIST train[:{args.n}] vs test[:{args.n}]", flush=True)
    a, b = mnist(True, args.n), mnist(False, args.n)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dirs = [write_pngs(a, tmp / "train"), write_pngs(b, tmp / "test")]
        ckpt = tmp / "torch" / "hub" / "checkpoints"
        ckpt.mkdir(parents=True)
        (ckpt / Path(WEIGHTS).name).symlink_to(Path(WEIGHTS).resolve())
        os.environ["TORCH_HOME"] = str(tmp / "torch")  # for the in-process pytorch-fid run

        fid, t, stats = ours(a, b)
        print(f"in process, ours        : FID {fid:.6f}  {t:6.1f} s (eval.fast_inception=true)", flush=True)
        fid_slow, t_slow, _ = ours(a, b, fast=False)
        print(f"in process, ours        : FID {fid_slow:.6f}  {t_slow:6.1f} s (eval.fast_inception=false)", flush=True)
        if not args.skip_reference:
            ref, t_ref = reference(dirs)
            print(f"in process, pytorch-fid : FID {ref:.6f}  {t_ref:6.1f} s", flush=True)
        print("whole commands, one after another:", flush=True)
        rows = commands(dirs, tmp / "torch", args.skip_reference)

    base = None if args.skip_reference else rows[0][2]
    print(f"\n{'command':<34}{'procs':>5}{'wall s':>9}{'FID':>12}{'/ pytorch-fid':>15}")
    for name, procs, wall, f in rows:
        ratio = f"{wall / base:.2f}" if base else "-"
        print(f"{name:<34}{procs:>5}{wall:>9.1f}{f:>12.6f}{ratio:>15}")
    fids = [f for *_, f in rows] + [fid, fid_slow] + ([] if args.skip_reference else [ref])
    spread = (max(fids) - min(fids)) / min(fids)
    print(f"FIDs (commands and in process) agree to {spread:.1e} relative: "
          f"{'within' if spread <= 1e-3 else 'NOT within'} 1e-3")

    (m1, s1), (m2, s2) = stats
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 4096, 2048)) * 0.5
    y = y + x * 0.5
    full = (x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    for name, st in ((f"MNIST stats (n={args.n})", (m1, s1, m2, s2)), ("random full-rank", full)):
        v, t_o, r, t_r = frechet_step(*st)
        print(f"Fréchet step, 2048-d, {name}: eigen {t_o:.2f} s ({v:.6f}) | scipy sqrtm "
              f"{t_r:.2f} s ({r:.6f})")


if __name__ == "__main__":
    main()
