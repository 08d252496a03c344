"""The VAE's step: one phase, [VAE], on fresh batches."""

from __future__ import annotations

import torch.nn as nn

from gen_dist.config import Config
from gen_dist.training.kl_schedule import KLSchedule
from gen_dist.training.phases.common import Phase, kl_unit, vae_objective


class VAELoss:
    """The (KL-scheduled) negative ELBO of one micro-batch."""

    def __init__(self, cfg: Config, G: nn.Module):
        self.cfg, self.G, self.latent = cfg, G, cfg.model.latent_dim
        self.kl_schedule = KLSchedule.from_config(cfg.loss)

    def __call__(self, batch, draw, step=None):
        cfg = self.cfg
        x, _ = batch
        recon, mu, logvar = self.G(x, draw("eps", self.latent))
        rec, kl, logs = vae_objective(cfg, recon, x, mu, logvar)
        loss, kl_logs = self.kl_schedule.loss(rec, kl, step, kl_unit(cfg, x))
        return loss, {"loss/vae": loss.detach(), **logs, **kl_logs}


def build_vae_phases(cfg: Config, G: nn.Module, opt_g) -> list[Phase]:
    scale = 1.0
    if cfg.loss.batch_sum:  # gradient of the sum over the global batch, as the seed's loop
        scale = float(cfg.train.batch_size * cfg.train.grad_accum)  # x world: set by the trainer
    return [Phase("VAE", G, opt_g, VAELoss(cfg, G), fresh_data=True, scale=scale)]
