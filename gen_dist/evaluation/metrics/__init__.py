"""Evaluation metrics: Inception features, FID, KID, precision/recall, Inception Score.

All are rank-aware: each rank computes features for its share of samples; statistics are summed
(FID) or rows gathered (KID, precision/recall, IS) with torch.distributed when it is initialised,
and every rank returns the same numbers.
"""

from gen_dist.evaluation.metrics.collapse import PosteriorCollapseDetector
from gen_dist.distributed.collectives import FeatureBank
from gen_dist.evaluation.metrics.fid import FeatureStats, compute_fid, frechet_distance, load_stats, save_stats
from gen_dist.evaluation.metrics.inception import (
    FEATURE_DIM,
    MetricsError,
    extract_features,
    imagenet_logits,
    load_imagenet_classifier,
    load_inception,
    to_inception_input,
)
from gen_dist.evaluation.metrics.inception_score import fid_logits, inception_score
from gen_dist.evaluation.metrics.kid import kid
from gen_dist.evaluation.metrics.mode_coverage import alarm_message, coverage_metrics, load_or_train
from gen_dist.evaluation.metrics.precision_recall import precision_recall
from gen_dist.evaluation.metrics.stability import stability_figures
from gen_dist.evaluation.metrics.vae_metrics import (VAEMetricSums, active_units, active_units_kl, elbo, iwae_bound,
                                          kl_per_dimension)

__all__ = [
    "FEATURE_DIM", "FeatureBank", "FeatureStats", "MetricsError", "compute_fid", "extract_features",
    "fid_logits", "frechet_distance", "imagenet_logits", "inception_score", "kid",
    "load_imagenet_classifier", "load_inception", "load_stats", "precision_recall", "save_stats",
    "to_inception_input", "PosteriorCollapseDetector", "stability_figures", "VAEMetricSums", "active_units",
    "active_units_kl", "elbo", "iwae_bound", "kl_per_dimension", "alarm_message", "coverage_metrics", "load_or_train",
]
