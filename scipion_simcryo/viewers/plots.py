"""Matplotlib figures of the plugin (class gallery, training curves, metrics table).

Pure numpy + matplotlib on `matplotlib.figure.Figure` objects (no pyplot state, no display):
the viewers wrap them for the GUI, the demo and the tests save them as PNG.
"""
import math
import textwrap

import numpy as np
from matplotlib.figure import Figure


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


def classGalleryFigure(averages, sizes, probs=None, classIds=None, references=None,
                       referenceLabels=None, title='Class averages (largest first)',
                       ncols=None, fig=None):
    """Gallery of class averages sorted by size; each panel titled with class id, size and mean
    probability. With ``references`` (true projections), a second block of rows shows them
    (e.g. the true projection matched to each class, or all true views)."""
    averages = np.asarray(averages)
    n = len(averages)
    classIds = list(classIds) if classIds is not None else list(range(1, n + 1))
    order = sortBySize(sizes)
    ncols = ncols or min(max(n, 1), 8)
    rowsAvg = max(1, math.ceil(n / ncols))
    nref = 0 if references is None else len(references)
    rowsRef = math.ceil(nref / ncols) if nref else 0
    fig = _figure(fig, (max(1.6 * ncols, 4.0), 1.9 * (rowsAvg + rowsRef) + 0.8))
    fig.suptitle(textwrap.fill(title, width=int(12 * max(ncols, 3))), fontsize=9)
    for pos, i in enumerate(order):
        ax = fig.add_subplot(rowsAvg + rowsRef, ncols, pos + 1)
        ax.imshow(_normalise(averages[i]), cmap='gray')
        label = 'class %d\nn=%d' % (classIds[i], sizes[i])
        if probs is not None:
            label += ' p=%.2f' % probs[i]
        ax.set_title(label, fontsize=7)
        ax.set_axis_off()
    for j in range(nref):
        ax = fig.add_subplot(rowsAvg + rowsRef, ncols, rowsAvg * ncols + j + 1)
        ax.imshow(_normalise(references[j]), cmap='gray')
        text = referenceLabels[j] if referenceLabels is not None else 'true view %d' % (j + 1)
        ax.set_title(text, fontsize=7)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def curvesFigure(curves, title='Training curves', fig=None):
    """One panel per curve: {name: [values per epoch]} (e.g. run.json 'curves')."""
    curves = {k: v for k, v in curves.items() if isinstance(v, (list, tuple)) and len(v)}
    n = max(1, len(curves))
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = _figure(fig, (4 * ncols, 3 * nrows))
    fig.suptitle(title, fontsize=10)
    if not curves:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, 'no curves recorded', ha='center', va='center')
        ax.set_axis_off()
        return fig
    for i, (name, values) in enumerate(curves.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        values = [float(v) if not isinstance(v, (list, tuple)) else float(v[-1])
                  for v in values]
        ax.plot(range(1, len(values) + 1), values, marker='.')
        ax.set_title(name, fontsize=9)
        ax.set_xlabel('epoch')
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def metricsTableFigure(rows, title='Classification metrics', fig=None):
    """A table of (label, value) rows drawn as a figure (for PNG reports)."""
    fig = _figure(fig, (5, 0.4 * max(len(rows), 1) + 0.8))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    if rows:
        table = ax.table(cellText=[[label, '%.4g' % value] for label, value in rows],
                         colLabels=['metric', 'value'], loc='center', cellLoc='left')
        table.scale(1, 1.3)
    else:
        ax.text(0.5, 0.5, 'no metrics', ha='center', va='center')
    return fig


def formatMetricsTable(rows, title=None):
    """Plain-text table of (label, value) rows (for logs and the demo)."""
    width = max([len(label) for label, _ in rows] + [6])
    lines = [title] if title else []
    lines.append('%-*s  %s' % (width, 'metric', 'value'))
    lines.append('-' * (width + 10))
    lines += ['%-*s  %.4f' % (width, label, value) for label, value in rows]
    return '\n'.join(lines)
