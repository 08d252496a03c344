"""Training steps as data: a step is a list of phases, each optimising one model.

    VAE      [VAE]                         fresh batches
    GAN      [D] x n_critic, then [G]      D draws fresh batches; G reuses the last ones (labels, size)
    VAE-GAN  [D] x n_critic, then [EG]     D on real vs reconstructed; EG = encoder + decoder

A phase's loss function takes one micro-batch ``(x, labels)`` (x already in the model's range), a
noise function ``draw(name, *shape)`` and the step being taken (counted from 1; the schedules read
it), and returns ``(loss_to_minimise, {log_name: scalar})``. The trainer runs the phases; it does not
care which model it trains.

Mode-collapse remedies (config section ``remedies``) live in the phases: experience replay in D's
fake batch, feature matching and the unrolled D in G's (or EG's) adversarial term; the minibatch
layers are part of D itself. Stateful ones (the replay buffer) are in ``Phase.state`` for the
trainer's checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.special import ndtr

from gen_dist.config import Config
from gen_dist.training.kl_schedule import KLSchedule
from gen_dist.training.losses import d_loss, feature_matching, g_loss, gradient_penalty, vae_terms
from gen_dist.training.remedies.replay import ReplayBuffer
from gen_dist.training.remedies.unrolled import UnrolledDiscriminator, check_unrollable

LossFn = Callable[..., tuple[torch.Tensor, dict]]  # (batch, draw, step=None) -> (loss, logs)


@dataclass
class Phase:
    name: str  # "D", "G", "VAE" or "EG"
    model: nn.Module  # the prepared (DDP) module this phase optimises
    optimizer: object
    loss: LossFn
    fresh_data: bool  # draw new batches, or reuse the previous phase's
    scale: float = 1.0  # multiplies the loss before backward (the seed's batch sums)
    frozen: list = field(default_factory=list)  # modules whose parameters must not get gradients
    state: dict = field(default_factory=dict)  # name -> object with state_dict(): saved per rank


def vae_objective(cfg: Config, recon, x, mu, logvar) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Per-image reconstruction and KL (seed nats, or per pixel with recon_scale=mean)."""
    rec, kl = vae_terms(recon, x, mu, logvar, cfg.loss.recon)
    if cfg.loss.recon_scale == "mean":  # the same ELBO, divided by the number of pixels
        pixels = x[0].numel()
        rec, kl = rec / pixels, kl / pixels
    logs = {"vae/recon": rec.mean().detach(), "vae/kl": kl.mean().detach()}
    return rec, kl, logs


def _kl_unit(cfg: Config, x: torch.Tensor) -> float:
    return float(x[0].numel()) if cfg.loss.recon_scale == "mean" else 1.0


def _uniform(draw, name: str, *shape: int) -> torch.Tensor:
    """Uniforms in [0, 1] from the keyed normal noise (the normal CDF), so they share its keys."""
    return ndtr(draw(name, *shape))


