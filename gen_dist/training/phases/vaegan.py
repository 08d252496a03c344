"""The VAE-GAN's step: [D] x n_critic, D telling real from reconstructed (and, optionally, prior)
images, then [EG] (encoder + decoder) reusing the last batches."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from gen_dist.config import Config
from gen_dist.training.kl_schedule import KLSchedule
from gen_dist.training.phases.common import Adversary, Phase, kl_unit, vae_objective


class VAEGANLosses:
    """D's and EG's losses of one micro-batch; ``unwrap`` gives the plain module (no DDP hooks)."""

    def __init__(self, cfg: Config, G: nn.Module, D: nn.Module, adversary: Adversary, unwrap):
        self.cfg, self.G, self.D, self.adv, self.unwrap = cfg, G, D, adversary, unwrap
        self.latent = cfg.model.latent_dim
        self.kl_schedule = KLSchedule.from_config(cfg.loss)
        self.lam = cfg.loss.adv_lambda
        self.w_rec = (1.0 - self.lam) if cfg.loss.vaegan_weighting == "convex" else 1.0

    def fakes_of(self, vae, x, eps, z_prior):
        recon, mu, logvar = vae(x, eps)
        out = [recon]
        if self.cfg.loss.vaegan_prior_samples:
            out.append(self.unwrap(self.G).decoder(z_prior()))  # same params as the DDP forward
        return out, (recon, mu, logvar)

    def d_step(self, batch, draw, step=None):
        x, _ = batch
        latent = self.latent
        with torch.no_grad():
            fake_list, _ = self.fakes_of(self.unwrap(self.G), x, draw("eps", latent), lambda: draw("z_prior", latent))
        replay_logs: dict = {}
        fake_list, fake_labels = self.adv.mix_replay(fake_list, None, draw, replay_logs)
        loss, logs = self.adv.d_objective(self.adv.score(self.D), x, None, fake_list, fake_labels,
                                          lambda: draw("alpha", 1).view(-1))
        return loss, {"loss/D": loss.detach(), **logs, **replay_logs}

    def unrolled_fakes(self, x, draw, j: int) -> list:
        """Fresh fakes (no graph) for unrolled step j, from their own keyed noise."""
        k, latent = self.cfg.remedies.unrolled_steps, self.latent
        with torch.no_grad():
            return self.fakes_of(self.unwrap(self.G), x, draw("eps_unroll", k, latent)[:, j],
                                 lambda: draw("z_unroll", k, latent)[:, j])[0]

    def eg_step(self, batch, draw, step=None):
        cfg, lam, latent = self.cfg, self.lam, self.latent
        x, _ = batch
        view = None
        if lam > 0:  # the unrolled D is computed before G's (DDP) forward, on this micro-batch
            view = self.adv.d_view(x, None, draw, partial(self.unrolled_fakes, x, draw))
        fake_list, (recon, mu, logvar) = self.fakes_of(self.G, x, draw("eps", latent), lambda: draw("z_prior", latent))
        rec, kl, logs = vae_objective(cfg, recon, x, mu, logvar)
        vae_loss, kl_logs = self.kl_schedule.loss(rec, kl, step, kl_unit(cfg, x))
        loss, _ = self.kl_schedule.loss(self.w_rec * rec, kl, step, kl_unit(cfg, x))
        if lam > 0:  # lambda = 0 is the pure VAE: D's opinion is not even computed
            adv, adv_logs = self.adv.adversarial(view, x, None, fake_list)
            loss = loss + lam * adv
            logs.update({"loss/G_adv": adv.detach(), **adv_logs})
        return loss, {"loss/EG": loss.detach(), "loss/vae": vae_loss.detach(), **logs, **kl_logs}


def build_vaegan_phases(cfg: Config, G: nn.Module, D: nn.Module, opt_g, opt_d, unwrap) -> list[Phase]:
    adversary = Adversary(cfg, unwrap(D), opt_d)
    losses = VAEGANLosses(cfg, G, D, adversary, unwrap)
    d_phase = Phase("D", D, opt_d, losses.d_step, fresh_data=True, state=adversary.state)
    return [d_phase] * cfg.train.n_critic + [Phase("EG", G, opt_g, losses.eg_step, fresh_data=False, frozen=[D])]
