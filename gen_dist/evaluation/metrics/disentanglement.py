"""Disentanglement from ground-truth factors: the beta-VAE metric (Higgins et al. 2017) and the FactorVAE
metric (Kim & Mnih 2018), scoring a representation r(x) (the encoder's posterior mean) on images whose
factor classes are known (dSprites: gen_dist/data/dsprites.py).

Sampling follows disentanglement_lib (Locatello et al. 2019), whose defaults the config copies (10,000
training points, 5,000 held out, batches of 64), with one change: batches come from a fixed pool of
images (the test split) instead of the generator of the dataset. A batch "with factor k fixed" is an
anchor image drawn from the pool and images drawn (with replacement) from the pool's images that share
the anchor's class of k. So each pool image is encoded once and the metrics are index arithmetic on
the codes, which makes 15,000 points per metric affordable on a CPU.

* beta-VAE metric: a point is (mean over L pairs of |r(x1) - r(x2)|, k), x1 and x2 sharing factor k,
  k uniform. A multinomial logistic regression (L2 with C = 1 and an intercept: scikit-learn's defaults,
  which disentanglement_lib uses) fit on the training points predicts k; the score is its accuracy
  on the held-out points.
* FactorVAE metric: each code dimension is divided by its standard deviation over the pool, and the
  dimensions with a standard deviation below 0.05 are dropped (collapsed to the prior: their mean no
  longer moves with x; the threshold is disentanglement_lib's). A point is (the kept dimension with the
  least variance over L images sharing factor k, k); a majority-vote classifier maps each dimension to
  the factor it was most often chosen for; the score is its accuracy on the held-out points. With no
  kept dimension the score is 0.

Chance: a code that does not depend on the image gives held-out accuracy 1/K for both (K factors: 0.2 on
dSprites); a code that holds every factor in a dimension of its own scores 1.

Distribution: encoding the pool is the large part. It is cut into blocks of ``block`` consecutive images
dealt to the ranks in turn, so each image is encoded in the same batch (with the same bits) on any number
of processes, and the codes are summed into an [N, D] float64 table on every rank. The scoring is cheap
and deterministic given ``seed``; rank 0's numbers are broadcast, so all ranks log the same values.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from gen_dist.distributed.collectives import all_reduce_sum, broadcast_float

COLLAPSED_STD = 0.05  # FactorVAE: dimensions whose code std over the pool is below this are dropped


def encode_pool(encode: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, latent_dim: int, *,
                block: int = 256, rank: int = 0, world: int = 1, device: torch.device | str = "cpu") -> np.ndarray:
    """Codes [N, latent_dim] float64 of every image, on every rank: ``encode(images[a:b]) -> [b-a, D]``."""
    n = len(images)
    table = torch.zeros(n, latent_dim, dtype=torch.float64, device=device)
    with torch.no_grad():
        for start in range(rank * block, n, world * block):
            z = encode(images[start : start + block])
            if tuple(z.shape) != (min(block, n - start), latent_dim):
                raise ValueError(f"encode returned {tuple(z.shape)} for {min(block, n - start)} images, "
                                 f"expected [{min(block, n - start)}, {latent_dim}]")
            table[start : start + len(z)] = z.detach().to(table.device, torch.float64)
    all_reduce_sum(table)  # one rank wrote each row, the others hold zeros there: the sum is exact
    return table.cpu().numpy()


class SameFactor:
    """Draws pool images that share one factor's class with given anchor images."""

    def __init__(self, classes: np.ndarray):
        self.classes = np.asarray(classes, np.int64)
        if self.classes.ndim != 2 or len(self.classes) == 0:
            raise ValueError(f"factor classes must be [N > 0, K], got {self.classes.shape}")
        self.order, self.first, self.count = [], [], []
        for k in range(self.classes.shape[1]):
            column = self.classes[:, k]
            order = np.argsort(column, kind="stable")
            values = np.arange(column.max() + 1)
            first = np.searchsorted(column[order], values, "left")
            self.order.append(order)
            self.first.append(first)
            self.count.append(np.searchsorted(column[order], values, "right") - first)

    @property
    def num_factors(self) -> int:
        return self.classes.shape[1]

    def draw(self, k: int, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each anchor index, a uniformly drawn pool index with the same class of factor k."""
        v = self.classes[anchors, k]
        pos = self.first[k][v] + rng.integers(0, self.count[k][v])  # count >= 1: the anchor itself
        return self.order[k][pos]


def _betavae_points(codes: np.ndarray, same: SameFactor, n: int, pairs: int, rng: np.random.Generator):
    k_of = rng.integers(0, same.num_factors, n)
    x = np.empty((n, codes.shape[1]))
    for k in range(same.num_factors):
        rows = np.flatnonzero(k_of == k)
        first = rng.integers(0, len(codes), (len(rows), pairs))
        second = same.draw(k, first, rng)
        x[rows] = np.abs(codes[first] - codes[second]).mean(1)
    return x, k_of


def fit_logistic(x: np.ndarray, y: np.ndarray, classes: int, c: float = 1.0, max_iter: int = 1000):
    """Multinomial logistic regression, L2 on the weights (C * sum of log losses + |W|^2 / 2, as
    scikit-learn's), fit by L-BFGS from zeros: deterministic. Returns a predict(x) -> labels function."""
    from scipy.optimize import minimize

    x = np.asarray(x, np.float64)
    n, d = x.shape
    onehot = np.eye(classes)[y]

    def loss_grad(theta):
        w, b = theta[: d * classes].reshape(d, classes), theta[d * classes :]
        logits = x @ w + b
        logits -= logits.max(1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        g = c * (np.exp(log_p) - onehot)
        loss = -c * (onehot * log_p).sum() + 0.5 * (w * w).sum()
        return loss, np.concatenate([(x.T @ g + w).ravel(), g.sum(0)])

    theta = minimize(loss_grad, np.zeros(d * classes + classes), jac=True, method="L-BFGS-B",
                     options={"maxiter": max_iter}).x
    w, b = theta[: d * classes].reshape(d, classes), theta[d * classes :]
    return lambda z: np.argmax(np.asarray(z, np.float64) @ w + b, axis=1)


def betavae_score(codes: np.ndarray, classes: np.ndarray, *, seed: int, n_train: int = 10000, n_eval: int = 5000,
                  pairs: int = 64) -> dict:
    """Higgins et al.'s metric on codes [N, D] of pool images with factor classes [N, K]."""
    codes = np.asarray(codes, np.float64)
    same = SameFactor(classes)
    rng = np.random.default_rng([seed, 0])
    x_train, y_train = _betavae_points(codes, same, n_train, pairs, rng)
    x_eval, y_eval = _betavae_points(codes, same, n_eval, pairs, rng)
    predict = fit_logistic(x_train, y_train, same.num_factors)
    return {"train_accuracy": float(np.mean(predict(x_train) == y_train)),
            "eval_accuracy": float(np.mean(predict(x_eval) == y_eval))}


def _factorvae_votes(normed: np.ndarray, same: SameFactor, n: int, batch: int, rng: np.random.Generator):
    k_of = rng.integers(0, same.num_factors, n)
    dims = np.empty(n, np.int64)
    for k in range(same.num_factors):
        rows = np.flatnonzero(k_of == k)
        anchors = rng.integers(0, len(normed), len(rows))
        members = same.draw(k, np.repeat(anchors[:, None], batch, 1), rng)  # [rows, batch]
        dims[rows] = normed[members].var(1, ddof=1).argmin(1)
    return dims, k_of


def factorvae_score(codes: np.ndarray, classes: np.ndarray, *, seed: int, n_train: int = 10000, n_eval: int = 5000,
                    batch: int = 64, collapsed_std: float = COLLAPSED_STD) -> dict:
    """Kim & Mnih's metric on codes [N, D] of pool images with factor classes [N, K]."""
    codes = np.asarray(codes, np.float64)
    same = SameFactor(classes)
    std = codes.std(0, ddof=1)
    kept = std >= collapsed_std
    if not kept.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "active_dims": 0}
    normed = codes[:, kept] / std[kept]
    rng = np.random.default_rng([seed, 1])
    dims, k_of = _factorvae_votes(normed, same, n_train, batch, rng)
    votes = np.zeros((normed.shape[1], same.num_factors), np.int64)
    np.add.at(votes, (dims, k_of), 1)
    vote_for = votes.argmax(1)  # each kept dimension -> the factor it was most often chosen for
    dims_eval, k_eval = _factorvae_votes(normed, same, n_eval, batch, rng)
    return {"train_accuracy": float(votes.max(1).sum() / n_train),
            "eval_accuracy": float(np.mean(vote_for[dims_eval] == k_eval)),
            "active_dims": int(kept.sum())}


def disentanglement_metrics(encode: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                            classes: np.ndarray, latent_dim: int, *, seed: int, n_train: int = 10000,
                            n_eval: int = 5000, batch: int = 64, block: int = 256, rank: int = 0, world: int = 1,
                            device: torch.device | str = "cpu") -> dict:
    """Both metrics for ``encode`` on a pool of images with factor classes [N, K]; collective over ranks
    (call on every rank with the same arguments but its rank), the same numbers on every rank."""
    if len(images) != len(classes):
        raise ValueError(f"{len(images)} images but {len(classes)} rows of factor classes")
    codes = encode_pool(encode, images, latent_dim, block=block, rank=rank, world=world, device=device)
    beta = betavae_score(codes, classes, seed=seed, n_train=n_train, n_eval=n_eval, pairs=batch)
    factor = factorvae_score(codes, classes, seed=seed, n_train=n_train, n_eval=n_eval, batch=batch)
    out = {"disent/betavae": beta["eval_accuracy"], "disent/betavae_train": beta["train_accuracy"],
           "disent/factorvae": factor["eval_accuracy"], "disent/factorvae_train": factor["train_accuracy"]}
    out = {k: broadcast_float(v, torch.device(device)) for k, v in out.items()}  # rank 0's, bit for bit
    out["disent/active_dims"] = factor["active_dims"]
    out["disent/images"] = len(images)
    return out
