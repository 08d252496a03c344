"""The VAE-GAN's losses (gen_dist/training/phases/vaegan.py) against hand computations on tiny models:
which parameters each term reaches, the adaptive weight, and disc_start in a real 2-process run."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY, read_metrics, train
from gen_dist.config import load_config
from gen_dist.models.dcgan import DCGANDiscriminator, init_dcgan_weights
from gen_dist.models.vae import ConvVAE
from gen_dist.training.phases import build_phases
from gen_dist.training.phases.vaegan import equilibrium_updates

LATENT, BATCH = 4, 6


def noise(name: str, *shape: int) -> torch.Tensor:
    """Keyed noise as the trainer draws it: the same name gives the same tensor."""
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    return torch.randn(BATCH, *shape, generator=torch.Generator().manual_seed(seed))


def setup(*overrides: str):
    cfg = load_config("configs/vaegan_mnist.yaml", [f"model.latent_dim={LATENT}", "model.d_norm=none", *overrides])
    torch.manual_seed(0)
    G = ConvVAE(1, 28, LATENT, 4)
    D = DCGANDiscriminator(1, 28, 4, norm="none")
    init_dcgan_weights(D)
    opt_g, opt_d = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
    phases = build_phases(cfg, G, D, opt_g, opt_d, lambda m: m)
    x = torch.rand(BATCH, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    return cfg, G, D, phases, x


def eg_gradients(G, D, phase, x, step=10):
    """EG's loss and its gradient on every G parameter, with D frozen as the trainer freezes it."""
    D.requires_grad_(False)
    loss, logs = phase.loss((x, None), noise, step)
    params = list(G.parameters())
    grads = torch.autograd.grad(loss, params)
    D.requires_grad_(True)
    return loss, logs, dict(zip([id(p) for p in params], grads))


def by_hand_terms(G, D, x, layer=-1):
    """The three Larsen et al. terms written out: z, its reconstruction, D's features."""
    mu, logvar = G.encoder(x)
    z = mu + noise("eps", LATENT) * torch.exp(0.5 * logvar)
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(1)
    with torch.no_grad():
        target = D.feature_map(x, layer)

    def dis_l(recon):
        return 0.5 * (D.feature_map(recon, layer) - target).pow(2).flatten(1).sum(1)

    return z, kl, dis_l


def assert_same(grads: dict, params, expected, what: str):
    for p, e in zip(params, expected):
        torch.testing.assert_close(grads[id(p)], e, rtol=1e-4, atol=1e-6, msg=lambda m: f"{what}: {m}")


def test_learned_similarity_losses_reach_only_their_parameters():
    """Encoder: KL + Dis_l; decoder: gamma x Dis_l + lambda x adversarial on reconstructions of z
    (stopped) and prior samples; D: nothing from EG, and D's loss reaches no G parameter."""
    gamma, lam = 0.3, 0.7
    cfg, G, D, phases, x = setup("loss.similarity=learned", f"loss.similarity_gamma={gamma}",
                                 f"loss.adv_lambda={lam}", "loss.vaegan_weighting=additive",
                                 "loss.adv_weight=fixed", "loss.disc_start=0", "loss.recon_scale=sum")
    d_phase, eg_phase = phases
    loss, logs, grads = eg_gradients(G, D, eg_phase, x)

    z, kl, dis_l = by_hand_terms(G, D, x)
    enc, dec = list(G.encoder.parameters()), list(G.decoder.parameters())
    encoder_loss = (kl + dis_l(G.decoder(z))).mean()
    assert_same(grads, enc, torch.autograd.grad(encoder_loss, enc), "encoder")
    fakes = [G.decoder(z.detach()), G.decoder(noise("z_prior", LATENT))]
    adversarial = F.softplus(-torch.cat([D(f) for f in fakes])).mean()
    decoder_loss = gamma * dis_l(fakes[0]).mean() + lam * adversarial
    assert_same(grads, dec, torch.autograd.grad(decoder_loss, dec), "decoder")
    assert logs["loss/G_adv"].item() == pytest.approx(adversarial.item(), rel=1e-5)

    # D's loss: real vs reconstructed vs prior samples, reaching D only
    d_loss, _ = d_phase.loss((x, None), noise, 10)
    d_loss.backward()
    assert all(p.grad is None for p in G.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in D.parameters())
    with torch.no_grad():
        recon = G(x, noise("eps", LATENT))[0]
        prior = G.decoder(noise("z_prior", LATENT))
        fake = torch.cat([D(recon), D(prior)])
        expected = F.softplus(-D(x)).mean() + F.softplus(fake).mean()
    assert d_loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_pixel_similarity_with_the_gradient_through_z_is_the_lessons_loss():
    """adv_stop_at_z=false, convex weighting: (1 - l) rec + KL + l adv with D scoring the joint
    reconstruction, so the encoder gets D's opinion too (the reference lesson's VAE-GAN)."""
    lam = 0.4
    cfg, G, D, phases, x = setup(f"loss.adv_lambda={lam}", "loss.vaegan_weighting=convex", "loss.adv_weight=fixed",
                                 "loss.adv_stop_at_z=false", "loss.vaegan_prior_samples=false", "loss.disc_start=0",
                                 "loss.recon_scale=sum")
    loss, _, grads = eg_gradients(G, D, phases[1], x)
    z, kl, _ = by_hand_terms(G, D, x)
    recon = G.decoder(z)
    rec = F.binary_cross_entropy(recon, x, reduction="none").flatten(1).sum(1)
    expected = ((1 - lam) * rec + kl).mean() + lam * F.softplus(-D(recon)).mean()
    params = list(G.parameters())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert_same(grads, params, torch.autograd.grad(expected, params), "G")
    assert grads[id(params[0])].abs().sum() > 0  # the encoder's first weight moves with D's opinion


