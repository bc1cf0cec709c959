"""Matplotlib figures of the plugin (class gallery, training curves, metrics table).

Pure numpy + matplotlib on `matplotlib.figure.Figure` objects (no pyplot state, no display):
the viewers wrap them for the GUI, the demo and the tests save them as PNG.
"""
import math
import textwrap

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def _normalise(img):
    img = np.asarray(img, dtype=np.float32)
    lo, hi = np.percentile(img, [1, 99]) if img.size else (0.0, 1.0)
    return np.clip((img - lo) / (hi - lo + 1e-12), 0, 1)


def _figure(fig, figsize):
    """Draw into ``fig`` (e.g. a Scipion Plotter's figure) or a new display-free Figure."""
    if fig is None:
        return Figure(figsize=figsize)
    fig.clear()
    fig.set_size_inches(*figsize)
    return fig


def sortBySize(sizes):
    """Class order, largest first (ties: lower class number first)."""
    sizes = np.asarray(sizes)
    return sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))


def sortByResolution(resolutions, sizes):
    """Class order, best (smallest Å) resolution first; classes without one last, by size."""
    def key(i):
        r = resolutions[i]
        return (r is None or not r > 0, r if r else 0.0, -sizes[i], i)
    return sorted(range(len(sizes)), key=key)


def sortByScore(scores, sizes):
    """Class order, highest quality score first; classes without one last, by size."""
    def key(i):
        s = scores[i]
        return (s is None, -(s or 0.0), -sizes[i], i)
    return sorted(range(len(sizes)), key=key)


def classGalleryFigure(averages, sizes, probs=None, classIds=None, references=None,
                       referenceLabels=None, title='Class averages (largest first)',
                       ncols=None, fig=None, resolutions=None, order=None, labels=None,
                       labelColors=None, scores=None):
    """Gallery of class averages, largest first unless ``order`` is given; each panel titled
    with its class id, size, mean class probability, resolution (Å) and quality score (when
    known), or with
    ``labels`` (coloured by ``labelColors``, e.g. kept / rejected). With ``references`` (true
    projections), a second block of rows shows them (e.g. the true projection matched to
    each class, or all true views)."""
    averages = np.asarray(averages)
    n = len(averages)
    classIds = list(classIds) if classIds is not None else list(range(1, n + 1))
    order = list(order) if order is not None else sortBySize(sizes)
    ncols = ncols or min(max(n, 1), 8)
    rowsAvg = max(1, math.ceil(n / ncols))
    nref = 0 if references is None else len(references)
    rowsRef = math.ceil(nref / ncols) if nref else 0
    fig = _figure(fig, (max(1.7 * ncols, 4.0), 2.0 * (rowsAvg + rowsRef) + 0.8))
    fig.suptitle(textwrap.fill(title, width=int(12 * max(ncols, 3))), fontsize=9)
    for pos, i in enumerate(order):
        ax = fig.add_subplot(rowsAvg + rowsRef, ncols, pos + 1)
        ax.imshow(_normalise(averages[i]), cmap='gray')
        if labels is not None:
            label = labels[i]
        else:
            label = 'class %d\n%d particles' % (classIds[i], sizes[i])
            if probs is not None and probs[i] is not None:
                label += '\np=%.3f' % probs[i]
            if resolutions is not None and resolutions[i]:
                label += ' %.1f Å' % resolutions[i]
            if scores is not None and scores[i] is not None:
                label += '\nscore %.2f' % scores[i]
        colour = {'color': labelColors[i]} if labelColors is not None else {}
        ax.set_title(label, fontsize=7, **colour)
        ax.set_axis_off()
    for j in range(nref):
        ax = fig.add_subplot(rowsAvg + rowsRef, ncols, rowsAvg * ncols + j + 1)
        ax.imshow(_normalise(references[j]), cmap='gray')
        text = referenceLabels[j] if referenceLabels is not None else 'true view %d' % (j + 1)
        ax.set_title(text, fontsize=7)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


KEPT_COLOUR, REJECTED_COLOUR = 'tab:green', 'tab:red'


def classScoresFigure(classIds, scores, selected, threshold,
                      title='Class scores (best first)', fig=None):
    """Bars of the class scores in the given (ranked) order, kept classes green, rejected
    red, with the threshold as a dashed line."""
    n = len(scores)
    fig = _figure(fig, (max(5.0, 0.35 * n + 1.5), 3.8))
    ax = fig.add_subplot(1, 1, 1)
    colours = [KEPT_COLOUR if s else REJECTED_COLOUR for s in selected]
    ax.bar(range(n), scores, color=colours)
    ax.axhline(threshold, color='grey', ls='--', lw=1,
               label='threshold %g' % threshold)
    ax.set_xticks(range(n), [str(c) for c in classIds], fontsize=7,
                  rotation=90 if n > 20 else 0)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel('class (best score first)')
    ax.set_ylabel('class score (0-1)')
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc='upper right')
    fig.tight_layout()
    return fig


