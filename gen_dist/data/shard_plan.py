"""The epoch plan of ShardLoader: which samples each (rank, stream) reads, from per-shard counts alone.

Each epoch the shards are read in an order shuffled by (seed, epoch), as one sequence of N samples.
Rank r takes the contiguous range of ``B * batch_size`` samples starting at ``r * B * batch_size``,
``B = N // (world_size * batch_size)``; within a rank, stream s (one per DataLoader worker) makes the
rank's global batches s, s + S, s + 2S, ... and reads a contiguous part of the rank's range. Pure
functions of their arguments, so every rank and worker computes the same plan without talking.
"""

from __future__ import annotations

import random
from typing import Sequence


def shard_order(n_shards: int, seed: int, epoch: int, shuffle: bool = True) -> list:
    """The order the epoch reads shards in; the same on every rank."""
    order = list(range(n_shards))
    if shuffle:
        random.Random(f"gen_dist.shards:{seed}:{epoch}").shuffle(order)
    return order


def slices(counts: Sequence[int], order: Sequence[int], begin: int, end: int) -> list:
    """[begin, end) of the sequence 'shards in ``order``' as (shard, lo, hi) sample ranges."""
    out, offset = [], 0
    for s in order:
        lo, hi = max(begin - offset, 0), min(end - offset, counts[s])
        if lo < hi:
            out.append((s, lo, hi))
        offset += counts[s]
    return out


def stream_offset(per_rank: int, streams: int, stream: int) -> int:
    """Batches held by the streams before ``stream`` (they take consecutive ranges of the rank's)."""
    return sum(len(range(j, per_rank, streams)) for j in range(stream))


def stream_plan(counts: Sequence[int], *, seed: int, epoch: int, rank: int, world_size: int, batch_size: int,
                streams: int, stream: int, shuffle: bool = True) -> tuple:
    """-> (slices, batches) of one stream: its (shard, lo, hi) ranges and how many batches it makes
    (global batches stream, stream + streams, ... of this rank)."""
    per_rank = sum(counts) // (world_size * batch_size)
    batches = len(range(stream, per_rank, streams))
    begin = (rank * per_rank + stream_offset(per_rank, streams, stream)) * batch_size
    order = shard_order(len(counts), seed, epoch, shuffle)
    return slices(counts, order, begin, begin + batches * batch_size), batches
