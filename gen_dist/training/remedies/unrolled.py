"""Unrolled GAN (Metz et al. 2017): G is updated against the discriminator D would become after k more
of its own optimizer steps, so G cannot gain by moving to where D is weak now but will not be soon.

The k steps run on a functional copy of D (``torch.func.functional_call`` with cloned parameters and
buffers), continuing D's Adam state (moments and step count, read from D's optimizer when it holds
them) with the configured lr, betas and weight decay. D's own parameters, buffers, gradients and
optimizer are never touched, and nothing here goes through DDP: the copy is the plain module's.

This is the cheap variant: G's gradient goes through the unrolled D's *outputs* but not back through
the k update steps (the unrolled parameters are constants for G). Metz et al.'s full variant also
differentiates the updates with respect to G's parameters, which needs k double-backward passes
through D and several forwards of the DDP-wrapped G before one backward (which DDP's reducer does not
support without extra machinery); the cheap variant costs k D forward/backward passes per G
micro-batch and already gives G the gradient of the D it is about to face.

k = 0 is the plain update: the caller then uses D itself (no copy).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from torch.func import functional_call

from gen_dist.errors import UserError


def check_unrollable(D: nn.Module) -> None:
    """ZeRO-3 partitions D's parameters across ranks: the copy would hold only this rank's slices."""
    if any(hasattr(p, "ds_tensor") for p in D.parameters()):
        raise UserError("remedies.unrolled_steps needs D's whole parameters on every rank, which ZeRO-3 "
                        "partitions: use ZeRO-1/2 or DDP, or set remedies.unrolled_steps=0")


class UnrolledDiscriminator:
    def __init__(self, D: nn.Module, optimizer, steps: int, lr: float, betas, weight_decay: float = 0.0,
                 eps: float = 1e-8):
        self.D, self.optimizer, self.steps = D, optimizer, steps
        self.lr, self.betas, self.weight_decay, self.eps = lr, tuple(betas), weight_decay, eps

    def _adam_state(self, p: torch.Tensor):
        """D's Adam moments for p (zeros when its optimizer holds none, e.g. a DeepSpeed engine's
        flat partitions): the unrolled steps continue where D's optimizer is."""
        inner = getattr(self.optimizer, "optimizer", self.optimizer)  # Accelerate's wrapper
        state = getattr(inner, "state", {}).get(p, {})
        if "exp_avg" in state:
            return state["exp_avg"].detach().clone(), state["exp_avg_sq"].detach().clone(), float(state["step"])
        return torch.zeros_like(p), torch.zeros_like(p), 0.0

    def unroll(self, d_loss_at: Callable[[int, Callable], torch.Tensor]) -> Callable:
        """Runs k Adam steps on a copy of D; ``d_loss_at(j, call)`` is D's loss at unrolled step j with
        ``call(*args, **kwargs)`` evaluating the copy. Returns a callable that evaluates the unrolled D."""
        named = list(self.D.named_parameters())
        params = {n: p.detach().clone() for n, p in named}
        buffers = {n: b.detach().clone() for n, b in self.D.named_buffers()}  # BN / spectral-norm state
        moments = {n: self._adam_state(p) for n, p in named}
        b1, b2 = self.betas
        for j in range(self.steps):
            leaves = {n: p.requires_grad_(True) for n, p in params.items()}
            loss = d_loss_at(j, self._caller({**leaves, **buffers}))
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            with torch.no_grad():
                new = {}
                for (n, p), g in zip(leaves.items(), grads):
                    m, v, t = moments[n]
                    g = torch.zeros_like(p) if g is None else g
                    if self.weight_decay:
                        g = g + self.weight_decay * p
                    m, v, t = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g, t + 1
                    moments[n] = (m, v, t)
                    step = self.lr / (1 - b1 ** t)
                    denom = (v / (1 - b2 ** t)).sqrt() + self.eps
                    new[n] = p.detach() - step * m / denom
            params = new
        return self._caller({**params, **buffers})

    def _caller(self, tensors: dict) -> Callable:
        """D's forward with these parameters and buffers in place of its own."""
        def call(*args, **kwargs):
            return functional_call(self.D, tensors, args, kwargs)

        return call
