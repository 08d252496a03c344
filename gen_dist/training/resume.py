"""A training run's checkpoints: the state assembled from the trainer's parts, saving it (step_*.pt,
or a DeepSpeed step folder), resuming from it, the seed-format exports (final.pt, best.pt) and the
best-model policy.

The functions take the Trainer: they read its models, optimizers, loader and counters, and resuming
sets them. Saving is collective (every rank's RNG and replay-buffer states are gathered; DeepSpeed
engines write their partitions on every rank); only the main process writes files.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from gen_dist import checkpoint as ckpt
from gen_dist.config import to_dict
from gen_dist.distributed import deepspeed as dss
from gen_dist.distributed.engine import LOCK_FILE
from gen_dist.errors import CheckpointError
from gen_dist.tracking import truncate_metrics


# --- the best model -------------------------------------------------------------------------------
def best_metric_name(cfg, wants_features: bool) -> str:
    """The metric eval.best_metric names; ``auto``: FID when it is computed, else the test loss."""
    name = cfg.eval.best_metric
    if name == "auto":
        name = "fid" if wants_features and cfg.eval.fid else "test/loss"
    return name


def improves(best: dict | None, name: str, metrics: dict) -> bool:
    """Lower is better for every metric best_metric may name."""
    return name in metrics and (best is None or metrics[name] < best["value"])


# --- state --------------------------------------------------------------------------------------
def remedy_state(phases) -> dict:
    """Stateful mode-collapse remedies of the phases (phases/), by name."""
    return {name: obj for phase in phases for name, obj in phase.state.items()}


def engines_of(t) -> dict:
    return {name: m for name, m in (("G", t.G), ("D", t.D)) if m is not None}


def state_of(t) -> dict:
    """The whole resume state (collective: every rank calls it)."""
    e = t.engine
    rng = e.gather_object(ckpt.rng_state())  # every rank's generators: a collective call
    ds = e.deepspeed is not None  # then the engines save their own (partitioned) optimizer states
    for model in (t.G, t.D):
        if model is not None:
            e.broadcast_buffers(model)
    return {
        "format": ckpt.FORMAT, "step": t.step, "images_seen": t.images_seen,
        "data": t.loader.position.as_dict(), "world_size": e.world, "zero_stage": e.zero_stage,
        "models": {"G": e.state_dict(t.G), "D": e.state_dict(t.D) if t.D is not None else None},
        "optimizers": {"G": None if ds else t.opt_g.state_dict(),
                       "D": None if ds or not t.opt_d else t.opt_d.state_dict()},
        "scaler": e.scaler.state_dict() if e.scaler is not None else None,
        "ema": t.ema.state_dict() if t.ema is not None else None,
        "rng": rng, "best": t.best, "wandb_run_id": t.run_id, "config": to_dict(t.cfg),
        "collapse": t.collapse.state_dict(), "loss_history": t.loss_history,
        "nonfinite_skipped": t.nonfinite_skipped,
        # per-rank remedy state (the replay buffers): every rank's, like the RNG states (collective)
        "remedies": {name: e.gather_object(obj.state_dict()) for name, obj in remedy_state(t.phases).items()},
    }


def seed_format(state: dict, ema, metric: dict | None) -> dict:
    """The seed's export: {'G_state', 'D_state', 'optimizerG', 'optimizerD', 'fid'} (+ what made it)."""
    g_state = ema.module.state_dict() if ema is not None else state["models"]["G"]
    return {"G_state": g_state, "D_state": state["models"]["D"],
            "optimizerG": state["optimizers"]["G"], "optimizerD": state["optimizers"]["D"],
            "fid": metric["value"] if metric and metric["metric"] == "fid" else None,
            "metric": metric, "step": state["step"], "config": state["config"]}


# --- saving -------------------------------------------------------------------------------------
def check_finite(t, state: dict, what: str) -> None:
    """Nothing non-finite is written: weights with a NaN/inf stop the run (exit 3) before any file is
    touched, so the healthy checkpoints stay and are not rotated out. The weights are the same on every
    rank (DDP, or gathered), so every rank decides alike."""
    bad = ckpt.nonfinite_tensors({"G": state["models"]["G"], "D": state["models"]["D"], "ema": state["ema"]})
    if bad:
        raise t._nonfinite_error(f"non-finite weights ({', '.join(bad[:3])}) at step {t.step}, not saved as {what}")


