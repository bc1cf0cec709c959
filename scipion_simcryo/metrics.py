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


# evaluate's junk-cleaning figures (report 'cleaning', per selection) -> label, display order
CLEANING_FIGURES = [
    ('recall', 'good-particle recall (share of good particles kept)'),
    ('contamination', 'contamination (junk share of kept)'),
    ('junk_rejected', 'junk rejected (share of junk not kept)'),
    ('particles_kept', 'particles kept'),
    ('n_kept_classes', 'classes kept'),
    ('view_spread_deg', 'median view spread in a kept class (deg)'),
    ('kmeans_floor_deg', 'view spread floor, spherical k-means (deg)'),
    ('fidelity', 'class-average fidelity of the kept, size-weighted (0 noise, 1 clean)'),
]
# report key -> name of the selection
CLEANING_SELECTIONS = [('oracle', 'oracle selection'), ('selected', 'given selection')]


def cleaningRows(report):
    """[(figure label, oracle value, given selection's value or None)] of evaluate's report
    with junk truth ('cleaning'); [] without, or when no particle is junk (every class kept,
    nothing to clean). A value is None where it was not measured (e.g. the fidelity without
    the true volume)."""
    cleaning = (report or {}).get('cleaning') or {}
    if not cleaning.get('oracle') or set(cleaning.get('junk_kinds') or {}) <= {'good'}:
        return []
    rows = []
    for key, label in CLEANING_FIGURES:
        values = [_cleaningValue(cleaning.get(name), key) for name, _ in CLEANING_SELECTIONS]
        if any(v is not None for v in values):
            rows.append((label,) + tuple(values))
    return rows


def _cleaningValue(selection, key):
    if not selection:
        return None
    if key == 'n_kept_classes':
        return float(len(selection.get('kept_classes', [])))
    value = selection.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def metricRows(metrics):
    """[(label, value)] of the known metrics of a (nested) engine dict, in display order, each
    label once (e.g. 'particles scored' from 'n_particles' or 'n'); evaluate's junk-cleaning
    figures first, one row per figure and selection ('good-particle recall ..., oracle
    selection')."""
    flat = flattenMetrics(metrics)
    rows, seen = [], set()
    for label, *values in cleaningRows(metrics):
        for (_, name), value in zip(CLEANING_SELECTIONS, values):
            if value is not None:
                rows.append(('%s, %s' % (label, name), value))
    for key, label in METRIC_LABELS:
        if key in flat and label not in seen:
            rows.append((label, flat[key]))
            seen.add(label)
    return rows


def metricLabel(key):
    return _LABELS.get(key, key.replace('_', ' '))


COUNT_LABELS = {'particles scored', 'classes found', 'true classes', 'particles kept',
                'classes kept'}


def formatValue(value, label=None):
    """Counts as integers, Å and degrees with 2 decimals, scores with 3."""
    value = float(value)
    if label in COUNT_LABELS or (label and label.split(', ')[0] in COUNT_LABELS):
        return '%d' % round(value)
    if label and ('(Å)' in label or '(deg)' in label):
        return '%.2f' % value
    return '%.3f' % value
