"""Stopping cleanly when the cluster says so: a signal becomes a checkpoint at a step boundary.

Slurm sends SIGUSR1 some minutes before the time limit (``--signal=USR1@300``) and SIGTERM on
preemption or ``scancel``. Each rank records the signal; the trainer reduces the flag across ranks so
that all stop at the same step, save, write ``run.dir/PREEMPTED`` and exit 0. A batch script that
finds the marker requeues the job, and the requeued job resumes (``train.resume=auto``).
"""

from __future__ import annotations

import os
import signal

CHECK_EVERY = 5  # steps between the (collective) checks of the flag

PREEMPTED_MARKER = "PREEMPTED"  # written into run.dir when a signal stopped the run before its end


class Preemption:
    """SIGUSR1 (Slurm's warning before the time limit) or SIGTERM (preemption, scancel) asks the run
    to stop at the next step boundary with a checkpoint, instead of dying mid-step."""

    SIGNALS = ("SIGUSR1", "SIGTERM")

    def __init__(self):
        self._requested, self.signal_name = False, ""
        # under a launcher (accelerate launch, torchrun: LOCAL_RANK is set) a rank whose launcher died is
        # re-parented: it stops like a preempted one instead of training on, unsupervised, to the end
        self._parent = os.getppid() if "LOCAL_RANK" in os.environ else None
        self._previous = {}
        for name in self.SIGNALS:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handle)

    @property
    def requested(self) -> bool:
        if not self._requested and self._parent is not None and os.getppid() != self._parent:
            self._requested, self.signal_name = True, "the launcher's exit (parent process gone)"
        return self._requested

    def _handle(self, signum, frame) -> None:
        self._requested, self.signal_name = True, signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


