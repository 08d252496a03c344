"""Mode-collapse remedies that need more than a loss term or a layer: experience replay (replay.py)
and the unrolled discriminator (unrolled.py). Feature matching is a loss (losses.py); the minibatch
layers are part of D (models/minibatch.py). The trainer runs them through the phases (training/phases/)."""

from gen_dist.training.remedies.replay import ReplayBuffer
from gen_dist.training.remedies.unrolled import UnrolledDiscriminator

__all__ = ["ReplayBuffer", "UnrolledDiscriminator"]
