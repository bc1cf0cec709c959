"""Protocol viewers: class galleries (by size or resolution, with size, probability and
resolution), labelled training/refinement curves from the engine's run.json, metrics and
per-class tables, the evaluation's confusion matrix, FRC curves and class-vs-true-view gallery,
the class selection's ranking (scores, kept / rejected).
Every view is built without a display (matplotlib figures, table views); only `show()` needs
the GUI."""
from collections import Counter

import numpy as np

import pyworkflow.protocol.params as params
from pyworkflow.viewer import DESKTOP_TKINTER, ProtocolViewer, View
from pwem.viewers import EmPlotter, ClassesView, ObjectView, TableView
from pwem.viewers.showj import SORT_BY

from .. import constants as cts
from ..metrics import formatValue, metricRows
from ..protocols import (ProtSimcryoClassify2D, ProtSimcryoAlignAverage,
                         ProtSimcryoEvaluate, ProtSimcryoSimulate, ProtSimcryoDenoise,
                         ProtSimcryoSelectClasses)
from ..protocols.protocol_select import SCORE_ATTR
from ..protocols.protocol_simulate import JUNK_KINDS
from . import plots

SORT_CHOICES = ['size (largest first)', 'resolution (best first, align runs)',
                'quality score (best first, classify runs)']
SORT_SIZE, SORT_RESOLUTION, SORT_SCORE = range(3)


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


def classResolutions(runLog, classIds):
    """Half-set FRC 0.143 resolution (Å) per class id from an align run.json, None where the
    engine recorded none (classify records none)."""
    res = {c.get('class'): c.get('resolution_frc0143_A') for c in runLog.get('classes') or []
           if isinstance(c, dict)}
    values = [res.get(k) for k in classIds]
    return values if any(v for v in values) else None


def classScores(runLog, classIds):
    """Quality score per class id from a classify run.json (`class_scores`, written in class
    order 1..K; the score of `simcryo select`), None where the engine recorded none (align
    records none)."""
    scores = runLog.get('class_scores')
    if not isinstance(scores, list) or not scores:
        return None
    return [scores[k - 1] if 0 < k <= len(scores) else None for k in classIds]


def runCurves(runLog):
    """The per-epoch / per-iteration curves of an engine run.json."""
    return {k: v for k, v in (runLog.get('curves') or {}).items() if v}


def figureView(drawFunc, *args, **kwargs):
    """An EmPlotter (GUI window when shown) holding the figure drawn by ``drawFunc``."""
    plotter = EmPlotter(x=1, y=1, windowTitle=kwargs.pop('windowTitle', 'simcryo'))
    drawFunc(*args, fig=plotter.getFigure(), **kwargs)
    return plotter


def hasXmippViewer():
    """True when the xmipp3 plugin (the Java 'showj' viewer behind ObjectView) is installed."""
    from pwem import Domain
    try:
        return Domain.importFromPlugin('xmipp3', 'Plugin', doRaise=True) is not None
    except Exception:
        return False


def setView(viewer, emSet, viewParams=None):
    """The set in Scipion's data viewer: showj (Xmipp) when installed, else pwem's own Qt
    metadata viewer, so the item works with or without Xmipp."""
    if hasXmippViewer():
        cls = ClassesView if emSet.getClassName().startswith('SetOfClasses') else ObjectView
        return cls(viewer.getProject(), emSet.strId(), emSet.getFileName(),
                   viewParams=viewParams or {})
    from pwem.viewers.mdviewer.viewer import MDView
    port = getattr(viewer.getProject(), 'port', None)
    return MDView(emSet if port else emSet.getFileName(), viewer.protocol, port)


