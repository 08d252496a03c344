"""Any checkpoint gen_dist writes -> the generator and its config: a resume state (step_*.pt,
best_state.pt, a DeepSpeed step folder; EMA weights when the run kept them) or a seed-format export
(best.pt, final.pt). Sampling, offline evaluation and the study report all load through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from gen_dist import checkpoint as ckpt
from gen_dist.config import Config, load_config
from gen_dist.errors import CheckpointError
from gen_dist.models import build_models

# config keys that name places on the machine that trained, not the one that evaluates
MACHINE_LOCAL = [("data", "root"), ("data", "shard_cache"), ("eval", "stats_cache")]

def load_generator_weights(path: str) -> tuple[dict, dict, dict]:
    """(generator state dict, saved config, info) from a resume state (EMA weights when present) or a
    seed-format export (best.pt / final.pt), or a DeepSpeed run's step folder (its state.pt). Weights
    with a NaN or an inf are refused (CheckpointError): they would draw blank images."""
    weights, saved, info = _read_generator_weights(path)
    bad = ckpt.nonfinite_tensors(weights)
    if bad:
        raise CheckpointError(f"checkpoint '{path}' holds non-finite weights ({', '.join(bad[:3])}): the run "
                              "diverged; pass an earlier checkpoint of it (checkpoints/step_*.pt)")
    return weights, saved, info


def _read_generator_weights(path: str) -> tuple[dict, dict, dict]:
    if Path(path).is_dir() and (Path(path) / ckpt.STATE_FILE).is_file():
        path = str(Path(path) / ckpt.STATE_FILE)
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist: pass a file from a run's checkpoints/")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint '{path}' is damaged or not a gen_dist checkpoint "
                              f"({type(e).__name__}): pass another file") from None
    if isinstance(state, dict) and state.get("format") == ckpt.FORMAT:
        ema = state.get("ema")
        if ema is not None:  # AveragedModel keeps the averaged model under "module."
            weights = {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}
        else:
            weights = state["models"]["G"]
        return weights, state["config"], {"step": state["step"], "ema": ema is not None}
    if isinstance(state, dict) and "G_state" in state and "config" in state:
        return state["G_state"], state["config"], {"step": state.get("step")}
    raise CheckpointError(f"'{path}' is neither a gen_dist resume state nor a seed-format export with its config: "
                          "pass checkpoints/step_*.pt, best_state.pt, best.pt or final.pt")


@dataclass
class Trained:
    """A checkpoint's generator (a GAN's G, or the whole VAE whose decoder draws) with its config."""

    model: nn.Module
    cfg: Config
    num_classes: int  # 0 for an unconditional model
    path: str
    step: int | None
    ema: bool | None  # EMA weights were used (None: a seed-format export, which holds EMA when it was on)


def _build(cfg: Config, weights: dict, path: str) -> nn.Module:
    """The model the config describes, with the channel count the weights were trained with: the
    dataset is not needed (nor read) to sample."""
    classes = int(weights["embedding.weight"].shape[0]) if "embedding.weight" in weights else 0
    for channels in (1, 3):
        model = build_models(cfg.model, channels, cfg.data.image_size, classes).generator
        expected = model.state_dict()
        if expected.keys() == weights.keys() and all(expected[k].shape == weights[k].shape for k in expected):
            model.load_state_dict(weights)
            return model
    raise CheckpointError(f"the weights in '{path}' do not fit the model its saved config describes "
                          f"({cfg.model.generator}, {cfg.data.image_size} px): pass a checkpoint written by gen_dist")


def load_trained(path: str | Path, overrides: Sequence[str] = (), device: torch.device | str = "cpu") -> Trained:
    """A resume state (step_*.pt, best_state.pt: EMA weights when the run kept them) or a seed-format
    export (final.pt, best.pt), in eval mode on ``device``."""
    weights, saved, info = load_generator_weights(str(path))
    for section, key in MACHINE_LOCAL:  # paths of the training machine; unused here, resolved afresh
        saved.get(section, {}).pop(key, None)
    cfg = load_config(None, list(overrides), base=saved, training=False)
    model = _build(cfg, weights, str(path)).to(device).eval()
    return Trained(model, cfg, getattr(model, "num_classes", 0), str(path), info.get("step"), info.get("ema"))
