"""A study file: its `study:` section (name, baselines, the VAE-GAN config, lambdas, variants) and the
shared gen_dist settings every model gets, resolved into one config per model (launch/ablate.py runs
them, report.py compares them).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gen_dist.config import Config, load_config
from gen_dist.errors import ConfigError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # also a folder name


@dataclass
class ModelSpec:
    name: str
    config: Optional[str] = None  # relative to the study file; variants default to study.vaegan
    overrides: List[str] = field(default_factory=list)  # key=value, as on the command line


@dataclass
class StudySpec:
    name: Optional[str] = None  # W&B group and report title; default: the study file's name
    baselines: List[ModelSpec] = field(default_factory=list)  # role from the kind: baseline VAE / GAN
    vaegan: Optional[str] = None  # the VAE-GAN config trained at every lambda, as vaegan_l<lambda>
    lambdas: List[float] = field(default_factory=list)
    variants: List[ModelSpec] = field(default_factory=list)  # more VAE-GAN runs: a name and overrides


def _flatten(node, prefix: str = "") -> list[str]:
    """A nested mapping -> dotted key=value items (values as JSON, which the override parser reads)."""
    if isinstance(node, dict):
        return [item for k, v in node.items() for item in _flatten(v, f"{prefix}{k}.")]
    return [f"{prefix[:-1]}={json.dumps(node)}"]


def load_study(path: str, overrides: list[str]) -> tuple[StudySpec, list[tuple[ModelSpec, str]], list[str], Path]:
    """-> the study, [(model, its role)], the overrides every model gets, the study folder."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"study file '{path}' not found: pass --config configs/ablation_<data>.yaml")
    try:
        raw = OmegaConf.load(file)
    except Exception as e:
        raise ConfigError(f"study file '{path}' is not valid YAML ({str(e).splitlines()[0]}): fix its syntax")
    study_over = [o for o in overrides if o.startswith("study.")]
    common_over = [o for o in overrides if not o.startswith("study.")]
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not key=value: write it like train.epochs=1")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(StudySpec), raw.pop("study", {}) or {},
                                 OmegaConf.from_dotlist([o[len("study."):] for o in study_over]))
        study: StudySpec = OmegaConf.to_object(merged)  # type: ignore[assignment]
        common = OmegaConf.to_container(raw, resolve=False)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"bad study setting 'study.{key}' in '{path}' ({str(e).splitlines()[0]}): "
                          "see configs/ablation_mnist.yaml for the keys") from None
    study.name = study.name or file.stem
    folder = file.parent
    models: list[tuple[ModelSpec, str]] = [(m, "baseline") for m in study.baselines]
    if study.lambdas and not study.vaegan:
        raise ConfigError("study.lambdas given without study.vaegan: name the VAE-GAN config to train at each lambda")
    for lam in study.lambdas:
        models.append((ModelSpec(f"vaegan_l{lam:g}", study.vaegan, [f"loss.adv_lambda={lam}"]), "VAE-GAN"))
    for v in study.variants:
        models.append((ModelSpec(v.name, v.config or study.vaegan, list(v.overrides)), "variant"))
    if not models:
        raise ConfigError(f"study '{study.name}' has no models: add study.baselines, study.lambdas or study.variants")
    names = [m.name for m, _ in models]
    for m, _ in models:
        if not NAME.match(m.name or ""):
            raise ConfigError(f"study model name '{m.name}' is not a plain folder name: use letters, digits, . _ -")
        if not m.config:
            raise ConfigError(f"study model '{m.name}' names no config: give it config: <file>.yaml")
        m.config = str(folder / m.config)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"study models named twice: {', '.join(dupes)}: give every model its own name")
    common_items = _flatten(common) + common_over
    probe = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.from_dotlist(
        [i for i in common_items if i.startswith(("run.dir=", "data.root="))]))
    study_dir = Path(str(OmegaConf.select(probe, "run.dir")))
    if study_dir == Path(Config().run.dir):  # none given: the study's own folder
        study_dir = Path("runs") / study.name
    return study, models, common_items, study_dir


def model_config(spec: ModelSpec, common: list[str], study: StudySpec, study_dir: Path) -> Config:
    """The model's config file < the study's shared settings and command-line overrides < the model's
    own overrides (its lambda, its variant) < where it runs (run.dir/<name>, the W&B group)."""
    forced = [f"run.dir={study_dir / spec.name}", f"run.name={study.name}-{spec.name}",
              f"tracking.group={study.name}"]
    try:
        return load_config(spec.config, common + list(spec.overrides) + forced)
    except ConfigError as e:
        raise ConfigError(f"study model '{spec.name}': {e}") from None


def role_of(spec_role: str, cfg: Config) -> str:
    """A model's role in the report: a baseline's from its kind, the others' as the study names them."""
    if spec_role == "baseline":
        return {"vae": "baseline VAE", "gan": "baseline GAN", "vaegan": "VAE-GAN"}[cfg.model.kind]
    return spec_role


@dataclass
class ModelRun:
    """One model of the study: its name, resolved config and where it ran."""

    name: str
    cfg: object  # gen_dist.config.Config
    role: str  # "baseline VAE" | "baseline GAN" | "VAE-GAN" | "variant"
    metrics: dict = field(default_factory=dict)  # the final evaluation (filled by load_results)
    curves: dict = field(default_factory=dict)  # loss name -> ([steps], [values])
    alarms: int = 0  # evaluations that raised the mode-collapse alarm
    collapse: bool = False  # posterior collapse was detected
    seconds: float | None = None  # wall time from the first to the last metrics row (a resumed run: with the gap)
    finished: bool = False

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run.dir)

    @property
    def vae_type(self) -> bool:
        return self.cfg.model.kind in ("vae", "vaegan")

    @property
    def lam(self) -> float | None:
        return float(self.cfg.loss.adv_lambda) if self.cfg.model.kind == "vaegan" else None

    @property
    def generator_curve(self) -> str:
        """The loss the generator side minimises: the one whose smoothness the seed asks about."""
        return {"vae": "loss/vae", "gan": "loss/G", "vaegan": "loss/EG"}[self.cfg.model.kind]


def is_finished(run_dir: Path) -> bool:
    """A run that reached its last step writes checkpoints/final.pt (an interrupted one does not)."""
    return (Path(run_dir) / "checkpoints" / "final.pt").is_file()


def select(runs: list[ModelRun], only: str) -> ModelRun:
    """--only: a model by name, or by its index in --list (a Slurm array task)."""
    if only.isdigit() and int(only) < len(runs):  # a Slurm array index
        return runs[int(only)]
    for r in runs:
        if r.name == only:
            return r
    raise ConfigError(f"--only {only}: no such model; the study has {', '.join(r.name for r in runs)} "
                      f"(or an index 0..{len(runs) - 1})")


def study_runs(path: str, overrides: list[str]) -> tuple[StudySpec, Path, list[ModelRun]]:
    """The study, its folder and its models, every model's config checked before anything trains."""
    study, specs, common, study_dir = load_study(path, overrides)
    runs = []
    for spec, role in specs:
        cfg = model_config(spec, common, study, study_dir)
        runs.append(ModelRun(spec.name, cfg, role_of(role, cfg)))
    return study, study_dir, runs
