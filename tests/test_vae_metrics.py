"""VAE metrics on a small MLP VAE trained for a few seconds on real MNIST: the IWAE bound against
the ELBO, chunking and batching invariance, active units, and float64 sums over two gloo ranks."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gen_dist.training.losses import kl_per_dim, vae_terms
from gen_dist.evaluation.metrics.vae_metrics import (
    VAEMetricSums,
    active_units,
    active_units_kl,
    elbo,
    iwae_bound,
    kl_per_dimension,
)
from gen_dist.models.vae import MLPVAE

DATA = os.environ.get("GEN_DIST_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
LATENT = 8


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    from torchvision.datasets import MNIST

    try:
        ds = MNIST(DATA, train=False, download=False)
    except RuntimeError as e:
        pytest.skip(f"MNIST not under {DATA} ({e}); set GEN_DIST_DATA")
    return ds.data[:576].float().div(255).unsqueeze(1)  # 512 to train on, 64 to evaluate


@pytest.fixture(scope="module")
def vae(images) -> MLPVAE:
    """Trained a few epochs: a random decoder makes every bound about equal and the tests vacuous."""
    torch.manual_seed(0)
    model = MLPVAE(hidden_dim=64, latent_dim=LATENT)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(3):
        for xb in images[:512].split(32):
            recon, mu, logvar = model(xb)
            rec, kl = vae_terms(recon, xb, mu, logvar)
            opt.zero_grad()
            (rec + kl).mean().backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def x(images) -> torch.Tensor:
    return images[512:]


def test_iwae_at_least_elbo_and_tightens_with_k(vae, x):
    # k=1 and the ELBO averaged over 20 draws, so their noise (~0.2 nats on the mean) is small
    # against the gaps (~10 nats from k=1 to 10, ~3 from 10 to 100 here)
    elbo_mean = torch.stack([elbo(vae, x, _gen(s)) for s in range(20)]).mean()
    k1 = torch.stack([iwae_bound(vae, x, 1, generator=_gen(s)) for s in range(20)]).mean()
    k10 = iwae_bound(vae, x, 10, generator=_gen(1)).mean()
    k100 = iwae_bound(vae, x, 100, generator=_gen(1)).mean()
    assert k10 > elbo_mean + 1.0
    assert k1 + 1.0 < k10 < k100
    assert k100 < 0  # a log-likelihood of a Bernoulli model: never positive


def test_iwae_k1_is_elbo_in_expectation(vae, x):
    # Same seeds: both use the same z, differing only by sampled vs analytic KL, of mean zero.
    diff = torch.stack([iwae_bound(vae, x, 1, generator=_gen(s)) - elbo(vae, x, _gen(s)) for s in range(30)])
    se = diff.std() / diff.numel() ** 0.5
    assert diff.mean().abs() < 4 * se
    assert diff.abs().max() > 0  # not trivially equal: the sampled KL is noise


def test_elbo_matches_training_loss(vae, x):
    # With the same latent noise, the ELBO is minus the training objective (BCE sum + KL).
    seeds = torch.arange(len(x))
    eps = torch.from_numpy(np.stack([np.random.default_rng(int(s)).standard_normal(LATENT) for s in seeds]))
    with torch.no_grad():
        recon, mu, logvar = vae(x, eps.float())
    rec, kl = vae_terms(recon, x, mu, logvar, "bce")
    torch.testing.assert_close(elbo(vae, x, seeds=seeds), -(rec + kl).double(), rtol=1e-5, atol=1e-3)


def test_chunking_and_batching_do_not_change_the_bound(vae, x):
    whole = iwae_bound(vae, x, 37, chunk=37, generator=_gen(3))
    for chunk in (1, 5, 36):
        # the noise is identical; only the running logsumexp's float64 rounding differs
        torch.testing.assert_close(iwae_bound(vae, x, 37, chunk=chunk, generator=_gen(3)), whole, rtol=1e-12, atol=0)
    # per-image seeds: an image's bound does not depend on the batch it is in
    seeds = torch.arange(100, 100 + len(x))
    full = iwae_bound(vae, x, 20, seeds=seeds)
    parts = torch.cat([iwae_bound(vae, x[i::3], 20, seeds=seeds[i::3]) for i in range(3)])
    order = torch.cat([torch.arange(i, len(x), 3) for i in range(3)])
    torch.testing.assert_close(parts, full[order], rtol=1e-6, atol=0)
    assert not torch.equal(iwae_bound(vae, x, 20, seeds=seeds + 1), full)


def test_active_units_hand_made():
    g = _gen(0)
    n = 1000
    mu = torch.stack([
        torch.randn(n, generator=g),  # variance 1: active
        torch.full((n,), 3.0),  # constant: inactive for Burda, but far from the prior (KL 4.5)
        0.03 * torch.randn(n, generator=g),  # variance 0.0009: inactive
        0.3 * torch.randn(n, generator=g),  # variance 0.09: active
    ], 1)
    assert active_units(mu) == 2
    assert active_units(mu, threshold=0.0001) == 3
    kl = kl_per_dimension(mu, torch.zeros_like(mu))
    torch.testing.assert_close(kl, kl_per_dim(mu, torch.zeros_like(mu)).mean(0))
    assert active_units_kl(kl) == 3  # the constant dimension counts under the KL definition
    with pytest.raises(ValueError):
        active_units(mu[:1])


def _sums(vae, x, seeds, ks=(1, 5)) -> VAEMetricSums:
    return VAEMetricSums(LATENT, iwae_ks=ks).update_model(vae, x, seeds=seeds)


def test_metric_sums_halves_equal_whole_and_direct_values(vae, x):
    seeds = torch.arange(len(x))
    whole = _sums(vae, x, seeds)
    merged = _sums(vae, x[:20], seeds[:20]).merge(_sums(vae, x[20:], seeds[20:]))
    torch.testing.assert_close(merged.buf, whole.buf, rtol=1e-12, atol=1e-9)
    r = whole.result()
    with torch.no_grad():
        mu, logvar = vae.encoder(x)
    assert r["test/images"] == len(x)
    assert r["test/active_units"] == active_units(mu)
    kl_dims = torch.tensor(r["test/kl_per_dim"], dtype=torch.float64)
    torch.testing.assert_close(kl_dims, kl_per_dimension(mu, logvar).double(), rtol=1e-6, atol=1e-9)
    assert r["test/elbo"] == pytest.approx(elbo(vae, x, seeds=seeds).mean().item(), rel=1e-6)
    assert r["test/iwae_k5"] == pytest.approx(iwae_bound(vae, x, 5, seeds=seeds).mean().item(), rel=1e-9)
    assert r["test/iwae_k5"] > r["test/elbo"]
    assert 0 < r["test/mse"] < 1 and r["test/kl"] == pytest.approx(sum(r["test/kl_per_dim"]), rel=1e-9)
    empty = VAEMetricSums(LATENT, iwae_ks=(5,)).result()
    assert empty["test/images"] == 0 and empty["test/elbo"] is None and empty["test/iwae_k5"] is None
    with pytest.raises(ValueError):
        VAEMetricSums(LATENT, iwae_ks=(5,)).update_model(vae, x[:2], seeds=seeds[:2]).merge(whole)


# --- two gloo ranks -----------------------------------------------------------------------------

def _worker(rank, world, port, state, x, queue):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    vae = MLPVAE(hidden_dim=64, latent_dim=LATENT).double()
    vae.load_state_dict(state)
    sums = VAEMetricSums(LATENT, iwae_ks=(1, 5))
    mine = torch.arange(rank, len(x), world)  # strided share, as evaluation shards test images
    for idx in mine.split(7):
        sums.update_model(vae, x[idx], seeds=idx)  # seeds = global index: rank-invariant noise
    queue.put((rank, sums.all_reduce().result()))
    dist.destroy_process_group()


def test_two_ranks_give_single_process_metrics(vae, x):
    # float64 model: float32 GEMMs may round differently with the batch size, which would hide
    # the property under test (the same per-image numbers, summed in another order)
    model = MLPVAE(hidden_dim=64, latent_dim=LATENT).double()
    model.load_state_dict(vae.state_dict())
    xd = x.double()
    single = VAEMetricSums(LATENT, iwae_ks=(1, 5)).update_model(model, xd, seeds=torch.arange(len(x))).result()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ["OMP_NUM_THREADS"] = "1"
    queue = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_worker, args=(2, port, model.state_dict(), xd, queue), nprocs=2, start_method="spawn")
    results = sorted((queue.get() for _ in range(2)), key=lambda r: r[0])
    for _, r in results:
        assert r.keys() == single.keys()
        for key, value in single.items():
            assert r[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert results[0][1] == results[1][1]  # bit-identical on every rank
