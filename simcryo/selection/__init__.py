"""Class ranking and automatic selection of good 2D classes (any classifier's output).

`score`: per-class features from the class averages and sizes (contrast, centring,
profile, size), the quality score, the ranking and the thresholded selection.
`consistency`: the member-consistency feature, from the particles and their poses."""
from simcryo.selection.consistency import (class_consistency, member_consistency,
                                           member_correlations)
from simcryo.selection.score import (ScoreParams, auto_select, class_features, rank_classes,
                                     score_classes)

__all__ = ["ScoreParams", "auto_select", "class_consistency", "class_features",
           "member_consistency", "member_correlations", "rank_classes", "score_classes"]
