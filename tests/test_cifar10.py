"""CIFAR-10, the third dataset, end to end on 3-channel data: reader, shards, training on 1 and 2
processes, evaluation with FID on RGB, sample grids.

The real CIFAR-10 is not on this machine and there is no network, so the tests write a small file
set in CIFAR-10's own format (torchvision's `cifar-10-batches-py`: pickled dicts with uint8 `data`
[N, 3072] and `labels`, plus `batches.meta`), the images being real MNIST digits painted in a colour per
class on a coloured background. It is read through the same path a user's real download takes.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import TINY, read_metrics, train
from gen_dist.data import load_arrays
from gen_dist.errors import DataError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_BATCH, TEST = 200, 200  # 5 training batches of 200, a test batch of 200


def _paint(digits: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """MNIST digits [N, 1, 28, 28] -> CIFAR rows [N, 3072]: 32 px, digit in its class's colour."""
    palette = rng.integers(40, 256, size=(10, 3))
    background = rng.integers(0, 120, size=(len(digits), 3))
    ink = np.pad(digits[:, 0], ((0, 0), (2, 2), (2, 2))).astype(np.float64)[:, None] / 255  # [N, 1, 32, 32]
    rgb = ink * palette[labels][:, :, None, None] + (1 - ink) * background[:, :, None, None]
    return rgb.round().astype(np.uint8).reshape(len(digits), 3072)  # planes R, G, B, each row-major