def test_adversarial_on_prior_samples_only():
    """loss.vaegan_adv_on=prior: rec + KL + l x adv(decoder(z_prior)); the reconstruction answers to the
    pixel term alone, D still sees real vs reconstructed vs prior; =prior without prior samples is refused."""
    lam = 0.7
    cfg, G, D, phases, x = setup(f"loss.adv_lambda={lam}", "loss.vaegan_weighting=additive", "loss.adv_weight=fixed",
                                 "loss.vaegan_adv_on=prior", "loss.disc_start=0", "loss.recon_scale=sum")
    loss, logs, grads = eg_gradients(G, D, phases[1], x)
    z, kl, _ = by_hand_terms(G, D, x)
    rec = F.binary_cross_entropy(G.decoder(z), x, reduction="none").flatten(1).sum(1)
    adversarial = F.softplus(-D(G.decoder(noise("z_prior", LATENT)))).mean()
    expected = (rec + kl).mean() + lam * adversarial
    params = list(G.parameters())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["loss/G_adv"].item() == pytest.approx(adversarial.item(), rel=1e-5)
    assert_same(grads, params, torch.autograd.grad(expected, params), "G")
    from gen_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="vaegan_adv_on=prior needs the prior samples"):
        load_config("configs/vaegan_mnist.yaml", ["loss.vaegan_adv_on=prior", "loss.vaegan_prior_samples=false"])


def test_adaptive_weight_by_hand():
    """w = lambda ||d rec / d W|| / (||d adv / d W|| + 1e-4) at the decoder's output layer W, clamped."""
    lam = 0.8
    cfg, G, D, phases, x = setup(f"loss.adv_lambda={lam}", "loss.vaegan_weighting=additive", "loss.adv_weight=adaptive",
                                 "loss.disc_start=0", "loss.recon_scale=sum", "loss.adaptive_max=1e7")
    loss, logs, grads = eg_gradients(G, D, phases[1], x)
    z, kl, _ = by_hand_terms(G, D, x)
    recon = G.decoder(z)
    rec = F.binary_cross_entropy(recon, x, reduction="none").flatten(1).sum(1).mean()
    fakes = [G.decoder(z.detach()), G.decoder(noise("z_prior", LATENT))]
    adv = F.softplus(-torch.cat([D(f) for f in fakes])).mean()
    W = G.decoder.net[-2].weight  # the last transposed convolution, before the sigmoid
    (g_rec,), (g_adv,) = torch.autograd.grad(rec, W, retain_graph=True), torch.autograd.grad(adv, W, retain_graph=True)
    w = lam * g_rec.norm() / (g_adv.norm() + 1e-4)
    assert logs["G/adv_weight"].item() == pytest.approx(w.item(), rel=1e-4)
    assert 0.1 < w.item() < 1e7  # a real balance, not the clamp
    params = list(G.parameters())
    expected = (rec + kl.mean()) + w.detach() * adv
    assert_same(grads, params, torch.autograd.grad(expected, params), "G")
    # the clamp
    _, G, D, phases, x = setup(f"loss.adv_lambda={lam}", "loss.vaegan_weighting=additive", "loss.adv_weight=adaptive",
                               "loss.disc_start=0", "loss.recon_scale=sum", "loss.adaptive_max=0.05")
    _, logs_c, _ = eg_gradients(G, D, phases[1], x)
    assert logs_c["G/adv_weight"].item() == pytest.approx(0.05)


