"""beta-VAE schedules for the KL term of a VAE (and the VAE-GAN's encoder+decoder loss).

    fixed     rec + beta * KL                                     (loss.beta; the default)
    warm-up   rec + beta * min(1, s / N) * KL                     (loss.kl_warmup_steps = N)
    capacity  rec + gamma * |KL - C|,  C = C_max * min(1, s / N)  (Burgess et al. 2018:
              loss.capacity_gamma, loss.capacity_max, loss.capacity_steps = N)

s is the step being taken, counted from 1 as metrics.jsonl numbers it, so the row of step s logs the
value used in step s (``vae/beta``, ``vae/capacity``). C is in nats per image; with
``loss.recon_scale=mean`` the KL is per pixel and C is divided by the same pixel count.
|KL - C| is taken on the micro-batch's mean KL (Burgess et al.'s batch estimate), on each rank: under
DDP the sign of the gradient is decided per rank's micro-batch. The fixed and warm-up forms are
per-image sums averaged over the batch, so they do not depend on how ranks split it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gen_dist.config import LossConfig


def ramp(step: int | None, steps: int) -> float:
    """0 -> 1 linearly over `steps` steps (1 when the ramp is off or no step is given)."""
    if not steps or step is None:
        return 1.0
    return min(1.0, step / steps)


@dataclass
class KLSchedule:
    beta: float = 1.0
    warmup_steps: int = 0
    gamma: float = 0.0
    capacity_max: float = 25.0
    capacity_steps: int = 0

    @classmethod
    def from_config(cls, loss: LossConfig) -> KLSchedule:
        return cls(loss.beta, loss.kl_warmup_steps, loss.capacity_gamma, loss.capacity_max, loss.capacity_steps)

    def beta_at(self, step: int | None) -> float:
        return self.beta * ramp(step, self.warmup_steps)

    def capacity_at(self, step: int | None) -> float:
        return self.capacity_max * ramp(step, self.capacity_steps)

    def loss(self, rec: torch.Tensor, kl: torch.Tensor, step: int | None, kl_unit: float = 1.0):
        """rec, kl: per image [B] (rec already weighted). kl_unit: pixels per image when the terms are
        per pixel. Returns (scalar loss, logs)."""
        if self.gamma > 0:
            c = self.capacity_at(step)
            loss = rec.mean() + self.gamma * (kl.mean() - c / kl_unit).abs()
            return loss, {"vae/capacity": torch.tensor(c)}
        beta = self.beta_at(step)
        return (rec + beta * kl).mean(), {"vae/beta": torch.tensor(beta)}
