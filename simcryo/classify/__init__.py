"""Unsupervised 2D classification: contrastive pretext features, neighbour mining, SCAN
clustering and self-labelling (the SimCryoCluster recipe, tuned for small CPU budgets)."""
from simcryo.classify.config import ClassifyConfig  # noqa: F401
