"""Wall time of our FID against pytorch-fid's own pipeline, and of the Fréchet step alone.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/fid.py            # 200 vs 200 images
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/fid.py --n 1000 --skip-reference

Images: MNIST train[:n] vs test[:n] (GEN_DIST_DATA, default ../shared/data). Ours: tensors ->
`extract_features` (batch 50) -> `FeatureStats` -> eigen-route Fréchet distance. pytorch-fid's:
the same images written as PNG folders -> `calculate_fid_given_paths` (batch 50, as its CLI), with
its weights found through TORCH_HOME. Then the Fréchet step alone at 2048-d on (a) the statistics
just computed (singular: n < 2048) and (b) full-rank random statistics: eigen route vs scipy sqrtm.
With 1000 vs 1000 the reference FID is 15.898 (FIELD_NOTES.md).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from gen_dist.metrics import FeatureStats, extract_features, frechet_distance, load_inception

REPO = Path(__file__).resolve().parents[1]
DATA = os.environ.get("GEN_DIST_DATA", str(REPO.parent / "shared" / "data"))
WEIGHTS = os.environ.get("GEN_DIST_INCEPTION_WEIGHTS",
                         str(REPO.parent / "shared" / "weights" / "pt_inception-2015-12-05-6726825d.pth"))


def mnist(train: bool, n: int) -> torch.Tensor:
    return torchvision.datasets.MNIST(DATA, train=train, download=False).data[:n]  # uint8 [n, 28, 28]


def ours(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, list]:
    t0 = time.perf_counter()
    model = load_inception(WEIGHTS)
    stats = []
    for images in (a, b):
        s = FeatureStats()
        for batch in images.split(50):
            s.update(extract_features(model, batch[:, None].float() / 255))
        stats.append(s.mean_cov())
    fid = frechet_distance(*stats[0], *stats[1])
    return fid, time.perf_counter() - t0, stats


def reference(a: torch.Tensor, b: torch.Tensor, tmp: Path) -> tuple[float, float]:
    from pytorch_fid.fid_score import calculate_fid_given_paths

    dirs = []
    for name, images in (("a", a), ("b", b)):
        d = tmp / name
        d.mkdir()
        for i, img in enumerate(images.numpy()):
            Image.fromarray(img, mode="L").save(d / f"{i:05d}.png")
        dirs.append(str(d))
    ckpt = tmp / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / Path(WEIGHTS).name).symlink_to(WEIGHTS)
    os.environ["TORCH_HOME"] = str(tmp / "torch")
    t0 = time.perf_counter()
    fid = calculate_fid_given_paths(dirs, batch_size=50, device="cpu", dims=2048, num_workers=0)
    return float(fid), time.perf_counter() - t0


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
    p.add_argument("--n", type=int, default=200, help="images per set")
    p.add_argument("--skip-reference", action="store_true", help="time ours only")
    args = p.parse_args()
    print(f"threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    a, b = mnist(True, args.n), mnist(False, args.n)

    fid, t, stats = ours(a, b)
    print(f"ours        : FID {fid:.4f}  {t:7.1f} s  (MNIST train[:{args.n}] vs test[:{args.n}])")
    if not args.skip_reference:
        with tempfile.TemporaryDirectory() as tmp:
            ref, t_ref = reference(a, b, Path(tmp))
        print(f"pytorch-fid : FID {ref:.4f}  {t_ref:7.1f} s  (PNG folders; relative difference "
              f"{abs(fid - ref) / ref:.1e})")

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
