"""What the phases of every model kind share: the Phase record, the VAE objective, and the
adversarial side (D's objective, experience replay, G's adversarial term, the unrolled D).

A phase's loss function takes one micro-batch ``(x, labels)`` (x already in the model's range), a
noise function ``draw(name, *shape)`` and the step being taken (counted from 1; the schedules read
it), and returns ``(loss_to_minimise, {log_name: scalar})``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.special import ndtr

from gen_dist.config import Config
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
    start_step: int = 1  # the first step (counted from 1) the phase runs; before it the trainer skips it
    # after the phase's backward, before its step: () -> (parameters to hold back this step, logs); the
    # trainer drops their gradients, so the optimizer skips them (the VAE-GAN's equilibrium band)
    hold: Callable[[], tuple[list, dict]] | None = None


def vae_objective(cfg: Config, recon, x, mu, logvar) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Per-image reconstruction and KL (seed nats, or per pixel with recon_scale=mean)."""
    rec, kl = vae_terms(recon, x, mu, logvar, cfg.loss.recon)
    if cfg.loss.recon_scale == "mean":  # the same ELBO, divided by the number of pixels
        pixels = x[0].numel()
        rec, kl = rec / pixels, kl / pixels
    logs = {"vae/recon": rec.mean().detach(), "vae/kl": kl.mean().detach()}
    return rec, kl, logs


def kl_unit(cfg: Config, x: torch.Tensor) -> float:
    """The KL schedule's unit: one image's pixel count when losses are per pixel, else 1."""
    return float(x[0].numel()) if cfg.loss.recon_scale == "mean" else 1.0


def uniform(draw, name: str, *shape: int) -> torch.Tensor:
    """Uniforms in [0, 1] from the keyed normal noise (the normal CDF), so they share its keys."""
    return ndtr(draw(name, *shape))


def scorer(disc, conditional: bool) -> Callable:
    """A uniform scoring function (x, labels, **kw) for D, the plain D or the unrolled copy."""
    return (lambda x, y, **kw: disc(x, y, **kw)) if conditional else (lambda x, y, **kw: disc(x, **kw))


class Adversary:
    """The adversarial side of a GAN or VAE-GAN step: D's objective, experience replay in D's fake
    batches, G's adversarial term, and the D that G's step faces (D itself or its unrolled copy).

    ``D_plain`` is D without DDP: G's phase reads it while D is frozen, and it must not sync."""

    def __init__(self, cfg: Config, D_plain: nn.Module, opt_d):
        r = cfg.remedies
        self.cfg, self.r, self.kind, self.conditional = cfg, r, cfg.loss.gan, cfg.model.conditional
        self.D_plain = D_plain
        self.replay = ReplayBuffer(r.replay_size, r.replay_ratio) if r.replay_size else None
        self.unroller = None
        if r.unrolled_steps:
            check_unrollable(D_plain)
            self.unroller = UnrolledDiscriminator(D_plain, opt_d, r.unrolled_steps, cfg.optim.d.lr,
                                                  cfg.optim.d.betas, cfg.optim.d.weight_decay)

    @property
    def state(self) -> dict:
        """D's phase state for the trainer's checkpoints (the replay buffer, when there is one)."""
        return {"replay": self.replay} if self.replay else {}

    def score(self, disc) -> Callable:
        return scorer(disc, self.conditional)

    def d_objective(self, call, real, labels, fakes: list, fake_labels: list, alpha: Callable, parts=False):
        """D's loss on real vs fake batches (scored part by part, as BatchNorm sees them), + GP
        (``alpha()`` draws its mixing weights). ``parts``: also log the BCE of each side (nonsat)."""
        cfg = self.cfg
        real_s = call(real, labels)
        fake_s = torch.cat([call(f, y) for f, y in zip(fakes, fake_labels)])
        loss = d_loss(self.kind, real_s, fake_s)
        logs = {"D/real": real_s.detach().float().mean(), "D/fake": fake_s.detach().float().mean()}
        if parts:  # the two sides of the nonsat loss (config.py allows the band with nonsat only)
            logs["D/bce_real"] = F.softplus(-real_s.detach().float()).mean()
            logs["D/bce_fake"] = F.softplus(fake_s.detach().float()).mean()
        if cfg.loss.gp_weight > 0:  # interpolates with the first fake batch, scored with the real labels
            gp = gradient_penalty(lambda x, y=None: call(x, y), real, fakes[0], alpha(),
                                  labels if self.conditional else None)
            loss = loss + cfg.loss.gp_weight * gp
            logs["D/gp"] = gp.detach()
        return loss, logs

    def mix_replay(self, fakes: list, labels, draw, logs: dict):
        """Experience replay: each fake batch (the VAE-GAN's reconstructions and prior samples alike)
        gets its share of past fakes from this rank's buffer, and feeds it."""
        replay, conditional = self.replay, self.conditional
        if replay is None:
            return fakes, [labels] * len(fakes)
        u = uniform(draw, "replay", 2 * len(fakes))
        out = [replay.mix(f, labels if conditional else None, u[:, 2 * i: 2 * i + 2]) for i, f in enumerate(fakes)]
        logs["D/replay_filled"] = torch.tensor(float(replay.filled))
        return [f for f, _ in out], [y if conditional else labels for _, y in out]

    def adversarial(self, view, real, labels, fakes: list):
        """G's adversarial term against ``view`` (D, or the unrolled D): the GAN loss, feature matching
        (on D's last feature map, real vs fake means), or both."""
        r, kind = self.r, self.kind
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

    def d_view(self, real, labels, draw, make_fakes):
        """The D that G's step faces: D itself, or its copy after k unrolled steps. The unrolled steps
        use this micro-batch's real images (the step's last D micro-batch: no extra data is read) and
        fresh fakes ``make_fakes(j)`` (no graph) from their own keyed noise."""
        if self.unroller is None:
            return self.score(self.D_plain)
        d_loss_at = partial(self._unrolled_d_loss, real, labels, draw, make_fakes)
        return self.score(self.unroller.unroll(d_loss_at))

    def _unrolled_d_loss(self, real, labels, draw, make_fakes, j: int, call):
        """D's loss at unrolled step j, evaluated by ``call`` (the copy's forward)."""
        def alpha():
            return uniform(draw, "alpha_unroll", self.r.unrolled_steps)[:, j]

        fakes = make_fakes(j)
        loss, _ = self.d_objective(self.score(call), real, labels, fakes, [labels] * len(fakes), alpha)
        return loss
