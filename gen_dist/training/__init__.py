"""Training: the loop (trainer.py), its checkpoints and resume (resume.py), the per-model-kind phases
(phases/), losses, the KL schedule, the speed switches, the pre-launch checks and the mode-collapse
remedies."""
