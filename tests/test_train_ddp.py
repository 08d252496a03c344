"""Real 2-process accelerate launches (gloo on CPU) on real MNIST: every config trains, ranks stay in
sync, DDP equals one process with the same global batch, and bf16 runs."""

from __future__ import annotations


import pytest
from conftest import NO_FID, REPO, TINY, read_metrics, train

pytestmark = pytest.mark.slow
# Training configs on the data present here. Not in this list: ablation_* (study configs, read by
# launch/ablate.py: tests/test_ablate.py), *_cifar10 (no CIFAR-10 here: tests/test_cifar10.py trains
# them on CIFAR-format files it writes) and *dsprites* (generated data: tests/test_disentanglement.py).
CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.yaml")
                 if not p.stem.startswith("ablation_") and not p.stem.endswith("_cifar10") and "dsprites" not in p.stem)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_trains_on_two_processes(name, data_root, tmp_path):
    run = tmp_path / "run"
    train(data_root, 2, "--config", f"configs/{name}.yaml", f"run.dir={run}", "train.max_steps=3",
          "train.n_critic=2", *TINY)
    rows = read_metrics(run)
    sync = [r for r in rows if "sync/params_identical" in r]
    assert sync and sync[-1]["sync/params_identical"] == 1, sync
    assert len(set(sync[-1]["sync/param_hashes"])) == 1 and len(sync[-1]["sync/param_hashes"]) == 2
    losses = [r for r in rows if any(k.startswith("loss/") for k in r)]
    assert [r["step"] for r in losses] == [1, 2, 3]
    assert losses[-1]["images_seen"] == 3 * 16 * 2 * (1 if "vae_" in name and "vaegan" not in name else 2)
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "step_000000003.pt").is_file()
    assert list((run / "samples").glob("step_*.png"))
    # the last model in the seed's format loads into the plain model, as the seed's inference code does
    import torch

    from gen_dist.config import load_config
    from gen_dist.models import build_models

    final = torch.load(run / "checkpoints" / "final.pt", weights_only=True)
    assert {"G_state", "D_state", "optimizerG", "optimizerD", "fid"} <= final.keys()
    cfg = load_config(f"configs/{name}.yaml", TINY)
    channels = 3 if cfg.data.dataset == "cifar10" else 1
    build_models(cfg.model, channels, cfg.data.image_size, 10).generator.load_state_dict(final["G_state"])


def test_two_processes_match_one_process_with_the_global_batch(data_root, tmp_path):
    """The seed VAE: 2 x 64 and 1 x 128 see the same images and noise, so the losses agree.

    On the in-memory source, whose global batch is the same on any world size; shard readers give
    each rank a contiguous block of the epoch instead (no read amplification), so their global
    batches differ between world sizes while each epoch still covers the same samples."""
    common = ["--config", "configs/vae_mnist.yaml", "train.max_steps=5", "train.log_every=1",
              "data.limit=2048", "eval.limit=64", "train.progress_bar=false", "data.shards=null",
              "data.test_shards=null", *NO_FID]
    train(data_root, 1, *common, "train.batch_size=128", f"run.dir={tmp_path / 'one'}")
    train(data_root, 2, *common, "train.batch_size=64", f"run.dir={tmp_path / 'two'}")
    one = [r for r in read_metrics(tmp_path / "one") if "loss/vae" in r]
    two = [r for r in read_metrics(tmp_path / "two") if "loss/vae" in r]
    assert len(one) == len(two) == 5
    for a, b in zip(one, two):
        assert a["images_seen"] == b["images_seen"]
        for key in ("loss/vae", "vae/recon", "vae/kl"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-5), (a["step"], key, a[key], b[key])
    # the steps really moved the model (a loss that cannot change would pass trivially)
    assert one[-1]["loss/vae"] < 0.9 * one[0]["loss/vae"]


def test_bf16_on_cpu(data_root, tmp_path):
    run = tmp_path / "run"
    proc = train(data_root, 2, "--config", "configs/dcgan32_mnist.yaml", f"run.dir={run}", "train.max_steps=3",
                 "train.mixed_precision=bf16", *TINY)
    rows = [r for r in read_metrics(run) if "loss/D" in r]
    assert len(rows) == 3 and all(r["loss/D"] is not None for r in rows), proc.stderr[-2000:]


def test_accumulation_clipping_ema_and_step_counts(data_root, tmp_path):
    """n_critic D steps per G step with gradient accumulation: each optimizer steps exactly as often as
    it should (the field notes saw D take 0 steps when two models used separate accumulate blocks)."""
    run = tmp_path / "run"
    train(data_root, 2, "--config", "configs/wgan_gp_mnist.yaml", f"run.dir={run}", "train.max_steps=3",
          "train.n_critic=2", "train.grad_accum=2", "train.grad_clip=1.0", "train.ema_decay=0.9", *TINY)
    from gen_dist import checkpoint as ckpt

    state = ckpt.load(ckpt.step_path(run / "checkpoints", 3))
    d_steps = {int(s["step"]) for s in state["optimizers"]["D"]["state"].values()}
    g_steps = {int(s["step"]) for s in state["optimizers"]["G"]["state"].values()}
    assert d_steps == {6} and g_steps == {3}
    assert state["images_seen"] == 3 * 2 * 2 * 16 * 2  # steps x n_critic x accum x batch x ranks
    assert state["ema"] is not None and int(state["ema"]["n_averaged"]) == 3
    rows = read_metrics(run)
    assert rows[-1]["sync/params_identical"] == 1
    assert any("D/gp" in r for r in rows)


def test_multi_gpu_flag_without_gpus_fails_loudly(data_root, tmp_path):
    """The silent trap: --multi_gpu on a CPU machine without ACCELERATE_USE_CPU starts lone processes."""
    from conftest import run_env

    env = run_env(data_root)
    env.pop("ACCELERATE_USE_CPU")
    proc = train(data_root, 2, "--config", "configs/vae_mnist.yaml", f"run.dir={tmp_path}", "train.max_steps=2",
                 *TINY, check=False, env=env)
    assert proc.returncode != 0
    assert "ACCELERATE_USE_CPU=1" in proc.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_image_folder_dataset(data_root, tmp_path):
    """data.dataset=folder: class subfolders of PNGs (here written from real MNIST digits)."""
    import torchvision.datasets as tvd

    mnist = tvd.MNIST(data_root, train=False, download=False)
    for i in range(40):
        image, label = mnist[i]
        folder = tmp_path / "images" / str(label % 2)
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i}.png")
    run = tmp_path / "run"
    train(data_root, 1, "--config", "configs/conv_vae_mnist.yaml", f"run.dir={run}", "data.dataset=folder",
          f"data.root={tmp_path / 'images'}", "train.max_steps=2", "train.batch_size=8", "eval.limit=16",
          "train.progress_bar=false", "model.g_width=8", *NO_FID)
    assert [r for r in read_metrics(run) if "test/loss" in r]