def write_cifar10(root: Path, mnist_root: str) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, train_split, count in ([(f"data_batch_{i}", True, PER_BATCH) for i in range(1, 6)]
                                     + [("test_batch", False, TEST)]):
        digits, labels, _ = load_arrays("mnist", mnist_root, train_split, False)
        start = (int(name[-1]) - 1) * PER_BATCH if train_split else 0
        x, y = digits[start:start + count].numpy(), labels[start:start + count].numpy()
        batch = {"batch_label": name, "labels": [int(v) for v in y], "data": _paint(x, y, rng),
                 "filenames": [f"{name}_{i}.png" for i in range(count)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"num_cases_per_batch": PER_BATCH, "label_names": CLASSES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


@pytest.fixture(scope="module")
def cifar_root(data_root, tmp_path_factory) -> str:
    return str(write_cifar10(tmp_path_factory.mktemp("cifar"), data_root))


def test_reads_the_cifar_layout(cifar_root):
    images, labels, classes = load_arrays("cifar10", cifar_root, True, download=True)  # present: no download
    assert images.dtype == torch.uint8 and tuple(images.shape) == (5 * PER_BATCH, 3, 32, 32)
    assert classes == CLASSES and len(labels) == len(images)
    third = pickle.loads((Path(cifar_root) / "cifar-10-batches-py" / "data_batch_3").read_bytes())
    row = third["data"][7]  # image 2*PER_BATCH + 7: its red, green and blue planes in that order
    for c in range(3):
        assert np.array_equal(images[2 * PER_BATCH + 7, c].numpy(), row[c * 1024:(c + 1) * 1024].reshape(32, 32))
    assert labels[2 * PER_BATCH + 7] == third["labels"][7]
    test_images, _, _ = load_arrays("cifar10", cifar_root, False, download=False)
    assert tuple(test_images.shape) == (TEST, 3, 32, 32)
    # why gen_dist reads the batches itself: torchvision's class md5-checks every file against the
    # official release and refuses any other file set in the same format
    import torchvision.datasets as tvd

    with pytest.raises(RuntimeError, match="corrupted"):
        tvd.CIFAR10(cifar_root, train=True, download=False)


def test_missing_or_damaged_files_are_named(cifar_root, tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py/data_batch_1 is missing"):
        load_arrays("cifar10", str(tmp_path), True, download=False)
    damaged = tmp_path / "damaged"
    (damaged / "cifar-10-batches-py").mkdir(parents=True)
    for f in (Path(cifar_root) / "cifar-10-batches-py").iterdir():
        (damaged / "cifar-10-batches-py" / f.name).write_bytes(f.read_bytes())
    batch = damaged / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:5000])  # truncated mid-array
    with pytest.raises(DataError, match="data_batch_2' is unreadable") as err:
        load_arrays("cifar10", str(damaged), True, download=False)
    assert "\n" not in str(err.value)
    batch.write_bytes(pickle.dumps({"data": np.zeros((4, 784), np.uint8), "labels": [0] * 4}, protocol=2))
    with pytest.raises(DataError, match=r"expected uint8 \[N, 3072\]"):
        load_arrays("cifar10", str(damaged), True, download=False)


def test_numpy1_names_load_and_code_is_refused(cifar_root, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in (Path(cifar_root) / "cifar-10-batches-py").iterdir():
        data = f.read_bytes()
        # the real release was pickled by NumPy 1, whose arrays name numpy.core (NumPy 2: numpy._core)
        (folder / f.name).write_bytes(data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    assert b"cnumpy.core.multiarray\n" in (folder / "test_batch").read_bytes()
    images, _, _ = load_arrays("cifar10", str(tmp_path), False, download=False)
    expected, _, _ = load_arrays("cifar10", cifar_root, False, download=False)
    assert torch.equal(images, expected)
    (folder / "test_batch").write_bytes(b"cos\nsystem\n(S'touch pwned'\ntR.")  # a pickle that runs a command
    with pytest.raises(DataError, match="refusing os.system"):
        load_arrays("cifar10", str(tmp_path), False, download=False)
    assert not Path("pwned").exists()


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# (config, processes, extra overrides): two configs on 2 processes (one of them with FID on RGB
# samples), the others on one to keep the suite short
RUNS = [
    ("dcgan32_cifar10", 2, ["eval.sample_quality=true", "eval.num_samples=16", "eval.limit=16", "eval.batch_size=8",
                            "eval.kid_subsets=4", "eval.pr_k=2"]),
    ("vaegan_cifar10", 2, []),
    ("wgan_gp_cifar10", 1, []),
    ("sngan_cifar10", 1, []),
]


@pytest.mark.parametrize("config,nproc,extra", RUNS, ids=[r[0] for r in RUNS])
def test_cifar10_config_trains(config, nproc, extra, cifar_root, data_root, tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "shards"
    train(data_root, nproc, "--config", f"configs/{config}.yaml", *TINY, *extra, "train.max_steps=2",
          "train.sample_every=2", f"data.root={cifar_root}", f"data.shard_cache={cache}",
          f"eval.stats_cache={tmp_path / 'fid_stats'}", f"run.dir={run_dir}", "tracking.wandb=false")
    manifest = json.loads((cache / "cifar10-train-first512" / "manifest.json").read_text())
    assert manifest["image_shape"] == [3, 32, 32] and manifest["classes"] == CLASSES

    rows = read_metrics(run_dir)
    sync = [r for r in rows if "sync/params_identical" in r]
    assert sync and sync[-1]["sync/params_identical"] == 1 and len(sync[-1]["sync/param_hashes"]) == nproc
    batches_per_step = OmegaConf.load(run_dir / "config.yaml").train.n_critic  # each D step takes a batch
    assert max(r.get("images_seen", 0) for r in rows) == 2 * batches_per_step * 16 * nproc
    if "eval.sample_quality=true" in extra:  # FID of RGB samples against the RGB test images
        fid = [r["fid"] for r in rows if "fid" in r]
        assert fid and math.isfinite(fid[-1]) and fid[-1] > 0

    # grids: 8 x 8 samples of 32 px (torchvision's 2-pixel padding), enlarged 2x to >= 512 px, under a caption
    grid = _png(run_dir / "samples" / "step_000000002.png")
    assert grid.shape[1] == 2 * (8 * 34 + 2) and grid.shape[0] > 2 * (8 * 34 + 2)
    if config.startswith("vaegan"):  # test images (top row) reach the grid in colour: reader, shards, resizing
        recon = _png(next((run_dir / "samples").glob("recon*step_000000002.png")))
        strip = recon.shape[0] - 2 * (2 * 34 + 2)
        assert recon.shape[1] == 2 * (8 * 34 + 2) and strip > 0
        tiles = recon[strip + 4: strip + 68, 4:68].astype(int)  # the first test image, enlarged 2x
        assert np.abs(tiles[..., 0] - tiles[..., 1]).max() > 0, "the real test image lost its colour"

    from gen_dist.generation.sampling import sample_images  # the sampling path reads the 3-channel checkpoint

    images = sample_images(str(run_dir / "checkpoints" / "final.pt"), n=4, seed=0)
    assert tuple(images.shape) == (4, 3, 32, 32)
