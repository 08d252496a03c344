"""FID arithmetic: Fréchet distance against pytorch-fid, streaming statistics against numpy, the
statistics cache, and two gloo ranks giving the one-process numbers (FID, KID, precision/recall)."""

import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pytorch_fid.fid_score import calculate_frechet_distance

from gen_dist.evaluation.metrics import (FeatureBank, FeatureStats, MetricsError, compute_fid, frechet_distance,
                              kid, load_stats, precision_recall, save_stats)

# pytorch-fid passes scipy's deprecated sqrtm(disp=...): its warning, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")


def random_stats(rng, d, n, shift=0.0):
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3 + shift
    return x.mean(0), np.cov(x, rowvar=False)


@pytest.mark.parametrize("d,n", [(8, 50), (64, 500), (256, 2000), (64, 40)])  # last: singular
def test_frechet_distance_matches_pytorch_fid(d, n):
    rng = np.random.default_rng(d + n)
    a, b = random_stats(rng, d, n), random_stats(rng, d, n, shift=0.1)
    ours, ref = frechet_distance(*a, *b), calculate_frechet_distance(*a, *b)
    assert abs(ours - ref) <= 1e-6 * max(1.0, abs(ref))


def test_frechet_distance_of_identical_stats_is_zero():
    mu, sigma = random_stats(np.random.default_rng(0), 32, 200)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9


def test_frechet_distance_refuses_mismatched_shapes():
    with pytest.raises(MetricsError, match="do not match"):
        frechet_distance(np.zeros(4), np.eye(4), np.zeros(3), np.eye(3))


def test_feature_stats_equal_numpy_mean_cov():
    x = torch.randn(301, 16, generator=torch.Generator().manual_seed(0)) * 3 + 5  # float32 input
    stats = FeatureStats(16)
    for batch in x.split(64):
        stats.update(batch)
    mu, cov = stats.mean_cov()
    ref = x.double().numpy()
    assert stats.count == 301
    np.testing.assert_allclose(mu, ref.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(ref, rowvar=False), rtol=1e-9, atol=1e-12)


def test_feature_stats_merge_halves_equals_whole():
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(1))
    whole = FeatureStats(8).update(x)
    merged = FeatureStats(8).update(x[:77]).merge(FeatureStats(8).update(x[77:]))
    assert merged.count == whole.count
    for got, want in zip(merged.mean_cov(), whole.mean_cov()):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_feature_stats_needs_two_images():
    with pytest.raises(MetricsError, match="at least 2"):
        FeatureStats(4).update(torch.zeros(1, 4)).mean_cov()


def test_stats_cache_round_trip_and_stale_key(tmp_path):
    mu, sigma = random_stats(np.random.default_rng(2), 8, 30)
    path = tmp_path / "real.npz"
    assert load_stats(path) is None
    save_stats(path, mu, sigma, key="mnist-test-v1")
    got = load_stats(path, key="mnist-test-v1")
    np.testing.assert_array_equal(got[0], mu)
    np.testing.assert_array_equal(got[1], sigma)
    assert load_stats(path, key="other") is None
    with np.load(path) as f:  # pytorch-fid reads exactly these two arrays
        np.testing.assert_array_equal(f["mu"], mu)


# --- two gloo ranks -----------------------------------------------------------------------------

N, D = 40, 6


def _data():
    g = torch.Generator().manual_seed(3)
    return torch.randn(N, D, generator=g), torch.randn(N, D, generator=g) + 0.5


def _metrics(fake_rows, real_rows, fake_stats, real_stats):
    return (compute_fid(fake_stats, real_stats), *kid(fake_rows, real_rows, subset_size=15, num_subsets=7),
            *precision_recall(real_rows, fake_rows, k=3, batch_size=7))


def _worker(rank, world, port, queue):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    fake, real = _data()
    mine = torch.arange(rank, N, world)  # strided share, as evaluation shards samples
    stats, banks = [], []
    for x in (fake, real):
        stats.append(FeatureStats(D).update(x[mine]).all_reduce())
        bank = FeatureBank(D, capacity=N)
        for chunk in mine.split(3):
            bank.add(x[chunk], indices=chunk)
        banks.append(bank.gather())
    queue.put((rank, banks[0].equal(fake) and banks[1].equal(real), _metrics(*banks, *stats)))
    dist.destroy_process_group()


def test_two_ranks_give_single_process_numbers():
    fake, real = _data()
    single = _metrics(fake, real, FeatureStats(D).update(fake), FeatureStats(D).update(real))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(2, port, queue), nprocs=2, start_method="spawn")
    results = sorted(queue.get() for _ in range(2))
    for rank, gathered_in_order, values in results:
        assert gathered_in_order, f"rank {rank}: gathered rows differ from the original order"
        np.testing.assert_allclose(values, single, rtol=1e-9)
    assert results[0][2] == results[1][2]  # bit-identical on every rank
