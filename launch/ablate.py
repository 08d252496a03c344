"""The VAE-GAN study: a baseline VAE, a baseline GAN and the VAE-GAN at several lambdas (plus named
variants), trained with the same budget and seed, evaluated alike, compared in run.dir/report.md.

    # every model, one after another, then the report (one process, or N with accelerate launch)
    python launch/ablate.py --config configs/ablation_mnist.yaml
    ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 \
        launch/ablate.py --config configs/ablation_mnist.yaml train.epochs=1
    # the models, one a line (a Slurm array task takes one): slurm/ablate.sbatch
    python launch/ablate.py --config configs/ablation_mnist.yaml --list
    python launch/ablate.py --config configs/ablation_mnist.yaml --only vaegan_l0.5    # or --only 3
    python launch/ablate.py --config configs/ablation_mnist.yaml --report-only

A study file has a `study:` section (name, baselines, the VAE-GAN config, lambdas, variants); every
other key is a gen_dist config value given to every model (seed, budget, evaluation). key=value
overrides: `study.*` keys change the study (study.lambdas=[0,1]); any other key is given to every model
(train.epochs=1, run.dir=runs/x). Model i trains in run.dir/<name>/ as an ordinary gen_dist run (W&B
group = the study's name); a model whose checkpoints/final.pt exists is skipped, so an interrupted
study resumes where it stopped. Exit status: 0 done, 2 bad config or input, other: a crash.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from omegaconf import OmegaConf  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from gen_dist.config import Config, load_config  # noqa: E402
from gen_dist.errors import ConfigError, UserError  # noqa: E402
from gen_dist.study.report import ModelRun, build_report, is_finished  # noqa: E402

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


def _role(spec_role: str, cfg: Config) -> str:
    if spec_role == "baseline":
        return {"vae": "baseline VAE", "gan": "baseline GAN", "vaegan": "VAE-GAN"}[cfg.model.kind]
    return spec_role


def _select(runs: list[ModelRun], only: str) -> ModelRun:
    if only.isdigit() and int(only) < len(runs):  # a Slurm array index
        return runs[int(only)]
    for r in runs:
        if r.name == only:
            return r
    raise ConfigError(f"--only {only}: no such model; the study has {', '.join(r.name for r in runs)} "
                      f"(or an index 0..{len(runs) - 1})")


def train_model(run: ModelRun) -> str | None:
    """Train one model in this process (every rank); returns the trainer's stop reason (None: done).
    The process group stays up for the next model: re-creating a destroyed one raced (a rank that got
    there first read the previous group's rendezvous keys and the other hung)."""
    from gen_dist.training.preflight import preflight
    from gen_dist.training.trainer import Trainer

    preflight(run.cfg)
    trainer = Trainer(run.cfg)
    trainer.train(end_process_group=False)
    return trainer.stop_reason


def end_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # every rank done with the last model before the group goes
        dist.destroy_process_group()


def train_models(todo: list[ModelRun], main_process: bool) -> bool:
    """Train the models that have not finished, in order; False when one was preempted (run the same
    command again to go on from it)."""
    for r in todo:
        if is_finished(r.run_dir):
            if main_process:
                print(f"ablate: {r.name} already finished ({r.run_dir}/checkpoints/final.pt): skipped", flush=True)
            continue
        if main_process:
            print(f"ablate: training {r.name} in {r.run_dir}", flush=True)
        stop = train_model(r)
        if stop is not None and stop.startswith("preempted"):
            if main_process:
                print(f"ablate: {r.name} stopped ({stop}); run the same command again to continue", flush=True)
            return False
        if stop is not None and main_process:  # e.g. posterior collapse with eval.collapse_stop=true
            print(f"ablate: {r.name} stopped early ({stop}); the report marks it not finished", flush=True)
    return True


def make_report(study: StudySpec, study_dir: Path, runs: list[ModelRun], argv: list[str]) -> Path:
    from gen_dist.data import prepare_sources

    sources = prepare_sources(runs[0].cfg.data, train=False)  # the test images reconstructed in the report
    command = "launch/ablate.py " + " ".join(argv)
    path = build_report(study.name, study_dir, runs, sources.test.images, command=command)
    from gen_dist.human_eval.report import add_to_study_report  # human scores, when study_dir has human_eval.sqlite

    add_to_study_report(study_dir, path)
    print(f"ablate: report written to {path} (and {path.with_suffix('.html')})", flush=True)
    return path


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config", required=True, help="study file, e.g. configs/ablation_mnist.yaml")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--only", help="train this model only (a name, or its index in --list): one array task")
    what.add_argument("--report-only", action="store_true", help="write the report from the runs there are")
    what.add_argument("--list", action="store_true", help="print the models (index, name, run folder) and exit")
    parser.add_argument("overrides", nargs="*", help="key=value: study.* for the study, others for every model")
    return parser.parse_intermixed_args(argv)  # options may come after the key=value overrides


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        study, specs, common, study_dir = load_study(args.config, args.overrides)
        runs = []
        for spec, role in specs:  # every model's config checked before anything trains
            cfg = model_config(spec, common, study, study_dir)
            runs.append(ModelRun(spec.name, cfg, _role(role, cfg)))
        if args.list:
            for i, r in enumerate(runs):
                print(f"{i}\t{r.name}\t{r.run_dir}")
            return 0
        main_process = int(os.environ.get("RANK", "0")) == 0
        if not args.report_only:
            todo = [_select(runs, args.only)] if args.only else runs
            complete = train_models(todo, main_process)
            end_process_group()  # (not on an error: a barrier would wait for the rank that failed)
            if args.only or not complete:
                return 0
        if main_process:  # the report reads files: one process writes it
            make_report(study, study_dir, runs, argv)
    except UserError as e:
        print(f"gen_dist: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    return 0


if __name__ == "__main__":
    from gen_dist.distributed.teardown import exit_process

    exit_process(main())