class MetricsTableView(View):
    """A table (header + rows of text). pwem's TableView opens its Tk window when
    constructed, so it is only created in `show()`; the rows and the text form are available
    headless."""

    def __init__(self, rows, title, header=('metric', 'value')):
        View.__init__(self)
        self.header = list(header)
        self.rows = [[str(c) for c in row] for row in rows]
        self.title = title

    def getText(self):
        widths = [max(len(r[i]) for r in [self.header] + self.rows)
                  for i in range(len(self.header))]
        fmt = '  '.join('%%-%ds' % w for w in widths)
        lines = [self.title, fmt % tuple(self.header), '-' * (sum(widths) + 2 * len(widths))]
        return '\n'.join(lines + [(fmt % tuple(r)).rstrip() for r in self.rows])

    def show(self):
        TableView(headerList=self.header, dataList=self.rows, mesg=self.title,
                  title=self.title, height=max(len(self.rows), 3),
                  width=max(400, 130 * len(self.header)))


def metricsTableView(rows, title):
    """(label, value) rows with their readable number formats."""
    return MetricsTableView([(label, formatValue(v, label)) for label, v in rows], title)


def trueClassTable(classes):
    """[(class, particles, most frequent true view, its fraction)] from the
    _simcryoTrueClass of the particles of each class; [] when they carry none."""
    rows = []
    for cls in classes.iterItems(orderBy='id'):
        views = Counter(p.getAttributeValue(cts.TRUE_CLASS) for p in cls.iterItems()
                        if p.hasAttribute(cts.TRUE_CLASS))
        if not views:
            continue
        view, count = views.most_common(1)[0]
        rows.append((cls.getObjId(), cls.getSize(), view, '%.3f' % (count / cls.getSize())))
    return rows


def _message(viewer, text):
    return [viewer.infoMessage(text, title='simcryo')]


def _curvesViews(viewer, what):
    curves = runCurves(viewer.protocol._readRunLog())
    if not curves:
        return _message(viewer, 'The engine recorded no curves for this run.')
    return [figureView(plots.curvesFigure, curves,
                       title='%s: %s' % (viewer.protocol.getRunName(), what),
                       windowTitle='simcryo curves')]


def _outputSetViews(viewer, name):
    emSet = getattr(viewer.protocol, name, None)
    if emSet is None:
        return _message(viewer, 'No %s yet: run the protocol first.' % name)
    return [setView(viewer, emSet)]


