"""Checks that run before any process group exists, so bad input fails fast with exit 2."""

from __future__ import annotations

import os
from pathlib import Path

from gen_dist.config import Config
from gen_dist.data.datasets import auto_shard_dir, load_arrays
from gen_dist.data.shards import check_shards
from gen_dist.distributed.deepspeed import check_deepspeed
from gen_dist.distributed.launch_env import check_launch_environment
from gen_dist.errors import DataError, UserError


def check_run_dir(path: str) -> None:
    run_dir = Path(path)
    for folder in (run_dir, run_dir / "checkpoints"):  # checkpoints/: when it exists (a resumed run)
        if folder != run_dir and not folder.is_dir():
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write_probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            name = "run.dir" if folder == run_dir else "the checkpoints folder"
            raise UserError(f"{name} '{folder}' is not writable ({e.strerror or e}): make it writable or choose a "
                            "folder you can write, e.g. run.dir=runs/my_run") from None


def check_data(cfg: Config) -> None:
    """The dataset must be readable now, or downloadable later (data.download=true)."""
    if cfg.data.dataset == "dsprites":  # drawn by gen_dist: nothing to read or download
        return
    if cfg.data.dataset == "folder":
        if not Path(cfg.data.root).is_dir():
            raise DataError(f"image folder data.root='{cfg.data.root}' does not exist: "
                            "point data.root at a folder of class subfolders")
        return
    try:
        load_arrays(cfg.data.dataset, cfg.data.root, train=True, download=False)
    except DataError:
        if not cfg.data.download:
            raise
        # absent but downloadable: the main process downloads it once training starts


def check_sources(cfg: Config) -> None:
    """Given shards must exist now; `auto` shards and direct reads need the torchvision source."""
    needs_source = False
    for split, spec in (("train", cfg.data.shards), ("test", cfg.data.test_shards)):
        if spec is None:
            needs_source = True
        elif spec == "auto":
            needs_source |= not (auto_shard_dir(cfg.data, split) / "manifest.json").is_file()
        else:
            check_shards(spec, strict=cfg.data.strict)
    if needs_source:
        check_data(cfg)


def check_metrics(cfg: Config) -> None:
    """Inception Score needs a real classifier: refuse before launch when the weights' fc is zeros."""
    if not (cfg.eval.sample_quality and cfg.eval.inception_score):
        return
    # the metrics package loads pytorch-fid, torchvision and scipy (seconds): only when IS is asked for
    from gen_dist.evaluation.metrics import MetricsError, load_inception

    if load_inception(cfg.eval.inception_weights).fc_is_zero:
        raise MetricsError("eval.inception_score=true but the Inception weights' classifier (fc) is all zeros, "
                           "so IS would always be 1: use pytorch-fid's original weights or eval.inception_score=false")


def preflight(cfg: Config) -> None:
    check_launch_environment(cfg.train.mixed_precision)
    check_deepspeed(cfg)
    check_run_dir(cfg.run.dir)
    check_sources(cfg)
    check_metrics(cfg)
    resume = cfg.train.resume
    if resume not in ("auto", "none") and not Path(resume).exists():
        raise UserError(f"train.resume='{resume}' does not exist: pass a checkpoint file (or a DeepSpeed "
                        "run's step folder), auto or none")
