"""VAE test metrics: the IWAE bound, the ELBO, active units, and float64 sums reduced across ranks.

Noise. Every image gets its own stream of latent noise, from a numpy generator seeded by a per-image
seed: pass `seeds` (e.g. `base_seed * 1_000_003 + global_test_index`) and an image's bound does not
depend on which rank, batch or chunk size it was computed with, so metrics are the same on 1 or 8
GPUs. Without `seeds` they are drawn from `generator` (a torch.Generator; torch's global RNG when
None): deterministic, but tied to the batch. The stream is consumed in order, so the first latent of
an image is the same in `elbo` and in `iwae_bound` for any k.

Likelihood. recon="bce" is the Bernoulli log-likelihood -BCE summed over pixels, the training loss.
It is a normalised density only for binary images: on grey-level MNIST the "log p(x)" it gives is
not comparable with binarised-MNIST numbers from the literature (only with runs evaluated the same
way). recon="gaussian" is N(x; decoder(z), I) summed over pixels, a true density with unit variance.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from gen_dist.distributed.collectives import all_reduce_sum

LOG_2PI = math.log(2 * math.pi)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """float32 or float64: half-precision logs and sums over 784 pixels lose whole nats."""
    return t if t.dtype == torch.float64 else t.float()


def _image_rngs(batch: int, seeds, generator: Optional[torch.Generator]) -> list[np.random.Generator]:
    if seeds is None:
        seeds = torch.randint(0, 2**62, (batch,), generator=generator)
    seeds = [int(s) for s in torch.as_tensor(seeds).reshape(-1).tolist()]
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for {batch} images")
    # numpy streams are draw-size invariant (n then m draws == n + m draws), which torch's CPU
    # normal_ is not (it refills in blocks of 16): that is what makes chunking exact.
    return [np.random.default_rng(abs(s)) for s in seeds]


def _draw(rngs: list[np.random.Generator], n: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    """The next n latent draws of every image: [n, B, dim], float64 draws cast to like's dtype."""
    eps = np.stack([r.standard_normal((n, dim)) for r in rngs], axis=1)
    return torch.from_numpy(eps).to(like.device, like.dtype)


def log_likelihood(recon: torch.Tensor, x: torch.Tensor, recon_kind: str = "bce") -> torch.Tensor:
    """log p(x|z) per image, summed over pixels: recon [..., C, H, W] and x (broadcastable) in [0, 1]."""
    recon = _wide(recon)
    x = x.to(recon.dtype).expand_as(recon)
    if recon_kind == "bce":
        ll = -F.binary_cross_entropy(recon, x, reduction="none")
    elif recon_kind == "gaussian":
        ll = -0.5 * ((x - recon) ** 2 + LOG_2PI)
    else:
        raise ValueError(f"unknown likelihood {recon_kind!r}; expected 'bce' or 'gaussian'")
    return ll.flatten(-3).sum(-1)


