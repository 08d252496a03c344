"""The EMA of G by hand: the fixed decay and the warm-up schedule, and its state surviving a save."""

from __future__ import annotations

import torch
from torch import nn

from gen_dist.training.ema import make_ema, warmup_decay


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def _run(warmup: bool, steps: int, ema=None, model=None):
    model = model or _model(0)
    ema = ema or make_ema(model, 0.99, warmup)
    expected = None
    for step in range(steps):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * (step + 1))
        n = int(ema.n_averaged)
        w = model[0].weight.detach().clone()
        if n == 0:
            expected = w  # the first update copies
        else:
            d = min(0.99, (1 + n) / (10 + n)) if warmup else 0.99
            expected = d * expected + (1 - d) * w
        ema.update_parameters(model)
    return ema, model, expected


def test_fixed_decay_and_warmup_by_hand():
    for warmup in (False, True):
        ema, _, expected = _run(warmup, 6)
        assert torch.allclose(ema.module[0].weight, expected, atol=1e-6), warmup
    assert warmup_decay(0.999, 1) == 2 / 11 and warmup_decay(0.999, 10**6) == 0.999
    fixed, _, _ = _run(False, 6)
    warm, model, _ = _run(True, 6)
    # the warm-up follows the moving weights much more closely early on
    gap = lambda e: (e.module[0].weight - model[0].weight).abs().mean()  # noqa: E731
    assert gap(warm) < 0.5 * gap(fixed)


def test_warmup_schedule_continues_after_a_state_dict_round_trip():
    straight, _, _ = _run(True, 8)
    first, model, _ = _run(True, 4)
    reloaded = make_ema(_model(1), 0.99, True)
    reloaded.load_state_dict(first.state_dict())  # n_averaged travels with the state (a resume)
    assert int(reloaded.n_averaged) == 4
    with torch.no_grad():
        for step in range(4, 8):
            for p in model.parameters():
                p.add_(0.1 * (step + 1))
            reloaded.update_parameters(model)
    for a, b in zip(straight.module.state_dict().values(), reloaded.module.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
