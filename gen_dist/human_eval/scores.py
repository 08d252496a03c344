"""Scores of human judgements, with bootstrap intervals over raters and images.

real-or-fake (HYPE-infinity, Zhou et al. 2019): per model, over the judgements of that model's block
(its generated images and as many real test images, shuffled together):
    human error rate  = (fakes judged real + reals judged fake) / all judgements   (50% = indistinguishable)
    fakes judged real = fakes judged real / fakes judged
pairwise (2AFC): per model, the win rate over its comparisons, and Bradley-Terry strengths p (sum 1;
P(i beats j) = p_i / (p_i + p_j)) fitted by Hunter's (2004) MM algorithm, with half a pseudo-win each
way for every pair compared, so a model that won (or lost) every comparison keeps a finite strength.

Intervals: the crossed bootstrap of HYPE: raters and images are resampled with replacement,
independently, and a judgement counts (rater's draws) x (image's draws) times; the 2.5th and 97.5th
percentiles of the statistic over the resamples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REAL = "real"
BOOTSTRAP = 2000
PRIOR = 0.5


def crossed_bootstrap(raters, items, statistic, resamples: int = BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """``statistic(weights)`` for ``resamples`` crossed resamples of raters and items: each judgement k
    (of rater raters[k] on item items[k]) gets weight (draws of its rater) x (draws of its item).
    Returns the replicates (NaN where the statistic is undefined for that resample)."""
    r_codes, r_index = np.unique(np.asarray(raters, dtype=object).astype(str), return_inverse=True)
    i_codes, i_index = np.unique(np.asarray(items, dtype=object).astype(str), return_inverse=True)
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for b in range(resamples):
        r_draws = np.bincount(rng.integers(0, len(r_codes), len(r_codes)), minlength=len(r_codes))
        i_draws = np.bincount(rng.integers(0, len(i_codes), len(i_codes)), minlength=len(i_codes))
        out[b] = statistic((r_draws[r_index] * i_draws[i_index]).astype(float))
    return out


def interval(replicates: np.ndarray) -> tuple[float, float]:
    finite = replicates[np.isfinite(replicates)]
    if not len(finite):
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return float(lo), float(hi)


def _ratio(num: np.ndarray, den: np.ndarray):
    def stat(w):
        d = float(np.dot(w, den))
        return float(np.dot(w, num)) / d if d > 0 else float("nan")

    return stat


@dataclass
class RealOrFake:
    model: str
    judgements: int
    raters: int
    error_rate: float
    error_ci: tuple[float, float]
    fake_as_real: float
    fake_as_real_ci: tuple[float, float]


def real_or_fake(rows: list[dict], resamples: int = BOOTSTRAP, seed: int = 0) -> list[RealOrFake]:
    """rows: judgements with block (the model scored), source_a (REAL or a model), index_a, answer, rater_id."""
    out = []
    for model in sorted({r["block"] for r in rows}):
        mine = [r for r in rows if r["block"] == model]
        fake = np.array([r["source_a"] != REAL for r in mine], dtype=float)
        said_real = np.array([r["answer"] == "real" for r in mine], dtype=float)
        error = fake * said_real + (1 - fake) * (1 - said_real)
        fooled = fake * said_real
        raters = [r["rater_id"] for r in mine]
        items = [f"{r['source_a']}:{r['index_a']}" for r in mine]
        ones = np.ones(len(mine))
        err_stat, fool_stat = _ratio(error, ones), _ratio(fooled, fake)
        err_reps = crossed_bootstrap(raters, items, err_stat, resamples, seed)
        fool_reps = crossed_bootstrap(raters, items, fool_stat, resamples, seed)
        out.append(RealOrFake(model, len(mine), len(set(raters)), err_stat(ones), interval(err_reps),
                              fool_stat(ones), interval(fool_reps)))
    return out


def bradley_terry(wins: np.ndarray, prior: float = PRIOR, tol: float = 1e-12, max_iter: int = 100000) -> np.ndarray:
    """Strengths p (sum 1) from wins[i, j] = (weighted) times i beat j, by MM (Hunter 2004); ``prior``
    is added to both directions of every pair that was compared."""
    wins = np.asarray(wins, dtype=float)
    compared = (wins + wins.T) > 0
    w = wins + prior * compared
    games = w + w.T
    total = w.sum(axis=1)
    k = len(w)
    p = np.full(k, 1.0 / k)
    for _ in range(max_iter):
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1)
        new = np.where(denom > 0, total / np.where(denom > 0, denom, 1), 0.0)
        new = new / new.sum() if new.sum() > 0 else np.full(k, 1.0 / k)
        if np.max(np.abs(new - p)) < tol:
            return new
        p = new
    return p


@dataclass
class Pairwise:
    model: str
    comparisons: int
    raters: int
    win_rate: float
    win_ci: tuple[float, float]
    strength: float
    strength_ci: tuple[float, float]
    rank: int
    rank_ci: tuple[float, float]


def _ranks(p: np.ndarray) -> np.ndarray:
    """1 = strongest."""
    return np.argsort(np.argsort(-p, kind="stable"), kind="stable") + 1.0


def pairwise(rows: list[dict], resamples: int = BOOTSTRAP, seed: int = 0, prior: float = PRIOR) -> list[Pairwise]:
    """rows: judgements with source_a (left), source_b (right), index_a, index_b, answer, rater_id.
    Ordered by Bradley-Terry strength, strongest first."""
    models = sorted({r["source_a"] for r in rows} | {r["source_b"] for r in rows})
    if not rows:
        return []
    at = {m: i for i, m in enumerate(models)}
    winner = np.array([at[r["source_a"] if r["answer"] == "left" else r["source_b"]] for r in rows])
    loser = np.array([at[r["source_b"] if r["answer"] == "left" else r["source_a"]] for r in rows])
    raters = [r["rater_id"] for r in rows]
    items = ["|".join(sorted([f"{r['source_a']}:{r['index_a']}", f"{r['source_b']}:{r['index_b']}"])) for r in rows]
    k = len(models)

    def table(w):
        t = np.zeros((k, k))
        np.add.at(t, (winner, loser), w)
        return t

    def fit(w):
        return bradley_terry(table(w), prior)

    def win_rate(m):
        won, played = (winner == m).astype(float), ((winner == m) | (loser == m)).astype(float)
        return _ratio(won, played)

    ones = np.ones(len(rows))
    p = fit(ones)
    rng_seed = seed
    reps = np.array([fit(w) for w in _weights(raters, items, resamples, rng_seed)])  # [B, k]
    rank_reps = np.array([_ranks(r) for r in reps])
    rate_reps = [crossed_bootstrap(raters, items, win_rate(m), resamples, seed) for m in range(k)]
    ranks = _ranks(p)
    out = []
    for m, name in enumerate(models):
        played = int(((winner == m) | (loser == m)).sum())
        who = {raters[j] for j in range(len(rows)) if winner[j] == m or loser[j] == m}
        out.append(Pairwise(name, played, len(who), win_rate(m)(ones), interval(rate_reps[m]), float(p[m]),
                            interval(reps[:, m]), int(ranks[m]), interval(rank_reps[:, m])))
    return sorted(out, key=lambda s: s.rank)


def _weights(raters, items, resamples: int, seed: int):
    """The crossed bootstrap's weight vectors, the same draws crossed_bootstrap makes for ``seed``."""
    collected = []
    crossed_bootstrap(raters, items, lambda w: collected.append(w) or 0.0, resamples, seed)
    return collected
