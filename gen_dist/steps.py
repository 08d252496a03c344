"""Training steps as data: a step is a list of phases, each optimising one model.

    VAE      [VAE]                         fresh batches
    GAN      [D] x n_critic, then [G]      D draws fresh batches; G reuses the last ones (labels, size)
    VAE-GAN  [D] x n_critic, then [EG]     D on real vs reconstructed; EG = encoder + decoder

A phase's loss function takes one micro-batch ``(x, labels)`` (x already in the model's range) and a
noise function ``draw(name, *shape)``, and returns ``(loss_to_minimise, {log_name: scalar})``.
The trainer runs the phases; it does not care which model it trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from gen_dist.config import Config
from gen_dist.losses import d_loss, g_loss, gradient_penalty, vae_terms

LossFn = Callable[[tuple, Callable], tuple[torch.Tensor, dict]]


@dataclass
class Phase:
    name: str  # "D", "G", "VAE" or "EG"
    model: nn.Module  # the prepared (DDP) module this phase optimises
    optimizer: object
    loss: LossFn
    fresh_data: bool  # draw new batches, or reuse the previous phase's
    scale: float = 1.0  # multiplies the loss before backward (the seed's batch sums)
    frozen: list = field(default_factory=list)  # modules whose parameters must not get gradients


def vae_objective(cfg: Config, recon, x, mu, logvar) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Per-image reconstruction and KL (seed nats, or per pixel with recon_scale=mean)."""
    rec, kl = vae_terms(recon, x, mu, logvar, cfg.loss.recon)
    if cfg.loss.recon_scale == "mean":  # the same ELBO, divided by the number of pixels
        pixels = x[0].numel()
        rec, kl = rec / pixels, kl / pixels
    logs = {"vae/recon": rec.mean().detach(), "vae/kl": kl.mean().detach()}
    return rec, kl, logs


def build_phases(cfg: Config, G: nn.Module, D: nn.Module | None, opt_g, opt_d, unwrap) -> list[Phase]:
    """G and D are the prepared modules; ``unwrap`` gives the plain module (no DDP hooks)."""
    beta, kind = cfg.loss.beta, cfg.loss.gan
    latent = cfg.model.latent_dim

    if cfg.model.kind == "vae":
        def vae_loss(batch, draw):
            x, _ = batch
            recon, mu, logvar = G(x, draw("eps", latent))
            rec, kl, logs = vae_objective(cfg, recon, x, mu, logvar)
            loss = (rec + beta * kl).mean()
            return loss, {"loss/vae": loss.detach(), **logs}

        scale = 1.0
        if cfg.loss.batch_sum:  # gradient of the sum over the global batch, as the seed's loop
            scale = float(cfg.train.batch_size * cfg.train.grad_accum)  # x world: set by the trainer
        return [Phase("VAE", G, opt_g, vae_loss, fresh_data=True, scale=scale)]

    D_plain = unwrap(D)  # G's phase reads D without DDP: D is frozen there and must not sync

    if cfg.model.kind == "gan":
        def draw_fake(draw, labels, generator):
            z = draw("z", latent)
            return generator(z, labels) if cfg.model.conditional else generator(z)

        def score(disc, x, labels):
            return disc(x, labels) if cfg.model.conditional else disc(x)

        def d_step(batch, draw):
            real, labels = batch
            with torch.no_grad():
                fake = draw_fake(draw, labels, unwrap(G))
            real_s, fake_s = score(D, real, labels), score(D, fake, labels)
            loss = d_loss(kind, real_s, fake_s)
            logs = {"loss/D": loss.detach(), "D/real": real_s.detach().float().mean(),
                    "D/fake": fake_s.detach().float().mean()}
            if cfg.loss.gp_weight > 0:
                critic = (lambda x, y: D(x, y)) if cfg.model.conditional else (lambda x: D(x))
                alpha = draw("alpha", 1).view(-1)
                gp = gradient_penalty(critic, real, fake, alpha, labels if cfg.model.conditional else None)
                loss = loss + cfg.loss.gp_weight * gp
                logs["D/gp"] = gp.detach()
            return loss, logs

        def g_step(batch, draw):
            _, labels = batch
            fake = draw_fake(draw, labels, G)
            loss = g_loss(kind, score(D_plain, fake, labels))
            return loss, {"loss/G": loss.detach()}

        return ([Phase("D", D, opt_d, d_step, fresh_data=True)] * cfg.train.n_critic
                + [Phase("G", G, opt_g, g_step, fresh_data=False, frozen=[D])])

    # VAE-GAN: D tells real from reconstructed (and, optionally, prior) images
    lam = cfg.loss.adv_lambda
    w_rec = (1.0 - lam) if cfg.loss.vaegan_weighting == "convex" else 1.0

    def fakes(vae, x, draw):
        recon, mu, logvar = vae(x, draw("eps", latent))
        out = [recon]
        if cfg.loss.vaegan_prior_samples:
            out.append(unwrap(G).decoder(draw("z_prior", latent)))  # same params as the DDP forward
        return out, (recon, mu, logvar)

    def d_step(batch, draw):
        x, _ = batch
        with torch.no_grad():
            fake_list, _ = fakes(unwrap(G), x, draw)
        real_s = D(x)
        fake_s = torch.cat([D(f) for f in fake_list])
        loss = d_loss(kind, real_s, fake_s)
        return loss, {"loss/D": loss.detach(), "D/real": real_s.detach().float().mean(),
                      "D/fake": fake_s.detach().float().mean()}

    def eg_step(batch, draw):
        x, _ = batch
        fake_list, (recon, mu, logvar) = fakes(G, x, draw)
        rec, kl, logs = vae_objective(cfg, recon, x, mu, logvar)
        vae_loss = (rec + beta * kl).mean()
        loss = (w_rec * rec + beta * kl).mean()
        if lam > 0:  # lambda = 0 is the pure VAE: D's opinion is not even computed
            adv = g_loss(kind, torch.cat([D_plain(f) for f in fake_list]))
            loss = loss + lam * adv
            logs["loss/G_adv"] = adv.detach()
        return loss, {"loss/EG": loss.detach(), "loss/vae": vae_loss.detach(), **logs}

    return ([Phase("D", D, opt_d, d_step, fresh_data=True)] * cfg.train.n_critic
            + [Phase("EG", G, opt_g, eg_step, fresh_data=False, frozen=[D])])
