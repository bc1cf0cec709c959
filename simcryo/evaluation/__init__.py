"""Evaluation: clustering metrics, pose errors, FRC and resolution, the oracle ceiling."""