def build_phases(cfg: Config, G: nn.Module, D: nn.Module | None, opt_g, opt_d, unwrap) -> list[Phase]:
    """G and D are the prepared modules; ``unwrap`` gives the plain module (no DDP hooks)."""
    kind, latent, r = cfg.loss.gan, cfg.model.latent_dim, cfg.remedies
    kl_schedule = KLSchedule.from_config(cfg.loss)

    if cfg.model.kind == "vae":
        def vae_loss(batch, draw, step=None):
            x, _ = batch
            recon, mu, logvar = G(x, draw("eps", latent))
            rec, kl, logs = vae_objective(cfg, recon, x, mu, logvar)
            loss, kl_logs = kl_schedule.loss(rec, kl, step, _kl_unit(cfg, x))
            return loss, {"loss/vae": loss.detach(), **logs, **kl_logs}

        scale = 1.0
        if cfg.loss.batch_sum:  # gradient of the sum over the global batch, as the seed's loop
            scale = float(cfg.train.batch_size * cfg.train.grad_accum)  # x world: set by the trainer
        return [Phase("VAE", G, opt_g, vae_loss, fresh_data=True, scale=scale)]

    D_plain = unwrap(D)  # G's phase reads D without DDP: D is frozen there and must not sync
    conditional = cfg.model.conditional
    replay = ReplayBuffer(r.replay_size, r.replay_ratio) if r.replay_size else None
    unroller = None
    if r.unrolled_steps:
        check_unrollable(D_plain)
        unroller = UnrolledDiscriminator(D_plain, opt_d, r.unrolled_steps, cfg.optim.d.lr, cfg.optim.d.betas,
                                         cfg.optim.d.weight_decay)

    def disc_call(disc):
        """A uniform scoring function (x, labels, **kw) for D, the plain D or the unrolled copy."""
        return (lambda x, y, **kw: disc(x, y, **kw)) if conditional else (lambda x, y, **kw: disc(x, **kw))

    def d_objective(call, real, labels, fakes: list, fake_labels: list, alpha: Callable):
        """D's loss on real vs fake batches (scored part by part, as BatchNorm sees them), + GP
        (``alpha()`` draws its mixing weights)."""
        real_s = call(real, labels)
        fake_s = torch.cat([call(f, y) for f, y in zip(fakes, fake_labels)])
        loss = d_loss(kind, real_s, fake_s)
        logs = {"D/real": real_s.detach().float().mean(), "D/fake": fake_s.detach().float().mean()}
        if cfg.loss.gp_weight > 0:  # interpolates with the first fake batch, scored with the real labels
            gp = gradient_penalty(lambda x, y=None: call(x, y), real, fakes[0], alpha(),
                                  labels if conditional else None)
            loss = loss + cfg.loss.gp_weight * gp
            logs["D/gp"] = gp.detach()
        return loss, logs

    def mix_replay(fakes: list, labels, draw, logs: dict):
        """Experience replay: each fake batch (the VAE-GAN's reconstructions and prior samples alike)
        gets its share of past fakes from this rank's buffer, and feeds it."""
        if replay is None:
            return fakes, [labels] * len(fakes)
        u = _uniform(draw, "replay", 2 * len(fakes))
        out = [replay.mix(f, labels if conditional else None, u[:, 2 * i: 2 * i + 2]) for i, f in enumerate(fakes)]
        logs["D/replay_filled"] = torch.tensor(float(replay.filled))
        return [f for f, _ in out], [y if conditional else labels for _, y in out]

    def adversarial(view, real, labels, fakes: list):
        """G's adversarial term against ``view`` (D, or the unrolled D): the GAN loss, feature matching
        (on D's last feature map, real vs fake means), or both."""
        logs = {}
        if not r.feature_matching:
            return g_loss(kind, torch.cat([view(f, labels) for f in fakes])), logs
        scored = [view(f, labels, with_features=True) for f in fakes]
        with torch.no_grad():  # the real side is a target: D is frozen and x does not depend on G
            _, real_f = view(real, labels, with_features=True)
        fm = feature_matching(real_f, torch.cat([h for _, h in scored]))
        logs["G/feature_matching"] = fm.detach()
        term = r.feature_matching * fm
        if not r.feature_matching_alone:
            term = term + g_loss(kind, torch.cat([s for s, _ in scored]))
        return term, logs

    def d_view(real, labels, draw, make_fakes):
        """The D that G's step faces: D itself, or its copy after k unrolled steps. The unrolled steps
        use this micro-batch's real images (the step's last D micro-batch: no extra data is read) and
        fresh fakes ``make_fakes(j)`` (no graph) from their own keyed noise."""
        if unroller is None:
            return disc_call(D_plain)

        def d_loss_at(j, call):
            def alpha():
                return _uniform(draw, "alpha_unroll", r.unrolled_steps)[:, j]

            fakes = make_fakes(j)
            loss, _ = d_objective(disc_call(call), real, labels, fakes, [labels] * len(fakes), alpha)
            return loss

        return disc_call(unroller.unroll(d_loss_at))

    if cfg.model.kind == "gan":
        def generate(generator, z, labels):
            return generator(z, labels) if conditional else generator(z)

        def d_step(batch, draw, step=None):
            real, labels = batch
            with torch.no_grad():
                fake = generate(unwrap(G), draw("z", latent), labels)
            replay_logs: dict = {}
            fakes, fake_labels = mix_replay([fake], labels, draw, replay_logs)
            loss, logs = d_objective(disc_call(D), real, labels, fakes, fake_labels,
                                     lambda: draw("alpha", 1).view(-1))
            return loss, {"loss/D": loss.detach(), **logs, **replay_logs}

        def g_step(batch, draw, step=None):
            real, labels = batch

            def unrolled_fakes(j):
                with torch.no_grad():
                    return [generate(unwrap(G), draw("z_unroll", r.unrolled_steps, latent)[:, j], labels)]

            view = d_view(real, labels, draw, unrolled_fakes)
            fake = generate(G, draw("z", latent), labels)
            loss, logs = adversarial(view, real, labels, [fake])
            return loss, {"loss/G": loss.detach(), **logs}

        d_phase = Phase("D", D, opt_d, d_step, fresh_data=True, state={"replay": replay} if replay else {})
        return [d_phase] * cfg.train.n_critic + [Phase("G", G, opt_g, g_step, fresh_data=False, frozen=[D])]

    # VAE-GAN: D tells real from reconstructed (and, optionally, prior) images
    lam = cfg.loss.adv_lambda
    w_rec = (1.0 - lam) if cfg.loss.vaegan_weighting == "convex" else 1.0

    def fakes_of(vae, x, eps, z_prior):
        recon, mu, logvar = vae(x, eps)
        out = [recon]
        if cfg.loss.vaegan_prior_samples:
            out.append(unwrap(G).decoder(z_prior()))  # same params as the DDP forward
        return out, (recon, mu, logvar)

    def d_step(batch, draw, step=None):
        x, _ = batch
        with torch.no_grad():
            fake_list, _ = fakes_of(unwrap(G), x, draw("eps", latent), lambda: draw("z_prior", latent))
        replay_logs: dict = {}
        fake_list, fake_labels = mix_replay(fake_list, None, draw, replay_logs)
        loss, logs = d_objective(disc_call(D), x, None, fake_list, fake_labels, lambda: draw("alpha", 1).view(-1))
        return loss, {"loss/D": loss.detach(), **logs, **replay_logs}

    def eg_step(batch, draw, step=None):
        x, _ = batch
        view = None
        if lam > 0:  # the unrolled D is computed before G's (DDP) forward, on this micro-batch
            def unrolled_fakes(j):
                k = r.unrolled_steps
                with torch.no_grad():
                    return fakes_of(unwrap(G), x, draw("eps_unroll", k, latent)[:, j],
                                    lambda: draw("z_unroll", k, latent)[:, j])[0]

            view = d_view(x, None, draw, unrolled_fakes)
        fake_list, (recon, mu, logvar) = fakes_of(G, x, draw("eps", latent), lambda: draw("z_prior", latent))
        rec, kl, logs = vae_objective(cfg, recon, x, mu, logvar)
        vae_loss, kl_logs = kl_schedule.loss(rec, kl, step, _kl_unit(cfg, x))
        loss, _ = kl_schedule.loss(w_rec * rec, kl, step, _kl_unit(cfg, x))
        if lam > 0:  # lambda = 0 is the pure VAE: D's opinion is not even computed
            adv, adv_logs = adversarial(view, x, None, fake_list)
            loss = loss + lam * adv
            logs.update({"loss/G_adv": adv.detach(), **adv_logs})
        return loss, {"loss/EG": loss.detach(), "loss/vae": vae_loss.detach(), **logs, **kl_logs}

    d_phase = Phase("D", D, opt_d, d_step, fresh_data=True, state={"replay": replay} if replay else {})
    return [d_phase] * cfg.train.n_critic + [Phase("EG", G, opt_g, eg_step, fresh_data=False, frozen=[D])]
