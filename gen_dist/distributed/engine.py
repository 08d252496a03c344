"""The one place that knows about distribution: Accelerate (DDP) or DeepSpeed (ZeRO), mixed precision,
the optimizers.

Models and losses stay plain; the trainer asks the engine to prepare them, to run backward, to step
an optimizer, and to reduce numbers across ranks. The accelerate config file picks DDP or DeepSpeed;
with DeepSpeed each model becomes its own DeepSpeed engine (see deepspeed.py) and Accelerate
only provides the process group and the collectives.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta

import torch
import torch.nn as nn

from gen_dist.distributed import deepspeed as dss
from gen_dist.distributed.launch_env import check_launch_environment, read_launch, want_mixed_precision
from gen_dist.errors import UserError

LOCK_FILE = "run.lock"  # in run.dir: the host and PID of the run that holds it (flock)


class Engine:
    def __init__(self, mixed_precision: str | None, seed: int):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

        check_launch_environment(mixed_precision)
        mp = want_mixed_precision(mixed_precision)
        self.deepspeed = read_launch()  # None: DDP (or one process)
        self._plain: dict[int, nn.Module] = {}  # unwrap's answers, by id of the prepared model
        if self.deepspeed is not None:
            # Accelerate would build one DeepSpeed engine for one model; it only makes the process group
            # here (gloo on CPU, NCCL on GPUs), and DeepSpeed reuses it for two engines.
            os.environ["ACCELERATE_USE_DEEPSPEED"] = "false"
            if not torch.cuda.is_available():
                os.environ["ACCELERATE_USE_CPU"] = "1"
        self.accelerator = Accelerator(
            mixed_precision="no" if self.deepspeed is not None else mp,  # DeepSpeed casts by its JSON
            # every model here uses all its parameters; finding unused ones would cost a graph walk
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False),
                             InitProcessGroupKwargs(timeout=timedelta(minutes=30))],
        )
        self._check_world_size()
        self.mixed_precision = mp
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.device = self.accelerator.device
        self.is_main = self.accelerator.is_main_process
        self.amp_skipped = 0  # fp16: optimizer steps the gradient scaler skipped (non-finite gradients)
        # per-rank seed for anything that draws from the global RNGs; the training noise that
        # matters (latents, reparameterisation, GP mixing) comes from `Noise`, which is world-invariant
        from accelerate.utils import set_seed

        set_seed(seed + self.rank)

    def _check_world_size(self) -> None:
        """The launcher's process count must match what Accelerate set up (field notes: silent traps)."""
        expected = int(os.environ.get("WORLD_SIZE", "1"))
        got = self.accelerator.num_processes
        if got != expected:
            raise UserError(
                f"the launcher started {expected} processes but each runs alone (Accelerate sees {got}): "
                "on a machine without GPUs set ACCELERATE_USE_CPU=1 with --multi_gpu; on GPUs check --num_processes")

    @property
    def zero_stage(self) -> int | None:
        return None if self.deepspeed is None else self.deepspeed.stage

    # --- preparation -------------------------------------------------------------------------
    def prepare_models(self, train_cfg, pairs: list) -> list:
        """[(model, optimizer), ...] -> [(prepared model, its optimizer), ...]: DDP wrappers, or one
        DeepSpeed engine per model (its JSON's "auto" values filled from the training config)."""
        if self.deepspeed is None:
            flat = self.accelerator.prepare(*[obj for pair in pairs for obj in pair])
            flat = flat if isinstance(flat, (list, tuple)) else [flat]
            return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        return [dss.initialize(model, optimizer, self.deepspeed_config(train_cfg, model)) for model, optimizer in pairs]

    def deepspeed_config(self, train_cfg, model: nn.Module) -> dict:
        numel = sum(p.numel() for p in model.parameters())
        return dss.engine_config(self.deepspeed, train_cfg, self.mixed_precision, numel)

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The plain module inside a prepared one. Remembered per model: Accelerate's unwrap_model
        probes installed packages (importlib.metadata) on every call, ~5 ms, and the GAN phases and
        the EMA ask every step (bench/train_step.py)."""
        plain = self._plain.get(id(model))
        if plain is None:
            plain = model.module if self.deepspeed is not None else _unwrap_ddp(model)
            self._plain[id(model)] = plain
        return plain

    def needs_plain_copy(self, train_cfg, model: nn.Module) -> bool:
        """DeepSpeed (ZeRO-3 or bf16/fp16): evaluation and samples need a plain fp32 copy of the model,
        refreshed by sync_for_inference; otherwise the prepared model's own module serves."""
        return self.deepspeed is not None and dss.needs_plain_copy(self.deepspeed_config(train_cfg, model),
                                                                   self.zero_stage)

    def sync_for_inference(self, models: list, plain_copy: nn.Module | None = None) -> None:
        """DeepSpeed (every rank): rank 0's BatchNorm statistics everywhere, as DDP keeps them, and the
        plain fp32 copy of the first model refreshed from its engine (whole parameters even under ZeRO-3)."""
        if self.deepspeed is None:
            return
        for model in models:
            if model is not None:
                self.broadcast_buffers(model)
        if plain_copy is not None:
            plain_copy.load_state_dict(self.state_dict(models[0]))

    def gathered(self, model: nn.Module):
        """Whole parameters of a prepared model inside the block (ZeRO-3); collective, every rank."""
        return dss.gathered(self.unwrap(model), self.zero_stage or 0)

    def state_dict(self, model: nn.Module) -> dict:
        """The plain model's state (fp32, whole); collective under ZeRO-3."""
        if self.deepspeed is None:
            return self.unwrap(model).state_dict()
        return dss.full_state_dict(self.unwrap(model), self.zero_stage)

    def broadcast_buffers(self, model: nn.Module) -> None:
        """DDP copies rank 0's buffers (BatchNorm statistics) at every forward; DeepSpeed does not, so
        before evaluating or saving, every rank takes rank 0's (collective)."""
        if self.deepspeed is None or self.world == 1:
            return
        import torch.distributed as dist

        for buf in self.unwrap(model).buffers():
            dist.broadcast(buf.data, src=0)

    # --- one optimizer step ------------------------------------------------------------------
    def no_sync(self, model: nn.Module, sync: bool):
        """Skip the gradient all-reduce on accumulation micro-steps that are not the last."""
        if sync or self.deepspeed is not None:  # DeepSpeed knows its accumulation boundary itself
            return contextlib.nullcontext()
        return self.accelerator.no_sync(model)

    def backward(self, loss: torch.Tensor, model: nn.Module | None = None) -> None:
        if self.deepspeed is not None:
            # the loss is already divided by the accumulation count; the engine steps its optimizer
            # (with clipping and loss scaling) on the last micro-batch of each accumulation window
            model.backward(loss, scale_wrt_gas=False)
            model.step()
            return
        self.accelerator.backward(loss)  # scales the loss for fp16

    def step(self, model: nn.Module, optimizer, max_norm: float) -> None:
        if self.deepspeed is not None:  # done in backward, at the accumulation boundary
            return
        if max_norm > 0:
            self.accelerator.unscale_gradients(optimizer=optimizer)  # this optimizer's grads only
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if self.scaler is None:
            # No loss scaling: step the wrapped torch optimizer directly. Accelerate's wrapper adds
            # only bookkeeping here (we never use its accumulation), and that was ~0.35 ms a step,
            # half the MLP VAE's framework overhead in bench/train_step.py.
            inner = getattr(optimizer, "optimizer", optimizer)
            inner.step()
            inner.zero_grad(set_to_none=True)
            return
        optimizer.step()  # Accelerate's wrapper: GradScaler.step + update under fp16
        if optimizer.step_was_skipped:  # inf/NaN gradients at this loss scale: the scaler backs off
            self.amp_skipped += 1
        optimizer.zero_grad(set_to_none=True)

    def describe(self) -> dict:
        """How this run is distributed, for its first metrics row (strings stay out of W&B's history)."""
        import torch.distributed as dist

        backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else "none"
        return {"dist/world": self.world, "dist/backend": str(backend), "dist/device": str(self.device),
                "dist/type": str(self.accelerator.distributed_type).split(".")[-1],
                "dist/zero_stage": self.zero_stage if self.zero_stage is not None else -1}

    # --- collectives -------------------------------------------------------------------------
    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return tensor
        return self.accelerator.reduce(tensor.to(self.device), reduction="sum")

    def reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.reduce_sum(tensor) / self.world

    def gather_object(self, obj) -> list:
        from accelerate.utils import gather_object

        return gather_object([obj]) if self.world > 1 else [obj]

    def any_rank(self, flag: bool) -> bool:
        """True on every rank if it is true on any: how ranks agree to stop together."""
        return bool(self.reduce_sum(torch.tensor(float(flag), device=self.device)).item() > 0)

    def lock_run_dir(self, run_dir) -> None:
        """One run per run.dir: the main process holds an exclusive flock on run.dir/run.lock (naming its host
        and PID) for its lifetime; a second run on the folder exits 2 on every rank, naming the holder."""
        import fcntl
        import socket
        from pathlib import Path

        problem = None
        self._locks = getattr(self, "_locks", {})  # a study's trainers share this engine: one lock per folder
        key = str(Path(run_dir).resolve())
        if self.is_main and key not in self._locks:
            path = Path(run_dir) / LOCK_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                problem = (f"run.dir '{run_dir}' is in use by another run ({holder}, lock {path}): wait for it, "
                           "stop it, or choose another run.dir")
            else:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
                self._locks[key] = fd  # held until the process ends
        problem = self.gather_object(problem)[0]
        if problem:
            raise UserError(problem)

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    @property
    def scaler(self):
        return self.accelerator.scaler

    def end(self) -> None:
        self.accelerator.end_training()


def _unwrap_ddp(model: nn.Module) -> nn.Module:
    """What accelerator.unwrap_model returns for the containers a DDP run can have (DDP around the
    module; a torch.compile wrapper, kept, around that), without it: it imports DeepSpeed on every
    first call (0.6 s per process) only to test for a DeepSpeed engine, which a DDP run never has."""
    compiled = model if isinstance(model, torch._dynamo.eval_frame.OptimizedModule) else None
    inner = model._orig_mod if compiled is not None else model
    while isinstance(inner, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        inner = inner.module
    if compiled is None:
        return inner
    compiled._orig_mod = inner
    return compiled