def test_adaptive_weight_needs_additive_weighting():
    from gen_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="additive"):
        load_config("configs/vaegan_mnist.yaml", ["loss.adv_weight=adaptive", "loss.vaegan_weighting=convex"])


def test_equilibrium_band_by_hand():
    """pythae's band: D's BCE on each side, as computed by hand, decides which of D and the decoder step."""
    assert equilibrium_updates(0.5, 0.9, 0.68, 0.1) == (True, True)  # one side too easy, the other too hard
    assert equilibrium_updates(0.5, 0.7, 0.68, 0.1) == (False, True)  # D winning on the real side
    assert equilibrium_updates(0.7, 0.8, 0.68, 0.1) == (True, False)  # D losing on the fake side
    assert equilibrium_updates(0.6, 0.75, 0.68, 0.1) == (True, True)  # inside the band
    for centre, update_d, update_dec in [(10.0, False, True), (-10.0, True, False)]:
        _, G, D, phases, x = setup("loss.equilibrium_margin=0.1", f"loss.equilibrium={centre}", "loss.disc_start=0")
        d_phase, eg_phase = phases[0], phases[-1]
        _, logs = d_phase.loss((x, None), noise, 10)
        recon = G.decoder(by_hand_terms(G, D, x)[0])
        fakes = torch.cat([D(recon), D(G.decoder(noise("z_prior", LATENT)))])
        assert logs["D/bce_real"].item() == pytest.approx(F.softplus(-D(x)).mean().item(), rel=1e-5)
        assert logs["D/bce_fake"].item() == pytest.approx(F.softplus(fakes).mean().item(), rel=1e-5)
        held_d, d_logs = d_phase.hold()
        held_eg, eg_logs = eg_phase.hold()
        assert {id(p) for p in held_d} == (set() if update_d else {id(p) for p in D.parameters()})
        assert {id(p) for p in held_eg} == (set() if update_dec else {id(p) for p in G.decoder.parameters()})
        assert (d_logs["D/updated"].item(), eg_logs["G/decoder_updated"].item()) == (update_d, update_dec)
        assert eg_phase.hold()[0] == []  # the decision is for one step: EG without a new D check steps


@pytest.mark.slow
def test_equilibrium_band_holds_back_exactly_what_it_logs_on_two_processes(data_root, tmp_path):
    """A narrow band on 2 processes: D's and the decoder's Adam steps equal the steps the band let through,
    the encoder steps every time, and the checkpoint's moments show it parameter by parameter."""
    from gen_dist import checkpoint as ckpt

    run, steps = tmp_path / "run", 12
    train(data_root, 2, "--config", "configs/vaegan_mnist.yaml", f"run.dir={run}", f"train.max_steps={steps}",
          "loss.disc_start=0", "loss.equilibrium=0.625", "loss.equilibrium_margin=0.01",
          f"train.checkpoint_every={steps}", *TINY)
    rows = [r for r in read_metrics(run) if "loss/EG" in r]
    assert len(rows) == steps and all(r["D/updated"] in (0.0, 1.0) for r in rows)
    d_steps, dec_steps = sum(r["D/updated"] for r in rows), sum(r["G/decoder_updated"] for r in rows)
    assert 0 < d_steps < steps and 0 < dec_steps < steps, (d_steps, dec_steps)  # the band acted both ways
    state = ckpt.load(ckpt.step_path(run / "checkpoints", steps))
    assert {int(s["step"]) for s in state["optimizers"]["D"]["state"].values()} == {d_steps}
    names = list(state["models"]["G"])  # the optimizer numbers G's parameters in this order
    g_steps = {names[i]: int(s["step"]) for i, s in state["optimizers"]["G"]["state"].items()}
    assert {n: s for n, s in g_steps.items() if n.startswith("decoder.")} == {
        n: dec_steps for n in g_steps if n.startswith("decoder.")}
    assert {s for n, s in g_steps.items() if n.startswith("encoder.")} == {steps}