def save_checkpoint(t) -> None:
    """step_*.pt (a folder under DeepSpeed), the oldest pruned; final.pt after the last step."""
    state, e = state_of(t), t.engine
    check_finite(t, state, "a step checkpoint")
    if e.deepspeed is not None:  # every rank writes its partitions into one folder, renamed when whole
        dss.save_checkpoint(e, engines_of(t), state, ckpt.step_path(t.ckpt_dir, t.step, deepspeed=True))

    def write():
        if e.deepspeed is None:
            ckpt.atomic_save(state, ckpt.step_path(t.ckpt_dir, t.step))
        ckpt.prune(t.ckpt_dir, t.cfg.train.keep_checkpoints)  # only after the new one is whole
        if t.step == t.max_steps:  # the last model in the seed's format, for inference
            ckpt.atomic_save(seed_format(state, t.ema, None), t.ckpt_dir / "final.pt")

    main_writes(e, write)
    if e.is_main and t.tracker.run is not None and t.tracker.artifacts:
        best_too = t.best is not None and t.best["step"] == t.step
        if best_too:  # save_best wrote this very model as best.pt a moment ago
            log_model(t, ["latest", "best"], written=t.ckpt_dir / "best.pt")
        elif t.step == t.max_steps:
            log_model(t, ["latest"], written=t.ckpt_dir / "final.pt")
        else:
            log_model(t, ["latest"], exported=seed_format(state, t.ema, None))


def log_model(t, aliases: list[str], written: Path | None = None, exported: dict | None = None) -> None:
    """The seed-format model as a W&B artifact version (tracking.wandb_artifacts): ``written``, an export
    already on disk (best.pt, final.pt), as it is; else ``exported`` through a file W&B copies at once.
    Never stops training (the tracker reports a W&B error and carries on)."""
    path = written or t.ckpt_dir / ".wandb_model.pt"
    try:
        if written is None:
            ckpt.atomic_save(exported, path)
        meta = {"step": t.step, "images_seen": t.images_seen, **({"best": t.best} if t.best else {})}
        t.tracker.log_model(path, [*aliases, f"step-{t.step}"], meta)
    except CheckpointError as err:  # a full disk: the step checkpoint above was written, W&B goes without
        warnings.warn(f"W&B model artifact not written: {err}", stacklevel=2)
    finally:
        if written is None:
            path.unlink(missing_ok=True)


def main_writes(e, write) -> None:
    """The main process writes; a failed write (a full disk) stops every rank with its one line (exit 2)."""
    problem = None
    if e.is_main:
        try:
            write()
        except CheckpointError as err:
            problem = str(err)
    problem = e.gather_object(problem)[0]
    if problem:
        err = CheckpointError(problem)
        err.quiet = not e.is_main  # the main process says it
        raise err


def save_best(t) -> None:
    """best.pt (seed format) and best_state.pt (a resume state) for the model ``t.best`` describes."""
    state = state_of(t)
    check_finite(t, state, "best.pt")

    def write():
        ckpt.atomic_save(seed_format(state, t.ema, t.best), t.ckpt_dir / "best.pt")
        ckpt.atomic_save(state, t.ckpt_dir / "best_state.pt")

    main_writes(t.engine, write)
    if t.engine.is_main:
        t.tracker.summarize({f"best/{t.best['metric']}": t.best["value"], "best/step": t.best["step"],
                             "best/images_seen": t.images_seen})
        checkpoint_now = t.step % t.cfg.train.checkpoint_every == 0 or t.step == t.max_steps
        if not checkpoint_now and t.tracker.run is not None and t.tracker.artifacts:  # else logged with "latest"
            log_model(t, ["best"], written=t.ckpt_dir / "best.pt")


# --- resuming -----------------------------------------------------------------------------------
PREVIOUS_PREFIX = "previous_"  # train.overwrite=true moves a run's old outputs into run.dir/previous_<time>/


def run_outputs(run_dir: Path) -> list[Path]:
    """What a run wrote into run.dir that a new run would overwrite or append to."""
    found = [run_dir / "metrics.jsonl"] if (run_dir / "metrics.jsonl").is_file() else []
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir():
        found += sorted(p for p in ckpts.iterdir() if not p.name.startswith("."))
    return found


def start_afresh(t) -> None:
    """train.resume=auto found nothing to resume from: a run.dir holding another run's outputs is never
    overwritten silently (exit 2 naming it and the choices); train.overwrite=true moves them aside."""
    e = t.engine
    outputs = run_outputs(t.run_dir)
    e.barrier()  # every rank has looked before anything moves
    if outputs and not t.cfg.train.overwrite:
        raise CheckpointError(f"run.dir '{t.run_dir}' holds a run's outputs ({', '.join(p.name for p in outputs[:4])}) "
                              "but no intact checkpoint to resume from: choose a fresh run.dir (with train.resume=none), "
                              "or train.overwrite=true to move the old outputs into a previous_<time> subfolder")
    if outputs and e.is_main:
        import time

        aside = t.run_dir / f"{PREVIOUS_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir()
        for item in t.run_dir.iterdir():
            if item != aside and not item.name.startswith(PREVIOUS_PREFIX) and item.name != LOCK_FILE:
                item.rename(aside / item.name)
        print(f"gen_dist: train.overwrite=true: moved the previous outputs of {t.run_dir} to {aside}", flush=True)
    e.barrier()