def kl_dims(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per image and latent dimension [B, Z], keeping float64 inputs float64."""
    mu, logvar = _wide(mu), _wide(logvar)
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


def kl_per_dimension(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean KL per latent dimension over the batch [Z], nats."""
    return kl_dims(mu, logvar).mean(0)


@torch.no_grad()
def iwae_bound(vae, x: torch.Tensor, k: int, chunk: int = 256, generator: Optional[torch.Generator] = None,
               recon: str = "bce", seeds=None) -> torch.Tensor:
    """IWAE bound (Burda et al. 2016) per image [B], float64 nats:

        log p(x) >= log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x),   z_i ~ q(z|x)

    k = 1 is a single-sample ELBO estimate (with a sampled KL); the bound tightens as k grows.
    `chunk` importance samples per image are decoded per pass (chunk x B images in memory) and
    combined with a running logsumexp, so k = 5000 needs no more memory than k = chunk.
    """
    if k < 1 or chunk < 1:
        raise ValueError(f"k and chunk must be >= 1, got k={k}, chunk={chunk}")
    mu, logvar = vae.encoder(x)
    rngs = _image_rngs(len(x), seeds, generator)
    total = torch.full((len(x),), -math.inf, dtype=torch.float64, device=x.device)
    done = 0
    while done < k:
        n = min(chunk, k - done)
        eps = _draw(rngs, n, mu.shape[1], mu)  # [n, B, Z]
        z = mu + eps * torch.exp(0.5 * logvar)
        log_px = log_likelihood(vae.decoder(z.flatten(0, 1)).unflatten(0, (n, len(x))), x, recon)
        log_pz = -0.5 * (_wide(z).pow(2) + LOG_2PI).sum(-1)
        # log q(z|x) through eps, not (z - mu) / sigma: exact for any sigma
        log_qz = -0.5 * (_wide(eps).pow(2) + _wide(logvar) + LOG_2PI).sum(-1)
        log_w = (log_px + log_pz - log_qz).double()
        total = torch.logaddexp(total, torch.logsumexp(log_w, 0))
        done += n
    return total - math.log(k)


@torch.no_grad()
def elbo(vae, x: torch.Tensor, generator: Optional[torch.Generator] = None, recon: str = "bce",
         seeds=None) -> torch.Tensor:
    """Single-sample ELBO per image [B] = -(BCE summed over pixels + analytic KL), nats, float64.

    Same noise as the first sample of `iwae_bound` with the same generator state / seeds.
    """
    mu, logvar = vae.encoder(x)
    eps = _draw(_image_rngs(len(x), seeds, generator), 1, mu.shape[1], mu)[0]
    ll = log_likelihood(vae.decoder(mu + eps * torch.exp(0.5 * logvar)), x, recon)
    return (ll - kl_dims(mu, logvar).sum(1)).double()


def active_units(mu_all: torch.Tensor, threshold: float = 0.01) -> int:
    """Burda et al.'s active units: dimensions u with Var_x(E_q[z_u | x]) > threshold.

    mu_all [N, Z] holds the encoder means of N images (unbiased variance). This measures whether
    the encoder's mean *moves with x*; `active_units_kl` instead counts dimensions whose average
    KL exceeds a threshold, which a dimension with a constant but off-prior posterior also passes.
    """
    mu_all = mu_all.double()
    if len(mu_all) < 2:
        raise ValueError("active units need the means of at least 2 images")
    return int((mu_all.var(0, unbiased=True) > threshold).sum())


def active_units_kl(kl_per_dim: torch.Tensor, threshold: float = 0.01) -> int:
    """Dimensions whose mean KL [Z] (nats, e.g. `kl_per_dimension`) exceeds `threshold`."""
    return int((torch.as_tensor(kl_per_dim) > threshold).sum())


class VAEMetricSums:
    """Per-image test metrics summed in float64, reducible across ranks.

    Each rank `update`s with its own images, then `all_reduce()` once; `result()` is the same on
    every rank and, up to float64 rounding, whatever the number of ranks (every statistic is a sum
    over images; active units use sum and sum of squares of mu).
    """

    _SCALARS = ("count", "mse", "bce", "kl")

    def __init__(self, latent_dim: int, iwae_ks: Iterable[int] = (), device: torch.device | str = "cpu",
                 prefix: str = "test/", au_threshold: float = 0.01):
        self.latent_dim, self.iwae_ks = latent_dim, tuple(int(k) for k in iwae_ks)
        self.prefix, self.au_threshold = prefix, au_threshold
        # one flat buffer so that all_reduce is a single collective
        n = len(self._SCALARS) + len(self.iwae_ks) + 3 * latent_dim
        self.buf = torch.zeros(n, dtype=torch.float64, device=torch.device(device))

    def _views(self):
        s, k, z = len(self._SCALARS), len(self.iwae_ks), self.latent_dim
        b = self.buf
        return b[:s], b[s : s + k], b[s + k : s + k + z], b[s + k + z : s + k + 2 * z], b[s + k + 2 * z :]

    def update(self, x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
               iwae: Optional[dict[int, torch.Tensor]] = None) -> "VAEMetricSums":
        """Add a batch: images x and reconstructions in [0, 1], encoder (mu, logvar), and the per-image
        IWAE bounds {k: [B]} for every k given at construction."""
        iwae = iwae or {}
        if set(iwae) != set(self.iwae_ks):
            raise ValueError(f"IWAE bounds for k={sorted(iwae)}, expected k={list(self.iwae_ks)}")
        scalars, iw, kl_sum, mu_sum, mu_sq = self._views()
        dev = self.buf.device
        kl = kl_dims(mu, logvar).double().to(dev)
        mse = (_wide(recon) - _wide(x)).pow(2).flatten(1).mean(1)
        bce = -log_likelihood(recon, x, "bce")
        scalars += torch.stack([torch.tensor(float(len(x)), dtype=torch.float64, device=dev),
                                mse.double().sum().to(dev), bce.double().sum().to(dev), kl.sum()])
        for i, k in enumerate(self.iwae_ks):
            iw[i] += iwae[k].double().sum().to(dev)
        m = mu.double().to(dev)
        kl_sum += kl.sum(0)
        mu_sum += m.sum(0)
        mu_sq += m.pow(2).sum(0)
        return self

    @torch.no_grad()
    def update_model(self, vae, x: torch.Tensor, seeds=None, generator: Optional[torch.Generator] = None,
                     chunk: int = 256) -> "VAEMetricSums":
        """Run the VAE on x (one latent sample per image, the first of its noise stream) and add it,
        with the IWAE bounds for every configured k. Pass per-image `seeds` for rank invariance."""
        if seeds is None:  # fix the seeds once so the reconstruction and every k share the streams
            seeds = torch.randint(0, 2**62, (len(x),), generator=generator)
        mu, logvar = vae.encoder(x)
        eps = _draw(_image_rngs(len(x), seeds, None), 1, mu.shape[1], mu)[0]
        recon = vae.decoder(mu + eps * torch.exp(0.5 * logvar))
        iwae = {k: iwae_bound(vae, x, k, chunk=chunk, seeds=seeds) for k in self.iwae_ks}
        return self.update(x, recon, mu, logvar, iwae)

    def merge(self, other: "VAEMetricSums") -> "VAEMetricSums":
        """Add another accumulator's images (same latent_dim and ks) to this one."""
        if other.buf.shape != self.buf.shape or other.iwae_ks != self.iwae_ks:
            raise ValueError("cannot merge VAEMetricSums with different latent_dim or iwae_ks")
        self.buf += other.buf.to(self.buf.device)
        return self

    def all_reduce(self) -> "VAEMetricSums":
        """Sum over ranks in place (no-op when not distributed). Call exactly once, after the last update."""
        all_reduce_sum(self.buf)
        return self

    @property
    def count(self) -> int:
        return int(self._views()[0][0].item())

    def result(self) -> dict:
        """Per-image means (nats; mse per pixel). Values are None when no image was added."""
        (count, mse, bce, kl), iw, kl_sum, mu_sum, mu_sq = [v.cpu() for v in self._views()]
        n, p = float(count), self.prefix
        if n == 0:
            return {p + key: None for key in ("mse", "recon_bce", "kl", "elbo", "active_units",
                                              "active_units_kl", "kl_per_dim",
                                              *(f"iwae_k{k}" for k in self.iwae_ks))} | {p + "images": 0}
        kl_dim = kl_sum / n
        out = {
            p + "mse": float(mse / n),  # per pixel, images in [0, 1]
            p + "recon_bce": float(bce / n),
            p + "kl": float(kl / n),
            p + "elbo": float(-(bce + kl) / n),  # single-sample ELBO; test/loss elsewhere is its negative
        }
        for i, k in enumerate(self.iwae_ks):
            out[p + f"iwae_k{k}"] = float(iw[i] / n)
        if n >= 2:  # unbiased variance of the encoder means over images, as `active_units`
            var = (mu_sq - mu_sum.pow(2) / n) / (n - 1)
            out[p + "active_units"] = int((var > self.au_threshold).sum())
        else:
            out[p + "active_units"] = None
        out[p + "active_units_kl"] = active_units_kl(kl_dim, self.au_threshold)
        out[p + "kl_per_dim"] = [float(v) for v in kl_dim]
        out[p + "images"] = int(n)
        return out
