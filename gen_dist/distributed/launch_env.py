"""What the launcher set for this process: the mixed precision wanted and the DeepSpeed settings.

Read by the engine (engine.py) and by the DeepSpeed support (deepspeed.py) alike, and by the checks
made before launch (training/preflight.py); it imports neither of them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from gen_dist.errors import UserError


def want_mixed_precision(setting: str | None) -> str:
    """The config's choice, else what the launcher exported (accelerate launch --mixed_precision)."""
    if setting is not None:
        return setting
    return os.environ.get("ACCELERATE_MIXED_PRECISION", "no")


def check_launch_environment(mixed_precision: str | None) -> None:
    """Combinations that would run silently wrong; called before any process group is made."""
    mp = want_mixed_precision(mixed_precision)
    if mp == "fp16" and not torch.cuda.is_available():
        raise UserError("fp16 needs a CUDA GPU (on CPU it silently does nothing): "
                        "use train.mixed_precision=bf16 or no")



@dataclass
class DeepSpeedLaunch:
    config_file: str | None  # the DeepSpeed JSON from the accelerate config (None: settings in the YAML)
    raw: dict  # that JSON, or one built from the accelerate YAML's deepspeed_config keys

    @property
    def stage(self) -> int:
        return int(self.raw.get("zero_optimization", {}).get("stage", 0))


def launched_with_deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def read_launch() -> DeepSpeedLaunch | None:
    """The DeepSpeed settings the accelerate launcher exported, or None for a DDP / single launch."""
    if not launched_with_deepspeed():
        return None
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        raise UserError("DeepSpeed with ACCELERATE_USE_CPU=1: unset ACCELERATE_USE_CPU (DeepSpeed uses its own "
                        "CPU accelerator and gloo on machines without GPUs)")
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if path and path.lower() != "none":
        try:
            raw = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise UserError(f"DeepSpeed config '{path}' (deepspeed_config_file in the accelerate config) does "
                            "not exist: paths are relative to where you launch; run from the repository root") from None
        except json.JSONDecodeError as e:
            raise UserError(f"DeepSpeed config '{path}' is not valid JSON ({e}): fix its syntax") from None
        return DeepSpeedLaunch(path, raw)
    # settings written straight into the accelerate YAML (zero_stage, offload_*)
    env = os.environ
    zero = {"stage": int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))}
    for part in ("optimizer", "param"):
        device = env.get(f"ACCELERATE_DEEPSPEED_OFFLOAD_{part.upper()}_DEVICE", "none")
        if device != "none":
            zero[f"offload_{part}"] = {"device": device}
    return DeepSpeedLaunch(None, {"zero_optimization": zero})
