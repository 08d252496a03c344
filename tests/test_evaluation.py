"""Distributed evaluation through the real launchers: the same FID/KID/precision/recall on 1 and 2
processes (N not divisible by the world size), cached real statistics, best-by-FID checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY, WEIGHTS, read_metrics, run_env, train

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(WEIGHTS).is_file(), reason=f"no FID Inception weights at {WEIGHTS}")]
EVAL = [f"eval.inception_weights={WEIGHTS}", "eval.sample_quality=true", "eval.limit=24", "eval.kid_subset_size=10", "eval.kid_subsets=4"]


@pytest.fixture(scope="module")
def gan_checkpoint(data_root, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("gan") / "run"
    train(data_root, 1, "--config", "configs/dcgan32_mnist.yaml", f"run.dir={run}", "train.max_steps=3", *TINY)
    return run / "checkpoints" / "step_000000003.pt"


def _evaluate(data_root, nproc, ckpt, out, cache, *extra):
    env = run_env(data_root, GEN_DIST_FID_CACHE=str(cache))
    proc = train(data_root, nproc, "--checkpoint", str(ckpt), "--num-samples", "15", "--out", str(out),
                 *EVAL, *extra, script="evaluate.py", env=env, timeout=600)
    return json.loads(Path(out).read_text()), proc


def test_fid_is_the_same_on_one_and_two_processes(data_root, gan_checkpoint, tmp_path):
    one, _ = _evaluate(data_root, 1, gan_checkpoint, tmp_path / "one.json", tmp_path / "cache1")
    two, proc = _evaluate(data_root, 2, gan_checkpoint, tmp_path / "two.json", tmp_path / "cache2")
    assert one["world_size"] == 1 and two["world_size"] == 2 and one["num_samples"] == two["num_samples"] == 15
    for key in ("fid", "kid", "precision", "recall"):
        assert two[key] == pytest.approx(one[key], rel=1e-6, abs=1e-9), key
    assert one["fid"] > 0 and "fid" in proc.stdout
    # real statistics were cached under a key; a second run reuses them and gets the same number
    assert len(list((tmp_path / "cache2").glob("real_*.npz"))) == 1
    again, _ = _evaluate(data_root, 2, gan_checkpoint, tmp_path / "again.json", tmp_path / "cache2")
    assert again["fid"] == pytest.approx(two["fid"], rel=1e-9)


def test_training_keeps_the_best_checkpoint_by_fid(data_root, tmp_path):
    run = tmp_path / "run"
    tiny = [t for t in TINY if not t.startswith("eval.sample_quality")]
    env = run_env(data_root, GEN_DIST_FID_CACHE=str(tmp_path / "cache"))
    train(data_root, 2, "--config", "configs/vaegan_mnist.yaml", f"run.dir={run}", "train.max_steps=4",
          "eval.every=2", "eval.num_samples=9", *EVAL, *tiny, env=env)
    evals = [r for r in read_metrics(run) if "fid" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        assert {"fid", "kid", "precision", "recall", "test/loss", "test/mse"} <= r.keys()
    import torch

    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["fid"] == pytest.approx(min(r["fid"] for r in evals))
    assert (run / "checkpoints" / "best_state.pt").is_file()
