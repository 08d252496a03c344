"""The one place that knows about distribution: Accelerate (DDP), mixed precision, the optimizers.

Models and losses stay plain; the trainer asks the engine to prepare them, to run backward, to step
an optimizer, and to reduce numbers across ranks.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta

import torch
import torch.nn as nn

from gen_dist.errors import UserError


def _want_mixed_precision(setting: str | None) -> str:
    """The config's choice, else what the launcher exported (accelerate launch --mixed_precision)."""
    if setting is not None:
        return setting
    return os.environ.get("ACCELERATE_MIXED_PRECISION", "no")


def check_launch_environment(mixed_precision: str | None) -> None:
    """Combinations that would run silently wrong; called before any process group is made."""
    mp = _want_mixed_precision(mixed_precision)
    if mp == "fp16" and not torch.cuda.is_available():
        raise UserError("fp16 needs a CUDA GPU (on CPU it silently does nothing): "
                        "use train.mixed_precision=bf16 or no")


class Engine:
    def __init__(self, mixed_precision: str | None, seed: int):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

        check_launch_environment(mixed_precision)
        mp = _want_mixed_precision(mixed_precision)
        self.accelerator = Accelerator(
            mixed_precision=mp,
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

    # --- preparation -------------------------------------------------------------------------
    def prepare(self, *objects):
        return self.accelerator.prepare(*objects)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return self.accelerator.unwrap_model(model)

    # --- one optimizer step ------------------------------------------------------------------
    def no_sync(self, model: nn.Module, sync: bool):
        """Skip the gradient all-reduce on accumulation micro-steps that are not the last."""
        return contextlib.nullcontext() if sync else self.accelerator.no_sync(model)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)  # scales the loss for fp16

    def step(self, model: nn.Module, optimizer, max_norm: float) -> None:
        if max_norm > 0:
            self.accelerator.unscale_gradients(optimizer=optimizer)  # this optimizer's grads only
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()  # Accelerate's wrapper: GradScaler.step + update under fp16
        optimizer.zero_grad(set_to_none=True)

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

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    @property
    def scaler(self):
        return self.accelerator.scaler

    def end(self) -> None:
        self.accelerator.end_training()
