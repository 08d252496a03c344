"""`FastInception` (eval.fast_inception, the default) against pytorch-fid's network as it is: the
same pool3 features on real MNIST, grey fed as 1 channel or as 3 equal ones, and on colour images;
BatchNorm folding alone; features independent of how images are batched; --compare's statistics
cache. FID equal to pytorch-fid's with the fast path: tests/test_fid_pytorch_fid.py.

Tolerance: features are 0..~5; the fast path changes only float rounding (folded BatchNorm, the
[-1, 1] scaling folded into the first convolution, a summed first-convolution kernel for grey,
channels_last kernels, convolution and ReLU fused in oneDNN), measured at ~1.5e-5 max abs on 64 MNIST images; we allow 1e-4.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import torchvision.models.inception as tvi
from PIL import Image

from gen_dist.evaluation.metrics import extract_features, load_inception
from gen_dist.evaluation.metrics.inception import FastInception, _ConvReLU

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = os.environ.get("GEN_DIST_INCEPTION_WEIGHTS",
                         str(REPO.parent / "shared" / "weights" / "pt_inception-2015-12-05-6726825d.pth"))
TOL = 1e-4
needs_weights = pytest.mark.skipif(not Path(WEIGHTS).is_file(), reason=f"no FID Inception weights at {WEIGHTS}")


@pytest.fixture(scope="module")
def models():
    ref = load_inception(WEIGHTS)
    return ref, FastInception(ref)


def test_batchnorm_folding_is_exact_algebra():
    torch.manual_seed(0)
    basic = tvi.BasicConv2d(5, 7, kernel_size=3, padding=1)
    bn = basic.bn
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.1, 2)
    bn.weight.data.normal_()
    bn.bias.data.normal_()
    basic.eval()
    x = torch.randn(2, 5, 9, 9)
    torch.testing.assert_close(_ConvReLU(basic)(x), basic(x), rtol=1e-5, atol=1e-5)


@needs_weights
def test_fast_features_equal_reference_on_mnist(models, data_root):
    ref, fast = models
    grey = torchvision.datasets.MNIST(data_root, train=False, download=False).data[:64, None]  # uint8
    want = extract_features(ref, grey)
    got = extract_features(fast, grey)  # 1-channel first convolution
    diff = (got - want).abs().max().item()
    print(f"FastInception vs reference, 64 MNIST test images: max abs feature difference {diff:.2e} "
          f"(features up to {want.abs().max().item():.2f})")
    assert got.shape == want.shape == (64, 2048) and got.dtype == torch.float32
    assert diff < TOL
    # an image's features hardly depend on its batch (oneDNN may pick other kernels for other batch
    # sizes; ~2e-6 seen): 1 process and 2 give the same numbers
    few = extract_features(fast, grey[:5])
    torch.testing.assert_close(few, got[:5], rtol=0, atol=1e-5)
    # grey stored as RGB (PNGs read with convert("RGB")) takes the 1-channel route too, and floats in
    # [0, 1], as generators give them, are quantised like uint8
    assert torch.equal(extract_features(fast, grey[:5].expand(-1, 3, -1, -1)), few)
    assert torch.equal(extract_features(fast, grey[:5].float() / 255), few)

@needs_weights
def test_every_convolution_runs_fused_in_onednn(models, data_root, monkeypatch):
    """On CPU each convolution and its ReLU run as one oneDNN primitive: none falls back to PyTorch's
    im2col path (where its dispatch sends 1x1 convolutions); the features equal the two-op path's."""
    from torch.profiler import ProfilerActivity, profile

    from gen_dist.evaluation.metrics import inception

    _, fast = models
    grey = torchvision.datasets.MNIST(data_root, train=False, download=False).data[:2, None]
    assert inception._POINTWISE is not None, "this PyTorch build has no oneDNN fused convolution"
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fused = extract_features(fast, grey)
    ops = {e.key: e.count for e in prof.key_averages()}
    assert ops.get("mkldnn::_convolution_pointwise") == 94, ops  # Inception's 94 convolutions
    assert "aten::_slow_conv2d_forward" not in ops and "aten::mkldnn_convolution" not in ops
    monkeypatch.setattr(inception, "FUSED_CONV_RELU", False)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        plain = extract_features(fast, grey)
    assert "mkldnn::_convolution_pointwise" not in {e.key for e in prof.key_averages()}
    diff = (fused - plain).abs().max().item()
    print(f"fused conv + ReLU vs two ops: max abs feature difference {diff:.2e}")
    assert diff < TOL


@needs_weights
def test_fast_features_equal_reference_on_colour(models):
    ref, fast = models
    rgb = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    diff = (extract_features(fast, rgb) - extract_features(ref, rgb)).abs().max().item()
    print(f"FastInception vs reference, 6 random colour images: max abs feature difference {diff:.2e}")
    assert diff < TOL


@needs_weights
def test_fast_model_keeps_the_detector_identity_and_classifier(models):
    ref, fast = models
    assert fast.detector_id == ref.detector_id  # the real-statistics cache is shared by both paths
    assert fast.fc is ref.fc and fast.fc_is_zero == ref.fc_is_zero and fast.weights_source == ref.weights_source
    assert isinstance(load_inception(WEIGHTS, fast=True), FastInception)


@needs_weights
def test_compare_caches_each_set(tmp_path, monkeypatch, data_root):
    """launch/evaluate.py --compare: a second run reads both sets' statistics from eval.stats_cache."""
    from gen_dist.evaluation import evaluator as ev
    from gen_dist.evaluation.offline import compare_image_sets

    images = torchvision.datasets.MNIST(data_root, train=False, download=False).data[:12].numpy()
    dirs = []
    for name, part in (("a", images[:4]), ("b", images[4:])):
        (tmp_path / name).mkdir()
        for i, img in enumerate(part):
            Image.fromarray(img, mode="L").save(tmp_path / name / f"{i}.png")
        dirs.append(str(tmp_path / name))
    overrides = [f"eval.inception_weights={WEIGHTS}", f"eval.stats_cache={tmp_path / 'cache'}", "eval.kid_subset_size=3",
                 "eval.kid_subsets=2"]
    first = compare_image_sets(*dirs, overrides)
    assert len(list((tmp_path / "cache").glob("set_*.npz"))) == 2

    def no_features(*a, **k):
        raise AssertionError("features computed although cached")

    monkeypatch.setattr(ev.Evaluator, "features", no_features)
    again = compare_image_sets(*dirs, overrides)
    for key in ("fid", "kid", "precision", "recall"):
        assert again[key] == pytest.approx(first[key], rel=1e-12), key
    assert np.isfinite(first["fid"]) and first["fid"] > 0
