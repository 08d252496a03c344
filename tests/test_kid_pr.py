"""KID, precision/recall and Inception Score on cases small enough to work by hand, and IS refusing
classifier weights that are all zeros."""

import math
import os
from pathlib import Path

import pytest
import torch
import torchvision

from gen_dist.evaluation.metrics import (FeatureBank, MetricsError, fid_logits, imagenet_logits, inception_score, kid,
                              load_imagenet_classifier, load_inception, precision_recall)
from gen_dist.evaluation.metrics.kid import mmd2_unbiased

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = os.environ.get("GEN_DIST_INCEPTION_WEIGHTS",
                         str(REPO.parent / "shared" / "weights" / "pt_inception-2015-12-05-6726825d.pth"))


def col(*values):
    return torch.tensor(values, dtype=torch.float64)[:, None]  # points on a line, d = 1


# --- KID ----------------------------------------------------------------------------------------

def test_kid_by_hand():
    # d = 1, k(x, y) = (xy + 1)^3.  X = {0, 1}, Y = {1, 2}:
    # within X: k(0,1) = 1; within Y: k(1,2) = 27  -> (2*1 + 2*27) / (2*1) = 28
    # across: k(0,1) + k(0,2) + k(1,1) + k(1,2) = 1 + 1 + 8 + 27 = 37 -> 2 * 37/4 = 18.5
    mean, std = kid(col(0, 1), col(1, 2), subset_size=2, num_subsets=3)
    assert mean == pytest.approx(9.5, abs=1e-12) and std == pytest.approx(0, abs=1e-12)


def test_mmd2_unbiased_matches_explicit_sums():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    m = 5
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    assert float(mmd2_unbiased(x, y)) == pytest.approx(float(xx + yy - 2 * xy), rel=1e-12)


def test_kid_subsets_are_seeded_and_sensitive_to_shift():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g)
    same = kid(a, b, subset_size=100, num_subsets=20, seed=5)
    assert same == kid(a, b, subset_size=100, num_subsets=20, seed=5)
    assert same != kid(a, b, subset_size=100, num_subsets=20, seed=6)
    shifted = kid(a, b + 1.0, subset_size=100, num_subsets=20)
    assert abs(same[0]) < 3 * same[1] + 1e-3 and shifted[0] > 10 * abs(same[0]) + 0.1


def test_feature_bank_caps_rows_and_orders_by_index():
    bank = FeatureBank(dim=2, capacity=5)
    bank.add(torch.tensor([[3.0, 3], [1, 1], [4, 4]]), indices=torch.tensor([3, 1, 4]))
    bank.add(torch.tensor([[0.0, 0], [2, 2], [9, 9]]), indices=torch.tensor([0, 2, 9]))  # 9 is over
    assert (bank.count, bank.dropped) == (5, 1)
    assert bank.gather()[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_kid_needs_two_images():
    with pytest.raises(MetricsError, match="at least 2"):
        kid(col(0), col(1, 2))


# --- precision / recall -------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [1, 3, 1024])  # row blocks must not change the answer
def test_precision_recall_by_hand_k1(batch_size):
    # Real {0,1,2,3}: each ball reaches its nearest neighbour, radius 1. Fake {0.5, 10}: 0.5 is
    # inside, 10 is not -> precision 1/2. Fake radii: both 9.5, which covers all real -> recall 1.
    p, r = precision_recall(col(0, 1, 2, 3), col(0.5, 10), k=1, batch_size=batch_size)
    assert (p, r) == (0.5, 1.0)


def test_precision_recall_by_hand_k3():
    # Fake = a copy of the first real cluster: every fake point lies on a real one -> precision 1.
    # Fake radii (k=3 within {0,1,2,3}): 3, 2, 2, 3: they cover real 0..3 but not 50..53 -> recall 1/2.
    real, fake = col(0, 1, 2, 3, 50, 51, 52, 53), col(0, 1, 2, 3)
    assert precision_recall(real, fake) == (1.0, 0.5)
    assert precision_recall(fake, real) == (0.5, 1.0)  # swapping the sets swaps the roles


def test_precision_recall_needs_more_than_k_points():
    with pytest.raises(MetricsError, match="more than 3"):
        precision_recall(col(0, 1, 2), col(0, 1, 2, 3))


# --- Inception Score ----------------------------------------------------------------------------

def test_inception_score_by_hand():
    # p(y|x1) = (1, 0), p(y|x2) = (1/2, 1/2), so p(y) = (3/4, 1/4):
    # KL1 = log(4/3), KL2 = 1/2 log(2/3) + 1/2 log 2; IS = exp(mean KL).
    logits = torch.tensor([[60.0, 0.0], [0.0, 0.0]])
    want = math.exp((math.log(4 / 3) + 0.5 * math.log(2 / 3) + 0.5 * math.log(2)) / 2)
    assert inception_score(logits, splits=1) == (pytest.approx(want, rel=1e-12), 0.0)


def test_inception_score_extremes():
    confident = 60.0 * torch.eye(4).repeat(5, 1)  # 20 images, 4 classes, each split holds all 4
    mean, std = inception_score(confident, splits=5)
    assert mean == pytest.approx(4.0, rel=1e-12) and std == pytest.approx(0, abs=1e-12)
    one_class = torch.tensor([[5.0, 0.0, 0.0]]).repeat(10, 1)
    assert inception_score(one_class, splits=2)[0] == pytest.approx(1.0, abs=1e-12)


def test_inception_score_refuses_zero_logits_and_too_few_images():
    with pytest.raises(MetricsError, match="all-zero logits"):
        inception_score(torch.zeros(20, 1008))
    with pytest.raises(MetricsError, match="10 splits"):
        inception_score(torch.randn(5, 10))


def test_is_refuses_zero_fc_fid_weights():
    if not Path(WEIGHTS).is_file():
        pytest.skip(f"Inception weights not found at {WEIGHTS} (set GEN_DIST_INCEPTION_WEIGHTS)")
    model = load_inception(WEIGHTS)
    assert model.fc_is_zero and model.fc.weight.shape == (1008, 2048)
    with pytest.raises(MetricsError, match=r"fc is all zeros.*eval\.inception_weights"):
        fid_logits(model, torch.rand(2, 2048))
    # With a real classifier the logits are pool3 @ W^T (no bias, as the reference IS code).
    torch.nn.init.normal_(model.fc.weight)
    model.fc_is_zero = False
    f = torch.rand(2, 2048)
    torch.testing.assert_close(fid_logits(model, f), f @ model.fc.weight.T)


def test_imagenet_classifier_route(tmp_path):
    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True)
    path = tmp_path / "inception_v3_imagenet.pth"
    torch.save(net.state_dict(), path)
    logits = imagenet_logits(load_imagenet_classifier(str(path)), torch.rand(2, 1, 28, 28))
    assert logits.shape == (2, 1000)
    torch.nn.init.zeros_(net.fc.weight)
    torch.save(net.state_dict(), path)
    with pytest.raises(MetricsError, match="fc is all zeros"):
        imagenet_logits(load_imagenet_classifier(str(path)), torch.rand(2, 1, 28, 28))
