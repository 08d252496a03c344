"""Our Inception pipeline against pytorch-fid's own: same pixels as its PNG loader, same FID as
`python -m pytorch_fid` (= calculate_fid_given_paths) on PNG folders of real MNIST; and the
weights loader's offline behaviour.

Needs real MNIST (GEN_DIST_DATA, default ../shared/data) and the FID Inception weights
(GEN_DIST_INCEPTION_WEIGHTS, default ../shared/weights/pt_inception-2015-12-05-6726825d.pth).
Inception costs ~0.13 s per image per CPU core, so 200 vs 200 images: pytorch-fid runs in a
subprocess while we compute ours, one core each.
"""

import os
import re
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms as TF
from PIL import Image
from pytorch_fid.fid_score import ImagePathDataset

from gen_dist.evaluation.metrics import (MetricsError, load_inception,
                              to_inception_input)
from gen_dist.evaluation.metrics.inception import FID_WEIGHTS_FILE

REPO = Path(__file__).resolve().parents[1]
DATA = os.environ.get("GEN_DIST_DATA", str(REPO.parent / "shared" / "data"))
WEIGHTS = os.environ.get("GEN_DIST_INCEPTION_WEIGHTS", str(REPO.parent / "shared" / "weights" / FID_WEIGHTS_FILE))
N = 200  # images per set: 'a few hundred' in all

needs_weights = pytest.mark.skipif(not Path(WEIGHTS).is_file(),
                                   reason=f"FID Inception weights not found at {WEIGHTS} "
                                          f"(set GEN_DIST_INCEPTION_WEIGHTS)")


def mnist(train: bool, n: int) -> torch.Tensor:
    if not (Path(DATA) / "MNIST" / "raw").is_dir():
        pytest.skip(f"MNIST not found under {DATA} (set GEN_DIST_DATA)")
    return torchvision.datasets.MNIST(DATA, train=train, download=False).data[:n]  # uint8 [n, 28, 28]


def write_pngs(images: np.ndarray, folder: Path, mode: str) -> list:
    folder.mkdir()
    files = [folder / f"{i:05d}.png" for i in range(len(images))]
    for img, f in zip(images, files):
        Image.fromarray(img, mode=mode).save(f)
    return files


def torch_home_with_weights(tmp: Path) -> Path:
    """A TORCH_HOME whose hub cache holds the weights, as pytorch-fid expects to find them."""
    ckpt = tmp / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / FID_WEIGHTS_FILE).symlink_to(Path(WEIGHTS).resolve())
    return tmp / "torch"


def test_pixels_equal_pytorch_fid_png_loader(tmp_path):
    grey = mnist(False, 6)
    files = write_pngs(grey.numpy(), tmp_path / "grey", "L")
    theirs = torch.stack([ImagePathDataset(files, TF.ToTensor())[i] for i in range(len(files))])
    assert torch.equal(to_inception_input(grey[:, None].float() / 255), theirs)  # floats in [0, 1]
    assert torch.equal(to_inception_input(grey[:, None]), theirs)  # uint8 as the data loaders yield

    rgb = torch.randint(0, 256, (3, 3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    files = write_pngs(rgb.permute(0, 2, 3, 1).numpy(), tmp_path / "rgb", "RGB")
    theirs = torch.stack([ImagePathDataset(files, TF.ToTensor())[i] for i in range(len(files))])
    assert torch.equal(to_inception_input(rgb.float() / 255), theirs)


@needs_weights
def test_fid_equals_pytorch_fid_on_png_folders(tmp_path):
    """`launch/evaluate.py --compare A B` against `python -m pytorch_fid A B` (calculate_fid_given_paths)
    on PNG folders of real MNIST; the two run side by side, one core each."""
    real, fake = mnist(True, N), mnist(False, N)
    dirs = [tmp_path / "train", tmp_path / "test"]
    write_pngs(real.numpy(), dirs[0], "L")
    write_pngs(fake.numpy(), dirs[1], "L")
    # a fresh statistics cache: --compare caches each set's statistics, and this test must compute them
    env = dict(os.environ, TORCH_HOME=str(torch_home_with_weights(tmp_path)), OMP_NUM_THREADS="1",
               GEN_DIST_FID_CACHE=str(tmp_path / "fid_stats"))
    ref = subprocess.Popen([sys.executable, "-m", "pytorch_fid", *map(str, dirs), "--device", "cpu",
                            "--batch-size", "50", "--num-workers", "0"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        mine = subprocess.run([sys.executable, str(REPO / "launch" / "evaluate.py"), "--compare", *map(str, dirs),
                               f"eval.inception_weights={WEIGHTS}", "eval.kid_subset_size=50", "eval.kid_subsets=5"],
                              env=env, capture_output=True, text=True, timeout=900)
        out, _ = ref.communicate(timeout=900)
    finally:
        ref.kill()
    assert mine.returncode == 0, mine.stderr[-3000:]
    last = mine.stdout.strip().splitlines()[-1]
    assert last.startswith("FID: "), mine.stdout[-1000:]
    ours = float(last.split()[1])
    found = re.search(r"FID:\s+([0-9.eE+-]+)", out)
    assert ref.returncode == 0 and found, out[-2000:]
    theirs = float(found.group(1))
    print(f"FID MNIST train[:{N}] vs test[:{N}]: ours {ours:.6f}, pytorch-fid {theirs:.6f}")
    assert ours == pytest.approx(theirs, rel=1e-3)  # with eval.fast_inception's default (true)
    assert "kid" in mine.stdout and "precision" in mine.stdout


@needs_weights
def test_weights_from_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("GEN_DIST_INCEPTION_WEIGHTS", raising=False)  # the site hint comes before the hub cache
    monkeypatch.setenv("TORCH_HOME", str(torch_home_with_weights(tmp_path)))
    model = load_inception(None)
    assert model.weights_source.startswith(str(tmp_path)) and not model.training


@needs_weights
def test_weights_from_the_environment_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty hub cache
    monkeypatch.setenv("GEN_DIST_INCEPTION_WEIGHTS", WEIGHTS)
    assert load_inception(None).weights_source == WEIGHTS


def test_offline_without_weights_names_the_config_key(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty hub cache
    monkeypatch.setenv("GEN_DIST_INCEPTION_WEIGHTS", str(tmp_path / "absent.pth"))  # a hint that is not there

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(MetricsError, match="eval.inception_weights") as err:
        load_inception(None)
    assert "\n" not in str(err.value)


def test_bad_weights_files_are_refused(tmp_path):
    with pytest.raises(MetricsError, match="eval.inception_weights=.*no such file"):
        load_inception(str(tmp_path / "missing.pth"))
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    with pytest.raises(MetricsError, match="not pytorch-fid's FID Inception state dict"):
        load_inception(str(other))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(MetricsError, match="not a readable state dict"):
        load_inception(str(junk))
