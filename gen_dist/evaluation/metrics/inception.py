"""The Inception networks behind the metrics, loaded offline-first, and the images they are fed.

FID, KID and precision/recall use pytorch-fid's own `InceptionV3` (pool3, 2048-d) fed exactly as its
PNG-folder pipeline feeds it: uint8 pixels / 255, grey copied to R, G, B, bilinear resize to 299 and
scaling to [-1, 1] inside the network. Our features therefore equal `python -m pytorch_fid` on the
same images saved as PNG. `load_inception(..., fast=True)` (eval.fast_inception, the default in
evaluation) gives the same network rebuilt for speed, `FastInception`: features equal to ~2e-5 (of
0..~6), FID to ~5e-7 relative; the forward 2.6x faster on one CPU core (docs/performance.md, "FID speed").

Inception Score needs a classifier. The published IS network is the same 2015 TF Inception, whose
softmax layer pytorch-fid's weights file carries as `fc` (1008 classes) although its `InceptionV3`
never uses it; we attach it as `model.fc` and note `model.fc_is_zero` (a copy converted without the
classifier has it all zeros, and IS from it would be exactly 1). `load_imagenet_classifier` is the
fallback: torchvision's ImageNet Inception-v3, if the user supplies its weights.
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Optional
from unittest import mock

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import pytorch_fid.inception as pfi

from gen_dist.errors import UserError

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FEATURE_DIM = 2048
FAST_CHUNK = 8  # images per forward inside FastInception on CPU (bench/inception_forward.py: 8 > 16 > 32 > 64)


class MetricsError(UserError, ValueError):
    """A metric that cannot be computed as asked: the message names the problem and the fix."""


def _read_state_dict(path: str | os.PathLike, key: str) -> dict:
    if not Path(path).is_file():
        raise MetricsError(f"{key}={path}: no such file; give the path of a local copy")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip or weights_only errors all mean "not a state dict"
        raise MetricsError(f"{key}={path} is not a readable state dict ({type(e).__name__})") from e
    if not isinstance(sd, dict):
        raise MetricsError(f"{key}={path} holds a {type(sd).__name__}, not a state dict")
    return sd


def _first_problem(e: RuntimeError, width: int = 120) -> str:
    """The first specific line of load_state_dict's multi-line error, shortened for a one-line message."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    line = lines[1] if len(lines) > 1 else (lines[0] if lines else type(e).__name__)
    return line if len(line) <= width else line[: width - 3] + "..."


def _fid_state_dict(weights: Optional[str]) -> tuple[dict, str]:
    """The configured file (it must exist), else $GEN_DIST_INCEPTION_WEIGHTS when that file exists (a
    site's shared copy: a hint, so the same command also works where it is absent), else the torch hub
    cache pytorch-fid itself uses, else pytorch-fid's download."""
    if weights:
        return _read_state_dict(weights, "eval.inception_weights"), str(weights)
    hint = os.environ.get("GEN_DIST_INCEPTION_WEIGHTS")
    if hint and Path(hint).is_file():
        return _read_state_dict(hint, "GEN_DIST_INCEPTION_WEIGHTS"), hint
    cached = Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE
    if cached.is_file():
        return _read_state_dict(cached, "torch hub cache"), str(cached)
    try:
        sd = torch.hub.load_state_dict_from_url(pfi.FID_WEIGHTS_URL, progress=False,
                                                map_location="cpu", weights_only=True)
    except Exception as e:  # offline: URLError, socket errors, HTTP errors
        raise MetricsError(
            f"FID Inception weights are not cached and could not be downloaded ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); set eval.inception_weights to a local "
            f"{FID_WEIGHTS_FILE}") from e
    return sd, pfi.FID_WEIGHTS_URL


def load_inception(weights: Optional[str] = None, device: torch.device | str = "cpu", fast: bool = False,
                   chunk: Optional[int] = None, bf16: bool = False) -> nn.Module:
    """pytorch-fid's `InceptionV3([3])` in eval mode, plus `fc` (its classifier, for IS) and
    `fc_is_zero`, `weights_source`, `detector_id` attributes. `fast=True`: the same network as a
    `FastInception` (same features up to float rounding, see there), `chunk` images per forward
    (default: FAST_CHUNK on CPU, the whole batch elsewhere: GPUs want large batches)."""
    sd, source = _fid_state_dict(weights)
    # pytorch-fid takes no weights path: it always asks torch hub. Hand it our state dict instead,
    # so the architecture (its patched FID blocks) stays exactly pytorch-fid's.
    try:
        with mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: sd):
            model = pfi.InceptionV3([pfi.InceptionV3.DEFAULT_BLOCK_INDEX])
    except RuntimeError as e:  # strict load_state_dict: missing/unexpected keys or shapes
        raise MetricsError(
            f"{source} is not pytorch-fid's FID Inception state dict ({_first_problem(e)}); "
            f"set eval.inception_weights to {FID_WEIGHTS_FILE}") from e
    fc = nn.Linear(FEATURE_DIM, sd["fc.weight"].shape[0])
    fc.load_state_dict({"weight": sd["fc.weight"], "bias": sd["fc.bias"]})
    fc.requires_grad_(False)
    model.fc = fc  # a registered child, moved with .to(); InceptionV3.forward ignores it
    model.fc_is_zero = not bool(fc.weight.any())
    model.weights_source = source
    # the reference first convolution's weights identify the detector (the real-statistics cache key)
    model.detector_id = hashlib.sha1(sd["Conv2d_1a_3x3.conv.weight"].numpy().tobytes()).hexdigest()[:12]
    model.eval()  # folded on the CPU (in float64), then moved
    if chunk is None:
        chunk = FAST_CHUNK if torch.device(device).type == "cpu" else 0
    return (FastInception(model, chunk=chunk, bf16=bf16) if fast else model).to(device)


