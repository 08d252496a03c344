"""The GAN's step: [D] x n_critic on fresh batches, then [G] reusing the last ones (labels, size)."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from gen_dist.config import Config
from gen_dist.training.phases.common import Adversary, Phase


class GANLosses:
    """D's and G's losses of one micro-batch; ``unwrap`` gives the plain module (no DDP hooks)."""

    def __init__(self, cfg: Config, G: nn.Module, D: nn.Module, adversary: Adversary, unwrap):
        self.cfg, self.G, self.D, self.adv, self.unwrap = cfg, G, D, adversary, unwrap
        self.latent, self.conditional = cfg.model.latent_dim, cfg.model.conditional

    def generate(self, generator, z, labels):
        return generator(z, labels) if self.conditional else generator(z)

    def d_step(self, batch, draw, step=None):
        real, labels = batch
        with torch.no_grad():
            fake = self.generate(self.unwrap(self.G), draw("z", self.latent), labels)
        replay_logs: dict = {}
        fakes, fake_labels = self.adv.mix_replay([fake], labels, draw, replay_logs)
        loss, logs = self.adv.d_objective(self.adv.score(self.D), real, labels, fakes, fake_labels,
                                          lambda: draw("alpha", 1).view(-1))
        return loss, {"loss/D": loss.detach(), **logs, **replay_logs}

    def unrolled_fakes(self, labels, draw, j: int) -> list:
        """Fresh fakes (no graph) for unrolled step j, from their own keyed noise."""
        with torch.no_grad():
            z = draw("z_unroll", self.cfg.remedies.unrolled_steps, self.latent)[:, j]
            return [self.generate(self.unwrap(self.G), z, labels)]

    def g_step(self, batch, draw, step=None):
        real, labels = batch
        view = self.adv.d_view(real, labels, draw, partial(self.unrolled_fakes, labels, draw))
        fake = self.generate(self.G, draw("z", self.latent), labels)
        loss, logs = self.adv.adversarial(view, real, labels, [fake])
        return loss, {"loss/G": loss.detach(), **logs}


def build_gan_phases(cfg: Config, G: nn.Module, D: nn.Module, opt_g, opt_d, unwrap) -> list[Phase]:
    adversary = Adversary(cfg, unwrap(D), opt_d)
    losses = GANLosses(cfg, G, D, adversary, unwrap)
    d_phase = Phase("D", D, opt_d, losses.d_step, fresh_data=True, state=adversary.state)
    return [d_phase] * cfg.train.n_critic + [Phase("G", G, opt_g, losses.g_step, fresh_data=False, frozen=[D])]
