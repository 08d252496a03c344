"""The VAE-GAN's step: [D] x n_critic, then [EG] (encoder + decoder) reusing the last batches.

D tells real images from reconstructions and (``loss.vaegan_prior_samples``, on by default) from
decoded prior samples, which are what FID and a person look at. EG's loss sends each term to the
parameters it is meant for, in one backward pass (Larsen et al. 2016):

    encoder   beta x KL + reconstruction                     (through z)
    decoder   gamma x reconstruction + w x adversarial        (D frozen)
    D         its GAN loss on real vs reconstructed vs prior samples (phase D)

- Reconstruction (``loss.similarity``): ``pixel`` is the VAE's own term (BCE or MSE over pixels);
  ``learned`` is Larsen's Dis_l likelihood, half the squared distance between D's feature maps of x
  and of its reconstruction at ``loss.similarity_layer``; ``both`` adds the two.
- The adversarial gradient stops at z (``loss.adv_stop_at_z``): D scores a second decoding of the
  same z, detached, and the prior samples; with the option off it scores the reconstruction of the
  joint forward pass, so the encoder gets D's opinion too (the reference lesson's formulation).
- gamma (``loss.similarity_gamma``) reaches the decoder only: the reconstruction term is taken once
  on the joint forward (encoder and decoder, 1x) and (gamma - 1) x on the detached decoding (decoder).
- w is ``loss.adv_lambda`` (``loss.adv_weight=fixed``) or the adaptive weight of Esser et al. 2021
  (``adaptive``): lambda x ||d rec / d W|| / (||d adv / d W|| + 1e-4), clamped to ``loss.adaptive_max``,
  W the decoder's output layer. Both gradients are averaged over the ranks first (one all-reduce of
  2 x |W| numbers), so every rank uses the weight one process with the global batch would compute.
- ``loss.disc_start``: D's phase and the adversarial term start after N steps of plain VAE training
  (the trainer skips D's phase before it; see ``Phase.start_step``).
- ``loss.equilibrium_margin`` > 0: pythae's equilibrium band (after Larsen et al.'s code). D's BCE on
  each side (real, fake), averaged over the step's micro-batches and the ranks before D steps, decides:
  either side below ``equilibrium - margin`` (D is winning) and D skips this step's update; either
  above ``equilibrium + margin`` (D is losing) and the decoder skips it (the encoder still steps); both
  at once, and both step. The skipped parameters' gradients are dropped (``Phase.hold``), so Adam
  leaves them and their moments alone.
- ``loss.vaegan_weighting=convex`` is the lesson's (1 - lambda) x rec + KL + lambda x adv: lambda = 0 is
  the VAE, lambda = 1 keeps no reconstruction term.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from gen_dist.config import Config
from gen_dist.models.vae import reparameterize
from gen_dist.training.kl_schedule import KLSchedule
from gen_dist.training.phases.common import Adversary, Phase, kl_unit, vae_objective

ADAPTIVE_EPS = 1e-4  # Esser et al.'s guard against a vanishing adversarial gradient


def equilibrium_updates(real: float, fake: float, centre: float, margin: float) -> tuple[bool, bool]:
    """pythae's rule: (update D, update the decoder) from D's BCE on the real and the fake side."""
    update_d = not (real < centre - margin or fake < centre - margin)
    update_dec = not (real > centre + margin or fake > centre + margin)
    if not update_d and not update_dec:  # one side too easy, the other too hard: train both
        return True, True
    return update_d, update_dec


class VAEGANLosses:
    """D's and EG's losses of one micro-batch. ``unwrap`` gives the plain module (no DDP hooks);
    ``reduce_mean`` averages a tensor over the ranks (the adaptive weight's gradients)."""

    def __init__(self, cfg: Config, G: nn.Module, D: nn.Module, adversary: Adversary, unwrap, reduce_mean):
        self.cfg, self.G, self.D, self.adv, self.unwrap = cfg, G, D, adversary, unwrap
        self.reduce_mean = reduce_mean
        L = cfg.loss
        self.latent = cfg.model.latent_dim
        self.kl_schedule = KLSchedule.from_config(L)
        self.lam = L.adv_lambda
        self.w_rec = (1.0 - self.lam) if L.vaegan_weighting == "convex" else 1.0
        self.pixel = L.similarity in ("pixel", "both")
        self.learned = L.similarity in ("learned", "both")
        self.band = L.equilibrium_margin > 0
        self._d_parts: list = []  # [BCE real, BCE fake] of each of this D phase's micro-batches
        self._update_decoder = True  # the band's decision for this step's EG phase

    # --- what D sees ----------------------------------------------------------------------------
    def decode(self, z):
        """The plain decoder (same parameters as the DDP forward) in its parameters' dtype (a DeepSpeed bf16
        engine casts only the whole model's inputs), returning float32 like the engine's forward."""
        decoder = self.unwrap(self.G).decoder
        return decoder(z.to(next(decoder.parameters()).dtype)).float()

    def prior_samples(self, z_prior):
        return self.decode(z_prior)

    def d_fakes(self, x, draw) -> list:
        latent, plain = self.latent, self.unwrap(self.G)
        with torch.no_grad():
            fakes = [plain(x, draw("eps", latent))[0]]
            if self.cfg.loss.vaegan_prior_samples:
                fakes.append(self.decode(draw("z_prior", latent)))
        return fakes

    def d_step(self, batch, draw, step=None):
        x, _ = batch
        fake_list = self.d_fakes(x, draw)
        replay_logs: dict = {}
        fake_list, fake_labels = self.adv.mix_replay(fake_list, None, draw, replay_logs)
        loss, logs = self.adv.d_objective(self.adv.score(self.D), x, None, fake_list, fake_labels,
                                          lambda: draw("alpha", 1).view(-1), parts=self.band)
        if self.band:
            self._d_parts.append(torch.stack([logs["D/bce_real"], logs["D/bce_fake"]]))
        return loss, {"loss/D": loss.detach(), **logs, **replay_logs}

    # --- the equilibrium band (Phase.hold) ------------------------------------------------------
    def hold_d(self) -> tuple[list, dict]:
        """After D's backward: the step's BCE parts (global batch) decide whether D and the decoder step."""
        parts = self.reduce_mean(torch.stack(self._d_parts).mean(0))
        self._d_parts.clear()
        real, fake = parts.tolist()
        update_d, self._update_decoder = equilibrium_updates(real, fake, self.cfg.loss.equilibrium,
                                                             self.cfg.loss.equilibrium_margin)
        held = [] if update_d else list(self.D.parameters())
        return held, {"D/updated": torch.tensor(float(update_d))}

    def hold_eg(self) -> tuple[list, dict]:
        """After EG's backward: the decoder is held back when D lost this step's band check."""
        update, self._update_decoder = self._update_decoder, True  # before disc_start D's phase is skipped
        held = [] if update else list(self.unwrap(self.G).decoder.parameters())
        return held, {"G/decoder_updated": torch.tensor(float(update))}

    def unrolled_fakes(self, x, draw, j: int) -> list:
        """Fresh fakes (no graph) for unrolled step j, from their own keyed noise."""
        k, latent, plain = self.cfg.remedies.unrolled_steps, self.latent, self.unwrap(self.G)
        with torch.no_grad():
            fakes = [plain(x, draw("eps_unroll", k, latent)[:, j])[0]]
            if self.cfg.loss.vaegan_prior_samples:
                fakes.append(self.decode(draw("z_unroll", k, latent)[:, j]))
        return fakes

    # --- EG -------------------------------------------------------------------------------------
    def adversarial_on(self, step) -> bool:
        return self.lam > 0 and (step is None or step > self.cfg.loss.disc_start)

    def learned_distance(self, x, recon) -> torch.Tensor:
        """Larsen's Dis_l reconstruction per image: half the squared distance of D's feature maps."""
        D, layer = self.adv.D_plain, self.cfg.loss.similarity_layer
        with torch.no_grad():  # the real side is a target
            target = D.feature_map(x, layer)
        distance = 0.5 * (D.feature_map(recon, layer) - target).float().pow(2).flatten(1).sum(1)
        return distance / x[0].numel() if self.cfg.loss.recon_scale == "mean" else distance  # as the pixel term

    def reconstruction(self, x, recon, pixel_rec, logs: dict | None = None) -> torch.Tensor:
        """The reconstruction term per image: pixel, learned or both."""
        rec = pixel_rec if self.pixel else 0.0
        if self.learned:
            learned = self.learned_distance(x, recon)
            if logs is not None:
                logs["vae/recon_learned"] = learned.mean().detach()
            rec = rec + learned
        return rec

    def adaptive_weight(self, rec: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        """lambda x ||grad_W rec|| / (||grad_W adv|| + eps), W the decoder's output layer, both
        gradients averaged over the ranks (the global batch's), clamped to loss.adaptive_max."""
        W = self.unwrap(self.G).decoder.output_layer().weight
        g_rec, = torch.autograd.grad(rec, W, retain_graph=True)
        g_adv, = torch.autograd.grad(adv, W, retain_graph=True)
        g = self.reduce_mean(torch.stack([g_rec.flatten(), g_adv.flatten()]).float())
        w = g[0].norm() / (g[1].norm() + ADAPTIVE_EPS)
        return (self.lam * w).clamp(max=self.cfg.loss.adaptive_max).detach()

    def eg_step(self, batch, draw, step=None):
        cfg, L, latent = self.cfg, self.cfg.loss, self.latent
        x, _ = batch
        adv_on = self.adversarial_on(step)
        view = None
        if adv_on:  # the unrolled D is computed before G's (DDP) forward, on this micro-batch
            view = self.adv.d_view(x, None, draw, partial(self.unrolled_fakes, x, draw))
        eps = draw("eps", latent)
        recon, mu, logvar = self.G(x, eps)  # the joint forward: encoder and decoder
        pixel_rec, kl, logs = vae_objective(cfg, recon, x, mu, logvar)
        vae_loss, kl_logs = self.kl_schedule.loss(pixel_rec, kl, step, kl_unit(cfg, x))
        rec = self.reconstruction(x, recon, pixel_rec, logs)
        gamma = L.similarity_gamma
        fakes = []
        recon_scored = adv_on and L.vaegan_adv_on != "prior"  # the decoder's adversarial term scores reconstructions
        if (recon_scored and L.adv_stop_at_z) or gamma != 1.0:
            # the same z decoded again with the gradient stopped at z (the decoder's copy), and the prior samples
            z = reparameterize(mu, logvar, eps).detach()
            recon_d = self.decode(z)
            if gamma != 1.0:  # the decoder's reconstruction weight: 1 (joint) + (gamma - 1) (copy)
                pixel_d = vae_objective(cfg, recon_d, x, mu.detach(), logvar.detach())[0]
                rec = rec + (gamma - 1.0) * self.reconstruction(x, recon_d, pixel_d)
        if recon_scored:
            fakes.append(recon_d if L.adv_stop_at_z else recon)
        if adv_on and L.vaegan_prior_samples and L.vaegan_adv_on != "recon":
            fakes.append(self.prior_samples(draw("z_prior", latent)))
        loss, _ = self.kl_schedule.loss(self.w_rec * rec, kl, step, kl_unit(cfg, x))
        if adv_on:  # lambda = 0 is the pure VAE: D's opinion is not even computed
            adv, adv_logs = self.adv.adversarial(view, x, None, fakes)
            if L.adv_weight == "adaptive":
                w = self.adaptive_weight((self.w_rec * rec).mean(), adv)
            else:
                w = torch.tensor(self.lam, device=adv.device)
            loss = loss + w * adv
            logs.update({"loss/G_adv": adv.detach(), "G/adv_weight": w.detach().float(), **adv_logs})
        return loss, {"loss/EG": loss.detach(), "loss/vae": vae_loss.detach(), **logs, **kl_logs}


def build_vaegan_phases(cfg: Config, G: nn.Module, D: nn.Module, opt_g, opt_d, unwrap, reduce_mean) -> list[Phase]:
    adversary = Adversary(cfg, unwrap(D), opt_d)
    losses = VAEGANLosses(cfg, G, D, adversary, unwrap, reduce_mean)
    start = cfg.loss.disc_start + 1 if cfg.loss.adv_lambda > 0 else 1
    band = cfg.loss.equilibrium_margin > 0
    d_phase = Phase("D", D, opt_d, losses.d_step, fresh_data=True, state=adversary.state, start_step=start,
                    hold=losses.hold_d if band else None)
    eg_phase = Phase("EG", G, opt_g, losses.eg_step, fresh_data=False, frozen=[D], hold=losses.hold_eg if band else None)
    return [d_phase] * cfg.train.n_critic + [eg_phase]
