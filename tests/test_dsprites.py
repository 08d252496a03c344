"""The dSprites-style dataset (gen_dist/data/dsprites.py): deterministic drawing, the whole factor grid
exactly once across the two splits, factor values that mean what they say, and factors that survive
the shard round trip (writer, reader, the `auto` shard cache and launch/make_shards.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import PYTHON, REPO

from gen_dist.config import load_config
from gen_dist.data.dsprites import FACTOR_NAMES, FULL_GRID, Grid, factors_of, load_split, render, source, \
    split_indices
from gen_dist.data.shard_writer import write_shards
from gen_dist.data.shards import read_all
from gen_dist.errors import ConfigError

SMALL = Grid(orientations=4, positions=8)  # 3 x 6 x 4 x 8 x 8 = 4,608 images


def _digest(src) -> str:
    h = hashlib.sha256()
    for i in range(len(src)):
        h.update(src.image(i).tobytes())
    return h.hexdigest()


def test_drawing_is_deterministic():
    assert _digest(source("test", SMALL)) == _digest(source("test", SMALL))
    images, labels, classes, factors = load_split("test", SMALL)  # the in-memory path draws the same pixels
    src = source("test", SMALL)
    assert np.array_equal(images.numpy(), np.stack([src.image(i) for i in range(len(src))]))
    assert classes == ["square", "ellipse", "heart"] and np.array_equal(labels.numpy(), factors.classes[:, 0])


def test_the_splits_cover_the_grid_exactly_once():
    grid = Grid()  # the default subset: 3 x 6 x 10 x 16 x 16
    assert grid.sizes == (3, 6, 10, 16, 16) and len(grid) == 46080
    train, test = split_indices(grid, "train"), split_indices(grid, "test")
    both = np.concatenate([train, test])
    assert len(both) == len(grid) and np.array_equal(np.sort(both), np.arange(len(grid)))
    rows = grid.factors(both)
    assert len(np.unique(rows, axis=0)) == len(grid)  # every factor combination exactly once
    assert 0.09 < len(test) / len(grid) < 0.11
    for k, size in enumerate(grid.sizes):  # the test split holds every value of every factor, evenly
        counts = np.bincount(grid.factors(test)[:, k], minlength=size)
        assert counts.min() > 0.8 * len(test) / size, FACTOR_NAMES[k]


def test_the_full_grid_is_dsprites_size_without_drawing_it():
    full = Grid(**FULL_GRID)
    assert full.sizes == (3, 6, 40, 32, 32) and len(full) == 737280
    assert full.values[2][1] == pytest.approx(2 * np.pi / 40) and max(full.values[2]) < 2 * np.pi
    assert full.values[1] == pytest.approx(tuple(np.linspace(0.5, 1, 6)))
    flat = np.array([0, 1, 32, 32 * 32, 40 * 32 * 32, len(full) - 1])
    assert full.factors(flat).tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 1, 0], [0, 0, 1, 0, 0],
                                           [0, 1, 0, 0, 0], [2, 5, 39, 31, 31]]
    assert np.array_equal(np.ravel_multi_index(full.factors(flat).T, full.sizes), flat)
    n_test = len(split_indices(full, "test"))
    assert n_test + len(split_indices(full, "train")) == len(full) and 0.095 < n_test / len(full) < 0.105
    cfg = load_config("configs/betavae_dsprites.yaml", ["data.dsprites_orientations=40", "data.dsprites_positions=32"])
    assert Grid.of(cfg.data) == full


def _centroid(img: np.ndarray) -> tuple:
    ys, xs = np.nonzero(img[0])
    return xs.mean(), ys.mean()


def test_factors_mean_what_they_say():
    areas = {}
    for shape in range(3):
        for x, y in [(0, 0), (1, 0), (0, 1), (1, 1)]:  # at the corners of the range, no shape leaves the canvas
            img = render(shape, 1.0, 0.7, x, y)
            assert set(np.unique(img)) == {0, 255} and img.shape == (1, 64, 64)
            assert not (img[0, 0].any() or img[0, -1].any() or img[0, :, 0].any() or img[0, :, -1].any())
        small, big = render(shape, 0.5, 0.0, 0.5, 0.5), render(shape, 1.0, 0.0, 0.5, 0.5)
        areas[shape] = (small > 0).sum(), (big > 0).sum()
        assert 3.4 < areas[shape][1] / areas[shape][0] < 4.6  # area grows with scale squared
        left, right = _centroid(render(shape, 0.75, 1.0, 0.0, 0.5)), _centroid(render(shape, 0.75, 1.0, 1.0, 0.5))
        top, bottom = _centroid(render(shape, 0.75, 1.0, 0.5, 0.0)), _centroid(render(shape, 0.75, 1.0, 0.5, 1.0))
        assert right[0] - left[0] > 30 and abs(right[1] - left[1]) < 1  # x moves right, y stays
        assert bottom[1] - top[1] > 30 and abs(bottom[0] - top[0]) < 1
    square, ellipse, heart = (render(shape, 1.0, 0.0, 0.5, 0.5)[0] > 0 for shape in range(3))
    ys, xs = np.nonzero(square)  # an axis-aligned square fills its bounding box
    assert np.ptp(xs) == np.ptp(ys) and square.sum() == (np.ptp(xs) + 1) ** 2
    ys, xs = np.nonzero(ellipse)  # the ellipse is twice as wide as high
    assert 1.8 < (np.ptp(xs) + 1) / (np.ptp(ys) + 1) < 2.2 and ellipse.sum() < 0.85 * (np.ptp(xs) + 1) * (np.ptp(ys) + 1)
    assert not (np.array_equal(heart, square) or np.array_equal(heart, ellipse))
    assert not np.array_equal(heart, heart[::-1])  # a heart has a top and a bottom
    # rotation: a quarter turn of the (centred) ellipse transposes it; the heart is not symmetric under it
    flat, upright = render(1, 1.0, 0.0, 0.5, 0.5)[0], render(1, 1.0, np.pi / 2, 0.5, 0.5)[0]
    assert np.array_equal(flat, upright.T) and not np.array_equal(flat, upright)
    heart, turned = render(2, 1.0, 0.0, 0.5, 0.5)[0], render(2, 1.0, np.pi / 2, 0.5, 0.5)[0]
    assert (heart != turned).sum() > 50


def test_factors_round_trip_through_shards(tmp_path):
    src = source("test", SMALL)
    manifest = write_shards(src, tmp_path / "s", samples_per_shard=200, progress=False)
    assert manifest["factors"]["names"] == list(FACTOR_NAMES) and manifest["factors"]["sizes"] == list(SMALL.sizes)
    images, labels, keys = read_all(tmp_path / "s")
    table = factors_of(str(tmp_path / "s"), keys)
    order = np.array([int(k) for k in keys])
    assert np.array_equal(order, np.arange(len(src)))
    assert np.array_equal(images, np.stack([src.image(i) for i in range(len(src))]))
    assert np.array_equal(labels, src.labels) and np.array_equal(table.classes, src.factors)
    assert table.sizes == SMALL.sizes and table.names == FACTOR_NAMES
    # the factors are those of the grid combination the image was drawn from
    values = SMALL.values
    for i in (0, 17, len(src) - 1):
        f = table.classes[i]
        assert np.array_equal(images[i], render(int(f[0]), values[1][f[1]], values[2][f[2]], values[3][f[3]],
                                                values[4][f[4]]))
    again = write_shards(src, tmp_path / "t", samples_per_shard=200, progress=False)
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in manifest["shards"]]  # same bytes


def test_other_datasets_shards_have_no_factor_members(data_root, tmp_path):
    from gen_dist.data.datasets import load_source

    manifest = write_shards(load_source("mnist", "test", data_root), tmp_path / "m", samples_per_shard=50,
                            limit=50, progress=False)
    assert "factors" not in manifest
    _images, _labels, keys = read_all(tmp_path / "m")
    assert factors_of(str(tmp_path / "m"), keys) is None
    import tarfile

    with tarfile.open(tmp_path / "m" / manifest["shards"][0]["name"]) as tar:
        assert {Path(n).suffix for n in tar.getnames()} == {".npy", ".cls"}


def test_auto_shards_and_the_in_memory_path_give_the_test_split_with_factors(tmp_path):
    from gen_dist.data.datasets import prepare_sources

    over = [f"data.shard_cache={tmp_path}", "data.dsprites_orientations=4", "data.dsprites_positions=8"]
    cfg = load_config("configs/betavae_dsprites.yaml", over)
    shards = prepare_sources(cfg.data, train=False)
    assert (tmp_path / "dsprites-o4-p8-test" / "manifest.json").is_file()
    memory = prepare_sources(load_config("configs/betavae_dsprites.yaml",
                                         over + ["data.test_shards=null"]).data, train=False)
    for s in (shards, memory):
        assert s.channels == 1 and s.classes == ["square", "ellipse", "heart"] and s.test.factors is not None
    assert np.array_equal(shards.test.images.numpy(), memory.test.images.numpy())
    assert np.array_equal(shards.test.factors.classes, memory.test.factors.classes)


def test_make_shards_draws_dsprites(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("GEN_DIST_DATA", None)  # dsprites needs no --root
    out = tmp_path / "d"
    proc = subprocess.run([PYTHON, str(REPO / "launch" / "make_shards.py"), "--dataset", "dsprites", "--split",
                           "test", "--out", str(out), "--dsprites-orientations", "2", "--dsprites-positions", "4",
                           "--no-progress"], capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["factors"]["sizes"] == [3, 6, 2, 4, 4]
    assert manifest["num_samples"] == len(split_indices(Grid(2, 4), "test"))
    bad = subprocess.run([PYTHON, str(REPO / "launch" / "make_shards.py"), "--dataset", "dsprites", "--out",
                          str(tmp_path / "e"), "--dsprites-positions", "0"], capture_output=True, text=True, env=env,
                         cwd=REPO)
    assert bad.returncode == 2 and "--dsprites-positions" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("overrides, words", [
    (["data.dataset=mnist"], "data.dataset=dsprites"),
    (["model.kind=gan", "model.generator=dcgan"], "model.kind=vae"),
    (["data.dsprites_positions=0"], "data.dsprites_positions"),
    (["eval.disentanglement_batch=1"], "eval.disentanglement_batch"),
])
def test_config_refuses_what_cannot_be_scored(overrides, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        load_config("configs/betavae_dsprites.yaml", overrides)
