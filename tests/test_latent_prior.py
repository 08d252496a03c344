"""eval.prior=gmm (gen_dist/generation/latent_prior.py): a Gaussian mixture fit to a VAE's training codes,
sampled per index. The fit by hand on known clusters; keyed latents on any split; launch/sample.py on one
and two processes equal to decoding the mixture's latents by hand; a training run whose evaluation and
grids use the mixture; the GAN refusal."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, TINY, read_metrics, train
from gen_dist.config import load_config
from gen_dist.data import first_train_images
from gen_dist.errors import ConfigError
from gen_dist.generation.latent_prior import choose_components, fit_gmm, fit_latent_prior, posterior_means
from gen_dist.generation.loading import load_trained
from gen_dist.noise import latents_for

_spec = importlib.util.spec_from_file_location("sample_cli", REPO / "launch" / "sample.py")
sample_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sample_cli)


def test_mixture_recovers_known_clusters_and_latents_are_keyed_by_index():
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[4.0, 0, 0, 0], [-4.0, 0, 0, 0], [0, 4.0, 0, 0]])
    scales = torch.tensor([0.5, 1.0, 0.25])
    counts = [3000, 2000, 1000]
    codes = torch.cat([means[k] + scales[k] * torch.randn(n, 4, generator=g) for k, n in enumerate(counts)]).double()
    prior = fit_gmm(codes, 3, seed=0)
    order = prior.means[:, 0].argsort(descending=True)  # components come in any order: [4,0], [0,4], [-4,0]
    assert torch.allclose(prior.means[order], means[[0, 2, 1]], atol=0.1)
    assert torch.allclose(prior.weights[order], torch.tensor([0.5, 1 / 6, 1 / 3]), atol=0.02)
    stds = torch.stack([torch.diagonal(c @ c.T).sqrt() for c in prior.chol[order]])
    assert torch.allclose(stds, scales[[0, 2, 1]].unsqueeze(1).expand(3, 4), rtol=0.1)

    n = 4000
    z = prior.latents(torch.arange(n), seed=7)
    # sample i depends on (seed, i) only: two ranks' strided shares are the same rows
    assert torch.equal(z[1::2], prior.latents(torch.arange(1, n, 2), seed=7))
    assert not torch.equal(z, prior.latents(torch.arange(n), seed=8))
    # drawn from the mixture: each component's share and spread
    nearest = torch.cdist(z, prior.means).argmin(1)
    share = torch.bincount(nearest, minlength=3).float() / n
    assert torch.allclose(share, prior.weights, atol=0.03)
    # the component's Cholesky factor applied to the standard prior's latent i
    i = int(torch.nonzero(nearest == order[0])[0])
    expected = prior.means[order[0]] + prior.chol[order[0]] @ latents_for(torch.tensor([i]), 4, 7)[0]
    assert torch.allclose(z[i], expected, atol=1e-5)


def test_a_gan_is_refused_and_components_must_fit_the_images():
    with pytest.raises(ConfigError, match="eval.prior=gmm .* a GAN has none"):
        load_config(REPO / "configs" / "dcgan32_mnist.yaml", ["eval.prior=gmm"])
    with pytest.raises(ConfigError, match="eval.prior=wide: choose one of standard | gmm"):
        load_config(REPO / "configs" / "conv_vae_mnist.yaml", ["eval.prior=wide"])
    with pytest.raises(ConfigError, match="more than the 5 training images"):
        fit_gmm(torch.randn(5, 2, dtype=torch.float64), 10, seed=0)


def test_components_chosen_by_held_out_likelihood():
    """eval.prior_components=0: three true clusters give K=3; more components fit the held-out 20% worse."""
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[4.0, 0, 0, 0], [-4.0, 0, 0, 0], [0, 4.0, 0, 0]])
    scales = torch.tensor([0.5, 1.0, 0.25])
    codes = torch.cat([means[k] + scales[k] * torch.randn(n, 4, generator=g) for k, n in enumerate([3000, 2000, 1000])])
    codes = codes[torch.randperm(len(codes), generator=g)].double()  # the held-out part is the last 20%
    k, scores = choose_components(codes, [1, 2, 3, 30], seed=0)
    assert k == 3 and scores[1] < scores[2] < scores[3] and scores[30] < scores[3]
    # by hand: K=3 fit to the first 4,800 codes, scored on the other 1,200 (mean log-likelihood per code)
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(3, covariance_type="full", random_state=0, max_iter=200, reg_covar=1e-6)
    assert scores[3] == pytest.approx(gmm.fit(codes[:4800].numpy()).score(codes[4800:].numpy()), rel=1e-9)
    assert 2000 not in choose_components(codes[:2000], [3, 2000], seed=0)[1]  # more components than codes: skipped
    with pytest.raises(ConfigError, match="every eval.prior_choices value is more than the 80 codes"):
        choose_components(codes[:100], [500], seed=0)
    with pytest.raises(ConfigError, match=r"bad value eval.prior_choices=\[\]"):
        load_config(REPO / "configs" / "conv_vae_mnist.yaml", ["eval.prior_choices=[]"])
    with pytest.raises(ConfigError, match="eval.prior_components=-1: it must not be negative"):
        load_config(REPO / "configs" / "conv_vae_mnist.yaml", ["eval.prior_components=-1"])


@pytest.fixture(scope="module")
def vae_run(data_root, tmp_path_factory) -> Path:
    """A tiny conv VAE trained with eval.prior=gmm on 2 processes: its evaluation and grids use the mixture."""
    run = tmp_path_factory.mktemp("prior_run") / "vae"
    train(data_root, 2, "--config", "configs/conv_vae_mnist.yaml", *TINY, "train.max_steps=6", "train.sample_every=3",
          "eval.every=6", "eval.prior=gmm", "eval.prior_components=3", "eval.prior_images=256",
          "eval.mode_coverage=true", f"run.dir={run}", "tracking.wandb=false")
    return run


def test_training_evaluates_and_draws_grids_from_the_mixture(vae_run):
    rows = [r for r in read_metrics(vae_run) if "coverage/classes_covered" in r]
    assert len(rows) == 1 and rows[0]["step"] == 6  # mode coverage ran on the mixture's samples
    assert rows[0]["prior/components"] == 3
    for step in (3, 6):  # step 3 has no evaluation before it: the grid fit the mixture itself
        caption = Image.open(vae_run / "samples" / f"step_{step:09d}.png").text["caption"]
        assert "samples from the latent mixture" in caption


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def test_sample_cli_draws_the_mixture_on_one_and_two_processes(vae_run, data_root, tmp_path):
    final = vae_run / "checkpoints" / "final.pt"
    one, two, std = tmp_path / "one.png", tmp_path / "two.png", tmp_path / "std.png"
    train(data_root, 1, "--checkpoint", str(final), "--num", "16", "--grid", "--seed", "3", "--batch-size", "4",
          "--out", str(one), script="sample.py")  # the run's eval.prior (gmm) by default
    proc = train(data_root, 2, "--checkpoint", str(final), "--num", "16", "--grid", "--seed", "3", "--batch-size",
                 "4", "--prior", "gmm", "--out", str(two), script="sample.py")
    assert "latents from the fitted mixture, 2 process(es)" in proc.stdout
    assert np.array_equal(_png(one), _png(two))
    train(data_root, 1, "--checkpoint", str(final), "--num", "16", "--grid", "--seed", "3", "--prior", "standard",
          "--out", str(std), script="sample.py")
    assert not np.array_equal(_png(one), _png(std))

    # by hand: the mixture fit to the encoder's means of the first 256 training images, decoded
    trained = load_trained(final)
    cfg = trained.cfg
    codes = posterior_means(trained.model, first_train_images(cfg.data, None, 256), cfg.data.image_size)
    prior = fit_gmm(codes, 3, seed=cfg.seed)
    with torch.no_grad():
        decoded = trained.model.decoder(prior.latents(torch.arange(16), 3))
    pixels = decoded.mul(255).add(0.5).clamp(0, 255).to(torch.uint8)  # save_image's rounding
    grid = _png(one)
    for i in (0, 7, 15):
        r, c = divmod(i, 4)
        tile = grid[2 + r * 30: 2 + r * 30 + 28, 2 + c * 30: 2 + c * 30 + 28]
        assert np.array_equal(tile, pixels[i, 0].numpy())


def test_held_out_choice_is_what_the_evaluation_fits(vae_run):
    """eval.prior_components=0 on a trained VAE: the evaluation's mixture is the one fit by hand with the K
    that choose_components picks from the same codes."""
    trained = load_trained(vae_run / "checkpoints" / "final.pt",
                           ["eval.prior_components=0", "eval.prior_choices=[1,4]"])
    cfg = trained.cfg
    images = first_train_images(cfg.data, None, 256)
    codes = posterior_means(trained.model, images, cfg.data.image_size)
    k, _ = choose_components(codes, [1, 4], seed=cfg.seed)
    prior = fit_latent_prior(trained.model, images, cfg)
    expected = fit_gmm(codes, k, seed=cfg.seed)
    assert len(prior.weights) == k and torch.equal(prior.means, expected.means)
