"""Protocol viewers: class gallery (largest class first, size and probability), training
curves from the engine's run.json, metrics tables. Every view is built without a display
(matplotlib figures, TableView/ClassesView objects); only `show()` needs the GUI."""
import numpy as np

import pyworkflow.protocol.params as params
from pyworkflow.viewer import DESKTOP_TKINTER, ProtocolViewer, View
from pwem.viewers import EmPlotter, ClassesView, TableView
from pwem.viewers.showj import SORT_BY

from .. import constants as cts
from ..protocols import (ProtSimcryoClassify2D, ProtSimcryoAlignAverage,
                         ProtSimcryoEvaluate, ProtSimcryoSimulate, ProtSimcryoDenoise)
from . import plots


def readImages(items):
    """Image arrays of Scipion images (any format Scipion reads)."""
    from pwem.emlib.image import ImageHandler
    ih = ImageHandler()
    return [np.array(ih.read(item.getLocation()).getData(), dtype=np.float32)
            for item in items]


def classesGalleryData(classes):
    """(averages, sizes, mean probabilities or None, class ids) of a SetOfClasses2D."""
    reps, sizes, probs, ids = [], [], [], []
    for cls in classes.iterItems(orderBy='id'):
        rep = cls.getRepresentative()
        if not cls.getSize() or rep is None or not rep.getFileName():
            continue
        reps.append(rep.clone())
        sizes.append(cls.getSize())
        ids.append(cls.getObjId())
        prob = getattr(cls, cts.CLASS_MEAN_PROB, None)
        probs.append(prob.get() if prob is not None else None)
    hasProb = bool(probs) and all(p is not None for p in probs)
    return readImages(reps), sizes, (probs if hasProb else None), ids


def runCurves(runLog):
    """Per-epoch/iteration curves of an engine run.json: its 'curves' (losses per epoch) and,
    for align, the numeric fields of its per-iteration history."""
    curves = {k: v for k, v in (runLog.get('curves') or {}).items() if v}
    history = runLog.get('iterations')
    if isinstance(history, list) and history and isinstance(history[0], dict):
        for key, value in history[0].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                curves.setdefault('align: ' + key, [h.get(key, float('nan')) for h in history])
    return curves


def figureView(drawFunc, *args, **kwargs):
    """An EmPlotter (GUI window when shown) holding the figure drawn by ``drawFunc``."""
    plotter = EmPlotter(x=1, y=1, windowTitle=kwargs.pop('windowTitle', 'simcryo'))
    drawFunc(*args, fig=plotter.getFigure(), **kwargs)
    return plotter