def to_inception_input(images: torch.Tensor, expand: bool = True) -> torch.Tensor:
    """[B, C, H, W] images (uint8, or floats in [0, 1]; C = 1 or 3) -> 3-channel float32 in [0, 1]
    quantised as a PNG would be: the same pixels pytorch-fid reads from PNG files. `expand=False`
    leaves grey images with their one channel (for `FastInception`)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise MetricsError(f"images must be [B, 1 or 3, H, W], got {list(images.shape)}")
    if images.dtype != torch.uint8:
        # Round as torchvision.utils.save_image does, so saved-then-read samples match too.
        images = images.float().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
    x = images.to(torch.float32).div(255)  # ToTensor's arithmetic, bit for bit
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 and expand else x  # PIL convert("RGB") copies L


def extract_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Pool3 features [B, 2048] float32, on the model's device."""
    device = next(model.parameters()).device
    if isinstance(model, FastInception):
        x = to_inception_input(images.to(device), expand=False)
        if x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2]):
            x = x[:, :1]  # grey stored as RGB (e.g. PNGs read with convert("RGB")): one channel suffices
        with torch.inference_mode():
            feats = model(x)
        return feats.clone()  # a normal tensor: inference tensors refuse in-place use outside the mode
    with torch.no_grad():
        x = to_inception_input(images.to(device))
        return model(x)[0].flatten(1)  # resize to 299 and [-1, 1] scaling happen inside


class _ConvReLU(nn.Module):
    """torchvision's BasicConv2d (conv without bias, BatchNorm(eps=0.001), ReLU) with the BatchNorm
    folded into the convolution: conv(x, W * s) + (beta - mean * s), s = gamma / sqrt(var + eps)."""

    def __init__(self, basic: nn.Module):
        super().__init__()
        conv, bn = basic.conv, basic.bn
        s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, conv.groups, bias=True, device=conv.weight.device)
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight.double() * s[:, None, None, None])
            self.conv.bias.copy_(bn.bias.double() - bn.running_mean.double() * s)

    def forward(self, x):
        return conv_relu(self.conv, x)


