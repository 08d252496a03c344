"""How a launch script's process ends.

After a multi-process run the process leaves with os._exit, skipping the interpreter's finalization.
Why: objects that still hold a gloo process group (the DDP reducer, DeepSpeed's group globals) were
then destroyed during finalization, and about one 2-process run in 60 here ended with rank 1 aborting
("terminate called without an active exception", SIGABRT) after every checkpoint, metric and W&B file
was written; the launcher then reported the finished run as failed (and a Slurm script would requeue
it). pytorch/pytorch#179291 describes the mechanism. All files gen_dist writes are closed by then and
W&B is finished, so nothing is lost by skipping finalization.

The same objects must not be collected earlier either: a finished Trainer dropped before the exit
took its DDP reducer, and with it the last reference to the (already destroyed) process group, whose
destructor joins gloo's worker thread while holding the GIL, as that thread waited for the GIL to free
a finished barrier's tensors: the rank hung forever after writing everything (seen once in ~10 tiny
2-process runs, py-spy: ~ProcessGroupGloo -> thread::join). `keep_until_exit` holds them to the end.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn


_KEPT: list = []


def keep_until_exit(obj):
    """Keep `obj` alive until the process leaves (see above); returns it."""
    _KEPT.append(obj)
    return obj


def exit_process(code: int) -> NoReturn:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # set by accelerate launch / torchrun for each rank
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
