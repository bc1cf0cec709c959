"""Evaluation: clustering metrics, pose errors, FRC and resolution."""
