"""The seed's VAE reproduces the seed's result: test loss <= 106 nats per image after 10 epochs."""

from __future__ import annotations

import pytest
from conftest import NO_FID, read_metrics, train

pytestmark = pytest.mark.slow


def test_seed_vae_reaches_106_after_10_epochs(data_root, tmp_path):
    run = tmp_path / "vae"
    proc = train(data_root, 1, "--config", "configs/vae_mnist.yaml", f"run.dir={run}",
                 "train.progress_bar=false", *NO_FID, timeout=900)
    evals = [r for r in read_metrics(run) if "test/loss" in r]
    assert evals[-1]["step"] == 4680 and evals[-1]["test/images"] == 10000  # 10 epochs of 468 batches
    print(f"seed VAE test loss after 10 epochs: {evals[-1]['test/loss']:.2f}", proc.stdout[-200:])
    assert evals[-1]["test/loss"] <= 106.0
    assert evals[0]["test/loss"] > evals[-1]["test/loss"]  # it learned over the run
