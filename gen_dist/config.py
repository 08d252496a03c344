"""Typed configuration: YAML file < dotted command-line overrides, checked before anything starts.

Every key has a type and a one-line meaning here; an unknown key, a value of the wrong type or a
value outside its choices is a `ConfigError` (exit 2 in the launchers) naming the key and the fix.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from gen_dist.errors import ConfigError


@dataclass
class RunConfig:
    dir: str = "runs/default"  # output folder: config.yaml, metrics.jsonl, samples/, checkpoints/
    name: Optional[str] = None  # display name in W&B; defaults to the folder's name


@dataclass
class DataConfig:
    dataset: str = "mnist"  # mnist | fashion_mnist | cifar10 | folder
    root: str = "${oc.env:GEN_DIST_DATA,data}"  # torchvision root (MNIST/raw, ...) or image folder
    download: bool = True  # download into root when the data is absent (needs network)
    image_size: int = 28  # images are resized to this square size
    limit: int = 0  # use only the first N training images (0 = all); for quick trials
    shards: Optional[str] = "auto"  # training shards: folder, manifest, brace pattern or URL;
    #   auto = the torchvision source converted once into data.shard_cache; null = no shards
    test_shards: Optional[str] = "auto"  # evaluation shards (test split), same forms
    shard_cache: str = "${oc.env:GEN_DIST_SHARDS,shards}"  # where `auto` writes and finds shards
    samples_per_shard: int = 10000  # shard size for `auto`
    strict: bool = False  # a damaged shard stops the run (naming it) instead of being skipped
    num_workers: int = 2  # shard-reading worker processes per rank (0 = read in the main process)
    # dataset dsprites (gen_dist/data/dsprites.py): drawn by gen_dist, 3 shapes x 6 scales x these
    dsprites_orientations: int = 10  # angles in [0, 2 pi); the real dSprites has 40
    dsprites_positions: int = 16  # values of x and of y; the real dSprites has 32 (40 and 32: 737,280 images)


@dataclass
class ModelConfig:
    kind: str = "vae"  # vae | gan | vaegan: which training steps run
    generator: str = "mlp_vae"  # mlp_vae | conv_vae (kind vae/vaegan) | dcgan (kind gan)
    discriminator: str = "dcgan"  # dcgan | sn (the seed's spectral-norm D); unused for kind vae
    latent_dim: int = 20  # size of z
    hidden_dim: int = 400  # MLP VAE hidden layer (the seed's 400)
    g_width: int = 64  # channels of the generator's / VAE's last conv stage (doubled per stage)
    d_width: int = 64  # channels of the discriminator's first conv stage
    d_norm: str = "batch"  # batch | none | layer: D normalisation (no batch norm with a gradient penalty)
    conditional: bool = False  # class-conditional G and D (label embedding)
    embed_dim: int = 100  # label embedding size concatenated to z (the seed's 100)


@dataclass
class LossConfig:
    gan: str = "nonsat"  # nonsat (the seed's BCE) | wgan | hinge; D scores real high in all three
    gp_weight: float = 0.0  # WGAN-GP gradient-penalty weight (10 in Gulrajani et al.)
    recon: str = "bce"  # bce | mse: VAE reconstruction term
    recon_scale: str = "sum"  # sum: nats per image (the seed's); mean: per pixel (KL divided too)
    beta: float = 1.0  # weight of the KL term (beta-VAE)
    batch_sum: bool = False  # sum the VAE loss over the global batch (the seed's) instead of mean
    adv_lambda: float = 1.0  # VAE-GAN: weight of the adversarial term (the multiplier, when adaptive)
    vaegan_weighting: str = "convex"  # convex: (1-l)*recon + KL + l*adv | additive: recon + KL + l*adv
    vaegan_prior_samples: bool = True  # VAE-GAN: D also sees decoder(z ~ N(0, I)) as fake, and the
    #   decoder's adversarial term covers them (Larsen et al. 2016; what FID and a person look at)
    vaegan_adv_on: str = "both"  # VAE-GAN: what the decoder's adversarial term scores: both (reconstructions
    #   and prior samples) | prior (prior samples only: reconstructions answer to the pixel term alone) | recon
    adv_weight: str = "fixed"  # VAE-GAN: fixed (adv_lambda) | adaptive (Esser et al. 2021: adv_lambda x
    #   ||grad rec|| / ||grad adv|| at the decoder's output layer, averaged over ranks)
    adaptive_max: float = 1.0e4  # upper clamp of the adaptive weight
    disc_start: int = 0  # VAE-GAN: D and the adversarial term start after N steps of plain VAE training
    adv_stop_at_z: bool = True  # VAE-GAN: the adversarial gradient reaches the decoder only (false: the
    #   encoder too, through the reconstruction D scores: the reference lesson's formulation)
    similarity: str = "pixel"  # VAE-GAN reconstruction: pixel (the VAE's term) | learned (Larsen et al.'s
    #   Dis_l: squared distance of D's feature maps) | both
    similarity_layer: int = -1  # D's feature map for learned similarity: 1 = after the first conv block,
    #   -1 = the last (the one before D's head)
    similarity_gamma: float = 1.0  # Larsen's gamma: the reconstruction's weight in the decoder's loss
    #   (the encoder's is 1)
    equilibrium: float = 0.68  # VAE-GAN equilibrium band (pythae's): the centre of D's per-part BCE
    equilibrium_margin: float = 0.0  # half-width of the band; 0 = off (pythae: 0.4). Either part of D's
    #   loss below equilibrium - margin: D skips its update; above equilibrium + margin: the decoder does
    # beta-VAE schedules (VAE and VAE-GAN); step s counts from 1, as metrics.jsonl numbers it
    kl_warmup_steps: int = 0  # beta rises linearly 0 -> loss.beta over N steps: beta * min(1, s/N); 0 = off
    capacity_gamma: float = 0.0  # Burgess et al. 2018: recon + gamma * |KL - C| replaces beta * KL; 0 = off
    capacity_max: float = 25.0  # C_max in nats per image (the KL of one image, summed over latents)
    capacity_steps: int = 100000  # C rises linearly 0 -> capacity_max over N steps: C_max * min(1, s/N)


@dataclass
class AdamConfig:
    lr: float = 2e-4
    betas: List[float] = field(default_factory=lambda: [0.5, 0.999])
    weight_decay: float = 0.0


@dataclass
class OptimConfig:
    g: AdamConfig = field(default_factory=AdamConfig)  # generator / VAE (encoder + decoder)
    d: AdamConfig = field(default_factory=AdamConfig)  # discriminator / critic


@dataclass
class TrainConfig:
    batch_size: int = 128  # per process
    max_steps: int = 0  # optimizer steps of G (or the VAE); 0 = derive from epochs
    epochs: int = 0  # used when max_steps is 0
    n_critic: int = 1  # D steps per G step
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float = 0.0  # max gradient norm per model (0 = off)
    mixed_precision: Optional[str] = None  # no | bf16 | fp16; null = what the launcher says
    ema_decay: float = 0.0  # EMA of the generator / VAE weights (0 = off, e.g. 0.999)
    ema_warmup: bool = False  # decay min(ema_decay, (1+n)/(10+n)) at update n: short runs forget the first weights
    resume: str = "auto"  # auto (latest checkpoint in run.dir) | a checkpoint path | none
    overwrite: bool = False  # resume=auto finding outputs but nothing to resume: move them to run.dir/previous_<time>/
    log_every: int = 10  # steps between metrics.jsonl / W&B scalar rows
    sample_every: int = 500  # steps between sample grids (and at the end)
    checkpoint_every: int = 1000  # steps between checkpoints (and at the end)
    keep_checkpoints: int = 2  # newest step checkpoints kept (best is kept apart)
    progress_bar: bool = True  # tqdm bar on the main process
    nonfinite: str = "stop"  # a NaN/inf loss or gradient: stop (exit 3, nothing saved) | skip (no update that step)
    nonfinite_patience: int = 10  # nonfinite=skip: stop (exit 3) after this many skipped steps in a row


@dataclass
class EvalConfig:
    every: int = 0  # steps between evaluations (0 = only at the end)
    batch_size: int = 256  # per process
    limit: int = 0  # evaluate on the first N test images (0 = all): reconstructions and FID's real side
    best_metric: str = "auto"  # metric that picks the best checkpoint; auto = fid if computed, else test/loss
    # sample quality (Inception features; pytorch-fid's network)
    sample_quality: bool = True  # false skips all Inception-feature metrics (FID, KID, PR, IS) at once
    fid: bool = True  # FID of generated samples against the test split
    num_samples: int = 10000  # generated samples; sample i's latent is seeded by i (any world size)
    # where a VAE's / VAE-GAN's samples come from (gen_dist/generation/latent_prior.py): standard = N(0, I), the
    # lesson's; gmm = a Gaussian mixture fit to the posterior means of the first prior_images training images
    prior: str = "standard"
    # components of the mixture; 0 = the one of prior_choices with the best held-out likelihood of the codes
    prior_components: int = 10
    prior_choices: List[int] = field(default_factory=lambda: [1, 2, 5, 10, 20, 50, 100])
    prior_images: int = 10000
    kid: bool = True  # KID (unbiased, cubic polynomial kernel) over subsets
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    precision_recall: bool = True  # improved precision/recall (Kynkaanniemi et al. 2019)
    pr_k: int = 3  # k of the k-NN radii
    max_features: int = 10000  # raw feature rows kept per set for KID/PR (memory bound)
    inception_score: bool = False  # needs a real classifier (eval.inception_weights with its fc)
    inception_weights: Optional[str] = None  # local FID Inception weights (offline clusters)
    fast_inception: bool = True  # folded BatchNorm, channels_last, grey on 1 channel: same features to ~2e-5
    stats_cache: str = "${oc.env:GEN_DIST_FID_CACHE,fid_stats}"  # real-data feature cache folder
    # VAE
    iwae_k: int = 0  # importance samples for the IWAE bound (0 = off, e.g. 5000)
    iwae_images: int = 1000  # test images the IWAE bound is averaged over (it costs k decodes each)
    collapse_threshold: float = 0.1  # KL per image (nats) below which the posterior counts as collapsed
    collapse_patience: int = 3  # evaluations in a row below the threshold before it is declared
    collapse_stop: bool = True  # stop training (with a checkpoint) when collapse is declared
    # mode coverage (gen_dist/evaluation/metrics/mode_coverage.py): generated samples classified by a small CNN trained
    # on the real training split; classes covered, KL to the real class distribution, a mode-collapse alarm
    mode_coverage: Optional[bool] = None  # null = on for kind gan / vaegan when the dataset has classes
    coverage_samples: int = 2000  # generated samples classified (sample i seeded by i, strided over ranks)
    coverage_alarm: float = 0.5  # alarm when fewer than this fraction of the classes are covered (0 = never)
    classifier_cache: str = "${oc.env:GEN_DIST_CLASSIFIER_CACHE,classifiers}"  # trained classifiers, by data + size
    classifier_epochs: int = 1  # passes over the training split (1: MNIST ~98.7%, Fashion ~88.7% test accuracy)
    classifier_limit: int = 0  # train the classifier on the first N training images only (0 = all; for tests)
    # disentanglement (gen_dist/evaluation/metrics/disentanglement.py; dataset dsprites, kind vae/vaegan): beta-VAE metric
    # (Higgins et al. 2017) and FactorVAE metric (Kim & Mnih 2018) from the encoder's posterior means
    disentanglement: bool = False  # compute disent/betavae and disent/factorvae at each evaluation
    disentanglement_images: int = 0  # test images encoded, the pool every batch is drawn from (0 = whole split)
    disentanglement_train: int = 10000  # classifier training points per metric (disentanglement_lib's 10,000)
    disentanglement_eval: int = 5000  # held-out points whose accuracy is reported (disentanglement_lib's 5,000)
    disentanglement_batch: int = 64  # L: image pairs per beta-VAE point, images per FactorVAE vote


@dataclass
class RemediesConfig:
    """Mode-collapse remedies for kind gan and vaegan (all off by default)."""
    replay_size: int = 0  # experience replay: past fakes kept per rank (0 = off), mixed into D's fake batch
    replay_ratio: float = 0.5  # fraction of each D fake micro-batch taken from the replay buffer
    feature_matching: float = 0.0  # weight of ||mean D-features(real) - mean D-features(fake)||^2 in G's loss
    feature_matching_alone: bool = False  # G's loss is feature matching only (Salimans et al.), no adversarial term
    minibatch_std: bool = False  # minibatch standard-deviation channel before D's head (Karras et al. 2018)
    minibatch_std_group: int = 4  # samples per stddev group, within each rank's micro-batch
    minibatch_disc_kernels: int = 0  # Salimans et al. minibatch discrimination: B kernels (0 = off)
    minibatch_disc_dim: int = 5  # ... each of dimension C
    unrolled_steps: int = 0  # unrolled GAN (Metz et al. 2017): G looks through k D steps (0 = off)


@dataclass
class TrackingConfig:
    wandb: bool = True  # log to Weights & Biases (offline when there is no API key)
    project: str = "gen_dist"
    entity: Optional[str] = None
    group: Optional[str] = None
    mode: str = "auto"  # auto (online with a key, else offline) | online | offline
    tags: List[str] = field(default_factory=list)
    wandb_artifacts: bool = True  # best and latest model (seed format) as W&B artifacts, aliases best / latest


@dataclass
class SpeedConfig:
    """GPU fast paths (gen_dist/training/fast_paths.py): each auto | true | false; auto = on when training on CUDA."""
    channels_last: str = "auto"  # conv weights (and so activations) in NHWC: tensor-core kernels without transposes
    tf32: str = "auto"  # fp32 matmuls/convolutions on TF32 tensor cores (CUDA only; 10-bit mantissa inputs)
    cudnn_benchmark: str = "auto"  # cuDNN autotunes each conv for the (fixed) batch shape (CUDA only)
    fused_adam: str = "auto"  # torch.optim.Adam(fused=True): one kernel for all parameters (CPU too when true)
    compile: str = "auto"  # torch.compile G and D (auto: CUDA without DeepSpeed); a failed compile runs eagerly
    compile_mode: str = "default"  # default | reduce-overhead (CUDA graphs) | max-autotune | max-autotune-no-cudagraphs
    compile_backend: str = "inductor"  # torch.compile backend (inductor; aot_eager to debug)
    device_noise: str = "auto"  # draw training noise on the device (other numbers than the CPU's; see noise.py)


@dataclass
class Config:
    seed: int = 0
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    remedies: RemediesConfig = field(default_factory=RemediesConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)


CHOICES = {
    "data.dataset": ("mnist", "fashion_mnist", "cifar10", "folder", "dsprites"),
    "model.kind": ("vae", "gan", "vaegan"),
    "model.generator": ("mlp_vae", "conv_vae", "dcgan"),
    "model.discriminator": ("dcgan", "sn"),
    "model.d_norm": ("batch", "none", "layer"),
    "loss.gan": ("nonsat", "wgan", "hinge"),
    "loss.recon": ("bce", "mse"),
    "loss.recon_scale": ("sum", "mean"),
    "loss.vaegan_weighting": ("convex", "additive"),
    "loss.vaegan_adv_on": ("both", "prior", "recon"),
    "loss.adv_weight": ("fixed", "adaptive"),
    "loss.similarity": ("pixel", "learned", "both"),
    "eval.prior": ("standard", "gmm"),
    "train.mixed_precision": (None, "no", "bf16", "fp16"),
    "train.nonfinite": ("stop", "skip"),
    "tracking.mode": ("auto", "online", "offline"),
}


def _flat_keys(container: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in container.items():
        full = f"{prefix}{key}"
        keys += _flat_keys(value, full + ".") if isinstance(value, dict) else [full]
    return keys


def _explain(err: OmegaConfBaseException, schema: DictConfig) -> str:
    key = getattr(err, "full_key", None) or "?"
    if isinstance(err, ConfigKeyError) or "not in" in str(err):
        valid = _flat_keys(OmegaConf.to_container(schema, resolve=False))
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "see --print-config for the valid keys"
        return f"unknown config key '{key}': {hint}"
    if isinstance(err, ValidationError):
        expected = getattr(err, "ref_type", None) or getattr(err, "object_type", None)
        msg = str(err).splitlines()[0]
        return f"bad value for '{key}': {msg} (expected {getattr(expected, '__name__', expected)})"
    return f"bad config ({key}): {str(err).splitlines()[0]}"


def _load_yaml_chain(file: Path, seen: tuple = (), included_by: Path | None = None) -> list:
    """A config file may name a `base:` file (relative to itself) whose values it overrides."""
    if not file.is_file() and included_by is not None:
        raise ConfigError(f"config file '{file}' named by 'base:' in '{included_by}' not found: fix the base path "
                          "(relative to the including file)")
    if not file.is_file():
        raise ConfigError(f"config file '{file}' not found: pass --config configs/<run>.yaml")
    if file.resolve() in seen:
        raise ConfigError(f"config file '{file}' includes itself through 'base:': remove the loop")
    try:
        layer = OmegaConf.load(file)
    except Exception as e:  # YAML syntax
        raise ConfigError(f"config file '{file}' is not valid YAML ({str(e).splitlines()[0]}): fix its syntax")
    if not isinstance(layer, DictConfig) or not layer:
        raise ConfigError(f"config file '{file}' is {'empty' if not layer else 'not a mapping of keys'}: "
                          "write sections like 'train: {max_steps: 100}'")
    base = layer.pop("base", None)
    if base is None:
        return [layer]
    return _load_yaml_chain(file.parent / str(base), seen + (file.resolve(),), file) + [layer]


def load_config(path: str | None, overrides: list[str] | None = None, base: dict | None = None,
                training: bool = True) -> Config:
    """YAML file (optional; or `base`, e.g. the config saved in a checkpoint) + dotted overrides
    merged onto the typed schema, then checked."""
    schema = OmegaConf.structured(Config)
    layers = [schema]
    if base is not None:
        layers.append(OmegaConf.create(base))
    if path is not None:
        layers += _load_yaml_chain(Path(path))
    for item in overrides or []:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not key=value: write it like train.batch_size=64")
    try:
        layers.append(OmegaConf.from_dotlist(list(overrides or [])))
        merged = OmegaConf.merge(*layers)
        OmegaConf.resolve(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(_explain(e, schema)) from None
    cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(cfg, training)
    return cfg


def _get(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def validate(cfg: Config, training: bool = True) -> None:
    """Checks that need more than a type: choices, ranges and combinations."""
    if cfg.train.mixed_precision in ("False", "false"):  # YAML reads a bare `no` as false
        cfg.train.mixed_precision = "no"
    for key, choices in CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            shown = " | ".join("null" if c is None else str(c) for c in choices)
            raise ConfigError(f"bad value {key}={value!r}: choose one of {shown}")
    positive = ["train.batch_size", "train.n_critic", "train.grad_accum", "train.log_every",
                "train.sample_every", "train.checkpoint_every", "train.keep_checkpoints",
                "train.nonfinite_patience",
                "eval.batch_size", "data.image_size", "model.latent_dim"]
    for key in positive:
        if _get(cfg, key) < 1:
            raise ConfigError(f"bad value {key}={_get(cfg, key)}: it must be at least 1")
    for key in ["eval.num_samples", "eval.kid_subsets", "eval.kid_subset_size", "eval.pr_k", "eval.max_features",
                "eval.iwae_images", "eval.collapse_patience", "eval.prior_images",
                "eval.coverage_samples", "eval.classifier_epochs"]:
        if _get(cfg, key) < 1:
            raise ConfigError(f"bad value {key}={_get(cfg, key)}: it must be at least 1")
    for key in ["train.max_steps", "train.epochs", "eval.every", "data.limit", "eval.limit", "eval.iwae_k",
                "data.num_workers", "eval.prior_components", "train.grad_clip", "loss.gp_weight", "loss.beta",
                "eval.classifier_limit"]:
        if _get(cfg, key) < 0:
            raise ConfigError(f"bad value {key}={_get(cfg, key)}: it must not be negative")
    for key in ["optim.g.lr", "optim.d.lr", "optim.g.weight_decay", "optim.d.weight_decay", "loss.beta"]:
        if not math.isfinite(_get(cfg, key)) or _get(cfg, key) < 0:
            raise ConfigError(f"bad value {key}={_get(cfg, key)}: it must be a finite number, not negative")
    for key in ["optim.g.betas", "optim.d.betas"]:
        betas = _get(cfg, key)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"bad value {key}={list(betas)}: Adam needs two betas, each in [0, 1), e.g. [0.5, 0.999]")
    if training and cfg.train.max_steps == 0 and cfg.train.epochs == 0:
        raise ConfigError("no training length: set train.max_steps=N or train.epochs=N")
    if not cfg.eval.prior_choices or min(cfg.eval.prior_choices) < 1:
        raise ConfigError(f"bad value eval.prior_choices={list(cfg.eval.prior_choices)}: list the component counts "
                          "eval.prior_components=0 chooses from, each at least 1, e.g. [5,10,20]")
    if not 0.0 <= cfg.eval.coverage_alarm <= 1.0:
        raise ConfigError(f"bad value eval.coverage_alarm={cfg.eval.coverage_alarm}: use a fraction of the classes "
                          "in [0, 1] (0.5: alarm when fewer than half are covered; 0 = never)")
    if not 0.0 <= cfg.train.ema_decay < 1.0:
        raise ConfigError(f"bad value train.ema_decay={cfg.train.ema_decay}: use 0 (off) or a value in (0, 1)")
    if not 0.0 <= cfg.loss.adv_lambda:
        raise ConfigError(f"bad value loss.adv_lambda={cfg.loss.adv_lambda}: it must not be negative")
    if cfg.loss.vaegan_weighting == "convex" and cfg.loss.adv_lambda > 1:
        raise ConfigError("loss.adv_lambda > 1 with convex weighting: use a value in [0, 1] "
                          "or loss.vaegan_weighting=additive")
    for key in ["loss.disc_start", "loss.equilibrium_margin"]:
        if _get(cfg, key) < 0:
            raise ConfigError(f"bad value {key}={_get(cfg, key)}: it must not be negative")
    for key in ["loss.adaptive_max", "loss.similarity_gamma"]:
        if not _get(cfg, key) > 0:
            raise ConfigError(f"bad value {key}={_get(cfg, key)}: it must be positive")
    if cfg.loss.vaegan_adv_on == "prior" and not cfg.loss.vaegan_prior_samples:
        raise ConfigError("loss.vaegan_adv_on=prior needs the prior samples: set loss.vaegan_prior_samples=true "
                          "or loss.vaegan_adv_on=both")
    if cfg.loss.equilibrium_margin > 0 and (cfg.model.kind != "vaegan" or cfg.loss.gan != "nonsat"):
        raise ConfigError("loss.equilibrium_margin is a band on D's BCE (real and fake parts) for the VAE-GAN: "
                          "use it with model.kind=vaegan loss.gan=nonsat, or set loss.equilibrium_margin=0")
    if cfg.loss.adv_weight == "adaptive" and cfg.loss.vaegan_weighting == "convex":
        raise ConfigError("loss.adv_weight=adaptive balances the adversarial term against the whole reconstruction: "
                          "set loss.vaegan_weighting=additive")
    kind, gen = cfg.model.kind, cfg.model.generator
    if kind in ("vae", "vaegan") and gen not in ("mlp_vae", "conv_vae"):
        raise ConfigError(f"model.kind={kind} needs a VAE: set model.generator=mlp_vae or conv_vae")
    if kind == "gan" and gen != "dcgan":
        raise ConfigError("model.kind=gan needs a generator network: set model.generator=dcgan")
    if cfg.loss.gp_weight > 0 and cfg.model.d_norm == "batch":
        raise ConfigError("a gradient penalty with batch norm in D is ill-defined: set model.d_norm=none or layer")
    if cfg.eval.prior == "gmm" and kind == "gan":
        raise ConfigError("eval.prior=gmm fits a mixture to an encoder's codes and a GAN has none: "
                          "use eval.prior=standard with model.kind=gan")
    if cfg.model.conditional and kind != "gan":
        raise ConfigError("model.conditional=true is supported for model.kind=gan only")
    if gen == "conv_vae" or gen == "dcgan" or kind != "vae":
        size = cfg.data.image_size
        if size not in (28, 32, 64, 128):
            raise ConfigError(f"bad value data.image_size={size}: conv models support 28, 32, 64 or 128")
    explicit = [s for s in (cfg.data.shards, cfg.data.test_shards) if s not in (None, "auto")]
    if cfg.data.limit and cfg.data.shards not in (None, "auto"):
        raise ConfigError("data.limit needs data.shards=auto or null (it cannot cut given shards): "
                          "write smaller shards with launch/make_shards.py --limit N")
    if explicit and any(not s.strip() for s in explicit):
        raise ConfigError("empty data.shards / data.test_shards: give a shard folder, manifest, pattern or URL")
    if cfg.data.samples_per_shard < 1:
        raise ConfigError(f"bad value data.samples_per_shard={cfg.data.samples_per_shard}: it must be at least 1")
    _validate_remedies(cfg)
    _validate_disentanglement(cfg)
    _validate_speed(cfg)
    if cfg.data.dataset == "folder" and cfg.data.download:
        cfg.data.download = False  # nothing to download for an image folder


def _validate_disentanglement(cfg: Config) -> None:
    """The dSprites grid and the disentanglement metrics (which need ground-truth factors and an encoder)."""
    for key in ["data.dsprites_orientations", "data.dsprites_positions", "eval.disentanglement_train",
                "eval.disentanglement_eval"]:
        if _get(cfg, key) < 1:
            raise ConfigError(f"bad value {key}={_get(cfg, key)}: it must be at least 1")
    if cfg.eval.disentanglement_images < 0:
        raise ConfigError(f"bad value eval.disentanglement_images={cfg.eval.disentanglement_images}: "
                          "use 0 (the whole test split) or a positive count")
    if cfg.eval.disentanglement_batch < 2:
        raise ConfigError(f"bad value eval.disentanglement_batch={cfg.eval.disentanglement_batch}: a variance "
                          "and a mean difference need batches of at least 2 (64 in the papers' code)")
    if cfg.eval.disentanglement and cfg.data.dataset != "dsprites":
        raise ConfigError(f"eval.disentanglement=true needs ground-truth factors, which data.dataset="
                          f"{cfg.data.dataset} lacks: use data.dataset=dsprites or eval.disentanglement=false")
    if cfg.eval.disentanglement and cfg.model.kind == "gan":
        raise ConfigError("eval.disentanglement=true scores an encoder, which model.kind=gan has none of: "
                          "use model.kind=vae or vaegan, or eval.disentanglement=false")


def _validate_remedies(cfg: Config) -> None:
    """Mode-collapse remedies (section remedies) and the beta-VAE schedules (loss.kl_warmup_steps, capacity_*)."""
    r, loss, kind = cfg.remedies, cfg.loss, cfg.model.kind
    for key in ["remedies.replay_size", "remedies.feature_matching", "remedies.minibatch_disc_kernels",
                "remedies.unrolled_steps", "loss.kl_warmup_steps", "loss.capacity_gamma", "loss.capacity_max",
                "loss.capacity_steps"]:
        if _get(cfg, key) < 0:
            raise ConfigError(f"bad value {key}={_get(cfg, key)}: it must not be negative")
    if not 0.0 < r.replay_ratio <= 1.0:
        raise ConfigError(f"bad value remedies.replay_ratio={r.replay_ratio}: use a fraction in (0, 1]")
    if r.minibatch_std and r.minibatch_std_group < 2:
        raise ConfigError(f"bad value remedies.minibatch_std_group={r.minibatch_std_group}: "
                          "a standard deviation needs groups of at least 2")
    if r.minibatch_disc_kernels and r.minibatch_disc_dim < 1:
        raise ConfigError(f"bad value remedies.minibatch_disc_dim={r.minibatch_disc_dim}: it must be at least 1")
    on = [k for k, v in (("replay_size", r.replay_size), ("feature_matching", r.feature_matching),
                         ("minibatch_std", r.minibatch_std), ("minibatch_disc_kernels", r.minibatch_disc_kernels),
                         ("unrolled_steps", r.unrolled_steps)) if v]
    if on and kind == "vae":
        raise ConfigError(f"remedies.{on[0]} needs a discriminator: use model.kind=gan or vaegan, or turn it off")
    if r.feature_matching_alone and not r.feature_matching:
        raise ConfigError("remedies.feature_matching_alone=true with no feature matching: "
                          "set remedies.feature_matching=1.0 (its weight)")
    if kind == "vaegan" and loss.adv_lambda == 0:
        for key in ("feature_matching", "unrolled_steps"):
            if getattr(r, key):
                raise ConfigError(f"remedies.{key} acts on the adversarial term, which loss.adv_lambda=0 removes: "
                                  "set loss.adv_lambda > 0 or turn the remedy off")
    schedules = loss.kl_warmup_steps or loss.capacity_gamma
    if schedules and kind == "gan":
        raise ConfigError("loss.kl_warmup_steps / loss.capacity_gamma act on a VAE's KL term: "
                          "use model.kind=vae or vaegan")
    if loss.capacity_gamma and loss.kl_warmup_steps:
        raise ConfigError("loss.capacity_gamma and loss.kl_warmup_steps are two schedules for the KL term: "
                          "choose one (set the other to 0)")
    if loss.capacity_gamma and loss.beta != 1.0:
        raise ConfigError(f"loss.capacity_gamma replaces beta * KL with gamma * |KL - C|, so loss.beta="
                          f"{loss.beta} would be ignored: leave loss.beta=1.0")


# the speed.* switches that take auto | true | false (training/fast_paths.py applies them)
SPEED_SWITCHES = ("channels_last", "tf32", "cudnn_benchmark", "fused_adam", "compile", "device_noise")


def _validate_speed(cfg: Config) -> None:
    """speed.*: auto | true | false (YAML booleans arrive as 'True' / 'False'), normalised to lower case."""
    for name in SPEED_SWITCHES:
        value = str(getattr(cfg.speed, name)).lower()
        if value not in ("auto", "true", "false"):
            raise ConfigError(f"bad value speed.{name}={getattr(cfg.speed, name)!r}: choose one of auto | true | false")
        setattr(cfg.speed, name, value)
    modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
    if cfg.speed.compile_mode not in modes:
        raise ConfigError(f"bad value speed.compile_mode={cfg.speed.compile_mode!r}: choose one of {' | '.join(modes)}")


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]