def test_equilibrium_band_refuses_what_it_cannot_measure():
    from gen_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="model.kind=vaegan loss.gan=nonsat"):
        load_config("configs/vaegan_mnist.yaml", ["loss.equilibrium_margin=0.4", "loss.gan=hinge"])
    with pytest.raises(ConfigError, match="model.kind=vaegan loss.gan=nonsat"):
        load_config("configs/dcgan32_mnist.yaml", ["loss.equilibrium_margin=0.4"])
    with pytest.raises(ConfigError, match="loss.equilibrium_margin=-0.1: it must not be negative"):
        load_config("configs/vaegan_mnist.yaml", ["loss.equilibrium_margin=-0.1"])


@pytest.mark.slow
def test_disc_start_is_exact_on_two_processes(data_root, tmp_path):
    """No D step and no adversarial term before loss.disc_start; both from the step after it."""
    run = tmp_path / "run"
    train(data_root, 2, "--config", "configs/vaegan_mnist.yaml", f"run.dir={run}", "train.max_steps=5",
          "loss.disc_start=3", "train.checkpoint_every=3", "train.keep_checkpoints=5", *TINY)
    rows = [r for r in read_metrics(run) if "loss/EG" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [("loss/D" in r, "loss/G_adv" in r) for r in rows] == [(False, False)] * 3 + [(True, True)] * 2
    from gen_dist import checkpoint as ckpt

    at3 = ckpt.load(ckpt.step_path(run / "checkpoints", 3))
    at5 = ckpt.load(ckpt.step_path(run / "checkpoints", 5))
    assert at3["optimizers"]["D"]["state"] == {}  # Adam never stepped D
    assert {int(s["step"]) for s in at5["optimizers"]["D"]["state"].values()} == {2}
    assert {int(s["step"]) for s in at3["optimizers"]["G"]["state"].values()} == {3}
    d_moved = [not torch.equal(at3["models"]["D"][k], at5["models"]["D"][k]) for k in at3["models"]["D"]]
    assert any(d_moved)


@pytest.mark.slow
def test_two_processes_match_one_process_for_the_adaptive_vaegan(data_root, tmp_path):
    """2 x 16 equals 1 x 32: the adaptive weight averages its gradients over the ranks first, so every
    loss, and the weight itself, is the global batch's (D without batch norm, whose statistics are
    per rank by design). Pixel + learned similarity, so Dis_l's term is in every loss compared."""
    common = ["--config", "configs/vaegan_mnist.yaml", "train.max_steps=4", "train.log_every=1", "data.limit=512",
              "eval.limit=64", "train.progress_bar=false", "data.shards=null", "data.test_shards=null",
              "model.g_width=8", "model.d_width=8", "model.d_norm=none", "loss.adv_weight=adaptive", "loss.similarity=both",
              "loss.vaegan_weighting=additive", "loss.disc_start=1", "train.ema_decay=0", "data.num_workers=0",
              "eval.sample_quality=false", "eval.mode_coverage=false", "tracking.wandb=false"]
    train(data_root, 1, *common, "train.batch_size=32", f"run.dir={tmp_path / 'one'}")
    train(data_root, 2, *common, "train.batch_size=16", f"run.dir={tmp_path / 'two'}")
    one = [r for r in read_metrics(tmp_path / "one") if "loss/EG" in r]
    two = [r for r in read_metrics(tmp_path / "two") if "loss/EG" in r]
    assert len(one) == len(two) == 4
    assert "G/adv_weight" not in one[0] and all("G/adv_weight" in r for r in one[1:])
    assert all("vae/recon_learned" in r for r in one)
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for key in [k for k in a if k.startswith(("loss/", "G/", "vae/"))]:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key, a[key], b[key])
