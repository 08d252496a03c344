"""launch/sample.py and gen_dist/generation/sampling.py on checkpoints of tiny real training runs: a DCGAN-32
(with EMA), a class-conditional DCGAN and a conv VAE (its decoder), on real MNIST."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, TINY, train
from gen_dist.noise import latents_for
from gen_dist.generation.loading import load_trained
from gen_dist.generation.sampling import sample_images

_spec = importlib.util.spec_from_file_location("sample_cli", REPO / "launch" / "sample.py")
sample_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sample_cli)


@pytest.fixture(scope="module")
def ckpts(data_root, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("sample_runs")
    runs = {"dcgan": ("dcgan32_mnist", ["train.ema_decay=0.9"]), "cgan": ("cgan_mnist", []),
            "vae": ("conv_vae_mnist", [])}
    for name, (config, extra) in runs.items():
        train(data_root, 1, "--config", f"configs/{config}.yaml", *TINY, *extra, "train.max_steps=3",
              f"run.dir={base / name}", "tracking.wandb=false")
    return {name: base / name / "checkpoints" for name in runs}


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _tile(grid: np.ndarray, i: int, nrow: int, size: int) -> np.ndarray:
    """Image i of a torchvision grid (2-pixel padding)."""
    r, c = divmod(i, nrow)
    return grid[2 + r * (size + 2): 2 + r * (size + 2) + size, 2 + c * (size + 2): 2 + c * (size + 2) + size]


def _cli(*args) -> int:
    return sample_cli.main([str(a) for a in args])


def test_grid_is_the_same_on_one_and_two_processes(ckpts, data_root, tmp_path):
    final = ckpts["dcgan"] / "final.pt"
    one, two, other = tmp_path / "one.png", tmp_path / "two.png", tmp_path / "other.png"
    # blocks of 4 samples: one process draws all four, two processes two each; rank 0 gathers and writes
    train(data_root, 1, "--checkpoint", str(final), "--num", "16", "--grid", "--seed", "5", "--batch-size", "4",
          "--out", str(one), script="sample.py")
    proc = train(data_root, 2, "--checkpoint", str(final), "--num", "16", "--grid", "--seed", "5",
                 "--batch-size", "4", "--out", str(two), script="sample.py")
    assert "2 process(es)" in proc.stdout
    a, b = _png(one), _png(two)
    assert a.shape == (4 * 34 + 2, 4 * 34 + 2, 3)  # 4x4 grid of 32 px images
    assert np.array_equal(a, b)
    assert _cli("--checkpoint", final, "--num", 16, "--grid", "--seed", 6, "--out", other) == 0
    assert not np.array_equal(a, _png(other)), "another seed must give other images"


def test_one_png_per_image_matches_the_grid(ckpts, tmp_path):
    final = ckpts["dcgan"] / "final.pt"
    assert _cli("--checkpoint", final, "--num", 5, "--out", tmp_path / "each") == 0
    assert _cli("--checkpoint", final, "--num", 5, "--grid", "--out", tmp_path / "grid.png") == 0
    files = sorted((tmp_path / "each").iterdir())
    assert [f.name for f in files] == [f"sample_{i:05d}.png" for i in range(5)]
    grid = _png(tmp_path / "grid.png")  # 5 images: 3 per row
    assert grid.shape == (2 * 34 + 2, 3 * 34 + 2, 3)
    for i, f in enumerate(files):
        assert np.array_equal(_png(f), _tile(grid, i, 3, 32))


def test_interpolation_strip_ends_are_the_two_seeds(ckpts, tmp_path):
    final, steps = ckpts["dcgan"] / "final.pt", 7
    assert _cli("--checkpoint", final, "--interpolate", 11, 12, "--steps", steps, "--out", tmp_path / "s.png") == 0
    strip = _png(tmp_path / "s.png")
    assert strip.shape == (32 + 4, steps * 34 + 2, 3)
    ends = []
    for seed in (11, 12):
        assert _cli("--checkpoint", final, "--num", 1, "--seed", seed, "--out", tmp_path / f"seed{seed}") == 0
        ends.append(_png(tmp_path / f"seed{seed}" / "sample_00000.png"))
    assert np.array_equal(_tile(strip, 0, steps, 32), ends[0])
    assert np.array_equal(_tile(strip, steps - 1, steps, 32), ends[1])
    assert not np.array_equal(ends[0], ends[1])
    middle = _tile(strip, steps // 2, steps, 32)
    assert not np.array_equal(middle, ends[0]) and not np.array_equal(middle, ends[1])


def test_ema_weights_are_used(ckpts):
    step = next(ckpts["dcgan"].glob("step_*.pt"))  # resume state: raw weights and their EMA
    from_state = sample_images(str(step), n=8, seed=0)
    from_export = sample_images(str(ckpts["dcgan"] / "final.pt"), n=8, seed=0)  # G_state holds the EMA
    assert torch.equal(from_state, from_export)
    trained = load_trained(step)
    raw = copy.deepcopy(trained.model)
    raw.load_state_dict(torch.load(step, weights_only=True)["models"]["G"])
    assert trained.ema and not torch.equal(sample_images(raw, trained.cfg, 8, 0), from_state)


def test_class_conditional(ckpts, tmp_path):
    final = ckpts["cgan"] / "final.pt"
    for c in (3, 4):
        assert _cli("--checkpoint", final, "--num", 4, "--grid", "--class", c, "--out", tmp_path / f"c{c}.png") == 0
    assert _cli("--checkpoint", final, "--num", 10, "--grid", "--nrow", 10, "--out", tmp_path / "all.png") == 0
    c3, c4, cycling = _png(tmp_path / "c3.png"), _png(tmp_path / "c4.png"), _png(tmp_path / "all.png")
    assert not np.array_equal(c3, c4)
    # without --class, sample i has class i % 10: sample 3 is --class 3's sample 3 (same latent, same class)
    assert np.array_equal(_tile(cycling, 3, 10, 32), _tile(c3, 3, 2, 32))
    assert not np.array_equal(_tile(cycling, 2, 10, 32), _tile(c3, 2, 2, 32))


def test_vae_samples_come_from_the_decoder(ckpts, tmp_path):
    final = ckpts["vae"] / "final.pt"
    assert _cli("--checkpoint", final, "--num", 16, "--grid", "--seed", 3, "--out", tmp_path / "vae.png") == 0
    grid = _png(tmp_path / "vae.png")
    assert grid.shape == (4 * 30 + 2, 4 * 30 + 2, 3)  # 28 px MNIST
    trained = load_trained(final)
    with torch.no_grad():
        decoded = trained.model.decoder(latents_for(torch.arange(16), trained.cfg.model.latent_dim, 3))
    pixels = decoded.mul(255).add(0.5).clamp(0, 255).to(torch.uint8)  # save_image's rounding
    for i in (0, 9, 15):
        assert np.array_equal(_tile(grid, i, 4, 28)[..., 0], pixels[i, 0].numpy())


@pytest.mark.parametrize("args,message", [
    (["--checkpoint", "{dir}/missing.pt", "--num", "4", "--out", "{dir}/o"], "does not exist"),
    (["--checkpoint", "{dcgan}", "--num", "4", "--class", "1", "--out", "{dir}/o"], "this model is unconditional"),
    (["--checkpoint", "{cgan}", "--num", "4", "--class", "10", "--out", "{dir}/o"], "classes 0..9"),
    (["--checkpoint", "{dcgan}", "--num", "0", "--out", "{dir}/o"], "at least 1 image"),
    (["--checkpoint", "{dcgan}", "--num", "4", "--out", "{dir}/o.png"], "add --grid"),
], ids=["missing", "class-unconditional", "class-range", "num-0", "png-without-grid"])
def test_bad_input_is_one_line_and_exit_2(args, message, ckpts, tmp_path, capsys):
    paths = {"dir": tmp_path, "dcgan": ckpts["dcgan"] / "final.pt", "cgan": ckpts["cgan"] / "final.pt"}
    assert _cli(*[a.format(**paths) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("gen_dist: error:") and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_bad_input_through_the_launcher(ckpts, data_root, tmp_path):
    proc = train(data_root, 1, "--checkpoint", str(ckpts["cgan"] / "final.pt"), "--num", "4", "--class", "-1",
                 "--out", str(tmp_path / "o"), script="sample.py", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "gen_dist: error: --class -1 is out of range: this model knows classes 0..9"]