class SimcryoClassesViewer(ProtocolViewer):
    """Results of the simcryo classification and alignment protocols."""
    _label = 'viewer simcryo classes'
    _targets = [ProtSimcryoClassify2D, ProtSimcryoAlignAverage]
    _environments = [DESKTOP_TKINTER]

    def _defineParams(self, form):
        form.addSection(label='Visualization')
        form.addParam('displayGallery', params.LabelParam,
                      label='Class gallery (largest first, size and probability)')
        form.addParam('displayClasses', params.LabelParam,
                      label='Classes in the Scipion viewer (sorted by size)')
        form.addParam('displayCurves', params.LabelParam,
                      label='Training curves (loss per epoch)')
        form.addParam('displayMetrics', params.LabelParam,
                      label='Metrics against true labels (simulated data)')

    def _getVisualizeDict(self):
        return {'displayGallery': self._showGallery,
                'displayClasses': self._showClasses,
                'displayCurves': self._showCurves,
                'displayMetrics': self._showMetrics}

    def _outputClasses(self):
        return getattr(self.protocol, 'outputClasses', None)

    def _showGallery(self, paramName=None):
        classes = self._outputClasses()
        if classes is None:
            return [self.errorMessage('No output classes yet.')]
        averages, sizes, probs, ids = classesGalleryData(classes)
        return [figureView(plots.classGalleryFigure, averages, sizes, probs=probs,
                           classIds=ids, windowTitle='simcryo class gallery')]

    def _showClasses(self, paramName=None):
        classes = self._outputClasses()
        if classes is None:
            return [self.errorMessage('No output classes yet.')]
        return [ClassesView(self.getProject(), classes.strId(), classes.getFileName(),
                            viewParams={SORT_BY: '_size desc'})]

    def _showCurves(self, paramName=None):
        curves = runCurves(self.protocol._readRunLog())
        if not curves:
            return [self.infoMessage('The engine recorded no training curves for this run.')]
        return [figureView(plots.curvesFigure, curves, windowTitle='simcryo training curves')]

    def _showMetrics(self, paramName=None):
        metrics = self.protocol._readRunLog().get('metrics')
        rows = [(k, float(v)) for k, v in (metrics or {}).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not rows:
            return [self.infoMessage('No metrics: the particles carry no true labels. Use '
                                     '"evaluate 2D classification" to compare two '
                                     'classifications.')]
        return [metricsTableView(rows, 'Metrics of %s' % self.protocol.getRunName())]


class MetricsTableView(View):
    """A (metric, value) table. pwem's TableView opens its Tk window when constructed, so it
    is only created in `show()`; the rows and the text form are available headless."""

    def __init__(self, rows, title):
        View.__init__(self)
        self.rows = list(rows)
        self.title = title

    def getText(self):
        return plots.formatMetricsTable(self.rows, self.title)

    def show(self):
        TableView(headerList=['metric', 'value'],
                  dataList=[(label, '%.4f' % value) for label, value in self.rows],
                  mesg=self.title, title=self.title, height=max(len(self.rows), 3),
                  width=400)


def metricsTableView(rows, title):
    return MetricsTableView(rows, title)


class SimcryoEvaluateViewer(ProtocolViewer):
    """Metrics of "evaluate 2D classification"."""
    _label = 'viewer simcryo evaluation'
    _targets = [ProtSimcryoEvaluate]
    _environments = [DESKTOP_TKINTER]

    def _defineParams(self, form):
        form.addSection(label='Visualization')
        form.addParam('displayTable', params.LabelParam, label='Metrics table')
        form.addParam('displayPlot', params.LabelParam, label='Metrics as a figure')

    def _getVisualizeDict(self):
        return {'displayTable': self._showTable, 'displayPlot': self._showPlot}

    def _rows(self):
        return self.protocol.getMetricsTable()

    def _showTable(self, paramName=None):
        rows = self._rows()
        if not rows:
            return [self.errorMessage('No metrics yet: run the protocol first.')]
        return [metricsTableView(rows, 'Evaluation of %s'
                                 % self.protocol.getObjectTag('inputClasses'))]

    def _showPlot(self, paramName=None):
        rows = self._rows()
        if not rows:
            return [self.errorMessage('No metrics yet: run the protocol first.')]
        return [figureView(plots.metricsTableFigure, rows,
                           windowTitle='simcryo evaluation')]


class SimcryoParticlesViewer(ProtocolViewer):
    """True projections of a simulation and training curves of a denoising run."""
    _label = 'viewer simcryo particles'
    _targets = [ProtSimcryoSimulate, ProtSimcryoDenoise]
    _environments = [DESKTOP_TKINTER]

    def _defineParams(self, form):
        form.addSection(label='Visualization')
        form.addParam('displayReferences', params.LabelParam,
                      label='True projections (simulation)')
        form.addParam('displayCurves', params.LabelParam, label='Training curves (denoising)')

    def _getVisualizeDict(self):
        return {'displayReferences': self._showReferences,
                'displayCurves': self._showCurves}

    def _showReferences(self, paramName=None):
        refs = getattr(self.protocol, 'outputReferences', None)
        if refs is None:
            return [self.infoMessage('No true projections (only the simulate protocol has '
                                     'them).')]
        images = readImages(item.clone() for item in refs.iterItems(orderBy='id'))
        return [figureView(plots.classGalleryFigure, images, [0] * len(images),
                           title='True projection of each view class',
                           windowTitle='simcryo true projections')]

    def _showCurves(self, paramName=None):
        curves = runCurves(self.protocol._readRunLog())
        if not curves:
            return [self.infoMessage('The engine recorded no training curves for this run.')]
        return [figureView(plots.curvesFigure, curves, windowTitle='simcryo training curves')]
