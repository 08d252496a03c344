"""The beta-VAE and FactorVAE metrics (gen_dist/evaluation/metrics/disentanglement.py) on codes whose answer is known,
on real dSprites images through an encoder computed from the pixels, and in a real 2-process run of
configs/betavae_dsprites.yaml whose numbers launch/evaluate.py reproduces on 1 and 2 processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, read_metrics, train

from gen_dist.data.dsprites import Grid, load_split, split_indices
from gen_dist.evaluation.metrics.disentanglement import betavae_score, disentanglement_metrics, encode_pool, factorvae_score

GRID = Grid()  # the default subset; its test split (4,633 images) is the pool, as in evaluation
FACTORS = GRID.factors(split_indices(GRID, "test"))
SIZES = np.array(GRID.sizes)
SMALL = dict(n_train=2000, n_eval=2000)  # held-out accuracy has a standard deviation of ~0.01 at chance
CHANCE = 1 / len(GRID.sizes)  # both metrics: 1/K for a code that ignores the image


def _true_codes(noise: float = 0.02, seed: int = 0) -> np.ndarray:
    """Each factor (scaled to [0, 1]) in a dimension of its own, permuted, with noise, plus 3 pure-noise dims."""
    rng = np.random.default_rng(seed)
    scaled = FACTORS / (SIZES - 1) + noise * rng.standard_normal(FACTORS.shape)
    return np.concatenate([scaled[:, [3, 0, 4, 2, 1]], rng.standard_normal((len(FACTORS), 3))], axis=1)


def test_true_factors_score_one():
    codes = _true_codes()
    beta = betavae_score(codes, FACTORS, seed=0, **SMALL)
    factor = factorvae_score(codes, FACTORS, seed=0, **SMALL)
    assert beta["eval_accuracy"] > 0.98 and factor["eval_accuracy"] > 0.98
    assert factor["active_dims"] == 8


def test_a_code_that_ignores_the_image_scores_chance():
    codes = np.random.default_rng(1).standard_normal((len(FACTORS), 10))
    beta = betavae_score(codes, FACTORS, seed=0, **SMALL)
    factor = factorvae_score(codes, FACTORS, seed=0, **SMALL)
    for score in (beta["eval_accuracy"], factor["eval_accuracy"]):
        assert abs(score - CHANCE) < 0.04


def _partial_expectations(beta: float, factor: float) -> None:
    """A code holding x and y only. beta-VAE: pairs fixing x or y are recognised (2 of 5); pairs fixing shape,
    scale or orientation look alike (x and y both vary), so 1/3 of those: 0.2 + 0.2 + 0.6 / 3 = 0.6.
    FactorVAE: fixing x (y) the x (y) dimension varies least; fixing any other factor it is x or y by a coin
    flip, so each dimension's majority stays its own factor and only x- and y-batches are right: 0.4."""
    assert abs(beta - 0.6) < 0.06 and abs(factor - 0.4) < 0.05


def test_a_code_with_two_of_five_factors_scores_what_is_worked_out():
    rng = np.random.default_rng(2)
    xy = FACTORS[:, 3:] / (SIZES[3:] - 1) + 0.02 * rng.standard_normal((len(FACTORS), 2))
    collapsed = 0.01 * rng.standard_normal((len(FACTORS), 4))  # std 0.01 < 0.05: dropped by FactorVAE
    codes = np.concatenate([collapsed[:, :2], xy, collapsed[:, 2:]], axis=1)
    beta = betavae_score(codes, FACTORS, seed=0, **SMALL)
    factor = factorvae_score(codes, FACTORS, seed=0, **SMALL)
    assert factor["active_dims"] == 2
    _partial_expectations(beta["eval_accuracy"], factor["eval_accuracy"])
    dead = factorvae_score(collapsed, FACTORS, seed=0, **SMALL)
    assert dead == {"train_accuracy": 0.0, "eval_accuracy": 0.0, "active_dims": 0}


def test_scores_are_deterministic_given_the_seed():
    codes = _true_codes(noise=0.3)  # noisy enough that the points matter
    runs = [(betavae_score(codes, FACTORS, seed=s, n_train=500, n_eval=500),
             factorvae_score(codes, FACTORS, seed=s, n_train=500, n_eval=500)) for s in (0, 0, 1)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_encoding_blocks_are_dealt_to_ranks_and_sum_to_the_whole_table():
    images = torch.arange(1000, dtype=torch.float64)[:, None].repeat(1, 3)  # "image" i has code (i, i, i)
    seen = {}

    def encode_for(rank):
        def encode(x):
            seen.setdefault(rank, []).append((int(x[0, 0]), len(x)))
            return x * 2
        return encode

    whole = encode_pool(encode_for("one"), images, 3, block=64)
    parts = [encode_pool(encode_for(r), images, 3, block=64, rank=r, world=3) for r in range(3)]
    assert np.array_equal(whole, 2 * images.numpy()) and np.array_equal(sum(parts), whole)
    assert sorted(b for r in range(3) for b in seen[r]) == seen["one"]  # the same batches on any world size
    assert seen[1][0] == (64, 64) and seen[0][-1] == (960, 40)  # block 15 (the short last one) is rank 0's
    assert all(start // 64 % 3 == r for r in range(3) for start, _n in seen[r])


def test_an_encoder_of_real_images_that_sees_position_only():
    """The centroid of the white pixels, computed from real dSprites pixels: x and y, nothing else."""
    images, _labels, _classes, table = load_split("test", GRID)

    def centroid(x: torch.Tensor) -> torch.Tensor:
        mask = x[:, 0].double() / 255
        cols = torch.arange(64, dtype=torch.float64)
        mass = mask.sum((1, 2))
        return torch.stack([(mask.sum(1) * cols).sum(1) / mass, (mask.sum(2) * cols).sum(1) / mass], 1) / 64

    out = disentanglement_metrics(centroid, images, table.classes, 2, seed=0, batch=64, block=500, **SMALL)
    assert out["disent/active_dims"] == 2 and out["disent/images"] == len(images)
    _partial_expectations(out["disent/betavae"], out["disent/factorvae"])


@pytest.mark.slow
def test_betavae_dsprites_on_two_processes_and_evaluate_on_one_and_two(data_root, tmp_path):
    run = tmp_path / "run"
    small = ["data.dsprites_orientations=4", "data.dsprites_positions=8",  # 4,608 images, 461 in the test split
             "eval.disentanglement_train=300", "eval.disentanglement_eval=300"]
    train(data_root, 2, "--config", "configs/betavae_dsprites.yaml", f"run.dir={run}", "train.max_steps=4", *TINY,
          *small)
    evals = [r for r in read_metrics(run) if "disent/betavae" in r]
    assert len(evals) == 1 and evals[0]["step"] == 4
    logged = evals[0]
    n_test = len(split_indices(Grid(4, 8), "test"))
    assert logged["disent/images"] == n_test and "test/loss" in logged
    for key in ("disent/betavae", "disent/factorvae"):
        assert 0.0 <= logged[key] <= 1.0

    results = []
    for nproc in (1, 2):
        out = tmp_path / f"eval{nproc}.json"
        train(data_root, nproc, "--checkpoint", str(run / "checkpoints" / "final.pt"), "--out", str(out),
              script="evaluate.py")
        results.append(json.loads(Path(out).read_text()))
    one, two = results
    assert one["world_size"] == 1 and two["world_size"] == 2
    for key in ("disent/betavae", "disent/betavae_train", "disent/factorvae", "disent/factorvae_train",
                "disent/active_dims", "disent/images"):
        assert one[key] == two[key] == logged[key], key