class SimcryoClassesViewer(ProtocolViewer):
    """Results of the simcryo classification and alignment protocols."""
    _label = 'viewer simcryo classes'
    _targets = [ProtSimcryoClassify2D, ProtSimcryoAlignAverage]
    _environments = [DESKTOP_TKINTER]

    def _defineParams(self, form):
        form.addSection(label='Visualization')
        form.addParam('gallerySort', params.EnumParam, choices=SORT_CHOICES, default=0,
                      display=params.EnumParam.DISPLAY_HLIST, label='Sort the gallery by',
                      help='Resolution: the half-set FRC 0.143 of each class average, '
                           'recorded by "align and average classes". Quality score: the '
                           'class score of "rank and select 2D classes" (contrast, '
                           'centring, radial profile and size of the average), recorded '
                           'by the classify protocol, which numbers its classes best '
                           'first. Where a run recorded no such value the classes are '
                           'sorted by size.')
        form.addParam('displayGallery', params.LabelParam,
                      label='Class gallery (size, probability, resolution, score)')
        form.addParam('displayClasses', params.LabelParam,
                      label='Classes in the Scipion viewer (sorted by size)')
        form.addParam('displayCurves', params.LabelParam,
                      label='Training and refinement curves')
        form.addParam('displayMetrics', params.LabelParam,
                      label='Metrics against the true labels (simulated data)')

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
            return _message(self, 'No output classes yet.')
        averages, sizes, probs, ids = classesGalleryData(classes)
        runLog = self.protocol._readRunLog()
        resolutions = classResolutions(runLog, ids)
        scores = classScores(runLog, ids)
        sort = self.gallerySort.get()
        if sort == SORT_RESOLUTION and resolutions is not None:
            order, how = plots.sortByResolution(resolutions, sizes), 'best resolution first'
        elif sort == SORT_SCORE and scores is not None:
            order, how = plots.sortByScore(scores, sizes), 'best quality score first'
        else:
            order, how = plots.sortBySize(sizes), 'largest first'
        title = '%s: class averages, %s' % (self.protocol.getRunName(), how)
        return [figureView(plots.classGalleryFigure, averages, sizes, probs=probs,
                           classIds=ids, resolutions=resolutions, scores=scores, order=order,
                           title=title, windowTitle='simcryo class gallery')]

    def _showClasses(self, paramName=None):
        classes = self._outputClasses()
        if classes is None:
            return _message(self, 'No output classes yet.')
        return [setView(self, classes, {SORT_BY: '_size desc'})]

    def _showCurves(self, paramName=None):
        return _curvesViews(self, 'training and refinement')

    def _showMetrics(self, paramName=None):
        runLog = self.protocol._readRunLog()
        rows = metricRows(runLog.get('metrics'))
        pose = runLog.get('pose_errors_vs_truth') or {}
        for key, label in [('angle_median_deg', 'median in-plane angle error (deg)'),
                           ('shift_median_px', 'median shift error (px)')]:
            if isinstance(pose.get(key), (int, float)):
                rows.append((label, pose[key]))
        views = []
        name = self.protocol.getRunName()
        if rows:
            views.append(metricsTableView(rows, 'Metrics of %s' % name))
        classes = self._outputClasses()
        table = trueClassTable(classes) if classes is not None else []
        if table:
            views.append(MetricsTableView(
                table, '%s: true view of the particles of each class' % name,
                header=('class', 'particles', 'most frequent true view', 'fraction')))
        if not views:
            return _message(self, 'No metrics: the particles carry no true labels (%s). '
                                  'Use "evaluate 2D classification" to compare two '
                                  'classifications.' % cts.TRUE_CLASS)
        return views


