"""The in-memory source: equal batches per rank, world-size-invariant global batches, resumable."""

from __future__ import annotations

import torch

from gen_dist.config import DataConfig
from gen_dist.data import ArrayLoader, load_dataset, to_model_range
from gen_dist.noise import Noise


def _toy(n=103):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return images, torch.arange(n)


def test_ranks_get_equal_batches_and_disjoint_samples():
    images, labels = _toy()
    loaders = [ArrayLoader(images, labels, 8, rank=r, world_size=3, seed=1) for r in range(3)]
    batches = [list(ld) for ld in loaders]
    assert len({len(b) for b in batches}) == 1 and len(batches[0]) == 103 // 24
    seen = torch.cat([lab for b in batches for _, lab in b])
    assert len(seen) == len(set(seen.tolist())) == 96
    assert loaders[0].stats.dropped_per_epoch == 7
    assert all(ld.position.epoch == 1 for ld in loaders)


def test_global_batch_is_the_same_on_any_world_size():
    images, labels = _toy()
    one = next(iter(ArrayLoader(images, labels, 16, seed=5)))[1]
    two = [next(iter(ArrayLoader(images, labels, 8, rank=r, world_size=2, seed=5)))[1] for r in range(2)]
    assert sorted(one.tolist()) == sorted(torch.cat(two).tolist())
    assert torch.equal(one[0::2], two[0]) and torch.equal(one[1::2], two[1])


def test_noise_rows_follow_the_images():
    one = Noise(3, 0, 1, torch.device("cpu")).normal((4, 0, 0), "z", 16, 5)
    two = [Noise(3, r, 2, torch.device("cpu")).normal((4, 0, 0), "z", 8, 5) for r in range(2)]
    assert torch.equal(one[0::2], two[0]) and torch.equal(one[1::2], two[1])


def test_resume_position_continues_the_epoch():
    images, labels = _toy()
    full = [lab for _, lab in ArrayLoader(images, labels, 10, seed=2)]
    resumed = ArrayLoader(images, labels, 10, seed=2)
    resumed.set_position(0, 4)
    rest = [lab for _, lab in resumed]
    assert len(rest) == len(full) - 4 and all(torch.equal(a, b) for a, b in zip(rest, full[4:]))
    nxt = [lab for _, lab in ArrayLoader(images, labels, 10, seed=2)]  # epoch 0 again
    assert torch.equal(nxt[0], full[0])
    second = ArrayLoader(images, labels, 10, seed=2)
    second.set_position(1, 0)
    assert not torch.equal(next(iter(second))[1], full[0])  # a new epoch reshuffles


def test_real_mnist_loads_and_scales(data_root):
    ds = load_dataset(DataConfig(dataset="mnist", root=data_root, download=False), train=False)
    assert ds.images.shape == (10000, 1, 28, 28) and ds.images.dtype == torch.uint8 and len(ds.classes) == 10
    x = to_model_range(ds.images[:4], 64, signed=True)
    assert x.shape == (4, 1, 64, 64) and x.min() >= -1 and x.max() <= 1
    ds = load_dataset(DataConfig(dataset="fashion_mnist", root=data_root, download=False, limit=100), train=True)
    assert len(ds.images) == 100
