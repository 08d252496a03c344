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
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gen_dist.errors import UserError  # noqa: E402
from gen_dist.study.report import build_report  # noqa: E402
from gen_dist.study.spec import ModelRun, StudySpec, is_finished, select, study_runs  # noqa: E402

def train_model(run: ModelRun, label: str = "") -> str | None:
    """Train one model in this process (every rank); returns the trainer's stop reason (None: done).
    The process group stays up for the next model: re-creating a destroyed one raced (a rank that got
    there first read the previous group's rendezvous keys and the other hung)."""
    from gen_dist.training.preflight import preflight
    from gen_dist.training.trainer import Trainer

    preflight(run.cfg)
    trainer = Trainer(run.cfg, label=label)
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
    for i, r in enumerate(todo, 1):
        label = f"{r.name} (model {i}/{len(todo)})"
        if is_finished(r.run_dir):
            if main_process:
                print(f"ablate: {r.name} already finished ({r.run_dir}/checkpoints/final.pt): skipped", flush=True)
            continue
        if main_process:
            print(f"ablate: training {label} in {r.run_dir}", flush=True)
        stop = train_model(r, label)
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
        study, study_dir, runs = study_runs(args.config, args.overrides)  # every model's config checked
        if args.list:
            for i, r in enumerate(runs):
                print(f"{i}\t{r.name}\t{r.run_dir}")
            return 0
        main_process = int(os.environ.get("RANK", "0")) == 0
        if not args.report_only:
            todo = [select(runs, args.only)] if args.only else runs
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