class SimcryoEvaluateViewer(ProtocolViewer):
    """Metrics, junk-cleaning figures (oracle and given selection) and classes, per-class
    table, confusion matrix, FRC curves and class-vs-true-view gallery of "evaluate 2D
    classification"."""
    _label = 'viewer simcryo evaluation'
    _targets = [ProtSimcryoEvaluate]
    _environments = [DESKTOP_TKINTER]

    def _defineParams(self, form):
        form.addSection(label='Visualization')
        form.addParam('displayTable', params.LabelParam, label='Metrics table')
        if self._hasCleaning():   # particles with junk truth only
            form.addParam('displayCleaning', params.LabelParam,
                          label='Junk cleaning: oracle and given selection side by side')
            form.addParam('displayCleaningClasses', params.LabelParam,
                          label='Junk share, selection and fidelity of every class')
        form.addParam('displayPerClass', params.LabelParam,
                      label='Per-class precision, recall and resolution')
        form.addParam('displayConfusion', params.LabelParam, label='Confusion matrix')
        form.addParam('displayFrc', params.LabelParam,
                      label='FRC curves of the class averages vs the true projections')
        form.addParam('displayGallery', params.LabelParam,
                      label='Class averages next to the true view each matched')

    def _getVisualizeDict(self):
        actions = {'displayTable': self._showTable}
        if self._hasCleaning():
            actions.update(displayCleaning=self._showCleaning,
                           displayCleaningClasses=self._showCleaningClasses)
        actions.update(displayPerClass=self._showPerClass, displayConfusion=self._showConfusion,
                       displayFrc=self._showFrc, displayGallery=self._showGallery)
        return actions

    def _hasCleaning(self):
        return bool(self.protocol.getCleaningTable())

    def _noCleaning(self):
        return _message(self, 'No junk-cleaning figures: no particle is junk by its truth '
                              '(%s; simulate with junk).' % cts.TRUE_KIND)

    def _report(self):
        return self.protocol.getReport()

    def _title(self, what):
        return '%s: %s' % (self.protocol.getRunName(), what)

    def _showTable(self, paramName=None):
        rows = self.protocol.getMetricsTable()
        if not rows:
            return _message(self, 'No metrics yet: run the protocol first.')
        return [metricsTableView(rows, self._title('metrics'))]

    def _showCleaning(self, paramName=None):
        rows = self.protocol.getCleaningTable()
        if not rows:
            return self._noCleaning()
        text = [(label, _cleaningText(o, label), _cleaningText(s, label))
                for label, o, s in rows]
        maxJunk = ((self._report() or {}).get('config') or {}).get('oracle_max_junk', 0.5)
        return [MetricsTableView(text, self._title(
            'junk cleaning (oracle: the classes with < %g %% junk; selection: %s)'
            % (100 * maxJunk, _pointerName(self.protocol.selectedClasses,
                                                  self.getProject()))),
            header=('figure', 'oracle', 'selection'))]

    def _showCleaningClasses(self, paramName=None):
        rows = self.protocol.getCleaningPerClass()
        if not rows:
            return self._noCleaning()
        text = [(cid, n, '%.3f' % share, _keptText(oracle),
                 '-' if sel is None else _keptText(sel), _f3(fid))
                for cid, n, share, oracle, sel, fid in rows]
        return [MetricsTableView(text, self._title('junk share per class, largest first'),
                                 header=('class', 'particles', 'junk share', 'oracle',
                                         'selection', 'fidelity'))]

    def _showPerClass(self, paramName=None):
        rows = self.protocol.getPerClassTable()
        if not rows:
            return _message(self, 'No per-class scores yet: run the protocol first.')
        text = [(t, p if p is not None else '-', _f3(prec), _f3(rec), s if s is not None
                 else '-', _f1(r05), _f1(r0143)) for t, p, prec, rec, s, r05, r0143 in rows]
        return [MetricsTableView(text, self._title('per true class'), header=(
            'true class', 'matched class', 'precision', 'recall', 'particles',
            'FRC 0.5 (Å)', 'FRC 0.143 (Å)'))]

    def _showConfusion(self, paramName=None):
        confusion = (self._report() or {}).get('confusion')
        if not confusion:
            return _message(self, 'No confusion matrix in the report: run the protocol '
                                  'first.')
        return [figureView(plots.confusionFigure, confusion['counts'],
                           confusion['predicted_classes'], confusion['true_classes'],
                           title=self._title('particles per true and predicted class'),
                           windowTitle='simcryo confusion matrix')]

    def _showFrc(self, paramName=None):
        frc = (self._report() or {}).get('frc') or {}
        if not frc.get('classes'):
            return _message(self, 'No FRC: give the true projections (the simulate '
                                  'protocol\'s references) to the evaluation.')
        return [figureView(plots.frcFigure, frc['classes'], frc['nyquist_A'],
                           title=self._title('FRC of each class average vs its true view'),
                           windowTitle='simcryo FRC')]

    def _showGallery(self, paramName=None):
        data = matchedGalleryData(self.protocol)
        if data is None:
            return _message(self, 'No gallery: the classes need representatives and the '
                                  'evaluation the true projections.')
        return [figureView(plots.classGalleryFigure, *data['args'],
                           title=self._title('class averages, largest first (top), and '
                                             'the true view each matched (bottom)'),
                           windowTitle='simcryo classes vs true views', **data['kwargs'])]


