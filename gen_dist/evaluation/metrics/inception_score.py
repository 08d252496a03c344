"""Inception Score (Salimans et al. 2016): exp E_x KL(p(y|x) || p(y)), averaged over splits.

Logits come from the FID network's own classifier (`fid_logits`, no second forward pass) or from
torchvision's ImageNet Inception (`inception.imagenet_logits`). Both refuse weights whose classifier
is all zeros. Gather logits from all ranks first (a `FeatureBank` of width 1008 or 1000): the
splits are contiguous runs of samples, so they need the whole, index-ordered set.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from gen_dist.evaluation.metrics.inception import MetricsError, require_classifier


def fid_logits(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Logits [B, 1008] of `load_inception`'s classifier from its pool3 features.

    Without the bias, as in OpenAI's reference IS code (and torch-fidelity's "logits_unbiased"),
    which multiplied pool3 by the softmax weights only; published IS values use that.
    """
    require_classifier(model)
    w = model.fc.weight
    return features.to(w.device, w.dtype) @ w.T


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """(mean, std over splits) of the IS from logits [N, classes]; std with ddof=0 as the reference."""
    if len(logits) < splits:
        raise MetricsError(f"Inception Score with {splits} splits needs at least {splits} images, "
                           f"got {len(logits)}")
    if not bool(logits.any()):
        raise MetricsError("Inception Score from all-zero logits is meaningless (always 1): the "
                           "classifier weights are zeros; use weights with a real classifier")
    log_p = torch.log_softmax(logits.to(torch.float64), dim=1)
    scores = []
    for part in torch.tensor_split(log_p, splits):
        log_py = torch.logsumexp(part, dim=0) - math.log(len(part))  # log mean p
        kl = (part.exp() * (part - log_py)).sum(dim=1).mean()
        scores.append(kl.exp())
    scores = torch.stack(scores)
    return float(scores.mean()), float(scores.std(correction=0))
