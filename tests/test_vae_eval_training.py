"""VAE evaluation inside real 2-process training: posterior collapse stops the run with its message,
the IWAE bound is logged above the ELBO, and loss-curve stability figures are logged."""

from __future__ import annotations

import pytest
from conftest import TINY, read_metrics, train

pytestmark = pytest.mark.slow


def test_collapse_is_detected_and_stops_early(data_root, tmp_path):
    run = tmp_path / "run"
    proc = train(data_root, 2, "--config", "configs/vae_mnist.yaml", f"run.dir={run}", "train.max_steps=60",
                 "loss.beta=50", "eval.every=3", "eval.collapse_patience=2", "eval.collapse_threshold=0.1",
                 *TINY)
    assert "posterior collapse" in proc.stdout and "stopped early" in proc.stdout
    rows = read_metrics(run)
    flagged = [r for r in rows if r.get("collapse/detected")]
    assert flagged and flagged[0]["test/kl"] < 0.1
    stop = flagged[0]["step"]
    assert stop < 60 and max(r["step"] for r in rows) == stop
    assert (run / "checkpoints" / f"step_{stop:09d}.pt").is_file()


def test_healthy_vae_is_not_flagged_and_logs_iwae_and_stability(data_root, tmp_path):
    run = tmp_path / "run"
    train(data_root, 2, "--config", "configs/vae_mnist.yaml", f"run.dir={run}", "train.max_steps=12",
          "eval.every=6", "eval.iwae_k=16", "eval.iwae_images=24", *TINY)
    evals = [r for r in read_metrics(run) if "test/loss" in r]
    assert len(evals) == 2 and not any(r.get("collapse/detected") for r in evals)
    last = evals[-1]
    assert last["test/iwae_k16"] >= last["test/elbo_iwae_images"]  # a tighter lower bound on log p(x)
    assert last["stability/vae/diff_std_last"] is not None and last["stability/vae/total_variation"] > 0