def matchedGalleryData(evalProt, classes=None, references=None):
    """Arguments of `plots.classGalleryFigure` showing the class averages of an evaluation
    (largest first) above the true projection each class was matched to (report
    'matching'); None without averages or true projections."""
    classes = classes or evalProt.inputClasses.get()
    references = references or evalProt.trueReferences.get()
    if classes is None or references is None:
        return None
    averages, sizes, probs, ids = classesGalleryData(classes)
    if not averages:
        return None
    refs = readImages(item.clone() for item in references.iterItems(orderBy='id'))
    report = evalProt.getReport() or {}
    matching = {int(k): int(v) for k, v in (report.get('matching') or {}).items()}
    # evaluate numbers the classes 1..K in id order, empty classes dropped
    numbering = {cid: n for n, cid in enumerate(ids, 1)}
    order = plots.sortBySize(sizes)
    views = [matching.get(numbering[ids[i]]) for i in order]
    matched = [refs[v - 1] if v and v <= len(refs) else averages[i] * 0
               for v, i in zip(views, order)]
    labels = ['true view %s' % (v if v else '-') for v in views]
    return {'args': (averages, sizes),
            'kwargs': dict(probs=probs, classIds=ids, references=matched,
                           referenceLabels=labels)}


def _pointerName(pointer, project):
    """'run name.output' of an input pointer, as plain text (getObjectTag's is GUI markup):
    the GUI's pointers name the run and its output, a direct pointer to an output set has
    the run as its parent."""
    obj = pointer.get()
    if obj is None:
        return 'none given'
    owner = pointer.getObjValue()
    if pointer.hasExtended() and hasattr(owner, 'getRunName'):
        return '%s.%s' % (owner.getRunName(), pointer.getExtended())
    try:
        return '%s.%s' % (project.getProtocol(int(obj.getObjParentId())).getRunName(),
                          obj.getLastName())
    except Exception:   # a set that is no run's output
        return obj.getNameId()


def _cleaningText(value, label):
    return '-' if value is None else formatValue(value, label)


def _f3(v):
    return '%.3f' % v if isinstance(v, (int, float)) else '-'


def _f1(v):
    return '%.1f' % v if isinstance(v, (int, float)) else '-'


EXAMPLES_PER_KIND = 6


def kindExamples(parts, counts=None, perKind=EXAMPLES_PER_KIND):
    """({kind: first particles of that kind (clones, id order)}, {kind: count}) from the
    _simcryoTrueKind of a simulated set, kinds in the engine's order; ({}, {}) without it.
    ``counts`` (the simulation's run.json 'kinds') ends the scan once every kind has its
    examples; without it every particle is counted."""
    seen = Counter()
    wanted = {k: min(n, perKind) for k, n in (counts or {}).items() if n}
    examples = {}
    for p in parts.iterItems(orderBy='id'):
        if not p.hasAttribute(cts.TRUE_KIND):
            return {}, {}
        kind = p.getAttributeValue(cts.TRUE_KIND)
        seen[kind] += 1
        if seen[kind] <= perKind:
            examples.setdefault(kind, []).append(p.clone())
        if wanted and all(seen[k] >= n for k, n in wanted.items()):
            break
    counts = dict(counts) if wanted else dict(seen)
    order = ['good'] + JUNK_KINDS
    return {k: examples[k] for k in sorted(examples, key=lambda k: (
        order.index(k) if k in order else len(order), k))}, counts