# run.json curve -> (panel title, x label, y label); unknown curves keep their key.
CURVE_LABELS = {
    'pretext_loss': ('Contrastive features (SimCLR)', 'epoch', 'NT-Xent loss'),
    'scan_loss_best': ('SCAN clustering (best head)', 'epoch', 'SCAN loss'),
    'selflabel_loss': ('Self-labelling', 'epoch', 'cross-entropy loss'),
    'selflabel_confident': ('Self-labelling', 'epoch', 'confident particles'),
    'refine_loglik': ('EM refinement', 'iteration', 'log-likelihood per particle'),
    'refine_changed': ('EM refinement', 'iteration', 'particles changing class'),
    'median_angle_change_deg': ('Alignment', 'iteration', 'median angle change (deg)'),
    'median_shift_change_px': ('Alignment', 'iteration', 'median shift change (px)'),
    'sure': ('Denoising (self-supervised)', 'epoch', 'SURE loss'),
    'n2n': ('Denoising (self-supervised)', 'epoch', 'Neighbor2Neighbor loss'),
    'content': ('Denoising (GAN)', 'epoch', 'content loss'),
    'adversarial': ('Denoising (GAN)', 'epoch', 'adversarial loss'),
    'disc': ('Denoising (GAN)', 'epoch', 'discriminator loss'),
    'val': ('Denoising: validation', 'epoch', 'validation loss'),
}


def curveLabels(name):
    return CURVE_LABELS.get(name, (name.replace('_', ' '), 'step', name.replace('_', ' ')))


def splitCurves(curves):
    """(curves worth a panel, {name: value} of those constant over every step): a flat line
    is stated in the title instead of drawn."""
    drawn, constant = {}, {}
    for name, values in curves.items():
        if not isinstance(values, (list, tuple)) or not values:
            continue
        values = [float(v[-1] if isinstance(v, (list, tuple)) else v) for v in values]
        if max(values) == min(values):
            constant[name] = values[0]
        else:
            drawn[name] = values
    return drawn, constant


def curvesFigure(curves, title='Training curves', fig=None):
    """One labelled panel per curve of run.json 'curves' ({name: [value per epoch or
    iteration]}); constant curves are listed under the title."""
    drawn, constant = splitCurves(curves)
    n = max(1, len(drawn))
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = _figure(fig, (4.2 * ncols, 3.2 * nrows + 0.6))
    note = ''
    if constant:
        note = '\n' + '; '.join('%s: %s at every %s' % (curveLabels(k)[2], _fmt(v),
                                                          curveLabels(k)[1])
                                 for k, v in constant.items())
    fig.suptitle(title + note, fontsize=10)
    if not drawn:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, 'no varying curve recorded', ha='center', va='center')
        ax.set_axis_off()
        return fig
    for i, (name, values) in enumerate(drawn.items()):
        panel, xlabel, ylabel = curveLabels(name)
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.plot(range(1, len(values) + 1), values, marker='.')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _fmt(v):
    return '%d' % v if float(v).is_integer() else '%.3g' % v


def confusionFigure(counts, predicted, true, title='Confusion matrix', fig=None):
    """Particles of each true class (rows) in each predicted class (columns), annotated."""
    counts = np.asarray(counts, dtype=float)
    fig = _figure(fig, (1.0 + 0.55 * max(len(predicted), 4), 1.0 + 0.5 * max(len(true), 4)))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(counts, cmap='Blues')
    ax.set_xticks(range(len(predicted)), [str(p) for p in predicted])
    ax.set_yticks(range(len(true)), [str(t) for t in true])
    ax.set_xlabel('predicted class')
    ax.set_ylabel('true class')
    ax.set_title(title, fontsize=10)
    top = counts.max() if counts.size else 0
    for (r, c), v in np.ndenumerate(counts):
        ax.text(c, r, '%d' % v, ha='center', va='center', fontsize=7,
                color='white' if v > top / 2 else 'black')
    fig.colorbar(im, ax=ax, label='particles')
    fig.tight_layout()
    return fig


def frcFigure(classes, nyquistA, title='FRC of each class average vs its true projection',
              fig=None):
    """FRC curves ({'predicted_class', 'true_class', 'curve', 'res_frc0143_A'} dicts of
    evaluate's report) against spatial frequency in 1/Å, with the 0.5 and 0.143 lines."""
    fig = _figure(fig, (6.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for c in classes:
        curve = c.get('curve') or []
        if not curve:
            continue
        freq = np.arange(len(curve)) / len(curve) / nyquistA
        res = c.get('res_frc0143_A')
        ax.plot(freq, curve, label='class %s vs view %s%s'
                % (c.get('predicted_class'), c.get('true_class'),
                   ' (%.1f Å)' % res if res else ''))
    for level in (0.5, 0.143):
        ax.axhline(level, color='grey', lw=0.8, ls='--')
    ax.set_xlabel('spatial frequency (1/Å)')
    ax.set_ylabel('FRC')
    ax.set_ylim(-0.2, 1.05)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def tableFigure(header, rows, title, fig=None):
    """Rows of text cells drawn as a table (PNG reports)."""
    fig = _figure(fig, (max(5.0, 1.5 * len(header)), 0.4 * max(len(rows), 1) + 0.9))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    if rows:
        table = ax.table(cellText=rows, colLabels=header, loc='center', cellLoc='left')
        table.auto_set_font_size(False)
        table.set_fontsize(9)
        table.scale(1, 1.3)
    else:
        ax.text(0.5, 0.5, 'nothing to show', ha='center', va='center')
    return fig


def formatMetricsTable(rows, title=None):
    """Plain-text table of (label, value) rows (for logs and the demo)."""
    from ..metrics import formatValue
    width = max([len(label) for label, _ in rows] + [6])
    lines = [title] if title else []
    lines.append('%-*s  %s' % (width, 'metric', 'value'))
    lines.append('-' * (width + 10))
    lines += ['%-*s  %s' % (width, label, formatValue(value, label)) for label, value in rows]
    return '\n'.join(lines)
