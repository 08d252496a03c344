"""Training steps as data: a step is a list of phases, each optimising one model.

    VAE      [VAE]                         fresh batches                                 (vae.py)
    GAN      [D] x n_critic, then [G]      D draws fresh batches; G reuses the last ones (gan.py)
    VAE-GAN  [D] x n_critic, then [EG]     D on real vs reconstructed; EG = encoder + decoder (vaegan.py)

A phase's loss function takes one micro-batch ``(x, labels)`` (x already in the model's range), a
noise function ``draw(name, *shape)`` and the step being taken (counted from 1; the schedules read
it), and returns ``(loss_to_minimise, {log_name: scalar})``. The trainer runs the phases; it does not
care which model it trains.

Mode-collapse remedies (config section ``remedies``) live in the phases: experience replay in D's
fake batch, feature matching and the unrolled D in G's (or EG's) adversarial term (common.py); the
minibatch layers are part of D itself. Stateful ones (the replay buffer) are in ``Phase.state`` for the
trainer's checkpoints.

``Phase`` is defined in common.py (the builders use it, and importing their own package would be a
cycle) and handed on here.
"""

from __future__ import annotations

import torch.nn as nn

from gen_dist.config import Config
from gen_dist.training.phases.common import LossFn, Phase
from gen_dist.training.phases.gan import build_gan_phases
from gen_dist.training.phases.vae import build_vae_phases
from gen_dist.training.phases.vaegan import build_vaegan_phases

__all__ = ["LossFn", "Phase", "build_phases"]


def build_phases(cfg: Config, G: nn.Module, D: nn.Module | None, opt_g, opt_d, unwrap,
                 reduce_mean=lambda t: t) -> list[Phase]:
    """G and D are the prepared modules; ``unwrap`` gives the plain module (no DDP hooks);
    ``reduce_mean`` averages a tensor over the ranks (the engine's; identity in one process)."""
    if cfg.model.kind == "vae":
        return build_vae_phases(cfg, G, opt_g)
    if cfg.model.kind == "gan":
        return build_gan_phases(cfg, G, D, opt_g, opt_d, unwrap)
    return build_vaegan_phases(cfg, G, D, opt_g, opt_d, unwrap, reduce_mean)
