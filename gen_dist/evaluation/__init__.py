"""Evaluation: the in-training evaluator (evaluator.py), offline evaluation of checkpoints and image
folders (offline.py) and the metrics themselves (metrics/)."""
