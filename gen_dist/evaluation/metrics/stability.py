"""Training-stability figures of a loss curve (e.g. D and G losses logged every few steps).

Pure numpy on a list of floats; every figure is a plain float/int, or None where undefined (fewer
than two finite points), so the dict goes straight into JSON / W&B.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

FIGURES = ("n", "nonfinite", "last", "diff_std_last", "diff_std_mean", "total_variation", "spike_size",
           "spike_ratio", "spike_index", "spike_step", "slope", "slope_last")


def _num(v) -> Optional[float]:
    v = float(v)
    return v if np.isfinite(v) else None


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    denom = (x * x).sum()
    return float((x * (y - y.mean())).sum() / denom) if denom > 0 else 0.0


def stability_figures(values: Sequence[float], window: int = 20, steps: Optional[Sequence[float]] = None) -> dict:
    """Figures of one curve. `steps` are the training steps of the points (default 0, 1, 2, ...).

    n               number of points given
    nonfinite       points that are NaN/inf (dropped before everything below; diverged runs show here)
    last            the last finite value
    diff_std_last   std of the successive differences over the last `window` differences: current jitter
    diff_std_mean   mean over the run of that rolling std (all full windows): typical jitter
    total_variation mean |difference| per point: how much the curve moves, oscillation included
    spike_size      largest |difference|, signed as the jump (positive = loss went up)
    spike_ratio     that jump over the median |difference| of the `window` around it (floored at 1e-3 x
                    the run's mean |difference|, so flat stretches do not divide by zero): >10 is a spike
    spike_index     index in `values` of the point the largest-ratio jump lands on (None if flat)
    spike_step      its training step
    slope           least-squares trend per step over the run (negative = loss decreasing)
    slope_last      the same over the last `window` points
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    x = np.arange(len(v), dtype=np.float64) if steps is None else np.asarray(steps, dtype=np.float64).reshape(-1)
    if len(x) != len(v):
        raise ValueError(f"{len(v)} values but {len(x)} steps")
    window = max(2, int(window))
    keep = np.isfinite(v)
    out = dict.fromkeys(FIGURES)
    out.update(n=len(v), nonfinite=int((~keep).sum()))
    idx, v, x = np.flatnonzero(keep), v[keep], x[keep]
    if len(v) >= 1:
        out["last"] = _num(v[-1])
    if len(v) < 2:
        return out

    d = np.diff(v)
    a = np.abs(d)
    out["diff_std_last"] = _num(d[-window:].std())
    out["diff_std_mean"] = _num(sliding_window_view(d, window).std(axis=1).mean() if len(d) >= window else d.std())
    out["total_variation"] = _num(a.mean())

    # local median |diff| over a centred window; NaN padding lets the ends use what exists
    h = window // 2
    padded = np.concatenate([np.full(h, np.nan), a, np.full(h, np.nan)])
    local = np.nanmedian(sliding_window_view(padded, 2 * h + 1), axis=1)
    floor = max(1e-3 * a.mean(), np.finfo(np.float64).tiny)
    ratio = a / np.maximum(local, floor)
    i = int(np.argmax(ratio))
    out["spike_size"] = _num(d[i])
    out["spike_ratio"] = _num(ratio[i])
    if a[i] > 0:
        out["spike_index"] = int(idx[i + 1])
        out["spike_step"] = _num(x[i + 1])

    out["slope"] = _num(_slope(x, v))
    out["slope_last"] = _num(_slope(x[-window:], v[-window:]))
    return out
