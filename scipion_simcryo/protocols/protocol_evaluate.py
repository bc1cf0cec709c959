import json
import os

import pyworkflow.protocol.params as params
from pyworkflow.object import String

from .. import constants as cts
from .. import convert
from ..metrics import flattenMetrics, formatValue, metricRows  # noqa: F401 (re-export)
from .protocol_base import ProtSimcryoBase

class ProtSimcryoEvaluate(ProtSimcryoBase):
    """Score a 2D classification from any plugin (this one, RELION, CL2D, ...).

    Against the true labels of simulated particles (the _simcryoTrueClass extra written by
    "simcryo - simulate particles", carried by the classified particles or given as a separate
    set): ACC with Kuhn-Munkres matching of classes to labels, NMI, ARI, FMI, per-class
    precision/recall; with the true projections, the FRC between each class average and its
    matched true projection (resolution at FRC 0.5 and 0.143 in Å); with true poses, the
    in-plane angle and shift errors of the aligned particles.

    Or against another classification of the same particles: the agreement scores (ACC, NMI,
    ARI, FMI) between the two partitions, on the particles both contain.

    The metrics table is in the summary and in the viewer (report.json in extra/output).
    """
    _label = 'evaluate 2D classification'
    _engineCommand = 'evaluate'
    _usesGpu = False
    _defaultThreads = 1
    _hasSeed = False

    def _defineParams(self, form):
        form.addSection(label='Input')
        form.addParam('inputClasses', params.PointerParam, pointerClass='SetOfClasses2D',
                      important=True, label='Classification to score',
                      help='A SetOfClasses2D from any 2D classification protocol.')
        form.addParam('evaluateAgainst', params.EnumParam, default=cts.EVAL_TRUTH,
                      choices=cts.EVAL_CHOICES, label='Compare with')
        form.addParam('truthParticles', params.PointerParam, pointerClass='SetOfParticles',
                      allowsNull=True, condition='evaluateAgainst == %d' % cts.EVAL_TRUTH,
                      label='Particles with true labels (optional)',
                      help='Needed only when the classified particles do not carry the true '
                           'labels themselves; matched by particle id.')
        form.addParam('trueReferences', params.PointerParam, pointerClass='SetOfAverages',
                      allowsNull=True, condition='evaluateAgainst == %d' % cts.EVAL_TRUTH,
                      label='True projections (optional)',
                      help='One clean projection per true class (class k = item k), e.g. the '
                           'references output of the simulate protocol: enables the FRC of '
                           'the class averages.')
        form.addParam('otherClasses', params.PointerParam, pointerClass='SetOfClasses2D',
                      allowsNull=True, condition='evaluateAgainst == %d' % cts.EVAL_OTHER,
                      label='Other classification')
        self._defineComputeParams(form)

    # ------------------------------------------------------------------ steps
    def _convertInput(self):
        classes = self.inputClasses.get()
        if self.evaluateAgainst == cts.EVAL_OTHER:
            truth = convert.truthFromClasses(self.otherClasses.get())
        else:
            truth = convert.truthFromParticles(self.truthParticles.get() or
                                               classes.getImages())
        # Both files hold the same particles in the same order: those in both sets.
        writer, numbering = convert.writeClassesStar(classes, self._getFileName('input_star'),
                                                     keep=set(truth))
        convert.writeTruthStar(self._getFileName('truth_star'), writer.names, writer.ids,
                               truth)
        self.info('Scoring %d particles in %d classes.' % (len(writer.ids), len(numbering)))
        if self._useReferences():
            convert.writeClassAverages(classes, numbering, self._getFileName('input_averages'))
            convert.writeImagesStack(self.trueReferences.get(),
                                     self._getFileName('input_references'))

    def _useReferences(self):
        if self.evaluateAgainst != cts.EVAL_TRUTH or self.trueReferences.get() is None:
            return False
        rep = self.inputClasses.get().getFirstItem().getRepresentative()
        return rep is not None and bool(rep.getFileName())

    def _getEngineArgs(self):
        args = ['--i', os.path.abspath(self._getFileName('input_star')),
                '--truth', os.path.abspath(self._getFileName('truth_star')),
                '--truth-label', 'true',
                '--o', os.path.abspath(self._getFileName('report'))]
        if self._useReferences():
            args += ['--references', os.path.abspath(self._getFileName('input_references'))]
            args += ['--averages', os.path.abspath(self._getFileName('input_averages'))]
        return self._formatArgs(args + self._getComputeArgs())

    def createOutputStep(self):
        with open(self._getFileName('report')) as f:
            report = json.load(f)
        self.metricsJson = String(json.dumps(report))
        self._store(self.metricsJson)

    # ------------------------------------------------------------------ results
    def getReport(self):
        """The engine report (dict), or None before the run finished."""
        text = getattr(self, 'metricsJson', None)
        if text is not None and text.get():
            return json.loads(text.get())
        fn = self._getFileName('report')
        if os.path.exists(fn):
            with open(fn) as f:
                return json.load(f)
        return None

    def getMetricsTable(self):
        """[(label, value)] of the main metrics present in the report."""
        report = self.getReport()
        if report is None:
            return []
        return metricRows(report)

    def getPerClassTable(self):
        """[(true class, matched predicted class, precision, recall, support, FRC 0.5 Å,
        FRC 0.143 Å)] from the report (resolutions None without true projections)."""
        report = self.getReport() or {}
        frc = {c.get('true_class'): c for c in (report.get('frc') or {}).get('classes', [])}
        rows = []
        for c in report.get('per_class') or []:
            f = frc.get(c.get('true_class'), {})
            rows.append((c.get('true_class'), c.get('predicted_class'), c.get('precision'),
                         c.get('recall'), c.get('support'), f.get('res_frc05_A'),
                         f.get('res_frc0143_A')))
        return rows

    # ------------------------------------------------------------------ info
    def _validate(self):
        errors = []
        classes = self.inputClasses.get()
        if classes is not None and classes.getSize() < 1:
            errors.append('The classification has no classes.')
        if self.evaluateAgainst == cts.EVAL_OTHER:
            if self.otherClasses.get() is None:
                errors.append('Choose the other classification to compare with.')
        elif classes is not None:
            source = self.truthParticles.get() or classes.getImages()
            first = source.getFirstItem() if source is not None else None
            if first is None or not first.hasAttribute(cts.TRUE_CLASS):
                errors.append('The particles carry no true labels (%s). Use particles from '
                              '"simcryo - simulate particles", give a set with true labels, or '
                              'compare with another classification.' % cts.TRUE_CLASS)
        return errors

    def _summary(self):
        rows = self.getMetricsTable()
        if not rows:
            return ['Metrics not computed yet.']
        against = ('true labels' if self.evaluateAgainst == cts.EVAL_TRUTH
                   else self.getObjectTag('otherClasses'))
        lines = ['%s scored against %s:' % (self.getObjectTag('inputClasses'), against)]
        lines += ['  %s: %s' % (label, formatValue(value, label)) for label, value in rows]
        return lines

    def _methods(self):
        rows = self.getMetricsTable()
        if not rows:
            return []
        return ['The 2D classification %s was scored with the %s: %s.'
                % (self.getObjectTag('inputClasses'), self._methodsIntro(),
                   ', '.join('%s %s' % (label, formatValue(value, label))
                             for label, value in rows[:4]))]
