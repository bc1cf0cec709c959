"""Clustering scores against true labels (numpy in and out; definitions follow scikit-learn).

Labels may be any integers; the number of predicted and true classes may differ.
- `accuracy`: ACC with the Kuhn-Munkres (Hungarian) one-to-one matching of predicted to true
  classes that maximises the number of agreeing samples; unmatched classes count as wrong.
- `nmi`: normalised mutual information, arithmetic-mean normalisation (sklearn's default).
- `ari`: adjusted Rand index. `fmi`: Fowlkes-Mallows index TP / sqrt((TP+FP)(TP+FN)) over pairs.
- `knn_accuracy`: leave-one-out k-nearest-neighbour classification accuracy (cosine similarity,
  majority vote, ties to the nearest neighbour's label); `neighbor_purity`: mean share of the k
  neighbours with the sample's own label (SCAN's "top-k neighbour accuracy").
"""
import numpy as np
from scipy.optimize import linear_sum_assignment


def _encode(labels):
    values, codes = np.unique(np.asarray(labels).ravel(), return_inverse=True)
    return values, codes


def contingency(pred, true):
    """(pred classes, true classes, counts[n_pred, n_true])."""
    pred, true = np.asarray(pred).ravel(), np.asarray(true).ravel()
    if len(pred) != len(true):
        raise ValueError(f"label arrays differ in length: {len(pred)} vs {len(true)}")
    pv, pc = _encode(pred)
    tv, tc = _encode(true)
    counts = np.zeros((len(pv), len(tv)), dtype=np.int64)
    np.add.at(counts, (pc, tc), 1)
    return pv, tv, counts


def confusion_matrix(pred, true):
    """Counts[i, j] = samples of predicted class pv[i] with true class tv[j] -> (pv, tv, counts)."""
    return contingency(pred, true)


def hungarian_match(pred, true):
    """One-to-one matching maximising agreement -> {predicted label: true label}."""
    pv, tv, counts = contingency(pred, true)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return {pv[r].item(): tv[c].item() for r, c in zip(rows, cols)}


def accuracy(pred, true):
    """ACC in [0, 1] after the Hungarian matching."""
    pv, tv, counts = contingency(pred, true)
    if counts.sum() == 0:
        return float("nan")
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / counts.sum())


def _entropy(counts):
    n = counts.sum()
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum())


def mutual_information(pred, true):
    _, _, c = contingency(pred, true)
    n = c.sum()
    a, b = c.sum(axis=1), c.sum(axis=0)
    nz = c > 0
    pij = c[nz] / n
    outer = (a[:, None] * b[None, :])[nz].astype(np.float64)
    return float(max((pij * (np.log(c[nz].astype(np.float64)) + np.log(n) - np.log(outer))).sum(),
                     0.0))


def nmi(pred, true):
    """Normalised mutual information, MI / mean(H(pred), H(true))."""
    pv, tv, c = contingency(pred, true)
    if (len(pv) == len(tv) == 1) or (len(pv) == len(tv) == 0):
        return 1.0
    mi = mutual_information(pred, true)
    h = 0.5 * (_entropy(c.sum(axis=1)) + _entropy(c.sum(axis=0)))
    if mi == 0.0 or h == 0.0:
        return 0.0
    return float(mi / max(h, np.finfo(np.float64).eps))


def _pair_counts(pred, true):
    """Pairs in the same class: (both, same pred, same true, total pairs), as floats."""
    _, _, c = contingency(pred, true)
    c = c.astype(np.float64)
    n = c.sum()
    both = (c * (c - 1) / 2).sum()
    same_pred = (c.sum(axis=1) * (c.sum(axis=1) - 1) / 2).sum()
    same_true = (c.sum(axis=0) * (c.sum(axis=0) - 1) / 2).sum()
    return both, same_pred, same_true, n * (n - 1) / 2


def ari(pred, true):
    """Adjusted Rand index (1 perfect, ~0 random, may be negative)."""
    both, same_pred, same_true, total = _pair_counts(pred, true)
    tp = both
    fp = same_pred - both
    fn = same_true - both
    tn = total - tp - fp - fn
    if fp == 0 and fn == 0:
        return 1.0
    return float(2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)))


