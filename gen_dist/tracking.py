"""Where numbers and images go: metrics.jsonl always, Weights & Biases when enabled. Main process only.

W&B is a guest: it runs offline when there is no API key (or the online start fails), and any error
it raises later is reported once and then ignored, so logging never stops or crashes training.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import sys
import time
import warnings
from pathlib import Path


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(setting: str) -> str:
    """WANDB_MODE wins; then the config; 'auto' is online only with an API key."""
    env = os.environ.get("WANDB_MODE")
    if env:
        return env
    if setting == "auto":
        return "online" if _has_api_key() else "offline"
    return setting


METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows a run logged to its metrics file, in order ([] when it logged none)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [row for _, row in _rows(path)]


def _rows(path: Path, warn: bool = False) -> list[tuple[str, dict]]:
    """(line, row) for each line of a metrics file; a line that is not JSON (a torn last line: the
    process died mid-write) is dropped, with a warning when ``warn``."""
    out = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((line, json.loads(line)))
        except json.JSONDecodeError:
            if warn:
                warnings.warn(f"{path}: line {n} is not complete JSON (a write cut short), dropped: {line[:60]!r}",
                              stacklevel=3)
    return out


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Rows logged after the checkpoint by the interrupted run are replaced by the resumed run's."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [line for line, row in _rows(path, warn=True) if row.get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(r + "\n" for r in kept))
    tmp.replace(path)


def new_run_id() -> str:
    import secrets

    return secrets.token_hex(4)


def _plain(value):
    """Tensors and numpy scalars -> float; NaN/inf -> None (JSON has no NaN)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Tracker:
    def __init__(self, run_dir: Path, cfg, config_dict: dict, run_id: str, enabled: bool):
        self.enabled = enabled
        self.run_id = run_id
        self.run = None
        self.artifacts = cfg.wandb_artifacts
        if not enabled:
            return
        self.metrics_file = open(run_dir / METRICS_FILE, "a", buffering=1)  # line-buffered: survives a kill
        if cfg.wandb:
            self._start_wandb(run_dir, cfg, config_dict)

    def _start_wandb(self, run_dir: Path, cfg, config_dict: dict) -> None:
        mode = wandb_mode(cfg.mode)
        if mode == "disabled":
            return
        try:
            import wandb

            kwargs = dict(project=cfg.project, entity=cfg.entity, group=cfg.group, tags=list(cfg.tags) or None,
                          name=config_dict["run"]["name"] or run_dir.name, config=config_dict,
                          dir=str(run_dir), id=self.run_id, resume="allow")
            try:
                self.run = wandb.init(mode=mode, settings=wandb.Settings(init_timeout=60, silent=True), **kwargs)
            except Exception as e:
                if mode != "online":
                    raise
                print(f"gen_dist: W&B online start failed ({e}); logging offline (sync later with `wandb sync`)",
                      file=sys.stderr)
                self.run = wandb.init(mode="offline", settings=wandb.Settings(silent=True), **kwargs)
        except Exception as e:
            self._wandb_failed(e)

    def _wandb_failed(self, e: Exception) -> None:
        warnings.warn(f"W&B disabled for this run after an error: {type(e).__name__}: {e}", stacklevel=3)
        self.run = None

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time(), 3), **{k: _plain(v) for k, v in metrics.items()}}
        self.metrics_file.write(json.dumps(row) + "\n")
        if self.run is not None:
            try:
                scalars = {k: v for k, v in row.items()
                           if k not in ("step", "time") and isinstance(v, (int, float)) and v is not None}
                self.run.log(scalars, step=step)
            except Exception as e:
                self._wandb_failed(e)

    def log_images(self, step: int, images: dict[str, Path]) -> None:
        if not self.enabled or self.run is None:
            return
        try:
            import wandb

            self.run.log({k: wandb.Image(str(p)) for k, p in images.items()}, step=step)
        except Exception as e:
            self._wandb_failed(e)

    def log_model(self, path: Path, aliases: list[str], metadata: dict) -> None:
        """A model file (the seed's format) as a version of the run's W&B artifact ``model-<run id>``
        (type model). W&B moves an alias to the newest version that names it, and gives ``latest`` to the
        newest version by itself. The file is copied into W&B's staging area here, so it may change
        afterwards; an offline run keeps the copy until ``wandb sync``."""
        if not self.enabled or self.run is None or not self.artifacts:
            return
        try:
            import wandb

            art = wandb.Artifact(f"model-{self.run_id}", type="model", metadata=metadata)
            art.add_file(str(path), name="model.pt")
            self.run.log_artifact(art, aliases=aliases)
        except Exception as e:
            self._wandb_failed(e)

    def summarize(self, values: dict) -> None:
        """Values in the W&B run's summary (the best metric and its step), not in its history."""
        if not self.enabled or self.run is None:
            return
        try:
            self.run.summary.update({k: _plain(v) for k, v in values.items()})
        except Exception as e:
            self._wandb_failed(e)

    def finish(self) -> None:
        if not self.enabled:
            return
        self.metrics_file.close()
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as e:
                self._wandb_failed(e)
