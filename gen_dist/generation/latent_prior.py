"""Where a VAE's (or VAE-GAN's) samples come from: N(0, I), or a Gaussian mixture fit to its codes.

Why: the KL term pulls the encoder's posteriors towards N(0, I) but does not make their aggregate
cover it. On MNIST at the main job's budget the posterior means of the training images spread only
~0.7 per dimension (the VAE-GAN) and leave holes: a z drawn from N(0, I) that falls between the
regions the encoder uses decodes to a stroke that is not a digit. Fitting a density to the codes
after training and sampling from it ("ex-post density estimation", Ghosh et al. 2020, the second stage
of Dai & Wipf 2019's two-stage VAE) draws z where the decoder was trained. The decoder is unchanged;
only the latents differ. ``eval.prior=gmm`` applies it to every generated sample of an evaluation
(FID/KID/precision-recall, mode coverage), to the sample grids and to ``launch/sample.py``.

The fit is deterministic: the first ``eval.prior_images`` training images in split order, encoded to
their posterior means in eval mode, EM from a fixed seed, on the main process, and its parameters
broadcast. Sample i's latent is ``mean_k + L_k eps_i`` with ``eps_i`` the standard prior's latent i
(``noise.latents_for``) and component k chosen by a uniform keyed by (seed, i): the same images on any
world size, and a run's standard and mixture samples are paired latent by latent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gen_dist.data import to_model_range
from gen_dist.noise import latents_for, uniforms_for


@dataclass
class GaussianMixturePrior:
    weights: torch.Tensor  # [K], sums to 1
    means: torch.Tensor  # [K, d]
    chol: torch.Tensor  # [K, d, d] lower-triangular Cholesky factors of the covariances

    def latents(self, indices: torch.Tensor, seed: int) -> torch.Tensor:
        """Latent i for each index i (float32 [n, d], on the CPU)."""
        eps = latents_for(indices, self.means.shape[1], seed)
        k = torch.searchsorted(torch.cumsum(self.weights, 0), uniforms_for(indices, seed))
        k = k.clamp(max=len(self.weights) - 1)  # a cumulative sum a rounding short of 1
        return self.means[k] + (self.chol[k] @ eps.unsqueeze(-1)).squeeze(-1)

    def state(self) -> dict:
        return {"weights": self.weights, "means": self.means, "chol": self.chol}

    @classmethod
    def from_state(cls, state: dict) -> "GaussianMixturePrior":
        return cls(state["weights"].float(), state["means"].float(), state["chol"].float())


@torch.no_grad()
def posterior_means(vae, images: torch.Tensor, image_size: int, batch: int = 500) -> torch.Tensor:
    """The encoder's posterior means (float64 [N, d], CPU) of uint8 images, in eval mode."""
    was_training = vae.training
    vae.eval()
    device = next(vae.parameters()).device
    out = []
    for i in range(0, len(images), batch):
        x = to_model_range(images[i : i + batch].to(device), image_size, signed=False)
        out.append(vae.encoder(x)[0].double().cpu())
    vae.train(was_training)
    return torch.cat(out)


def _em(codes: np.ndarray, components: int, seed: int):
    """A full-covariance Gaussian mixture by EM (scikit-learn), k-means initialised from ``seed``: the one
    estimator behind both the fit and the held-out choice, so the choice scores what the fit then builds."""
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(components, covariance_type="full", random_state=seed, max_iter=200,
                           reg_covar=1e-6).fit(codes)


def fit_gmm(codes: torch.Tensor, components: int, seed: int) -> GaussianMixturePrior:
    """The mixture of ``components`` fit to ``codes`` (see ``_em``)."""
    if len(codes) < components:
        from gen_dist.errors import ConfigError

        raise ConfigError(f"eval.prior_components={components} is more than the {len(codes)} training images the "
                          "mixture is fit to: lower eval.prior_components or raise eval.prior_images")
    gmm = _em(codes.numpy(), components, seed)
    return GaussianMixturePrior(torch.from_numpy(gmm.weights_).float(), torch.from_numpy(gmm.means_).float(),
                                torch.from_numpy(np.linalg.cholesky(gmm.covariances_)).float())


def choose_components(codes: torch.Tensor, choices, seed: int) -> tuple[int, dict[int, float]]:
    """``eval.prior_components=0``: the K in ``choices`` whose mixture, fit to the first 80% of the codes,
    gives the other 20% the highest mean log-likelihood per code. A held-out choice on training codes
    alone: no test image and no sample metric is looked at, so it can be made for every model alike.
    Returns K and each candidate's held-out log-likelihood (those with more components than codes are
    left out)."""
    cut = len(codes) * 4 // 5
    fit, held = codes[:cut].numpy(), codes[cut:].numpy()
    scores = {}
    for k in sorted(set(int(c) for c in choices)):
        if k > len(fit):
            continue
        scores[k] = float(_em(fit, k, seed).score(held))
    if not scores:
        from gen_dist.errors import ConfigError

        raise ConfigError(f"every eval.prior_choices value is more than the {len(fit)} codes the choice fits: "
                          "lower eval.prior_choices or raise eval.prior_images")
    return max(scores, key=scores.get), scores


def fit_latent_prior(vae, train_images: torch.Tensor, cfg, engine=None, everywhere: bool = True,
                     components: int = 0) -> GaussianMixturePrior:
    """The mixture of ``eval.prior``, fit on the main process and broadcast (every rank then samples from
    identical parameters, whatever its device's arithmetic). ``everywhere=False``: called on the main
    process alone (the sample grids), nothing is broadcast. ``engine=None``: a single process.
    ``components``: K when already chosen (else ``eval.prior_components``, or the held-out choice when 0)."""
    from accelerate.utils import broadcast_object_list

    main, world = (engine.is_main, engine.world) if engine is not None else (True, 1)
    state = [None]
    if main:
        codes = posterior_means(vae, train_images[: cfg.eval.prior_images], cfg.data.image_size)
        k = components or cfg.eval.prior_components or choose_components(codes, cfg.eval.prior_choices, cfg.seed)[0]
        state[0] = fit_gmm(codes, k, cfg.seed).state()
    if everywhere and world > 1:
        broadcast_object_list(state, from_process=0)
    return GaussianMixturePrior.from_state(state[0])


def prior_of(trained, engine=None) -> GaussianMixturePrior | None:
    """A loaded checkpoint's latent mixture when its config says ``eval.prior=gmm`` (fit to the first
    ``eval.prior_images`` training images, as its evaluation did), else None (N(0, I))."""
    cfg = trained.cfg
    if cfg.eval.prior != "gmm":
        return None
    from gen_dist.data import first_train_images

    return fit_latent_prior(trained.model, first_train_images(cfg.data, None, cfg.eval.prior_images), cfg, engine)
