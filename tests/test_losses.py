"""Loss signs and values against hand computations and the seed's formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gen_dist.training.losses import d_loss, g_loss, gradient_penalty, kl_per_dim, vae_terms


def test_nonsat_equals_the_seeds_sigmoid_bce():
    real, fake = torch.randn(32), torch.randn(32)
    seed_d = nn.BCELoss()(torch.sigmoid(real), torch.ones(32)) + nn.BCELoss()(torch.sigmoid(fake), torch.zeros(32))
    seed_g = nn.BCELoss()(torch.sigmoid(fake), torch.ones(32))
    torch.testing.assert_close(d_loss("nonsat", real, fake), seed_d)
    torch.testing.assert_close(g_loss("nonsat", fake), seed_g)


@pytest.mark.parametrize("kind", ["nonsat", "wgan", "hinge"])
def test_sign_convention_d_scores_real_high(kind):
    good = d_loss(kind, torch.full((8,), 3.0), torch.full((8,), -3.0))
    bad = d_loss(kind, torch.full((8,), -3.0), torch.full((8,), 3.0))
    assert good < bad
    # G wants D to score its samples high
    assert g_loss(kind, torch.full((8,), 3.0)) < g_loss(kind, torch.full((8,), -3.0))


def test_wgan_and_hinge_values_by_hand():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-0.5, 1.5])
    assert d_loss("wgan", real, fake).item() == pytest.approx(0.5 - 1.25)
    # hinge: relu(1-2)=0, relu(1-0.5)=0.5 -> 0.25; relu(1-0.5)=0.5, relu(1+1.5)=2.5 -> 1.5
    assert d_loss("hinge", real, fake).item() == pytest.approx(0.25 + 1.5)
    assert g_loss("hinge", fake).item() == pytest.approx(-0.5)


def test_gradient_penalty_of_a_linear_critic():
    """critic(x) = <w, x>: the gradient is w everywhere, so GP = (||w|| - 1)^2 exactly."""
    w = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)

    def critic(x):
        return (x * w).sum(dim=(1, 2, 3))

    real, fake = torch.randn(5, 2, 1, 1), torch.randn(5, 2, 1, 1)
    gp = gradient_penalty(critic, real, fake, torch.rand(5))
    assert gp.item() == pytest.approx((5.0 - 1.0) ** 2)


def test_vae_terms_equal_the_seeds_loss():
    torch.manual_seed(0)
    x = torch.rand(6, 1, 28, 28)
    recon = torch.sigmoid(torch.randn(6, 1, 28, 28))
    mu, logvar = torch.randn(6, 20), torch.randn(6, 20)
    bce = F.binary_cross_entropy(recon.view(-1, 784), x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    rec, kl = vae_terms(recon, x, mu, logvar, "bce")
    assert rec.shape == kl.shape == (6,)
    torch.testing.assert_close(rec.sum() + kl.sum(), bce + kld)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    assert kl_per_dim(torch.zeros(3, 4), torch.zeros(3, 4)).abs().max() == 0
    assert (kl_per_dim(torch.randn(3, 4), torch.randn(3, 4)) > 0).all()
