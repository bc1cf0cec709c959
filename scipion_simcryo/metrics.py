"""Readable names and number formats of the engine's metrics (run.json 'metrics' of classify
and align, evaluate's report.json), shared by summaries, viewers and the demo. No Scipion
import: the demo and the tests use it as is."""

# engine key (evaluate's report flattened with '.') -> label, in display order
METRIC_LABELS = [
    ('scores.acc', 'ACC (Hungarian matching)'),
    ('acc', 'ACC (Hungarian matching)'),
    ('scores.nmi', 'NMI'),
    ('nmi', 'NMI'),
    ('scores.ari', 'ARI'),
    ('ari', 'ARI'),
    ('scores.fmi', 'FMI'),
    ('fmi', 'FMI'),
    ('before_refine_acc', 'ACC before the EM refinement'),
    ('before_refine_nmi', 'NMI before the EM refinement'),
    ('knn.accuracy', 'top-k kNN accuracy'),
    ('neighbor_purity@5', 'neighbour purity (5 nearest)'),
    ('neighbor_purity@10', 'neighbour purity (10 nearest)'),
    ('frc.median_res_frc05_A', 'median resolution of the averages, FRC 0.5 (Å)'),
    ('frc.median_res_frc0143_A', 'median resolution of the averages, FRC 0.143 (Å)'),
    ('pose.angle_error_deg.median', 'median in-plane angle error (deg)'),
    ('pose.shift_error_A.median', 'median shift error (Å)'),
    ('pose.within_5deg', 'particles within 5 deg of the true angle (fraction)'),
    ('n_particles', 'particles scored'),
    ('n', 'particles scored'),
    ('scores.n_pred_classes', 'classes found'),
    ('n_pred_classes', 'classes found'),
    ('scores.n_true_classes', 'true classes'),
    ('n_true_classes', 'true classes'),
]
_LABELS = dict(METRIC_LABELS)


def flattenMetrics(report):
    """{name: value} of the scalar metrics of a nested engine report ('.'-joined keys)."""
    flat = {}

    def walk(prefix, obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk('%s.%s' % (prefix, k) if prefix else str(k), v)
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
            flat[prefix] = float(obj)

    walk('', report or {})
    return flat


def metricRows(metrics):
    """[(label, value)] of the known metrics of a (nested) engine dict, in display order, each
    label once (e.g. 'particles scored' from 'n_particles' or 'n')."""
    flat = flattenMetrics(metrics)
    rows, seen = [], set()
    for key, label in METRIC_LABELS:
        if key in flat and label not in seen:
            rows.append((label, flat[key]))
            seen.add(label)
    return rows


def metricLabel(key):
    return _LABELS.get(key, key.replace('_', ' '))


COUNT_LABELS = {'particles scored', 'classes found', 'true classes'}


def formatValue(value, label=None):
    """Counts as integers, Å and degrees with 2 decimals, scores with 3."""
    value = float(value)
    if label in COUNT_LABELS:
        return '%d' % round(value)
    if label and ('(Å)' in label or '(deg)' in label):
        return '%.2f' % value
    return '%.3f' % value
