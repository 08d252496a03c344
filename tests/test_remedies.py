"""Mode-collapse remedies and the beta-VAE schedules: each piece against a hand computation, then real
2-process training (ranks in sync, replay buffer and unrolled steps resumed exactly, schedules logged)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import TINY, read_metrics, train

from gen_dist import checkpoint as ckpt
from gen_dist.config import load_config
from gen_dist.errors import ConfigError
from gen_dist.training.kl_schedule import KLSchedule
from gen_dist.training.losses import feature_matching, g_loss
from gen_dist.models import build_models
from gen_dist.models.minibatch import MinibatchDiscrimination, MinibatchStdDev, group_size_for
from gen_dist.noise import Noise
from gen_dist.training.remedies import ReplayBuffer, UnrolledDiscriminator
from gen_dist.training.phases import build_phases


# --- the pieces, by hand --------------------------------------------------------------------------
def test_feature_matching_is_zero_for_equal_means_and_the_squared_distance_otherwise():
    torch.manual_seed(0)
    real = torch.randn(8, 5)
    mirrored = 2 * real.mean(0) - real  # different features, the same batch mean
    assert not torch.allclose(mirrored, real)
    assert feature_matching(real, mirrored).item() == pytest.approx(0.0, abs=1e-12)
    shifted = real + torch.tensor([1.0, 0.0, 2.0, 0.0, 0.0])
    assert feature_matching(real, shifted).item() == pytest.approx((1 + 4) / 5)


def test_minibatch_stddev_by_hand():
    # 4 samples, 2 features; groups of 2 are strided (Karras et al.'s reshape): {0, 2} and {1, 3}
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 6.0], [0.0, 4.0]]).view(4, 2, 1, 1)
    out = MinibatchStdDev(group_size=2, eps=0.0)(x)
    # group {0, 2}: population stds |1-3|/2 = 1 and |2-6|/2 = 2 -> 1.5; group {1, 3}: 0 and 2 -> 1.0
    assert out.shape == (4, 1, 1, 1)
    torch.testing.assert_close(out.view(-1), torch.tensor([1.5, 1.0, 1.5, 1.0]))
    wide = MinibatchStdDev(group_size=2, eps=0.0)(x.expand(4, 2, 3, 3).contiguous())
    assert wide.shape == (4, 1, 3, 3) and (wide[0] == 1.5).all()  # a constant map per sample
    assert [group_size_for(n, 4) for n in (16, 6, 3, 1)] == [4, 3, 3, 1]


def test_minibatch_discrimination_by_hand():
    layer = MinibatchDiscrimination(in_features=2, kernels=1, dim=2)
    with torch.no_grad():
        layer.T.copy_(torch.eye(2))  # M = x itself
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 2.0]]).view(3, 2, 1, 1)
    o = layer(x).view(-1)
    # L1 distances: d01 = 1, d02 = 3, d12 = 2; o_i = sum over j != i of exp(-d_ij)
    expected = torch.tensor([math.exp(-1) + math.exp(-3), math.exp(-1) + math.exp(-2), math.exp(-3) + math.exp(-2)])
    torch.testing.assert_close(o, expected)


def _tiny_gan(seed=0, **remedies):
    cfg = load_config(None, ["model.kind=gan", "model.generator=dcgan", "model.latent_dim=8", "model.g_width=8",
                             "model.d_width=8", "data.image_size=32", "train.max_steps=1",
                             *[f"remedies.{k}={v}" for k, v in remedies.items()]])
    torch.manual_seed(seed)
    return cfg, build_models(cfg.model, 1, 32, 10, cfg.remedies)


def test_unrolled_with_k0_is_the_plain_update_and_k_steps_are_adams():
    cfg, models = _tiny_gan()
    D = models.discriminator
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real, z = torch.rand(6, 1, 32, 32) * 2 - 1, torch.randn(6, 8)

    def d_loss_on(call, fake):
        return torch.nn.functional.softplus(-call(real)).mean() + torch.nn.functional.softplus(call(fake)).mean()

    # give D's optimizer some state, as after the step's D phase
    d_loss_on(D, models.generator(z).detach()).backward()
    opt_d.step()
    opt_d.zero_grad()

    def g_update(view):
        G = copy.deepcopy(models.generator)
        opt = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        g_loss("nonsat", view(G(z))).backward()
        opt.step()
        return [p.detach().clone() for p in G.parameters()]

    D.requires_grad_(False)  # as in G's phase
    plain = g_update(D)
    fake = models.generator(torch.randn(6, 8)).detach()
    k0 = UnrolledDiscriminator(D, opt_d, 0, 2e-4, (0.5, 0.999)).unroll(lambda j, call: d_loss_on(call, fake))
    for a, b in zip(plain, g_update(k0)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    # k = 2: the copy equals D after two more real Adam steps; D itself, its grads and buffers untouched
    before = {k: v.clone() for k, v in D.state_dict().items()}
    k2 = UnrolledDiscriminator(D, opt_d, 2, 2e-4, (0.5, 0.999)).unroll(lambda j, call: d_loss_on(call, fake))
    ahead = copy.deepcopy(D).requires_grad_(True)
    opt_ahead = torch.optim.Adam(ahead.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_ahead.load_state_dict(opt_d.state_dict())
    for _ in range(2):
        d_loss_on(ahead, fake).backward()
        opt_ahead.step()
        opt_ahead.zero_grad()
    probe = torch.rand(6, 1, 32, 32)
    torch.testing.assert_close(k2(probe), ahead(probe), rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in D.parameters())
    for k, v in D.state_dict().items():  # (BatchNorm statistics included)
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)
    assert not torch.allclose(k2(probe), D(probe))
    assert any(not torch.equal(a, b) for a, b in zip(plain, g_update(k2)))


def test_replay_buffer_mixes_stores_and_resumes():
    buf = ReplayBuffer(capacity=6, ratio=0.5)
    first, second, third = (torch.full((4, 1, 2, 2), float(v)) for v in (1, 2, 3))
    labels = torch.tensor([0, 1, 2, 3])
    u = torch.tensor([[0.0, 0.5], [0.99, 0.0], [0.3, 0.0], [0.6, 0.0]])
    out, out_labels = buf.mix(first, labels, u)
    assert torch.equal(out, first) and buf.filled == 4  # nothing to replay yet
    out, out_labels = buf.mix(second, labels + 4, u)
    # the last round(0.5 * 4) = 2 rows come from the buffer: entries floor(0 * 4) = 0 and floor(0.99 * 4) = 3
    assert torch.equal(out[:2], second[:2]) and torch.equal(out[2:], first[:2])
    assert out_labels.tolist() == [4, 5, 0, 3]
    # 2 fresh ones filled the buffer, the other 2 overwrote a block starting at slot floor(0.5 * 6) = 3
    assert buf.filled == 6 and buf.labels.tolist() == [0, 1, 2, 6, 7, 5]
    state = copy.deepcopy(buf.state_dict())
    again = ReplayBuffer(capacity=6, ratio=0.5)
    again.load_state_dict(state)
    a, a_labels = buf.mix(third, labels, u)
    b, b_labels = again.mix(third, labels, u)
    assert torch.equal(a, b) and torch.equal(a_labels, b_labels)
    assert torch.equal(buf.images, again.images)


def test_kl_schedules_by_hand():
    warm = KLSchedule(beta=2.0, warmup_steps=4)
    assert [warm.beta_at(s) for s in range(1, 7)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert warm.beta_at(None) == 2.0 and KLSchedule(beta=3.0).beta_at(1) == 3.0
    cap = KLSchedule(gamma=10.0, capacity_max=25.0, capacity_steps=5)
    assert [cap.capacity_at(s) for s in (1, 2, 5, 9)] == [5.0, 10.0, 25.0, 25.0]
    rec, kl = torch.tensor([100.0, 120.0]), torch.tensor([3.0, 9.0])
    loss, logs = cap.loss(rec, kl, step=1)  # 110 + 10 * |6 - 5|
    assert loss.item() == pytest.approx(120.0) and logs["vae/capacity"].item() == 5.0
    loss, _ = cap.loss(rec / 784, kl / 784, step=2, kl_unit=784)  # per pixel: C divided alike
    assert loss.item() == pytest.approx((110 + 10 * 4) / 784)
    loss, logs = warm.loss(rec, kl, step=2)
    assert loss.item() == pytest.approx(110 + 1.0 * 6) and logs["vae/beta"].item() == 1.0


@pytest.mark.parametrize("overrides, message", [
    (["model.kind=vae", "remedies.replay_size=64"], "needs a discriminator"),
    (["remedies.replay_size=64", "remedies.replay_ratio=0"], "replay_ratio"),
    (["remedies.minibatch_std=true", "remedies.minibatch_std_group=1"], "groups of at least 2"),
    (["remedies.feature_matching_alone=true"], "remedies.feature_matching=1.0"),
    (["model.kind=vaegan", "loss.adv_lambda=0", "remedies.unrolled_steps=3"], "adv_lambda"),
    (["loss.capacity_gamma=10", "loss.kl_warmup_steps=10"], "choose one"),
    (["loss.capacity_gamma=10", "loss.beta=4"], "leave loss.beta=1.0"),
    (["model.kind=gan", "model.generator=dcgan", "loss.kl_warmup_steps=10"], "KL term"),
    (["remedies.unrolled_steps=-1"], "must not be negative"),
])
def test_config_refuses_remedy_mistakes(overrides, message):
    base = ["model.kind=vaegan", "model.generator=conv_vae", "train.max_steps=1"]
    with pytest.raises(ConfigError, match=message):
        load_config(None, base + overrides)


@pytest.mark.parametrize("extra", [
    ["model.discriminator=sn", "loss.gan=hinge"],  # spectral norm's hooks under functional_call
    ["model.d_norm=layer", "loss.gan=wgan", "loss.gp_weight=10"],  # the GP inside the unrolled steps
])
def test_every_remedy_together_on_other_discriminators(extra):
    """One step of the real phases (plain modules, one process) with all remedies on: finite losses,
    G and D both get gradients, the features and replay log."""
    cfg = load_config(None, ["model.kind=gan", "model.generator=dcgan", "model.latent_dim=8", "model.g_width=8",
                             "model.d_width=8", "data.image_size=32", "train.max_steps=1", "model.conditional=true",
                             "remedies.replay_size=8", "remedies.feature_matching=0.5", "remedies.minibatch_std=true",
                             "remedies.minibatch_disc_kernels=3", "remedies.unrolled_steps=2", *extra])
    torch.manual_seed(0)
    models = build_models(cfg.model, 1, 32, 10, cfg.remedies)
    G, D = models.generator, models.discriminator
    opt_g, opt_d = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
    phases = build_phases(cfg, G, D, opt_g, opt_d, lambda m: m)
    noise = Noise(0, 0, 1, torch.device("cpu"))
    batch = (torch.rand(4, 1, 32, 32) * 2 - 1, torch.tensor([1, 2, 3, 4]))
    for step in (1, 2):  # the second D step replays the first one's fakes
        for p_idx, phase in enumerate(phases):
            def draw(name, *shape, key=(step, p_idx, 0)):
                return (noise.uniform if name == "alpha" else noise.normal)(key, name, 4, *shape)

            for frozen in phase.frozen:
                frozen.requires_grad_(False)
            loss, logs = phase.loss(batch, draw, step)
            assert torch.isfinite(loss)
            loss.backward()
            assert all(p.grad is not None for p in phase.model.parameters()), phase.name
            phase.optimizer.step()
            phase.optimizer.zero_grad()
            for frozen in phase.frozen:
                frozen.requires_grad_(True)
    assert {"G/feature_matching", "D/replay_filled"} <= set(logs) | set(phases[0].loss(batch, draw, 3)[1])
    assert phases[0].state["replay"].filled == 8


# --- real 2-process training ------------------------------------------------------------------------
GAN_REMEDIES = ["remedies.replay_size=24", "remedies.replay_ratio=0.5", "remedies.feature_matching=0.5",
                "remedies.minibatch_std=true", "remedies.minibatch_disc_kernels=4", "remedies.unrolled_steps=2"]


@pytest.mark.slow
def test_gan_remedies_resume_exactly_on_two_processes(data_root, tmp_path):
    """Conditional DCGAN with every remedy: 6 steps straight vs 3 + resume to 6 give the same
    parameters and the same per-rank replay buffers (labels included); ranks stay in sync."""
    args = ["--config", "configs/cgan_mnist.yaml", *TINY, *GAN_REMEDIES]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(data_root, 2, *args, "train.max_steps=6", f"run.dir={straight}")
    train(data_root, 2, *args, "train.max_steps=3", f"run.dir={split}")
    proc = train(data_root, 2, *args, "train.max_steps=6", f"run.dir={split}")
    assert "at step 3" in proc.stdout + proc.stderr

    a, b = (ckpt.load(ckpt.step_path(run / "checkpoints", 6)) for run in (straight, split))
    assert a["images_seen"] == b["images_seen"] == 6 * 16 * 2
    for part in ("G", "D"):
        for name, tensor in a["models"][part].items():
            torch.testing.assert_close(b["models"][part][name], tensor, rtol=0, atol=1e-6, msg=f"{part}.{name}")
    replay_a, replay_b = a["remedies"]["replay"], b["remedies"]["replay"]
    assert len(replay_a) == 2 and all(r["filled"] == 24 for r in replay_a)  # per rank, full
    assert not torch.equal(replay_a[0]["images"], replay_a[1]["images"])  # each rank its own fakes
    for ra, rb in zip(replay_a, replay_b):
        torch.testing.assert_close(rb["images"], ra["images"], rtol=0, atol=1e-6)
        assert torch.equal(ra["labels"], rb["labels"]) and ra["labels"].unique().numel() > 1
    rows = read_metrics(straight)
    assert rows[-1]["sync/params_identical"] == 1
    assert [r["D/replay_filled"] for r in rows if "D/replay_filled" in r] == [16, 24, 24, 24, 24, 24]
    assert all("G/feature_matching" in r for r in rows if "loss/G" in r)


@pytest.mark.slow
def test_vaegan_remedies_and_beta_warmup_on_two_processes(data_root, tmp_path):
    """VAE-GAN with every remedy (prior samples too) and a KL warm-up: in sync, and the logged beta
    is the schedule's value at each step."""
    run = tmp_path / "run"
    train(data_root, 2, "--config", "configs/vaegan_mnist.yaml", *TINY, *GAN_REMEDIES, "train.max_steps=5",
          "train.n_critic=2", "loss.vaegan_prior_samples=true", "loss.beta=2.0", "loss.kl_warmup_steps=4", "loss.disc_start=0",
          f"run.dir={run}")
    rows = read_metrics(run)
    assert rows[-1]["sync/params_identical"] == 1 and len(set(rows[-1]["sync/param_hashes"])) == 1
    losses = [r for r in rows if "loss/EG" in r]
    assert [r["vae/beta"] for r in losses] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0])
    assert losses[-1]["images_seen"] == 5 * 2 * 16 * 2  # the unrolled steps read no extra data
    # two fake batches (reconstructions, prior samples) of 16 per D micro-step, n_critic = 2
    assert [r["D/replay_filled"] for r in losses][:2] == [24, 24]
    assert all("G/feature_matching" in r for r in losses)


@pytest.mark.slow
def test_capacity_schedule_is_logged(data_root, tmp_path):
    run = tmp_path / "run"
    train(data_root, 1, "--config", "configs/betavae_capacity_mnist.yaml", *TINY, "train.max_steps=6",
          "loss.capacity_steps=4", "loss.capacity_max=20", f"run.dir={run}")
    losses = [r for r in read_metrics(run) if "loss/vae" in r]
    assert [r["vae/capacity"] for r in losses] == pytest.approx([5.0, 10.0, 15.0, 20.0, 20.0, 20.0])
    # gamma = 1000 pulls the KL towards C: it grows with it from a near-zero start
    assert losses[-1]["vae/kl"] > 2 * losses[0]["vae/kl"]