def apply_optimizer_config(t) -> None:
    """The config wins over a resumed optimizer state: lr, betas and weight_decay of optim.g / optim.d are
    set on every param group (config.yaml records these values), and one line says what changed."""
    changed = []
    for name, opt, c in (("g", t.opt_g, t.cfg.optim.g), ("d", t.opt_d, t.cfg.optim.d)):
        inner = getattr(opt, "optimizer", opt)  # Accelerate's wrapper, a DeepSpeed engine's optimizer
        if inner is None or not hasattr(inner, "param_groups"):
            continue
        want = {"lr": float(c.lr), "betas": tuple(float(b) for b in c.betas), "weight_decay": float(c.weight_decay)}
        for group in inner.param_groups:
            for key, value in want.items():
                if key in group and (tuple(group[key]) if key == "betas" else group[key]) != value:
                    changed.append(f"optim.{name}.{key} {group[key]} -> {value}")
                    group[key] = value
    if changed and t.engine.is_main:
        print(f"gen_dist: resumed optimizer settings replaced by the config: {', '.join(dict.fromkeys(changed))}",
              flush=True)


def restore(t) -> None:
    """train.resume: none, auto (the latest valid checkpoint of the run, if any) or a path."""
    mode = t.cfg.train.resume
    if t.engine.is_main:
        stale = ckpt.remove_stale_temps(t.ckpt_dir)
        if stale:
            print(f"gen_dist: removed {len(stale)} temporary file(s) of unfinished saves from {t.ckpt_dir}: "
                  f"{', '.join(stale[:3])}", flush=True)
    if mode == "none":
        return
    if mode == "auto":
        found = ckpt.latest_valid(t.ckpt_dir)
        if found is None and (t.ckpt_dir / "best_state.pt").is_file():  # the best intact state there is
            try:
                found = t.ckpt_dir / "best_state.pt", ckpt.load(t.ckpt_dir / "best_state.pt")
            except CheckpointError as e:
                warnings.warn(f"skipping {e}", stacklevel=2)
        if found is None:
            start_afresh(t)
            return
        path, state = found
    else:
        path, state = Path(mode), ckpt.load(mode)
    e = t.engine
    dss.check_resumable(state, path, e.world, e.zero_stage)  # the zero stage is None under DDP
    if e.deepspeed is not None:
        dss.load(engines_of(t), Path(state["deepspeed_folder"]))
    else:
        for part, model in (("G", t.G), ("D", t.D)):
            if model is None:
                continue
            if state["models"].get(part) is None:
                raise CheckpointError(f"checkpoint '{path}' has no {part} (another model.kind): resume it with its own "
                                      "config, or start afresh with train.resume=none in a fresh run.dir")
            try:
                e.unwrap(model).load_state_dict(state["models"][part])
            except RuntimeError as err:
                saved = state.get("config", {}).get("model", {})
                detail = next((ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln or "key" in ln),
                              str(err).splitlines()[0])[:160]
                raise CheckpointError(f"checkpoint '{path}' holds another {part} than this config builds ({detail}; "
                                      f"it was trained with {', '.join(f'model.{k}={saved[k]}' for k in ('generator', 'discriminator', 'g_width', 'd_width', 'latent_dim', 'hidden_dim') if k in saved)}): "
                                      "use those values, or a fresh run.dir with train.resume=none") from None
        t.opt_g.load_state_dict(state["optimizers"]["G"])
        if t.D is not None:
            t.opt_d.load_state_dict(state["optimizers"]["D"])
    apply_optimizer_config(t)
    if state["scaler"] is not None and e.scaler is not None:
        e.scaler.load_state_dict(state["scaler"])
    if t.ema is not None and state["ema"] is not None:
        t.ema.load_state_dict(state["ema"])
    t.step, t.images_seen = state["step"], state["images_seen"]
    t.best, t.run_id = state["best"], state["wandb_run_id"]
    t.collapse.load_state_dict(state["collapse"])
    t.loss_history = state["loss_history"]
    t.nonfinite_skipped = state.get("nonfinite_skipped", 0)
    for name, obj in remedy_state(t.phases).items():  # a new world size starts them empty
        saved = state.get("remedies", {}).get(name)
        if saved is not None and state["world_size"] == e.world:
            obj.load_state_dict(saved[e.rank])
    data = state["data"]
    if state["world_size"] == e.world:
        ckpt.set_rng_state(state["rng"][e.rank])
        t.loader.set_position(data["epoch"], data["batches_consumed"])
    else:  # keep the images already consumed this epoch, re-counted in the new global batch
        warnings.warn(f"resuming a {state['world_size']}-process checkpoint on {e.world} processes: "
                      "random streams restart and the epoch position is approximate", stacklevel=2)
        seen = data["batches_consumed"] * state["world_size"]
        t.loader.set_position(data["epoch"], seen // e.world)
    if e.is_main:
        truncate_metrics(t.run_dir, t.step)
        print(f"gen_dist: resumed from {path} at step {t.step}", flush=True)
