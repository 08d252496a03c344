"""Checkpoints: one file per step with the full resume state, written atomically.

A file only gets its final name (``step_000000123.pt``) after it was completely written and flushed,
so a crash or SIGKILL mid-write leaves the previous checkpoints intact. DeepSpeed runs write a folder
instead (``step_000000123/``: ``state.pt`` plus one DeepSpeed checkpoint per engine, each rank writing
its partitions), assembled under a temporary name and renamed when complete. Loading uses
``weights_only=True``: a checkpoint holds tensors, numbers, strings, lists and dicts, nothing that
runs code when read.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from gen_dist.errors import CheckpointError

STEP_FILE = re.compile(r"^step_(\d{9})(\.pt)?$")  # a file, or a DeepSpeed run's folder
FORMAT = "gen_dist/1"
STATE_FILE = "state.pt"  # inside a DeepSpeed step folder: everything but the engines


def step_path(folder: Path, step: int, deepspeed: bool = False) -> Path:
    return folder / (f"step_{step:09d}" if deepspeed else f"step_{step:09d}.pt")


def staging_dir(path: Path) -> Path:
    """Where a step folder is assembled; the same name on every rank (they all write into it)."""
    return path.with_name(f".{path.name}.tmp")


def finish_folder(state: dict, staging: Path, path: Path) -> None:
    """Main process, after every rank wrote its engine files into ``staging``: add the state, rename."""
    atomic_save(state, staging / STATE_FILE)
    if path.exists():  # a re-run of the same step (resumed after a crash that followed this save)
        shutil.rmtree(path)
    os.replace(staging, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


TEMP_FILE = re.compile(r"^\..+\.tmp\d*$")  # atomic_save's and staging_dir's names while being written


def remove_stale_temps(folder: Path) -> list[str]:
    """Temporary files or step folders a killed or failed save left behind (run.dir is locked: no other
    run is writing them)."""
    removed = []
    if folder.is_dir():
        for item in folder.iterdir():
            if TEMP_FILE.match(item.name):
                shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink(missing_ok=True)
                removed.append(item.name)
    return removed


def atomic_save(obj, path: Path) -> None:
    """Write ``obj`` to ``path`` or not at all: a failed write (a full disk, a read-only folder) removes
    its temporary file, leaves the previous files as they were and raises a one-line CheckpointError."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only folder: there is no temporary file to remove
            pass
        cause = e  # torch's zip writer may report the OSError as the context of its own RuntimeError
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        if cause.errno in (errno.ENOSPC, errno.EDQUOT):
            why = "no space left on the device"
        else:
            why = cause.strerror or type(cause).__name__
        raise CheckpointError(f"cannot write checkpoint '{path}' ({why}): free space or make {path.parent} "
                              "writable, then resume (train.resume=auto); the previous checkpoints are intact") from None
    os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the whole new one
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the rename itself durable
    finally:
        os.close(fd)


def load(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir() and (path / STATE_FILE).is_file():  # a DeepSpeed step folder
        state = load(path / STATE_FILE)
        state["deepspeed_folder"] = str(path)
        return state
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist: pass an existing file or train.resume=auto")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint '{path}' is damaged or not a gen_dist checkpoint "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:120]}): "
                              "delete it or resume from an earlier one") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint '{path}' is not a gen_dist resume checkpoint (format "
                              f"{state.get('format') if isinstance(state, dict) else type(state).__name__}): "
                              f"pass a step_*.pt file from a run's checkpoints/ folder")
    return state


def nonfinite_tensors(tree, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a (nested) state dict that hold a NaN or an inf."""
    if isinstance(tree, dict):
        return [n for k, v in tree.items() for n in nonfinite_tensors(v, f"{prefix}{k}.")]
    if isinstance(tree, torch.Tensor) and tree.is_floating_point() and not torch.isfinite(tree).all():
        return [prefix[:-1]]
    return []


def list_steps(folder: Path) -> list[Path]:
    """Step checkpoints in a folder, newest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), folder / name) for name in os.listdir(folder) if (m := STEP_FILE.match(name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_valid(folder: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads; a damaged newer one is reported and skipped, so a job
    requeued after a crash resumes instead of failing forever."""
    for path in list_steps(folder):
        try:
            return path, load(path)
        except CheckpointError as e:
            warnings.warn(f"skipping {e}", stacklevel=2)
    return None


def prune(folder: Path, keep: int) -> None:
    for old in list_steps(folder)[keep:]:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


# --- RNG states, stored as tensors and plain values so that weights_only loading accepts them ---
def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
    kind, key, *rest = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
