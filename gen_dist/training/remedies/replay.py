"""Experience replay for D (Shrivastava et al. 2017): a buffer of past generated images, part of which
replaces fresh fakes in D's fake batch, so D keeps penalising modes G has left and G cannot escape D by
hopping between modes.

One buffer per rank, on the device, filled with that rank's own fakes (and their labels for a
conditional GAN, so a replayed image is scored with the class it was generated for). The randomness
(which entries are replayed, where new fakes go once the buffer is full) is uniforms that the caller
derives from the keyed training noise, so it needs no generator state; the buffer's contents are the
only state, saved per rank in the checkpoint (``state_dict``), and a resumed run replays exactly what
the uninterrupted one would.
"""

from __future__ import annotations

import torch


class ReplayBuffer:
    def __init__(self, capacity: int, ratio: float):
        self.capacity, self.ratio = capacity, ratio
        self.images: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.filled = 0

    def mix(self, fake: torch.Tensor, labels: torch.Tensor | None, u: torch.Tensor):
        """Fresh fakes [B, ...] (no graph) -> D's fake batch: the last round(ratio * B) rows are drawn
        from the buffer (once it holds anything), then the fresh fakes are stored. ``u`` [B, 2]:
        uniforms in [0, 1]; column 0 picks the replayed entries, u[0, 1] where new fakes are written."""
        b = fake.shape[0]
        out, out_labels = fake, labels
        k = min(b, round(self.ratio * b))
        if self.filled and k:
            self._to(fake.device)
            idx = (u[:k, 0] * self.filled).long().clamp_(0, self.filled - 1)
            out = torch.cat([fake[: b - k], self.images[idx].to(fake.dtype)])
            if labels is not None:
                out_labels = torch.cat([labels[: b - k], self.labels[idx]])
        self._store(fake, labels, float(u[0, 1]))
        return out, out_labels

    def _store(self, fake: torch.Tensor, labels: torch.Tensor | None, u: float) -> None:
        if self.images is None:
            self.images = torch.empty(self.capacity, *fake.shape[1:], dtype=fake.dtype, device=fake.device)
            self.labels = torch.zeros(self.capacity, dtype=torch.long, device=fake.device)
        self._to(fake.device)
        fake, labels = fake[-self.capacity:], None if labels is None else labels[-self.capacity:]
        n = fake.shape[0]
        free = min(n, self.capacity - self.filled)
        if free:  # still filling: append what fits
            self._write(torch.arange(self.filled, self.filled + free, device=fake.device), fake[:free], labels, 0)
            self.filled += free
        if n > free:  # the rest overwrite a block starting at a random slot, wrapping around: a block
            # rather than random slots, so no slot is written twice (which write wins is unspecified)
            start = min(int(u * self.capacity), self.capacity - 1)
            self._write((start + torch.arange(n - free, device=fake.device)) % self.capacity, fake[free:],
                        labels, free)

    def _write(self, slots: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None, offset: int) -> None:
        self.images[slots] = fake.detach().to(self.images.dtype)
        if labels is not None:
            self.labels[slots] = labels[offset: offset + len(slots)]

    def _to(self, device: torch.device) -> None:
        if self.images is not None and self.images.device != device:
            self.images, self.labels = self.images.to(device), self.labels.to(device)

    def state_dict(self) -> dict:
        if not self.filled:
            return {"filled": 0, "images": None, "labels": None}
        return {"filled": self.filled, "images": self.images[: self.filled].cpu(),
                "labels": self.labels[: self.filled].cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.images, self.labels, self.filled = None, None, 0
        n = min(int(state["filled"]), self.capacity)  # a smaller replay_size on resume keeps the first n
        if n:
            images = state["images"][:n]
            self.images = torch.empty(self.capacity, *images.shape[1:], dtype=images.dtype)
            self.labels = torch.zeros(self.capacity, dtype=torch.long)
            self.images[:n], self.labels[:n] = images, state["labels"][:n]
            self.filled = n