class SimcryoSimulateViewer(ProtocolViewer):
    """True projections and particles of a simulation."""
    _label = 'viewer simcryo simulation'
    _targets = [ProtSimcryoSimulate]
    _environments = [DESKTOP_TKINTER]

    def _defineParams(self, form):
        form.addSection(label='Visualization')
        form.addParam('displayReferences', params.LabelParam,
                      label='True projection of each view class')
        form.addParam('displayKinds', params.LabelParam,
                      label='A few particles of each kind (good and junk)')
        form.addParam('displayParticles', params.LabelParam,
                      label='Particles in the Scipion viewer')

    def _getVisualizeDict(self):
        return {'displayReferences': self._showReferences,
                'displayKinds': self._showKinds,
                'displayParticles': self._showParticles}

    def _showKinds(self, paramName=None):
        parts = getattr(self.protocol, 'outputParticles', None)
        if parts is None:
            return _message(self, 'No particles yet: run the protocol first.')
        examples, counts = kindExamples(parts, self.protocol._readRunLog().get('kinds'))
        if not examples:
            return _message(self, 'The particles carry no %s (simulated before realistic '
                                  'picks).' % cts.TRUE_KIND)
        items = [p for kind in examples for p in examples[kind]]
        labels = ['%s\nparticle %d' % (p.getAttributeValue(cts.TRUE_KIND), p.getObjId())
                  for p in items]
        title = '%s: particles of each kind (%s)' % (
            self.protocol.getRunName(),
            ', '.join('%s %d' % (k, counts[k]) for k in examples))
        return [figureView(plots.classGalleryFigure, readImages(items), [0] * len(items),
                           order=range(len(items)), labels=labels, title=title,
                           ncols=EXAMPLES_PER_KIND, windowTitle='simcryo particle kinds')]

    def _showReferences(self, paramName=None):
        refs = getattr(self.protocol, 'outputReferences', None)
        if refs is None:
            return _message(self, 'No true projections yet: run the protocol first.')
        images = readImages(item.clone() for item in refs.iterItems(orderBy='id'))
        sizes = Counter(p.getAttributeValue(cts.TRUE_CLASS)
                        for p in self.protocol.outputParticles.iterItems())
        labels = ['view %d\n%d particles' % (k, sizes.get(k, 0))
                  for k in range(1, len(images) + 1)]
        junk = ('; %d junk particles (true class 0) not shown' % sizes[0]
                if sizes.get(0) else '')
        return [figureView(plots.classGalleryFigure, images, [0] * len(images),
                           order=range(len(images)), labels=labels,
                           title='%s: true projection of each view class%s'
                                 % (self.protocol.getRunName(), junk),
                           windowTitle='simcryo true projections')]

    def _showParticles(self, paramName=None):
        return _outputSetViews(self, 'outputParticles')


class SimcryoDenoiseViewer(ProtocolViewer):
    """Training curves and particles of a denoising run."""
    _label = 'viewer simcryo denoising'
    _targets = [ProtSimcryoDenoise]
    _environments = [DESKTOP_TKINTER]

    def _defineParams(self, form):
        form.addSection(label='Visualization')
        form.addParam('displayCurves', params.LabelParam, label='Training curves')
        form.addParam('displayParticles', params.LabelParam,
                      label='Denoised particles in the Scipion viewer')

    def _getVisualizeDict(self):
        return {'displayCurves': self._showCurves, 'displayParticles': self._showParticles}

    def _showCurves(self, paramName=None):
        return _curvesViews(self, 'denoiser training')

    def _showParticles(self, paramName=None):
        return _outputSetViews(self, 'outputParticles')


# ---------------------------------------------------------------------- class selection
def rankedClasses(selectProt):
    """Every input class of a selection run, best score first: dicts with the input class
    id, rank, particles, score, the features (consistency None when not measured), kept,
    and the index of its average in the engine's class_averages_ranked.mrcs (1-based); []
    before a run."""
    scores = selectProt.getClassScores()
    if scores is None:
        return []
    idOf = {k: cid for cid, k in selectProt.classNumbers().items()}
    total = selectProt._readRunLog().get('particles_in', 0)
    rows = []
    for row in scores.rows:
        k = int(row['rlnClassNumber'])
        rows.append(dict(classId=idOf.get(k, k), rank=int(row['simcryoClassRank']),
                         particles=int(round(float(row['rlnClassDistribution']) * total)),
                         score=float(row['simcryoClassScore']),
                         contrast=float(row['simcryoContrast']),
                         centring=float(row['simcryoCentring']),
                         profile=float(row['simcryoProfile']),
                         size=float(row['simcryoSize']),
                         consistency=(float(row['simcryoConsistency'])
                                      if 'simcryoConsistency' in row else None),
                         kept=bool(int(row['simcryoSelected'])),
                         image=int(row['rlnReferenceImage'].split('@')[0])))
    return rows


