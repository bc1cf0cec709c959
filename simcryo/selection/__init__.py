"""Class ranking and automatic selection of good 2D classes (any classifier's output).

`score`: per-class features from the class averages and sizes (contrast, centring,
profile, size),
the quality score, the ranking and the thresholded selection."""
from simcryo.selection.score import (ScoreParams, auto_select, class_features, rank_classes,
                                     score_classes)

__all__ = ["ScoreParams", "auto_select", "class_features", "rank_classes", "score_classes"]
