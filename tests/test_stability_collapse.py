"""Stability figures on hand-made loss curves, and the posterior-collapse detector."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gen_dist.evaluation.metrics.collapse import PosteriorCollapseDetector
from gen_dist.evaluation.metrics.stability import FIGURES, stability_figures


def test_constant_curve_gives_zeros():
    f = stability_figures([0.7] * 50)
    for key in ("diff_std_last", "diff_std_mean", "total_variation", "spike_size", "spike_ratio", "slope",
                "slope_last"):
        assert f[key] == 0.0, key
    assert f["spike_index"] is None and f["last"] == 0.7 and f["n"] == 50 and f["nonfinite"] == 0


def test_spike_is_found_with_its_index_size_and_step():
    rng = np.random.default_rng(0)
    curve = 1.0 + 0.01 * rng.standard_normal(200)
    curve[123] += 2.0
    f = stability_figures(curve, window=20, steps=np.arange(200) * 5)  # logged every 5 steps
    assert f["spike_index"] == 123 and f["spike_step"] == 615
    assert f["spike_size"] == pytest.approx(curve[123] - curve[122])
    assert f["spike_ratio"] > 50
    # a clean step up is a spike too, on a perfectly flat curve (no division by zero)
    g = stability_figures([0.0] * 10 + [1.0] * 10)
    assert g["spike_index"] == 10 and g["spike_size"] == 1.0 and np.isfinite(g["spike_ratio"])


def test_noisy_curve_has_larger_jitter_than_smooth_one_and_slope_is_the_trend():
    rng = np.random.default_rng(1)
    t = np.arange(300)
    smooth = 2.0 - 0.001 * t
    noisy = smooth + 0.2 * rng.standard_normal(300)
    fs, fn = stability_figures(smooth), stability_figures(noisy)
    assert fn["diff_std_last"] > 10 * fs["diff_std_last"] + 1e-3
    assert fn["diff_std_mean"] > 10 * fs["diff_std_mean"] + 1e-3
    assert fn["total_variation"] > fs["total_variation"]
    assert fs["slope"] == pytest.approx(-0.001) and fn["slope"] == pytest.approx(-0.001, abs=2e-4)
    # jitter that starts late shows in the last window but less in the run's mean
    late = smooth.copy()
    late[-20:] += 0.2 * rng.standard_normal(20)
    fl = stability_figures(late)
    assert fl["diff_std_last"] > 3 * fl["diff_std_mean"]


def test_short_and_nonfinite_histories_are_json_safe():
    for values in ([], [1.5], [float("nan"), 2.0, float("inf")]):
        f = stability_figures(values)
        assert set(f) == set(FIGURES)
        assert f["diff_std_last"] is None and f["spike_index"] is None
        json.dumps(f, allow_nan=False)
    f = stability_figures([1.0, float("nan"), 3.0, 5.0])  # NaNs dropped, indices kept
    assert f["nonfinite"] == 1 and f["total_variation"] == 2.0 and f["spike_index"] == 2
    json.dumps(f, allow_nan=False)
    assert stability_figures([1.0, 2.0])["diff_std_mean"] == 0.0  # fewer diffs than the window


def test_collapse_detector_triggers_after_patience_and_resets():
    det = PosteriorCollapseDetector(threshold=0.5, patience=3)
    assert [det.update(kl, step) for kl, step in [(0.1, 100), (0.2, 200)]] == [False, False]
    assert det.update(5.0, 300) is False  # a high evaluation resets the count
    assert [det.update(0.1, s) for s in (400, 500)] == [False, False]
    assert det.update(0.05, 600) is True and det.low_count == 3
    msg = det.message
    assert "posterior collapse" in msg and "0.05" in msg and "0.5" in msg and "3 consecutive" in msg
    assert "step 600" in msg and "since step 400" in msg and "beta" in msg and "warm-up" in msg
    assert "\n" not in msg
    assert det.update(0.01, 700) is True  # still collapsed
    assert det.update(float("nan"), 800) is False and det.low_count == 0  # NaN is not collapse
    assert det.message.startswith("no posterior collapse")


def test_collapse_detector_per_dimension_and_state_round_trip():
    det = PosteriorCollapseDetector(threshold=0.5, patience=2, dim_threshold=0.01)
    # total KL above threshold but no single active dimension (200 latents x 0.005 nats)
    assert det.update(1.0, 10, kl_per_dim=[0.005] * 200) is False
    state = det.state_dict()
    assert all(isinstance(v, (int, float)) for v in state.values())
    json.dumps(state)
    resumed = PosteriorCollapseDetector(threshold=0.5, patience=2)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    assert resumed.update(1.0, 20, kl_per_dim=[0.005] * 200) is True
    assert "0 latent dims" in resumed.message
    assert resumed.update(1.0, 30, kl_per_dim=[0.005] * 199 + [0.9]) is False
    with pytest.raises(ValueError):
        PosteriorCollapseDetector(0.5, patience=0)