def fmi(pred, true):
    """Fowlkes-Mallows index TP / sqrt((TP + FP)(TP + FN)) over sample pairs."""
    both, same_pred, same_true, _ = _pair_counts(pred, true)
    if both == 0:
        return 0.0
    return float(np.sqrt(both / same_pred) * np.sqrt(both / same_true))


def precision_recall(pred, true, mapping=None):
    """Per true class, with predicted classes mapped to true ones (Hungarian by default).

    Returns {true label: {"precision", "recall", "f1", "support", "predicted_class"}};
    a true class with no matched predicted class gets precision = recall = 0."""
    pred, true = np.asarray(pred).ravel(), np.asarray(true).ravel()
    mapping = hungarian_match(pred, true) if mapping is None else mapping
    inverse = {t: p for p, t in mapping.items()}
    out = {}
    for t in np.unique(true).tolist():
        support = int((true == t).sum())
        p = inverse.get(t)
        if p is None:
            out[t] = dict(precision=0.0, recall=0.0, f1=0.0, support=support,
                          predicted_class=None)
            continue
        in_pred = pred == p
        tp = int((in_pred & (true == t)).sum())
        prec = tp / max(int(in_pred.sum()), 1)
        rec = tp / max(support, 1)
        f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
        out[t] = dict(precision=prec, recall=rec, f1=f1, support=support, predicted_class=p)
    return out


def knn_indices(features, k, max_block_elements=2 ** 25):
    """Indices (n, k) of each sample's k most cosine-similar other samples, best first.

    Similarities are computed in row blocks of at most `max_block_elements` (128 MB float32),
    so memory stays bounded for large n."""
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"features must be (n, d), got shape {x.shape}")
    n = len(x)
    k = min(int(k), n - 1)
    block = max(1, min(n, max_block_elements // max(n, 1)))
    import torch  # top-k selection is ~5x faster in torch than numpy's argpartition
    xt = torch.from_numpy(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))
    out = np.empty((n, k), dtype=np.int64)
    for s in range(0, n, block):
        sim = xt[s:s + block] @ xt.T
        rows = torch.arange(sim.shape[0])
        sim[rows, s + rows] = -float("inf")  # exclude the sample itself
        out[s:s + block] = sim.topk(k, dim=1).indices.numpy()
    return out


def knn_accuracy(features, true, k=5, neighbours=None):
    """Leave-one-out kNN classification accuracy: majority label of the k nearest neighbours
    (cosine), ties broken by the label of the nearest one among the tied."""
    true = np.asarray(true).ravel()
    nb = knn_indices(features, k) if neighbours is None else np.asarray(neighbours)[:, :k]
    _, codes = _encode(true)
    votes = codes[nb]  # (n, k)
    n_cls = codes.max() + 1
    counts = np.zeros((len(true), n_cls), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(len(true)), votes.shape[1]), votes.ravel()), 1)
    best = counts.max(axis=1, keepdims=True)
    tied = counts[np.arange(len(true))[:, None], votes] == best  # (n, k): neighbour in a top tie
    first = votes[np.arange(len(true)), tied.argmax(axis=1)]
    return float((first == codes).mean())


def neighbor_purity(features, true, k=5, neighbours=None):
    """Mean share of each sample's k nearest neighbours (cosine) sharing its true label."""
    true = np.asarray(true).ravel()
    nb = knn_indices(features, k) if neighbours is None else np.asarray(neighbours)[:, :k]
    return float((true[nb] == true[:, None]).mean())


def clustering_scores(pred, true):
    """The headline scores as a dict: acc, nmi, ari, fmi, n_pred_classes, n_true_classes."""
    pv, tv, _ = contingency(pred, true)
    return dict(acc=accuracy(pred, true), nmi=nmi(pred, true), ari=ari(pred, true),
                fmi=fmi(pred, true), n=int(len(np.asarray(pred).ravel())),
                n_pred_classes=int(len(pv)), n_true_classes=int(len(tv)))


def _wrap_deg(a):
    return (np.asarray(a, dtype=np.float64) + 180.0) % 360.0 - 180.0