def _rankedAverages(selectProt, rows):
    import mrcfile
    with mrcfile.open(selectProt._getFileName('out_ranked'), permissive=True) as m:
        data = np.asarray(m.data, dtype=np.float32)
    data = data[None] if data.ndim == 2 else data
    return [data[r['image'] - 1] for r in rows]


def _keptText(kept):
    return 'kept' if kept else 'rejected'


class SimcryoSelectViewer(ProtocolViewer):
    """Every class of "rank and select 2D classes", ranked, with its score and kept /
    rejected; the selected classes in the Scipion viewer."""
    _label = 'viewer simcryo class selection'
    _targets = [ProtSimcryoSelectClasses]
    _environments = [DESKTOP_TKINTER]

    def _defineParams(self, form):
        form.addSection(label='Visualization')
        form.addParam('displayRanked', params.LabelParam,
                      label='Every class ranked by score (kept / rejected)')
        form.addParam('displayScores', params.LabelParam,
                      label='Class scores against the threshold')
        form.addParam('displayTable', params.LabelParam,
                      label='Score and features of every class (table)')
        form.addParam('displayClasses', params.LabelParam,
                      label='Selected classes in the Scipion viewer')

    def _getVisualizeDict(self):
        return {'displayRanked': self._showRanked, 'displayScores': self._showScores,
                'displayTable': self._showTable, 'displayClasses': self._showClasses}

    def _rows(self):
        return rankedClasses(self.protocol)

    def _title(self, what, rows):
        kept = sum(r['kept'] for r in rows)
        return '%s: %s (threshold %g: %d kept, %d rejected)' % (
            self.protocol.getRunName(), what, self.protocol.getRunThreshold(), kept,
            len(rows) - kept)

    def _showRanked(self, paramName=None):
        rows = self._rows()
        if not rows:
            return _message(self, 'No class scores yet: run the protocol first.')
        labels = ['#%d class %d\nscore %.2f %s\n%d particles'
                  % (r['rank'], r['classId'], r['score'], _keptText(r['kept']),
                     r['particles']) for r in rows]
        colours = [plots.KEPT_COLOUR if r['kept'] else plots.REJECTED_COLOUR for r in rows]
        return [figureView(plots.classGalleryFigure, _rankedAverages(self.protocol, rows),
                           [r['particles'] for r in rows], order=range(len(rows)),
                           labels=labels, labelColors=colours,
                           title=self._title('classes ranked by score, best first', rows),
                           windowTitle='simcryo class ranking')]

    def _showScores(self, paramName=None):
        rows = self._rows()
        if not rows:
            return _message(self, 'No class scores yet: run the protocol first.')
        return [figureView(plots.classScoresFigure, [r['classId'] for r in rows],
                           [r['score'] for r in rows], [r['kept'] for r in rows],
                           self.protocol.getRunThreshold(),
                           title=self._title('class scores', rows),
                           windowTitle='simcryo class scores')]

    def _showTable(self, paramName=None):
        rows = self._rows()
        if not rows:
            return _message(self, 'No class scores yet: run the protocol first.')
        text = [(r['rank'], r['classId'], r['particles'], '%.3f' % r['score'],
                 '%.3f' % r['contrast'], '%.3f' % r['centring'], '%.3f' % r['profile'],
                 '%.2f' % r['size'],
                 '-' if r['consistency'] is None else '%.3f' % r['consistency'],
                 _keptText(r['kept'])) for r in rows]
        return [MetricsTableView(text, self._title('class scores', rows), header=(
            'rank', 'class', 'particles', 'score', 'contrast', 'centring', 'profile',
            'size (x N/K)', 'consistency', 'selection'))]

    def _showClasses(self, paramName=None):
        classes = getattr(self.protocol, 'outputClasses', None)
        if classes is None:
            return _message(self, 'No selected classes: run the protocol, or lower the '
                                  'threshold if no class reached it.')
        return [setView(self, classes, {SORT_BY: '%s desc' % SCORE_ATTR})]
