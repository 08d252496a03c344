"""DeepSpeed ZeRO for coupled models: G and D (the VAE-GAN's encoder+decoder and D) as two engines.

Accelerate refuses two models under DeepSpeed in one Accelerator, and selecting one of several
DeepSpeed plugins needs `transformers` installed. So when the accelerate config file says
``distributed_type: DEEPSPEED`` gen_dist reads the launcher's settings, lets Accelerate set up only
the process group and the collectives (as for DDP), and calls ``deepspeed.initialize`` once per model.

The DeepSpeed JSON named by the accelerate config (``deepspeed_config_file``) holds the ZeRO settings;
its "auto" values are filled from the training config (batch size, grad_accum, grad_clip, precision),
so the training config is the same for DDP and DeepSpeed. bf16/fp16 cast parameters *and* buffers
(BatchNorm's running statistics must match its input's dtype), and each engine's module casts its
floating inputs to that dtype and its outputs back to fp32, so losses and metrics stay in fp32.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
from pathlib import Path

import torch
import torch.nn as nn

from gen_dist import checkpoint as ckpt
from gen_dist.distributed.launch_env import DeepSpeedLaunch, read_launch, want_mixed_precision
from gen_dist.errors import CheckpointError, ConfigError, UserError


def _is_auto(value) -> bool:
    return value == "auto"


def engine_config(launch: DeepSpeedLaunch, train, mixed_precision: str, numel: int = 50_000_000) -> dict:
    """The DeepSpeed JSON for one engine (a model of ``numel`` parameters): the launch's settings, "auto"
    filled from the training config. Values set explicitly in the JSON must agree with the training
    config (one source of truth)."""
    cfg = copy.deepcopy(launch.raw)
    where = launch.config_file or "the accelerate config"
    wanted = {"train_micro_batch_size_per_gpu": train.batch_size, "gradient_accumulation_steps": train.grad_accum,
              "gradient_clipping": float(train.grad_clip)}
    keys = {"train_micro_batch_size_per_gpu": "train.batch_size", "gradient_accumulation_steps": "train.grad_accum",
            "gradient_clipping": "train.grad_clip"}
    for key, value in wanted.items():
        given = cfg.get(key, "auto")
        if not _is_auto(given) and float(given) != float(value):
            raise ConfigError(f"{where} sets {key}={given} but the training config says {keys[key]}={value}: "
                              f'write "{key}": "auto" in the DeepSpeed JSON and set {keys[key]} instead')
        cfg[key] = value
    cfg.pop("train_batch_size", None)  # derived: micro batch x accumulation x processes
    for name, mode in (("bf16", "bf16"), ("fp16", "fp16")):
        section = dict(cfg.get(name, {}))
        enabled = section.get("enabled", "auto")
        want = mixed_precision == mode
        if _is_auto(enabled):
            enabled = want
        elif bool(enabled) != want and mixed_precision != "no":
            raise ConfigError(f"{where} sets {name}.enabled={enabled} but the run asks for mixed precision "
                              f"'{mixed_precision}': make them agree (\"enabled\": \"auto\" follows the run)")
        section["enabled"] = bool(enabled)
        cfg[name] = section
    if cfg["bf16"]["enabled"] and cfg["fp16"]["enabled"]:
        raise ConfigError(f"{where} enables both bf16 and fp16: enable one")
    half = "bf16" if cfg["bf16"]["enabled"] else "fp16" if cfg["fp16"]["enabled"] else None
    if half == "fp16" and not torch.cuda.is_available():
        raise UserError("fp16 needs a CUDA GPU (DeepSpeed's CPU accelerator has no fp16 kernels for training): "
                        "use train.mixed_precision=bf16 or no")
    if half is not None:  # BatchNorm: running statistics in the parameters' dtype (field notes)
        cfg.setdefault("data_types", {}).setdefault("buffer_dtype", half)
    zero = cfg.setdefault("zero_optimization", {})
    for key, value in list(zero.items()):
        if _is_auto(value):  # bucket sizes in elements: one gradient bucket for the whole model (these
            # models are small: fewest collectives), prefetch a quarter, partition every parameter
            zero[key] = {"reduce_bucket_size": numel, "stage3_prefetch_bucket_size": max(1, numel // 4),
                         "stage3_param_persistence_threshold": 0}.get(key, numel)
    cfg.setdefault("zero_allow_untested_optimizer", True)  # gen_dist's torch Adam, partitioned by ZeRO
    cfg.setdefault("steps_per_print", 10**9)
    return cfg


def needs_plain_copy(config: dict, stage: int) -> bool:
    """Inference needs a separate fp32 copy of G when the engine's own is partitioned or in half precision."""
    return stage == 3 or config["bf16"]["enabled"] or config["fp16"]["enabled"]


