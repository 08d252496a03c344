"""Ablation studies: the study file (spec.py) and the report built from its runs (report.py)."""