def circular_mean_deg(angles):
    a = np.radians(np.asarray(angles, dtype=np.float64))
    return float(np.degrees(np.arctan2(np.sin(a).mean(), np.cos(a).mean())))


def circular_mode_deg(angles, window=5.0):
    """Angle (deg) with the most values within +-window, refined by their circular mean:
    unlike the plain circular mean, a minority of badly aligned particles does not bias it."""
    d = _wrap_deg(np.asarray(angles, dtype=np.float64))
    grid = np.arange(-180.0, 180.0, 0.5)
    counts = (np.abs(_wrap_deg(grid[:, None] - d[None, :])) <= window).sum(1)
    centre = grid[counts.argmax()]
    near = np.abs(_wrap_deg(d - centre)) <= window
    return float(_wrap_deg(centre + circular_mean_deg(d[near] - centre)))


def pose_errors(pred_class, pred_psi, pred_shift, true_psi, true_shift, mask=None):
    """In-plane pose errors modulo each predicted class's own frame.

    With the project's pose convention, particle = T(ref, true_psi, true_shift) =
    T(A, pred_psi, pred_shift) where the class average A = T(ref, delta, d) for an unknown
    per-class (delta, d). By geometry.compose, true_psi = pred_psi + delta and
    true_shift = pred_shift + R(-pred_psi) d. Per predicted class, delta is the robust circular
    mode of true_psi - pred_psi and d the median of R(pred_psi) (true_shift - pred_shift) over
    the well-aligned particles of `mask` (default all); errors are what remains.

    Angles in degrees, shifts (n, 2) as (x, y) in any unit. Returns (angle_err (n,) in
    [0, 180], shift_err (n,), offsets {class: (delta, d_x, d_y)}); entries outside `mask` are NaN.
    """
    pred_class = np.asarray(pred_class).ravel()
    n = len(pred_class)
    pred_psi, true_psi = np.asarray(pred_psi, np.float64), np.asarray(true_psi, np.float64)
    pred_shift = np.asarray(pred_shift, np.float64).reshape(n, 2)
    true_shift = np.asarray(true_shift, np.float64).reshape(n, 2)
    mask = np.ones(n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    angle_err = np.full(n, np.nan)
    shift_err = np.full(n, np.nan)
    offsets = {}
    a = np.radians(pred_psi)
    c, s = np.cos(a), np.sin(a)
    diff = true_shift - pred_shift
    # R(psi) diff: the shift offset expressed in the class-average frame
    local = np.stack([c * diff[:, 0] - s * diff[:, 1], s * diff[:, 0] + c * diff[:, 1]], axis=1)
    for k in np.unique(pred_class[mask]).tolist():
        sel = mask & (pred_class == k)
        delta = circular_mode_deg(true_psi[sel] - pred_psi[sel])
        angle_err[sel] = np.abs(_wrap_deg(true_psi[sel] - pred_psi[sel] - delta))
        inliers = angle_err[sel] <= max(5.0, float(np.median(angle_err[sel])))
        d = np.median(local[sel][inliers], axis=0)
        predicted = np.stack([c[sel] * d[0] + s[sel] * d[1], -s[sel] * d[0] + c[sel] * d[1]], 1)
        shift_err[sel] = np.linalg.norm(diff[sel] - predicted, axis=1)
        offsets[k] = (delta, float(d[0]), float(d[1]))
    return angle_err, shift_err, offsets


def summarize_pose_errors(angle_err, shift_err):
    """Median and 90th percentile of angle (deg) and shift (px) errors."""
    return {"angle_median_deg": float(np.nanmedian(angle_err)),
            "angle_p90_deg": float(np.nanpercentile(angle_err, 90)),
            "shift_median_px": float(np.nanmedian(shift_err)),
            "shift_p90_px": float(np.nanpercentile(shift_err, 90))}


def summarize_errors(err):
    """{median, p90, mean, n} of the finite entries."""
    e = np.asarray(err, dtype=np.float64)
    e = e[np.isfinite(e)]
    if len(e) == 0:
        return dict(n=0, median=None, p90=None, mean=None)
    return dict(n=int(len(e)), median=float(np.median(e)), p90=float(np.percentile(e, 90)),
                mean=float(e.mean()))