def _cpu_fusable(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


def conv_relu(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """relu(conv(x)). On CPU in float32 as one oneDNN primitive with the ReLU as a post-op: the
    tensor is written once instead of twice, and the 1x1 convolutions (half of Inception's), which
    PyTorch's own dispatch sends to its im2col + GEMM path, run in oneDNN too: 1.06x the forward
    (bench/inception_forward.py, docs/performance.md). The op is the one torch.compile's CPU backend
    emits; where it is missing (other builds), the plain two ops."""
    global _POINTWISE
    if FUSED_CONV_RELU and _POINTWISE is not None and _cpu_fusable(x):
        try:
            return _POINTWISE(x, conv.weight, conv.bias, list(conv.padding), list(conv.stride),
                              list(conv.dilation), conv.groups, "relu", [], "")
        except RuntimeError:  # a build whose oneDNN lacks it: the plain ops from now on
            _POINTWISE = None
    return F.relu(conv(x), inplace=True)


# torch.ops.mkldnn._convolution_pointwise(input, weight, bias, padding, stride, dilation, groups, attr,
# scalars, algorithm): present in every PyTorch built with oneDNN (all x86 wheels)
_POINTWISE = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None) \
    if torch.backends.mkldnn.is_available() else None
FUSED_CONV_RELU = True  # bench/inception_forward.py turns it off to measure its gain


def _fold_batchnorms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if type(child).__name__ == "BasicConv2d" and hasattr(child, "conv") and hasattr(child, "bn"):
            setattr(module, name, _ConvReLU(child))
        else:
            _fold_batchnorms(child)


class FastInception(nn.Module):
    """pytorch-fid's InceptionV3 pool3 network rebuilt for inference speed, same features up to float
    rounding (tests/test_fast_inception.py):

    - every BatchNorm folded into its convolution (inference statistics; exact algebra);
    - the [-1, 1] scaling folded into the first convolution (it has no padding, so exact algebra):
      conv(2x - 1, W) + b = conv(x, 2W) + (b - sum W);
    - grey input ([B, 1, H, W]) goes through a first convolution with its three input channels' weights
      summed: the three equal channels pytorch-fid feeds give the same sums;
    - channels_last tensors and weights (oneDNN's preferred layout on CPU, tensor cores' on GPU), the
      resize to 299 done once per chunk straight into that layout, `chunk` images per forward (0: all);
    - optional bf16 autocast (off by default: see docs/performance.md, "FID speed").

    Input: floats in [0, 1] ([B, 1 or 3, H, W]), as `to_inception_input(..., expand=False)` gives.
    Output: pool3 features [B, 2048] float32. Use under torch.inference_mode (extract_features does).
    """

    def __init__(self, reference: nn.Module, chunk: int = FAST_CHUNK, bf16: bool = False):
        super().__init__()
        blocks = copy.deepcopy(reference.blocks)
        _fold_batchnorms(blocks)
        first = blocks[0][0].conv  # Conv2d_1a_3x3: 3 -> 32, 3x3, stride 2, no padding
        assert first.padding == (0, 0) and first.in_channels == 3
        w, b = first.weight.detach().double(), first.bias.detach().double()
        self.rgb_first = nn.Conv2d(3, first.out_channels, first.kernel_size, first.stride, bias=True,
                                   device=w.device)
        self.grey_first = nn.Conv2d(1, first.out_channels, first.kernel_size, first.stride, bias=True,
                                    device=w.device)
        with torch.no_grad():
            self.rgb_first.weight.copy_(2 * w)
            self.grey_first.weight.copy_(2 * w.sum(1, keepdim=True))
            self.rgb_first.bias.copy_(b - w.sum((1, 2, 3)))
            self.grey_first.bias.copy_(b - w.sum((1, 2, 3)))
        self.body = nn.Sequential(*list(blocks[0])[1:], *blocks[1:])  # ends with the 1x1 average pool
        self.fc = reference.fc
        self.fc_is_zero, self.weights_source = reference.fc_is_zero, reference.weights_source
        self.detector_id = reference.detector_id
        self.chunk, self.bf16 = chunk, bf16
        self.channels_last = True  # bench/inception_forward.py turns it off to measure its gain
        self.requires_grad_(False)
        self.eval()
        self.to(memory_format=torch.channels_last)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.contiguous(memory_format=layout)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = x.contiguous(memory_format=layout)  # a no-op unless interpolate changed the layout
        x = conv_relu(self.grey_first if x.shape[1] == 1 else self.rgb_first, x)
        if self.bf16:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                x = self.body(x)
            x = x.float()
        else:
            x = self.body(x)
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise MetricsError(f"FastInception takes [B, 1 or 3, H, W] images, got {list(x.shape)}")
        x = x.to(torch.float32)
        if self.chunk <= 0 or len(x) <= self.chunk:
            return self._forward(x)
        return torch.cat([self._forward(part) for part in x.split(self.chunk)])


def load_imagenet_classifier(weights: str, device: torch.device | str = "cpu") -> nn.Module:
    """torchvision's ImageNet Inception-v3 (e.g. inception_v3_google-0cc3c7bd.pth) for IS only.

    Its scores are not comparable with published IS (a different network and 1000 classes): compare
    them only between runs that use the same file.
    """
    sd = _read_state_dict(weights, "IS classifier weights")
    aux = any(k.startswith("AuxLogits.") for k in sd)
    # transform_input=False: we feed [-1, 1] directly, which is what these TF-ported weights expect.
    net = torchvision.models.inception_v3(weights=None, aux_logits=aux, init_weights=False,
                                          transform_input=False)
    try:
        net.load_state_dict(sd)
    except RuntimeError as e:
        raise MetricsError(f"{weights} is not torchvision's inception_v3 state dict "
                           f"({_first_problem(e)})") from e
    net.requires_grad_(False)
    net.fc_is_zero = not bool(net.fc.weight.any())
    net.weights_source = str(weights)
    return net.to(device).eval()


def require_classifier(model: nn.Module) -> None:
    """Refuse Inception Score from a network whose classifier weights are all zeros: every image
    would get the uniform distribution and IS would be exactly 1, whatever the samples."""
    if getattr(model, "fc_is_zero", False):
        raise MetricsError(
            f"Inception Score is impossible with {getattr(model, 'weights_source', 'these weights')}: "
            f"its classifier layer fc is all zeros (a copy converted without it); use pytorch-fid's "
            f"original {FID_WEIGHTS_FILE} as eval.inception_weights, or torchvision's ImageNet "
            f"inception_v3 weights via load_imagenet_classifier, or leave IS out")


@torch.no_grad()
def imagenet_logits(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits [B, 1000] of `load_imagenet_classifier`'s network, fed like the FID network."""
    require_classifier(net)
    x = to_inception_input(images.to(next(net.parameters()).device))
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return net(2 * x - 1)
