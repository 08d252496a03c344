"""Scores of human judgements (gen_dist/human_eval/scores.py) against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from gen_dist.human_eval import scores


def _rf(rater, model, source, index, answer):
    return {"rater_id": rater, "block": model, "source_a": source, "index_a": index, "answer": answer}


def test_error_rate_and_fakes_judged_real_by_hand():
    rows = [  # model m: rater A errs on m:0 (fake said real) and real 6 (said fake): 2 of 4
        _rf("A", "m", "m", 0, "real"), _rf("A", "m", "m", 1, "fake"), _rf("A", "m", "real", 5, "real"),
        _rf("A", "m", "real", 6, "fake"),
        # rater B errs on m:0, m:1 and real 5: 3 of 4
        _rf("B", "m", "m", 0, "real"), _rf("B", "m", "m", 1, "real"), _rf("B", "m", "real", 5, "fake"),
        _rf("B", "m", "real", 6, "real"),
        # model n, rater A only: every answer right
        _rf("A", "n", "n", 0, "fake"), _rf("A", "n", "real", 7, "real"),
    ]
    m, n = scores.real_or_fake(rows, resamples=200)
    assert (m.model, m.judgements, m.raters) == ("m", 8, 2)
    assert m.error_rate == pytest.approx(5 / 8)  # (3 fakes judged real + 2 reals judged fake) / 8
    assert m.fake_as_real == pytest.approx(3 / 4)  # fakes judged real / 4 fakes
    assert m.error_ci[0] <= m.error_rate <= m.error_ci[1]
    assert (n.model, n.error_rate, n.fake_as_real, n.error_ci, n.fake_as_real_ci) == ("n", 0, 0, (0, 0), (0, 0))


def test_bootstrap_over_images_is_exact_on_two_images():
    # one rater, two images, one wrong: a resample of the images holds {0,0}, {0,1} or {1,1} with
    # probabilities 1/4, 1/2, 1/4, so the replicates are 1, 0.5, 0 in those proportions
    err = np.array([1.0, 0.0])
    reps = scores.crossed_bootstrap(["r", "r"], ["a", "b"], lambda w: float(w @ err / w.sum()), 8000, seed=1)
    values, counts = np.unique(reps, return_counts=True)
    assert list(values) == [0.0, 0.5, 1.0]
    assert counts / len(reps) == pytest.approx([0.25, 0.5, 0.25], abs=0.02)
    assert scores.interval(reps) == (0.0, 1.0)


def test_bootstrap_resamples_raters_too():
    # two raters on one image: resampling raters alone gives {A,A}, {A,B}, {B,B}
    err = np.array([1.0, 0.0])
    reps = scores.crossed_bootstrap(["A", "B"], ["x", "x"], lambda w: float(w @ err / w.sum()), 8000, seed=2)
    _, counts = np.unique(reps, return_counts=True)
    assert counts / len(reps) == pytest.approx([0.25, 0.5, 0.25], abs=0.02)


def test_bootstrap_interval_matches_the_normal_approximation():
    # 1 rater, 400 images, 120 errors: the interval is p +- 1.96 sqrt(p (1 - p) / n) to within sampling noise
    err = np.array([1.0] * 120 + [0.0] * 280)
    reps = scores.crossed_bootstrap(["r"] * 400, [str(i) for i in range(400)], lambda w: float(w @ err / w.sum()),
                                    2000, seed=3)
    lo, hi = scores.interval(reps)
    half = 1.96 * np.sqrt(0.3 * 0.7 / 400)
    assert lo == pytest.approx(0.3 - half, abs=0.008) and hi == pytest.approx(0.3 + half, abs=0.008)


def test_bradley_terry_two_models_by_hand():
    wins = np.array([[0, 3], [1, 0]])  # A beat B 3 times, B beat A once
    assert scores.bradley_terry(wins, prior=0) == pytest.approx([0.75, 0.25])  # p_A / (p_A + p_B) = 3/4
    assert scores.bradley_terry(wins, prior=0.5) == pytest.approx([3.5 / 5, 1.5 / 5])  # half a win each way added
    assert scores.bradley_terry(np.array([[0, 4], [0, 0]])) == pytest.approx([4.5 / 5, 0.5 / 5])  # stays finite


def test_bradley_terry_three_models_solves_the_likelihood_equations():
    wins = np.array([[0, 7, 5], [3, 0, 6], [2, 4, 0]], dtype=float)
    p = scores.bradley_terry(wins, prior=0)
    assert p.sum() == pytest.approx(1) and p[0] > p[1] > p[2]
    games = wins + wins.T
    # maximum likelihood: each model's wins equal its expected wins, sum_j n_ij p_i / (p_i + p_j)
    expected = (games * p[:, None] / (p[:, None] + p[None, :])).sum(axis=1)
    assert expected == pytest.approx(wins.sum(axis=1), rel=1e-8)
    cyclic = np.array([[0, 2, 1], [1, 0, 2], [2, 1, 0]])  # each beats the next twice and loses once: a tie
    assert scores.bradley_terry(cyclic) == pytest.approx([1 / 3] * 3)


def test_pairwise_win_rates_and_ranking_by_hand():
    def pw(rater, left, right, i, answer):
        return {"rater_id": rater, "source_a": left, "source_b": right, "index_a": i, "index_b": i, "answer": answer}

    rows = [pw("A", "gan", "vae", 0, "left"), pw("A", "vae", "gan", 1, "right"), pw("A", "gan", "vae", 2, "right"),
            pw("B", "vae", "gan", 0, "right"), pw("B", "gan", "vae", 1, "left")]  # gan wins 4 of 5
    top, second = scores.pairwise(rows, resamples=300)
    assert (top.model, top.rank, top.comparisons, top.raters) == ("gan", 1, 5, 2)
    assert top.win_rate == pytest.approx(0.8) and second.win_rate == pytest.approx(0.2)
    assert top.strength == pytest.approx(4.5 / 6) and second.strength == pytest.approx(1.5 / 6)
    assert top.strength_ci[0] <= top.strength <= top.strength_ci[1]
    assert top.rank_ci[0] >= 1 and top.rank_ci[1] <= 2
