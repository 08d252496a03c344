"""Progress of the long stages outside the training loop (evaluation, sampling, shards, a study's models).

On the main process only. With a terminal (and train.progress_bar) each stage gets a tqdm bar one line
under the training bar: what it is doing, n/N, its ETA; the bar is gone when the stage ends. Without a
terminal (a log file, Slurm, CI) or with the bar turned off, a stage prints one line when it ends,
with its size and its time, so a log still says where the minutes went.

GEN_DIST_PROGRESS=bar forces the bars without a terminal (tests read them from stderr); =off silences
the stage lines too.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

FORCE_ENV = "GEN_DIST_PROGRESS"


def bars_wanted(enabled: bool = True) -> bool:
    """tqdm bars: forced by GEN_DIST_PROGRESS=bar, else when enabled and stderr is a terminal."""
    env = os.environ.get(FORCE_ENV, "").lower()
    if env in ("bar", "off"):
        return env == "bar"
    return enabled and sys.stderr.isatty()


def fmt_seconds(s: float) -> str:
    s = int(round(s))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Stage:
    """One running stage: update(n) moves its bar; n counts whatever the stage counts (images)."""

    def __init__(self, bar, total: int | None):
        self.bar, self.total, self.done = bar, total, 0

    def update(self, n: int = 1) -> None:
        if self.total is not None:  # strided shares of a global count can overshoot on the last batch
            n = min(n, self.total - self.done)
        self.done += n
        if self.bar is not None and n > 0:
            self.bar.update(n)


class Progress:
    """Stages of one process. ``main``: this process may print; ``enabled``: bars wanted (with a
    terminal); ``prefix`` names the context (a study's "vae_s1 (model 3/11): "); ``position`` is the
    bar's line (1 under a training bar)."""

    def __init__(self, main: bool, enabled: bool = True, prefix: str = "", position: int = 0):
        self.main, self.prefix, self.position = main, prefix, position
        self.bars = main and bars_wanted(enabled)
        self.lines = main and os.environ.get(FORCE_ENV, "").lower() != "off"
        self.timings: dict[str, float] = {}  # seconds per stage name, summed over the process's life

    @contextmanager
    def stage(self, name: str, total: int | None = None, unit: str = "img") -> Iterator[Stage]:
        bar = None
        if self.bars:
            from tqdm import tqdm

            plain = None if total is not None else "{desc}: {elapsed}"  # no count to show: the time so far
            bar = tqdm(total=total, desc=f"{self.prefix}{name}", unit=unit, position=self.position,
                       leave=False, dynamic_ncols=True, file=sys.stderr, bar_format=plain)
        stage, t0 = Stage(bar, total), time.time()
        try:
            yield stage
        finally:
            seconds = time.time() - t0
            self.timings[name] = self.timings.get(name, 0.0) + seconds
            if bar is not None:
                bar.close()
            if self.lines and not self.bars:
                size = f"{stage.done} {unit} " if total is not None else ""
                print(f"gen_dist: {self.prefix}{name}: {size}in {seconds:.1f}s", file=sys.stderr, flush=True)

    def track(self, items: Iterable, name: str, total: int, weigh: Callable = len) -> Iterator:
        """Yields ``items`` unchanged inside a stage, moving its bar by ``weigh(item)`` each."""
        with self.stage(name, total) as stage:
            for item in items:
                yield item
                stage.update(weigh(item))
