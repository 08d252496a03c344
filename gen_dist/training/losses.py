"""Losses as pure functions of tensors.

Sign convention (one, everywhere): the discriminator / critic returns a score that is HIGH for
real images. Every function returns a quantity to MINIMISE.

    nonsat  D: softplus(-real) + softplus(fake)   # -log sigmoid(real) - log(1 - sigmoid(fake))
            G: softplus(-fake)                    # -log sigmoid(fake): the non-saturating loss
    wgan    D: fake - real                        G: -fake
    hinge   D: relu(1 - real) + relu(1 + fake)    G: -fake

``nonsat`` equals the seed's ``BCELoss(Sigmoid(D(x)), 1)`` + ``BCELoss(Sigmoid(D(G(z))), 0)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    real, fake = real.float(), fake.float()
    if kind == "nonsat":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "wgan":
        return fake.mean() - real.mean()
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    raise ValueError(f"unknown GAN loss {kind!r}")


def g_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    fake = fake.float()
    if kind == "nonsat":
        return F.softplus(-fake).mean()
    if kind in ("wgan", "hinge"):
        return -fake.mean()
    raise ValueError(f"unknown GAN loss {kind!r}")


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor,
                     labels: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): E[(||grad_x critic(x_hat)||_2 - 1)^2] on random interpolates.

    ``alpha`` [B] comes from the caller so the engine controls the randomness.
    """
    a = alpha.view(-1, *([1] * (real.dim() - 1))).to(real.dtype)
    x_hat = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat, labels) if labels is not None else critic(x_hat)
    (grad,) = torch.autograd.grad(scores.float().sum(), x_hat, create_graph=True)
    return ((grad.float().flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per sample and latent dimension, [B, Z]."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


def vae_terms(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
              recon_kind: str = "bce") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image reconstruction and KL, each [B], summed over pixels / latents (the seed's nats).

    ``recon`` and ``x`` are in [0, 1]; the seed's BCE-sum + KL is ``(rec + kl)`` summed over the batch.
    """
    recon, x = recon.float(), x.float()
    if recon_kind == "bce":
        rec = F.binary_cross_entropy(recon, x, reduction="none")
    elif recon_kind == "mse":
        rec = F.mse_loss(recon, x, reduction="none")
    else:
        raise ValueError(f"unknown reconstruction loss {recon_kind!r}")
    return rec.flatten(1).sum(1), kl_per_dim(mu, logvar).sum(1)


def feature_matching(real_features: torch.Tensor, fake_features: torch.Tensor) -> torch.Tensor:
    """Salimans et al. 2016: ||mean f(x) - mean f(G(z))||^2 over the batch, divided by the number of
    features (so a weight of 1 means the same for any D width). Features [B, F]; the mean is over
    each rank's micro-batch. Zero exactly when the two means agree."""
    diff = real_features.float().mean(0) - fake_features.float().mean(0)
    return diff.pow(2).mean()
