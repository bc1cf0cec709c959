"""Scores for the real job of 2D classification: cleaning junk and seeing continuous views.

- `selection_figures`: for a set of kept classes, good-particle recall (good particles kept /
  all good), contamination (junk share of what is kept) and junk rejected (junk not kept /
  all junk).
- `oracle_selection`: keep the classes whose junk share is below `max_junk` (0.5: the
  classes a perfect judge of the averages would keep), then `selection_figures`.
- `view_spread`: median angle (degrees) between a particle's true viewing direction and the
  mean direction of its class (directions are not folded: opposite views give mirror-image
  projections, which no in-plane pose maps onto each other).
- `kmeans_view_spread`: the same spread for spherical k-means of the true directions into as
  many classes: the floor a classification with that many classes can reach.
"""
import numpy as np


def selection_figures(pred, junk, kept):
    """pred (n,) class numbers, junk (n,) bool, kept: iterable of kept class numbers."""
    pred, junk = np.asarray(pred), np.asarray(junk, dtype=bool)
    keep = np.isin(pred, np.fromiter(kept, dtype=np.int64, count=-1))
    n_good, n_junk, n_kept = int((~junk).sum()), int(junk.sum()), int(keep.sum())
    return dict(kept_classes=sorted(int(k) for k in np.unique(pred[keep])),
                particles_kept=n_kept,
                recall=float((keep & ~junk).sum() / n_good) if n_good else None,
                contamination=float((keep & junk).sum() / n_kept) if n_kept else 0.0,
                junk_rejected=float((~keep & junk).sum() / n_junk) if n_junk else None)


def class_junk_share(pred, junk):
    """{class number: junk share} of every non-empty class."""
    pred, junk = np.asarray(pred), np.asarray(junk, dtype=bool)
    return {int(k): float(junk[pred == k].mean()) for k in np.unique(pred)}


def oracle_selection(pred, junk, max_junk=0.5):
    """Keep the classes with a junk share < max_junk; `selection_figures` of that choice plus
    the per-class junk shares."""
    share = class_junk_share(pred, junk)
    kept = [k for k, s in share.items() if s < max_junk]
    out = selection_figures(pred, junk, kept)
    out["junk_share"] = {str(k): round(v, 4) for k, v in share.items()}
    return out


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.clip(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12, None)


def _angles_to_means(directions, labels):
    """Angle (deg) of each direction to the normalised mean direction of its label."""
    d = _unit(directions)
    values, codes = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(values), 3))
    np.add.at(sums, codes, d)
    means = _unit(sums)
    cos = np.clip((d * means[codes]).sum(axis=1), -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def view_spread(directions, labels, percentile=50):
    """Median (or another `percentile`) of the angles (deg) between each direction (n, 3)
    and its class's mean direction."""
    if len(labels) == 0:
        return None
    return float(np.percentile(_angles_to_means(directions, labels), percentile))


def spherical_kmeans(directions, k, seed=0, iterations=50, restarts=4):
    """Labels (n,) of k-means on the unit sphere (cosine similarity, k-means++ seeding);
    the restart with the highest total similarity to its centres wins."""
    d = _unit(directions)
    n = len(d)
    k = max(1, min(int(k), n))
    rng = np.random.default_rng(seed)
    best, best_score = None, -np.inf
    for _ in range(restarts):
        centres = d[[rng.integers(n)]]
        while len(centres) < k:  # k-means++: far points are likelier seeds
            dist = 1.0 - (d @ centres.T).max(axis=1)
            p = np.clip(dist, 0, None)
            p = p / p.sum() if p.sum() > 0 else np.full(n, 1.0 / n)
            centres = np.vstack([centres, d[rng.choice(n, p=p)]])
        for _ in range(iterations):
            labels = np.argmax(d @ centres.T, axis=1)
            sums = np.zeros((k, 3))
            np.add.at(sums, labels, d)
            empty = np.linalg.norm(sums, axis=1) < 1e-12
            sums[empty] = d[rng.integers(0, n, int(empty.sum()))]
            new = _unit(sums)
            if np.allclose(new, centres):
                break
            centres = new
        labels = np.argmax(d @ centres.T, axis=1)
        score = float((d * centres[labels]).sum())
        if score > best_score:
            best, best_score = labels, score
    return best


def kmeans_view_spread(directions, k, seed=0):
    """`view_spread` of the spherical k-means partition of `directions` into k classes."""
    if len(directions) == 0:
        return None
    return view_spread(directions, spherical_kmeans(directions, k, seed))


def spread_report(pred, junk, directions, kept):
    """View spread of the good particles in the kept classes and its k-means floor (same
    particles, as many classes as are kept)."""
    pred, junk = np.asarray(pred), np.asarray(junk, dtype=bool)
    sel = np.isin(pred, np.asarray(sorted(kept), dtype=np.int64)) & ~junk
    k = len(np.unique(pred[sel]))
    return dict(view_spread_deg=view_spread(directions[sel], pred[sel]),
                view_spread_p90_deg=view_spread(directions[sel], pred[sel], 90),
                kmeans_floor_deg=kmeans_view_spread(directions[sel], k) if k else None,
                classes=k, particles=int(sel.sum()))


def cleaning_report(pred, kinds, directions, selected=None, max_junk=0.5):
    """Oracle selection (and, with `selected` class numbers, that selection too) with the view
    spread of each: kinds (n,) strings ('good' or a junk kind), directions (n, 3) true views."""
    kinds = np.asarray(kinds)
    junk = kinds != "good"
    out = dict(junk_kinds={str(k): int((kinds == k).sum()) for k in np.unique(kinds)})
    out["oracle"] = oracle_selection(pred, junk, max_junk)
    out["oracle"].update(spread_report(pred, junk, directions, out["oracle"]["kept_classes"]))
    if selected is not None:
        out["selected"] = selection_figures(pred, junk, selected)
        out["selected"].update(spread_report(pred, junk, directions, selected))
    return out