def check_deepspeed(cfg) -> None:
    """Before launch: combinations DeepSpeed cannot run (exit 2 with the fix)."""
    launch = read_launch()
    if launch is None:
        return
    engine_config(launch, cfg.train, want_mixed_precision(cfg.train.mixed_precision))
    stage = launch.stage
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"zero_optimization.stage={stage} in {launch.config_file}: use 0, 1, 2 or 3")
    if stage == 3 and cfg.train.ema_decay > 0:
        raise ConfigError("train.ema_decay with ZeRO-3: the EMA copy needs whole parameters, which ZeRO-3 "
                          "partitions; use ZeRO-1/2 (configs/accelerate/zero2.yaml) or train.ema_decay=0")
    if stage == 3 and cfg.model.kind == "vaegan" and (cfg.loss.vaegan_prior_samples or cfg.loss.adv_stop_at_z
                                                      or cfg.loss.similarity_gamma != 1.0):
        # these decode a second time with the plain decoder, outside the engine's forward, whose parameters
        # ZeRO-3 has partitioned (it fails freeing a parameter still in use)
        raise ConfigError("ZeRO-3 with a VAE-GAN that decodes outside the engine's forward (loss.vaegan_prior_samples, "
                          "loss.adv_stop_at_z or loss.similarity_gamma != 1): use ZeRO-1/2 (configs/accelerate/zero2.yaml) "
                          "or set loss.vaegan_prior_samples=false loss.adv_stop_at_z=false")
    if cfg.model.kind == "vaegan" and cfg.loss.equilibrium_margin > 0:
        # DeepSpeed steps inside backward, at the accumulation boundary: there is no moment between D's
        # backward and its step at which the band could hold D or the decoder back
        raise ConfigError(f"loss.equilibrium_margin under DeepSpeed (ZeRO-{stage}): the band decides after the "
                          "backward pass whether D or the decoder steps, and DeepSpeed steps inside it; train it "
                          "with DDP (configs/accelerate/ddp.yaml) or set loss.equilibrium_margin=0")
    if cfg.model.kind == "vaegan" and cfg.loss.adv_weight == "adaptive":
        # torch.autograd.grad on a parameter fires DeepSpeed's gradient hooks, which then reduce a half-filled
        # bucket (ZeRO-1/2: IndexError in reduce_ipg_grads); ZeRO-3 also partitions the parameter itself
        raise ConfigError(f"loss.adv_weight=adaptive under DeepSpeed (ZeRO-{stage}): the weight takes gradients of the "
                          "decoder's output layer apart from the backward pass, which DeepSpeed's gradient hooks do not "
                          "allow; train it with DDP (configs/accelerate/ddp.yaml) or set loss.adv_weight=fixed")


# --- engines ------------------------------------------------------------------------------------
def _cast_io(module: nn.Module, dtype: torch.dtype) -> None:
    """Inputs in the engine's half dtype, outputs back in fp32: the model behaves like an fp32 module."""

    def cast(obj, to):
        if torch.is_tensor(obj) and obj.is_floating_point():
            return obj.to(to)
        if isinstance(obj, tuple):
            return tuple(cast(o, to) for o in obj)
        return obj

    module.register_forward_pre_hook(lambda _m, args: cast(args, dtype))
    module.register_forward_hook(lambda _m, _args, out: cast(out, torch.float32))


def initialize(model: nn.Module, optimizer, ds_config: dict):
    import deepspeed

    engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    half = torch.bfloat16 if ds_config["bf16"]["enabled"] else torch.float16 if ds_config["fp16"]["enabled"] else None
    if half is not None:
        _cast_io(engine.module, half)
    return engine, ds_optimizer


def is_engine(model) -> bool:
    try:
        from deepspeed import DeepSpeedEngine
    except ImportError:
        return False
    return isinstance(model, DeepSpeedEngine)


def gathered(module: nn.Module, stage: int):
    """Whole parameters inside the block (ZeRO-3 partitions them); a collective: call on every rank."""
    if stage != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)


def full_state_dict(module: nn.Module, stage: int) -> dict:
    """fp32 copies of the parameters and buffers on CPU (collective under ZeRO-3)."""
    with gathered(module, stage):
        return {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
                for k, v in module.state_dict().items()}


# --- checkpoints: one DeepSpeed checkpoint folder per engine inside the step folder ---------------
TAG = "engine"


def save(engines: dict, folder: Path) -> None:
    """Every rank writes its partition of each engine (collective)."""
    for name, engine in engines.items():
        engine.save_checkpoint(str(folder / name), tag=TAG, save_latest=False)


def load(engines: dict, folder: Path) -> None:
    for name, engine in engines.items():
        path, _ = engine.load_checkpoint(str(folder / name), tag=TAG, load_optimizer_states=True,
                                         load_lr_scheduler_states=False)
        if path is None:
            raise UserError(f"DeepSpeed checkpoint '{folder / name}' could not be loaded: "
                            "resume from an earlier step folder or train.resume=none")


# --- checkpoints of a training run --------------------------------------------------------------
def save_checkpoint(engine, engines: dict, state: dict, path: Path) -> None:
    """A step folder: every rank writes its partitions into a staging folder (collective), which the
    main process completes with the resume state and renames when whole."""
    staging = ckpt.staging_dir(path)
    if engine.is_main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    engine.barrier()
    save(engines, staging)
    engine.barrier()
    if engine.is_main:
        ckpt.finish_folder(state, staging, path)


def check_resumable(state: dict, path, world: int, zero_stage: int | None) -> None:
    """A checkpoint resumes only under the launch that wrote it: DDP or DeepSpeed, and under DeepSpeed
    the same ZeRO stage and process count (``zero_stage`` None: this launch is DDP)."""
    saved_ds, running_ds = state.get("zero_stage") is not None, zero_stage is not None
    if saved_ds != running_ds:
        raise CheckpointError(f"checkpoint '{path}' was written by a {'DeepSpeed' if saved_ds else 'DDP'} run and "
                              f"this launch is {'DeepSpeed' if running_ds else 'DDP'}: launch with the same "
                              "accelerate config file, or start afresh with train.resume=none")
    if running_ds:
        if state["world_size"] != world or state["zero_stage"] != zero_stage:
            raise CheckpointError(f"checkpoint '{path}' holds ZeRO-{state['zero_stage']} partitions for "
                                  f"{state['world_size']} processes: resume with that stage and process count, "
                                  "or start afresh with train.resume=none")
        if "deepspeed_folder" not in state:
            raise CheckpointError(f"'{path}' holds no DeepSpeed engine states: resume from a step_* folder")
