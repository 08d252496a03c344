"""The FID Inception forward, step by step: pytorch-fid's network as it is vs `FastInception`.

    OMP_NUM_THREADS=1 python bench/inception_forward.py            # 64 MNIST test images, 3 rounds
    OMP_NUM_THREADS=1 python bench/inception_forward.py --n 64 --rounds 3 --fid 200

Each variant adds one step to the one above it. All run in one process on the same uint8 images
(MNIST test[:n], grey), taking turns in every round (so a busy machine slows them alike); the table
gives the median images/s over the rounds, the ratio to the reference forward's median, and the
largest absolute difference of the pool3 features from the reference's (features are 0..~5).
--fid N: FID of MNIST train[:N] vs test[:N] from the reference, the fast fp32 and the fast bf16
features, and their relative differences (pytorch-fid's FID is the reference's, tests/test_fid_pytorch_fid.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import torchvision

from gen_dist.evaluation.metrics import FeatureStats, extract_features, frechet_distance, load_inception
from gen_dist.evaluation.metrics import inception
from gen_dist.evaluation.metrics.inception import FastInception, to_inception_input

REPO = Path(__file__).resolve().parents[1]
DATA = os.environ.get("GEN_DIST_DATA", str(REPO.parent / "shared" / "data"))
WEIGHTS = os.environ.get("GEN_DIST_INCEPTION_WEIGHTS",
                         str(REPO.parent / "shared" / "weights" / "pt_inception-2015-12-05-6726825d.pth"))


def mnist(train: bool, n: int) -> torch.Tensor:
    return torchvision.datasets.MNIST(DATA, train=train, download=False).data[:n, None]  # uint8 [n, 1, 28, 28]


def reference_forward(model, batch: int, grad_mode):
    def run(images):
        out = []
        for part in images.split(batch):
            with grad_mode():
                out.append(model(to_inception_input(part))[0].flatten(1))
        return torch.cat(out)
    return run


def fast_forward(model: FastInception, grey: bool, fused: bool = False):
    def run(images):
        inception.FUSED_CONV_RELU = fused  # conv + ReLU as one oneDNN primitive (the default) or two ops
        x = to_inception_input(images, expand=not grey)
        with torch.inference_mode():
            return model(x).clone()
    return run


def variants(ref):
    def fast(chunk=32, channels_last=True, bf16=False):  # built as load_inception(fast=True) builds it
        m = FastInception(ref, chunk=chunk, bf16=bf16)
        if not channels_last:
            m.channels_last = False
            m.to(memory_format=torch.contiguous_format)
        return m

    return [
        ("reference (pytorch-fid forward, no_grad, batch 50)", reference_forward(ref, 50, torch.no_grad)),
        ("+ inference_mode", reference_forward(ref, 50, torch.inference_mode)),
        ("+ BatchNorm and [-1,1] folded (NCHW, 3 ch, chunk 32)", fast_forward(fast(channels_last=False), False)),
        ("+ channels_last (3 ch, chunk 32)", fast_forward(fast(), False)),
        ("+ grey: first conv on 1 ch (chunk 32)", fast_forward(fast(), True)),
        ("+ chunk 8", fast_forward(fast(chunk=8), True)),
        ("+ conv and ReLU fused in oneDNN (chunk 8) = the default on CPU", fast_forward(fast(chunk=8), True, True)),
        ("  same, chunk 4", fast_forward(fast(chunk=4), True, True)),
        ("  same, chunk 16", fast_forward(fast(chunk=16), True, True)),
        ("  same, chunk 32", fast_forward(fast(chunk=32), True, True)),
        ("  + bf16 autocast (chunk 8; off by default)", fast_forward(fast(chunk=8, bf16=True), True, True)),
    ]


def fid_check(ref, n: int) -> None:
    a, b = mnist(True, n), mnist(False, n)
    inception.FUSED_CONV_RELU = True  # the default
    models = [("reference", ref), ("fast fp32", load_inception(WEIGHTS, fast=True)),
              ("fast bf16", load_inception(WEIGHTS, fast=True, bf16=True))]
    fids = {}
    for name, m in models:
        stats = []
        for images in (a, b):
            s = FeatureStats()
            for part in images.split(50):
                s.update(extract_features(m, part))
            stats.append(s.mean_cov())
        fids[name] = frechet_distance(*stats[0], *stats[1])
    base = fids["reference"]
    for name, v in fids.items():
        print(f"FID train[:{n}] vs test[:{n}], {name:<10}: {v:.6f}  relative difference {abs(v - base) / base:.1e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64, help="images per call (default 64)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each variant once per round (default 3)")
    p.add_argument("--fid", type=int, default=0, help="also compare FIDs on N vs N images (default off)")
    args = p.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}, mkldnn {torch.backends.mkldnn.is_available()}; "
          f"MNIST test[:{args.n}], {args.rounds} rounds", flush=True)
    images = mnist(False, args.n)
    ref = load_inception(WEIGHTS)
    runs = variants(ref)
    for _, run in runs:  # warm-up: oneDNN primitives, allocator
        run(images[:8])
    times = {name: [] for name, _ in runs}
    feats = {}
    for r in range(args.rounds):
        for name, run in runs:
            t0 = time.perf_counter()
            feats[name] = run(images)
            times[name].append(time.perf_counter() - t0)
        print(f"  round {r + 1}/{args.rounds} done", flush=True)
    base_name = runs[0][0]
    base = statistics.median(times[base_name])
    print(f"\n| variant | images/s | ratio to reference | max abs feature difference |\n|---|---|---|---|")
    for name, _ in runs:
        t = statistics.median(times[name])
        diff = (feats[name].float() - feats[base_name]).abs().max().item()
        print(f"| {name.strip()} | {args.n / t:.2f} | {base / t:.2f}x | {diff:.1e} |")
    if args.fid:
        fid_check(ref, args.fid)


if __name__ == "__main__":
    main()
