"""Evaluation, on every rank, with the same numbers whatever the world size.

Real side: the test split (first ``eval.limit`` images), rank r taking images r, r + world, ...;
its Inception statistics (and capped raw features for KID and precision/recall) are cached on disk,
keyed by a hash of the pixels, the preprocessing (image size), the image count and the detector.
Generated side: ``eval.num_samples`` images, sample i from a latent seeded by i, strided over ranks.
A VAE's latents come from N(0, I) or, with ``eval.prior=gmm``, from a Gaussian mixture fit to the
training images' codes at each evaluation (gen_dist/generation/latent_prior.py).
Feature sums are reduced in float64; FID is computed once and broadcast.

VAE side: test reconstruction (BCE, MSE), KL and the ELBO in the seed's nats per image, active
latent dimensions, and optionally the IWAE bound.

Disentanglement (dSprites, ``eval.disentanglement``): the beta-VAE and FactorVAE metrics of the encoder's
posterior means on the test split's ground-truth factors (gen_dist/evaluation/metrics/disentanglement.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from gen_dist.data import to_model_range
from gen_dist.errors import DataError
from gen_dist.generation.images import generate
from gen_dist.noise import latents_for
from gen_dist.progress import Progress

# The metrics (gen_dist.evaluation.metrics) are imported inside the methods that use them: the package
# loads pytorch-fid, torchvision and scipy (seconds), and a run computes only the metrics it asks for.

DETECTOR = "pytorch-fid-inception-v3-pool3"


def strided(n: int, rank: int, world: int, batch: int):
    idx = torch.arange(rank, n, world)
    for i in range(0, len(idx), batch):
        yield idx[i : i + batch]


class Evaluator:
    def __init__(self, cfg, engine, test_set, num_classes: int, progress: Progress | None = None, train=None):
        """``train``: the training split (Dataset or shard spec; None: loaded when needed), which
        ``eval.prior=gmm`` fits its mixture to."""
        self.cfg, self.engine, self.test_set, self.num_classes = cfg, engine, test_set, num_classes
        self._train, self._train_images = train, None
        self.prior = None  # the latent mixture of the latest evaluation (eval.prior=gmm), else None
        # each stage's bar (or, without a terminal, one line with its time) on the main process
        self.progress = progress or Progress(engine.is_main, cfg.train.progress_bar)
        self._inception = None
        self._real = None  # (mu, sigma, features) once computed or loaded
        self._classifier = None  # the mode-coverage classifier once trained or loaded
        if cfg.eval.disentanglement and test_set is not None and getattr(test_set, "factors", None) is None:
            raise DataError("eval.disentanglement=true but the test split carries no ground-truth factors: use "
                            "data.test_shards=auto (or shards written by launch/make_shards.py --dataset dsprites)")

    @property
    def wants_features(self) -> bool:
        e = self.cfg.eval
        return e.sample_quality and (e.fid or e.kid or e.precision_recall or e.inception_score)

    def evaluate(self, model) -> dict:
        metrics: dict = {}
        if self.uses_prior:
            metrics["prior/components"] = len(self.fit_prior(model).weights)
        if self.cfg.model.kind in ("vae", "vaegan"):
            metrics.update(self.vae_metrics(model))
        if self.wants_features:
            metrics.update(self.sample_quality(model))
        if self.wants_coverage:
            metrics.update(self.mode_coverage(model))
        if self.cfg.eval.disentanglement and self.cfg.model.kind in ("vae", "vaegan") and self.test_set is not None:
            metrics.update(self.disentanglement(model))
        return metrics

    # --- latent prior (gen_dist/generation/latent_prior.py) ----------------------------------------------
    @property
    def uses_prior(self) -> bool:
        return self.cfg.eval.prior == "gmm" and self.cfg.model.kind in ("vae", "vaegan")

    def fit_prior(self, vae, everywhere: bool = True):
        """The mixture of the model as it is now, used by every generated sample until the next fit.
        ``everywhere=False``: on the main process alone (the sample grids)."""
        from gen_dist.data import first_train_images
        from gen_dist.generation.latent_prior import fit_latent_prior

        c = self.cfg.eval
        # a grid between evaluations keeps the K the last evaluation chose (a choice costs one fit per candidate)
        k = c.prior_components or (0 if everywhere or self.prior is None else len(self.prior.weights))
        with self.progress.stage(f"latent prior: {f'{k}-component' if k else 'held-out-chosen'} mixture"):
            if self._train_images is None:
                self._train_images = first_train_images(self.cfg.data, self._train, c.prior_images)
            self.prior = fit_latent_prior(vae, self._train_images, self.cfg, self.engine, everywhere, k)
        return self.prior

    def latents(self, idx: torch.Tensor) -> torch.Tensor:
        """Sample i's latent: from the fitted mixture, or the standard prior's."""
        if self.prior is not None:
            return self.prior.latents(idx, self.cfg.seed)
        return latents_for(idx, self.cfg.model.latent_dim, self.cfg.seed)

    # --- disentanglement (gen_dist/evaluation/metrics/disentanglement.py; dSprites) ------------------------
    @torch.no_grad()
    def disentanglement(self, vae) -> dict:
        """beta-VAE and FactorVAE metrics of the encoder's posterior mean on the test split's factors."""
        from gen_dist.evaluation.metrics.disentanglement import disentanglement_metrics

        e, c = self.engine, self.cfg
        n = min(len(self.test_set.images), c.eval.disentanglement_images or len(self.test_set.images))
        was_training = vae.training
        vae.eval()
        device = next(vae.parameters()).device

        def encode(images):
            return vae.encoder(to_model_range(images.to(device), c.data.image_size, signed=False))[0]

        with self.progress.stage("disentanglement metrics"):
            out = disentanglement_metrics(encode, self.test_set.images[:n], self.test_set.factors.classes[:n],
                                          c.model.latent_dim, seed=c.seed, n_train=c.eval.disentanglement_train,
                                          n_eval=c.eval.disentanglement_eval, batch=c.eval.disentanglement_batch,
                                          block=c.eval.batch_size, rank=e.rank, world=e.world, device=e.device)
        vae.train(was_training)
        return out

    # --- mode coverage (gen_dist/evaluation/metrics/mode_coverage.py) ------------------------------------
    @property
    def wants_coverage(self) -> bool:
        on = self.cfg.eval.mode_coverage
        if on is None:  # auto: where modes can collapse (a generator trained by a discriminator)
            on = self.cfg.model.kind in ("gan", "vaegan")
        return bool(on) and self.test_set is not None and self.num_classes >= 2

    def mode_coverage(self, model) -> dict:
        from gen_dist.evaluation.metrics.mode_coverage import class_counts, coverage_metrics, load_or_train

        e, c = self.engine, self.cfg
        if self._classifier is None:
            with e.accelerator.local_main_process_first(), self.progress.stage("mode coverage: classifier"):
                self._classifier = load_or_train(c, self.test_set, e.device)  # trains it once, then cached
        clf = self._classifier
        n = c.eval.coverage_samples
        counts = class_counts(clf.model, self.tracked(self.generated(model, n), "mode coverage: samples", n),
                              len(clf.real_distribution))
        counts = e.reduce_sum(counts.to(e.device)).cpu()  # float64 counts summed over ranks
        out = coverage_metrics(counts, clf.real_distribution, c.eval.coverage_alarm)
        out["coverage/classifier_accuracy"] = clf.accuracy
        return out

    # --- Inception features -------------------------------------------------------------------
    def inception(self):
        if self._inception is None:
            from gen_dist.evaluation.metrics import load_inception

            self._inception = load_inception(self.cfg.eval.inception_weights, self.engine.device,
                                             fast=self.cfg.eval.fast_inception)
        return self._inception

    def features(self, batches):
        """Stats and a capped feature bank over (indices, images in [0, 1]) batches of this rank."""
        from gen_dist.evaluation.metrics import FEATURE_DIM, FeatureBank, FeatureStats, extract_features

        stats = FeatureStats(FEATURE_DIM, self.engine.device)
        bank = FeatureBank(FEATURE_DIM, self.cfg.eval.max_features, self.engine.device)
        for idx, images in batches:
            feats = extract_features(self.inception(), images).double()
            stats.update(feats)
            bank.add(feats.float(), idx)
        return stats.all_reduce(), bank

    def _real_key(self, n: int) -> str:
        pixels = hashlib.sha1(self.test_set.images[:n].numpy().tobytes()).hexdigest()
        detector = self.inception().detector_id  # a hash of the reference first conv's weights, fast or not
        parts = f"{pixels}|size{self.cfg.data.image_size}|n{n}|{DETECTOR}|{detector}|cap{self.cfg.eval.max_features}"
        return hashlib.sha1(parts.encode()).hexdigest()[:20]

    def real_statistics(self):
        """(mu, sigma, gathered features) of the test split: from the cache, or computed and cached."""
        if self._real is not None:
            return self._real
        e, c = self.engine, self.cfg
        n = min(len(self.test_set.images), c.eval.limit or len(self.test_set.images))
        key = self._real_key(n)
        self._real = self.cached_set("real", key)
        if self._real is not None:
            return self._real

        def batches():
            for idx in strided(n, e.rank, e.world, c.eval.batch_size):
                images = self.test_set.images[idx].to(e.device)
                yield idx, to_model_range(images, c.data.image_size, signed=False)

        self._real = self.cache_set("real", key, *self.features(self.tracked(batches(), "Inception: real images", n)))
        return self._real

    def set_key(self, content: str, n: int) -> str:
        """Cache key of a set of n images whose content hashes to `content` (launch/evaluate.py --compare)."""
        parts = f"{content}|n{n}|{DETECTOR}|{self.inception().detector_id}|cap{self.cfg.eval.max_features}"
        return hashlib.sha1(parts.encode()).hexdigest()[:20]

    def _cache_files(self, prefix: str, key: str) -> tuple[Path, Path]:
        stats_file = Path(self.cfg.eval.stats_cache) / f"{prefix}_{key}.npz"
        return stats_file, stats_file.with_suffix(".features.pt")

    def cached_set(self, prefix: str, key: str):
        """(mu, sigma, gathered features) from eval.stats_cache, or None (on every rank alike)."""
        from gen_dist.evaluation.metrics import load_stats

        stats_file, feats_file = self._cache_files(prefix, key)
        cached = load_stats(stats_file, key) if feats_file.is_file() else None
        if self.engine.any_rank(cached is None):  # all ranks must agree, or one would wait in a collective
            return None
        feats = torch.load(feats_file, map_location="cpu", weights_only=True).to(self.engine.device)
        return (*cached, feats)

    def cache_set(self, prefix: str, key: str, stats, bank):
        """(mu, sigma, gathered features) of all-reduced stats and a bank, written to the cache by the main process."""
        from gen_dist.evaluation.metrics import save_stats

        mu, sigma = stats.mean_cov()
        feats = bank.gather()
        if self.engine.is_main:
            stats_file, feats_file = self._cache_files(prefix, key)
            save_stats(stats_file, mu, sigma, key)
            tmp = feats_file.with_name(feats_file.name + ".tmp")
            torch.save(feats.cpu(), tmp)
            tmp.replace(feats_file)
        return mu, sigma, feats

    def generated(self, model, n: int):
        """(indices, images in [0, 1]) of this rank's share of n generated samples, sample i from latent i."""
        e, c = self.engine, self.cfg
        device = next(model.parameters()).device
        for idx in strided(n, e.rank, e.world, c.eval.batch_size):
            z = self.latents(idx).to(device)
            labels = (idx % max(self.num_classes, 1)).to(device)
            yield idx, generate(model, c, z, labels)

    def fake_features(self, model):
        n = self.cfg.eval.num_samples
        return self.features(self.tracked(self.generated(model, n), "Inception: generated samples", n))

    def tracked(self, batches, name: str, n: int):
        """This rank's batches ((indices, images) or indices), counted on the main bar as the batch size x
        world (every rank takes an equal share, so that is the global progress)."""
        def weigh(batch):
            return len(batch[0] if isinstance(batch, tuple) else batch) * self.engine.world

        return self.progress.track(batches, name, n, weigh=weigh)

    def sample_quality(self, model) -> dict:
        from gen_dist.evaluation.metrics import compute_fid

        c = self.cfg.eval
        mu_r, sigma_r, real_feats = self.real_statistics()
        fake_stats, fake_bank = self.fake_features(model)
        out: dict = {}
        if c.fid:
            out["fid"] = compute_fid(fake_stats, (mu_r, sigma_r))
        if c.kid or c.precision_recall or c.inception_score:
            with self.progress.stage("KID, precision/recall"):
                out.update(self._feature_metrics(fake_bank.gather(), real_feats))
        return out

    def _feature_metrics(self, fake_feats, real_feats) -> dict:
        from gen_dist.evaluation.metrics import fid_logits, inception_score, kid, precision_recall

        c, out = self.cfg.eval, {}
        if c.kid:
            out["kid"], out["kid_std"] = kid(fake_feats, real_feats, c.kid_subset_size, c.kid_subsets,
                                             seed=self.cfg.seed)
        if c.precision_recall:
            out["precision"], out["recall"] = precision_recall(real_feats, fake_feats, k=c.pr_k)
        if c.inception_score:
            out["is"], out["is_std"] = inception_score(fid_logits(self.inception(), fake_feats))
        return out

    # --- VAE ----------------------------------------------------------------------------------
    @torch.no_grad()
    def vae_metrics(self, vae) -> dict:
        """Test-split metrics of a VAE (or the VAE half of a VAE-GAN), in the seed's nats per image."""
        from gen_dist.evaluation.metrics import VAEMetricSums, iwae_bound

        cfg, e = self.cfg, self.engine
        was_training = vae.training
        vae.eval()
        n = min(len(self.test_set.images), cfg.eval.limit or len(self.test_set.images))
        n_iwae = min(n, cfg.eval.iwae_images) if cfg.eval.iwae_k else 0
        # one latent noise per test image, from a fixed generator: the same on any world size
        eps_all = torch.randn(n, cfg.model.latent_dim, generator=torch.Generator().manual_seed(cfg.seed + 12345))
        sums = VAEMetricSums(cfg.model.latent_dim, device=e.device)
        iwae = VAEMetricSums(cfg.model.latent_dim, iwae_ks=[cfg.eval.iwae_k] if n_iwae else [], device=e.device)
        for idx in self.tracked(strided(n, e.rank, e.world, cfg.eval.batch_size), "VAE test metrics", n):
            x = to_model_range(self.test_set.images[idx].to(e.device), cfg.data.image_size, signed=False)
            recon, mu, logvar = vae(x, eps_all[idx].to(e.device))
            sums.update(x, recon, mu, logvar)
            sub = idx < n_iwae  # the IWAE bound costs k decodes per image: the first eval.iwae_images only
            if sub.any():
                seeds = cfg.seed * 1_000_003 + idx[sub]  # per image, so any world size draws the same
                bound = iwae_bound(vae, x[sub], cfg.eval.iwae_k, chunk=64, seeds=seeds)
                iwae.update(x[sub], recon[sub], mu[sub], logvar[sub], {cfg.eval.iwae_k: bound})
        out = sums.all_reduce().result()
        if n_iwae:
            sub = iwae.all_reduce().result()
            out[f"test/iwae_k{cfg.eval.iwae_k}"] = sub[f"test/iwae_k{cfg.eval.iwae_k}"]
            out["test/elbo_iwae_images"] = sub["test/elbo"]  # the ELBO on the same images, to compare
        vae.train(was_training)
        pixels = self.test_set.images.shape[1] * cfg.data.image_size ** 2
        rec = out["test/recon_bce"] if cfg.loss.recon == "bce" else out["test/mse"] * pixels
        out["test/loss"] = rec + out["test/kl"]  # negative ELBO per image (the seed's printed loss)
        return out
