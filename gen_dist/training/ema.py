"""EMA of the generator / VAE weights, optionally with a warm-up.

A fixed decay of 0.999 averages over ~1,000 steps, so in a run of a few thousand steps the average is
still dominated by the first, untrained weights (measured: a 0.999 EMA made a 2-epoch VAE-GAN's samples
worse, not better). The warm-up uses decay_n = min(decay, (1 + n) / (10 + n)) at the n-th update
(TensorFlow's ExponentialMovingAverage with num_updates): the average forgets the early weights quickly
and reaches the full decay after ~10 / (1 - decay) steps. n is AveragedModel's own n_averaged buffer,
saved with the EMA's state, so a resumed run continues the same schedule."""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def warmup_decay(decay: float, n: int) -> float:
    """The decay used at the n-th update (n = 1 is the first average after the copy)."""
    return min(decay, (1.0 + n) / (10.0 + n))


def make_ema(model: nn.Module, decay: float, warmup: bool) -> AveragedModel:
    @torch.no_grad()
    def update(ema_params, model_params, n_averaged) -> None:
        d = warmup_decay(decay, int(n_averaged)) if warmup else decay
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(ema_params, model_params, 1.0 - d)
        else:  # integer buffers (BatchNorm's num_batches_tracked) follow the model
            for e, m in zip(ema_params, model_params):
                e.copy_(m)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)
