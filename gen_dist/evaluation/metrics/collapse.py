"""Posterior-collapse detection from the test KL, evaluation after evaluation."""

from __future__ import annotations

import math
from typing import Optional, Sequence


class PosteriorCollapseDetector:
    """Flags a VAE whose KL(q(z|x) || p(z)) has stayed below `threshold` nats per image for
    `patience` consecutive evaluations: the decoder has learnt to ignore z.

    An evaluation also counts as collapsed when per-dimension KLs are given and every dimension is
    below `dim_threshold` (no active unit), even if the total is above `threshold` (many latents).
    A non-finite KL is not evidence of collapse and resets the count.
    """

    def __init__(self, threshold: float, patience: int, dim_threshold: float = 0.01):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.threshold, self.patience, self.dim_threshold = float(threshold), int(patience), float(dim_threshold)
        self.low_count = 0  # consecutive low evaluations so far
        self.first_low_step = -1
        self.last_kl = math.nan
        self.last_step = -1
        self.active_dims = -1  # -1: per-dimension KLs not given

    @property
    def collapsed(self) -> bool:
        return self.low_count >= self.patience

    def update(self, kl_per_image: float, step: int, kl_per_dim: Optional[Sequence[float]] = None) -> bool:
        """Record one evaluation; True while collapsed (from the `patience`-th low one in a row on;
        `low_count == patience` marks the first, for callers that warn once)."""
        kl = float(kl_per_image)
        self.last_kl, self.last_step = kl, int(step)
        low = kl < self.threshold  # False for NaN
        if kl_per_dim is not None:
            self.active_dims = sum(float(k) > self.dim_threshold for k in kl_per_dim)
            low = low or (math.isfinite(kl) and self.active_dims == 0)
        if low:
            if self.low_count == 0:
                self.first_low_step = int(step)
            self.low_count += 1
        else:
            self.low_count, self.first_low_step = 0, -1
        return self.collapsed

    @property
    def message(self) -> str:
        dims = f", {self.active_dims} latent dims above {self.dim_threshold:g} nats" if self.active_dims >= 0 else ""
        state = (f"KL {self.last_kl:.4g} nats/image at step {self.last_step} (threshold {self.threshold:g}{dims}); "
                 f"{self.low_count} consecutive low evaluation(s)")
        if not self.collapsed:
            return f"no posterior collapse: {state}, patience {self.patience}"
        return (f"posterior collapse: {state} since step {self.first_low_step}, patience {self.patience}; "
                "the decoder ignores z -- try a lower beta, KL warm-up (annealing), or a weaker decoder")

    def state_dict(self) -> dict:
        return {"low_count": self.low_count, "first_low_step": self.first_low_step, "last_kl": self.last_kl,
                "last_step": self.last_step, "active_dims": self.active_dims}

    def load_state_dict(self, state: dict) -> None:
        """Restore the counters; threshold and patience stay those of the (possibly edited) config."""
        self.low_count = int(state["low_count"])
        self.first_low_step = int(state["first_low_step"])
        self.last_kl = float(state["last_kl"])
        self.last_step = int(state["last_step"])
        self.active_dims = int(state.get("active_dims", -1))
