"""Mode coverage: the classifier trained on real MNIST (accuracy, cache), real test images covering every
class, and a one-class generator raising the mode-collapse alarm through the trainer's evaluation."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn as nn

from conftest import REPO, TINY, read_metrics
from gen_dist.config import load_config
from gen_dist.data import prepare_sources, to_model_range
from gen_dist.errors import ConfigError
from gen_dist.evaluation.metrics.mode_coverage import cache_path, coverage_metrics, load_or_train
from gen_dist.noise import latents_for


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("classifiers")


def _cfg(data_root, cache, *extra):
    return load_config(str(REPO / "configs" / "dcgan32_mnist.yaml"),
                       [f"data.root={data_root}", "data.image_size=28", "data.test_shards=null",
                        f"eval.classifier_cache={cache}", *extra], training=False)


@pytest.fixture(scope="module")
def mnist_test(data_root, cache):
    return prepare_sources(_cfg(data_root, cache).data, train=False).test


@pytest.fixture(scope="module")
def classifier(data_root, cache, mnist_test):
    """Trained once here, on all 60,000 training images (1 epoch), cached in this module's folder."""
    start = time.time()
    clf = load_or_train(_cfg(data_root, cache), mnist_test, torch.device("cpu"))
    clf.wall = time.time() - start
    return clf


def test_classifier_accuracy_is_reported_and_the_cache_is_reused(data_root, cache, mnist_test, classifier):
    assert classifier.trained_now and classifier.path.is_file() and classifier.path.parent == cache
    assert classifier.accuracy >= 0.98, f"MNIST test accuracy {classifier.accuracy:.4f}"
    assert classifier.real_distribution.sum().item() == pytest.approx(1.0)
    mtime = classifier.path.stat().st_mtime_ns
    start = time.time()
    again = load_or_train(_cfg(data_root, cache), mnist_test, torch.device("cpu"))
    assert not again.trained_now and again.accuracy == classifier.accuracy
    assert time.time() - start < min(5.0, classifier.wall / 3)  # read, not retrained
    assert classifier.path.stat().st_mtime_ns == mtime
    for a, b in zip(classifier.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    # one classifier per dataset (at its stored 28 px), whatever size the run generates at
    assert cache_path(_cfg(data_root, cache, "data.image_size=64"), 1, 10, 28) == classifier.path
    assert cache_path(_cfg(data_root, cache, "data.dataset=fashion_mnist"), 1, 10, 28) != classifier.path


class LookupGenerator(nn.Module):
    """A 'generator' whose sample i is real test image i: it finds which evaluation latent it was given
    (latents_for(i) is sample i's latent) and returns that image, in a GAN generator's [-1, 1] range."""

    def __init__(self, images: torch.Tensor, latent_dim: int, seed: int):
        super().__init__()
        self.register_buffer("table", latents_for(torch.arange(len(images)), latent_dim, seed))
        self.images = images.float() / 255 * 2 - 1
        self.anchor = nn.Parameter(torch.zeros(()))  # the evaluator reads the device of a parameter

    def forward(self, z):
        idx = torch.cdist(z.flatten(1), self.table).argmin(1)
        return self.images[idx] + 0 * self.anchor


class OneImageGenerator(nn.Module):
    """Always the same real test image (resized to the run's size), whatever the latent: a generator
    collapsed onto one mode."""

    def __init__(self, image: torch.Tensor, size: int):
        super().__init__()
        self.image = to_model_range(image[None], size, signed=True)[0]
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, z):
        return self.image.expand(len(z), *self.image.shape) + 0 * self.anchor


def test_real_test_images_cover_every_class(data_root, cache, mnist_test, classifier):
    """Sample i = test image i, through the evaluator's generated-sample path: all 10 classes, KL near 0."""
    from gen_dist.distributed.engine import Engine
    from gen_dist.evaluation.evaluator import Evaluator

    n = 2000
    cfg = _cfg(data_root, cache, f"eval.coverage_samples={n}", "eval.mode_coverage=true")
    gen = LookupGenerator(mnist_test.images[:n], cfg.model.latent_dim, cfg.seed)
    evaluator = Evaluator(cfg, Engine("no", cfg.seed), mnist_test, len(mnist_test.classes))
    evaluator._classifier = classifier
    m = evaluator.mode_coverage(gen)
    assert m["coverage/classes_covered"] == 10 and m["coverage/alarm"] == 0
    assert m["coverage/kl"] < 0.01, m
    true_hist = torch.bincount(mnist_test.labels[:n], minlength=10).double() / n
    assert torch.allclose(torch.tensor(m["coverage/histogram"], dtype=torch.float64), true_hist, atol=0.02)
    # a plain check of the rule on hand-made counts: a class needs 1/4 of its real share
    real = torch.full((10,), 0.1, dtype=torch.float64)
    counts = torch.tensor([100.0] * 8 + [25.0, 24.0])  # shares 0.1066..., 0.0266 (>= 0.025), 0.0256
    assert coverage_metrics(counts, real, 0.5)["coverage/classes_covered"] == 10
    counts = torch.tensor([100.0] * 8 + [20.0, 0.0])
    assert coverage_metrics(counts, real, 0.5)["coverage/classes_covered"] == 8


def test_one_class_generator_raises_the_alarm_in_training(data_root, cache, mnist_test, classifier, tmp_path,
                                                          capsys):
    """A 32 px GAN trainer's evaluation with G replaced by a one-image generator: alarm printed and logged
    (the 28 px classifier cached above measures it)."""
    from gen_dist.training.trainer import Trainer

    cfg = load_config(str(REPO / "configs" / "dcgan32_mnist.yaml"),
                      TINY + [f"data.root={data_root}", f"eval.classifier_cache={cache}",
                              f"data.shard_cache={tmp_path / 'shards'}", f"run.dir={tmp_path / 'run'}",
                              "train.max_steps=2", "tracking.wandb=false", "eval.coverage_samples=300"])
    assert cfg.eval.mode_coverage is None and cfg.data.image_size == 32  # auto: on for a GAN
    trainer = Trainer(cfg)
    digit = int(mnist_test.labels[0])  # test image 0, a clear 7
    trainer.G = OneImageGenerator(mnist_test.images[0], cfg.data.image_size)
    trainer._evaluate()
    trainer.tracker.finish()
    out = capsys.readouterr().out
    alarm = [line for line in out.splitlines() if "mode-collapse alarm" in line]
    assert len(alarm) == 1 and alarm[0].startswith("gen_dist: mode-collapse alarm: generated samples cover 1 of 10")
    assert f"class {digit} takes 100%" in alarm[0]
    eval_line = [line for line in out.splitlines() if line.startswith("gen_dist: eval at step")]
    assert len(eval_line) == 1 and "coverage/classes_covered=1," in eval_line[0]  # counts are on the line
    row = [r for r in read_metrics(tmp_path / "run") if "coverage/alarm" in r][-1]
    assert row["coverage/alarm"] == 1 and row["coverage/classes_covered"] == 1
    assert row["coverage/kl"] == pytest.approx(-torch.log(classifier.real_distribution[digit]).item(), abs=1e-6)
    assert row["coverage/histogram"][digit] == 1.0
    assert row["coverage/classifier_accuracy"] == classifier.accuracy  # the cached classifier was used


def test_bad_coverage_settings_are_refused(data_root, cache):
    with pytest.raises(ConfigError, match="eval.coverage_alarm"):
        _cfg(data_root, cache, "eval.coverage_alarm=1.5")
    with pytest.raises(ConfigError, match="eval.coverage_samples"):
        _cfg(data_root, cache, "eval.coverage_samples=0")
