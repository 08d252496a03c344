"""GPU fast paths (config section ``speed``): what each does, when ``auto`` turns it on, and how it
is applied, in one place.

Each ``speed.*`` switch is ``auto``, ``true`` or ``false``; ``auto`` means on when the run uses CUDA
(and, for ``compile``, not under DeepSpeed, whose engines wrap the modules themselves). On CPU
``auto`` leaves everything as PyTorch's defaults, so CPU runs are bit-for-bit what they were; forcing
a switch on CPU is safe: the CUDA-only ones (TF32, cuDNN benchmark) do nothing there.

The trainer calls ``apply(cfg.speed, models, device, deepspeed)`` once, right after building the
plain models and before the engine prepares them (so DDP wraps the already converted / compiled
modules and the optimizers see the final parameters), then builds Adam with ``adam_kwargs``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from gen_dist.config import SPEED_SWITCHES as SWITCHES



@dataclass(frozen=True)
class FastPaths:
    """The switches resolved for this run (True = on)."""

    channels_last: bool = False
    tf32: bool = False
    cudnn_benchmark: bool = False
    fused_adam: bool = False
    compile: bool = False
    device_noise: bool = False

    def on(self) -> list[str]:
        return [name for name in SWITCHES if getattr(self, name)]


def resolve(speed, device: torch.device, deepspeed: bool = False) -> FastPaths:
    """``auto`` -> on for CUDA (compile: and not DeepSpeed); ``true`` / ``false`` as written."""
    cuda = torch.device(device).type == "cuda"
    auto_on = {name: cuda for name in SWITCHES}
    auto_on["compile"] = cuda and not deepspeed
    return FastPaths(**{name: auto_on[name] if getattr(speed, name) == "auto" else getattr(speed, name) == "true"
                        for name in SWITCHES})


def apply(speed, models, device: torch.device, deepspeed: bool = False) -> FastPaths:
    """Process-wide flags, then the plain models (``models.generator`` / ``models.discriminator``),
    converted in place. Returns the resolved switches (for ``adam_kwargs`` and the noise)."""
    fast = resolve(speed, device, deepspeed)
    if torch.cuda.is_available():  # process-wide; meaningless (and untouched) without CUDA
        # TF32: fp32 matmuls and convolutions on tensor cores (10-bit mantissa inputs, fp32 accumulate)
        torch.backends.cuda.matmul.allow_tf32 = fast.tf32
        torch.backends.cudnn.allow_tf32 = fast.tf32
        # the batch shape is fixed (every rank yields full batches), so the autotuned kernel is reused
        torch.backends.cudnn.benchmark = fast.cudnn_benchmark
    for model in (models.generator, models.discriminator):
        if model is None:
            continue
        if fast.channels_last:  # NHWC conv weights: tensor-core kernels without layout transposes
            model.to(memory_format=torch.channels_last)
        if fast.compile:
            compile_module(model, speed.compile_mode, speed.compile_backend)
    return fast


def compile_module(model: nn.Module, mode: str = "default", backend: str = "inductor") -> bool:
    """``nn.Module.compile`` in place (state_dict keys, deepcopy and DDP wrapping stay as they were).

    Compilation happens at the first call; with ``suppress_errors`` a graph that fails to compile runs
    eagerly and dynamo logs a warning, so a broken compiler costs speed, never the run. Returns
    whether compilation was set up."""
    try:
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True
        model.compile(mode=None if mode == "default" else mode, backend=backend)
        return True
    except Exception as e:  # e.g. an unknown backend, or a platform dynamo does not support
        warnings.warn(f"gen_dist: torch.compile of {type(model).__name__} failed ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); training it eagerly", stacklevel=2)
        return False


def adam_kwargs(fast: FastPaths | None, device: torch.device | str = "cpu") -> dict:
    """``fused=True`` for torch.optim.Adam when asked and supported on the training device, else
    PyTorch's default (foreach on CUDA, a loop on CPU). One multi-tensor kernel instead of several
    per parameter: the optimizer step stops being launch-bound on small models. ``device`` is where
    training runs (the parameters are still on the CPU when the optimizer is built)."""
    if fast is None or not fast.fused_adam:
        return {}
    try:  # a fused kernel exists for this device and dtype (CUDA; CPU since torch 2.4)
        torch.optim.Adam([torch.zeros(1, device=device, requires_grad=True)], fused=True)
        return {"fused": True}
    except (RuntimeError, ValueError) as e:
        warnings.warn(f"gen_dist: fused Adam is not available on {device} ({e}); using foreach", stacklevel=2)
        return {"foreach": True}
