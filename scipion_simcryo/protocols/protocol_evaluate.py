import json
import os

import pyworkflow.protocol.params as params
from pyworkflow.object import String

from .. import constants as cts
from .. import convert
from ..convert.truth import selectedClassIds, writeSelectionStar
from ..metrics import (cleaningRows, flattenMetrics, formatValue,  # noqa: F401 (re-export)
                       metricRows)
from .protocol_base import ProtSimcryoBase

class ProtSimcryoEvaluate(ProtSimcryoBase):
    """Score a 2D classification from any plugin (this one, RELION, CL2D, ...).

    Against the true labels of simulated particles (the _simcryoTrueClass extra written by
    "simcryo - simulate particles", carried by the classified particles or given as a separate
    set): ACC with Kuhn-Munkres matching of classes to labels, NMI, ARI, FMI, per-class
    precision/recall; with the true projections, the FRC between each class average and its
    matched true projection (resolution at FRC 0.5 and 0.143 in Å); with true poses, the
    in-plane angle and shift errors of the aligned particles.

    Junk cleaning and continuous views (particles that carry _simcryoTrueKind, from a
    realistic simulation): the oracle selection keeps the classes with less than half junk
    and reports good-particle recall, contamination (junk share of the kept particles),
    junk rejected, and the median view spread in a kept class beside its floor (spherical
    k-means of the true views into as many classes). With a class selection (e.g. the output
    of "rank and select 2D classes", or any subset of the scored classes) the same figures
    for it; with the true volume, the class-average fidelity (0 = what white noise reaches,
    1 = a clean projection) of every class, size-weighted over the kept ones.

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
        form.addParam('trueVolume', params.PointerParam, pointerClass='Volume',
                      allowsNull=True, condition='evaluateAgainst == %d' % cts.EVAL_TRUTH,
                      label='True volume (optional)',
                      help='The map the particles were simulated from (e.g. imported from '
                           'the simulate protocol\'s extra/output/volume.mrc): enables the '
                           'class-average fidelity, the best normalised cross-correlation '
                           'of each average with a clean projection of the map, rescaled so '
                           'that 0 is what white noise reaches and 1 a clean projection. '
                           'Needs particles with junk truth (%s) and class averages.'
                           % cts.TRUE_KIND)
        form.addParam('selectedClasses', params.PointerParam, pointerClass='SetOfClasses2D',
                      allowsNull=True, condition='evaluateAgainst == %d' % cts.EVAL_TRUTH,
                      label='Selected classes (optional)',
                      help='A subset of the scored classes, e.g. the output of "simcryo - '
                           'rank and select 2D classes" or a subset made in the Scipion '
                           'viewer (matched by class id): its good-particle recall, '
                           'contamination and junk rejected are reported beside the oracle '
                           'selection\'s. Needs particles with junk truth (%s).'
                           % cts.TRUE_KIND)
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
        if self._useReferences() or self._useVolume():
            averages = self._getFileName('input_averages')
            if os.path.exists(averages):   # ImageHandler writes into an existing stack
                os.remove(averages)
            convert.writeClassAverages(classes, numbering, averages)
        if self._useReferences():
            convert.writeImagesStack(self.trueReferences.get(),
                                     self._getFileName('input_references'))
        if self._useSelection():
            writeSelectionStar(self._getFileName('input_selection'), numbering,
                               selectedClassIds(classes, self.selectedClasses.get()))

    def _createFilenameTemplates(self):
        ProtSimcryoBase._createFilenameTemplates(self)
        self._updateFilenamesDict({
            'input_selection': self._getExtraPath('input', 'selection.star')})

    def _useVolume(self):
        return (self.evaluateAgainst == cts.EVAL_TRUTH and self.trueVolume.get() is not None
                and self._hasRepresentatives())

    def _useSelection(self):
        return self.evaluateAgainst == cts.EVAL_TRUTH and self.selectedClasses.get() is not None

    def _useReferences(self):
        if self.evaluateAgainst != cts.EVAL_TRUTH or self.trueReferences.get() is None:
            return False
        return self._hasRepresentatives()

    def _hasRepresentatives(self):
        rep = self.inputClasses.get().getFirstItem().getRepresentative()
        return rep is not None and bool(rep.getFileName())

    def _getEngineArgs(self):
        args = ['--i', os.path.abspath(self._getFileName('input_star')),
                '--truth', os.path.abspath(self._getFileName('truth_star')),
                '--truth-label', 'true',
                '--o', os.path.abspath(self._getFileName('report'))]
        if self._useReferences():
            args += ['--references', os.path.abspath(self._getFileName('input_references'))]
        if self._useReferences() or self._useVolume():
            args += ['--averages', os.path.abspath(self._getFileName('input_averages'))]
        if self._useVolume():
            vol = self.trueVolume.get()
            args += ['--volume', self._getVolumeFile(vol, 'true_volume.mrc'),
                     '--volume-apix', vol.getSamplingRate()]
        if self._useSelection():
            args += ['--selection', os.path.abspath(self._getFileName('input_selection'))]
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

    def getCleaningTable(self):
        """[(figure, oracle value, selection value or None)] of the junk-cleaning report
        (particles with junk truth, some of them junk), [] otherwise."""
        return cleaningRows(self.getReport() or {})

    def getCleaningPerClass(self):
        """[(class id, particles, junk share, kept by the oracle, selected or None, fidelity
        or None)] of every scored class, largest first; [] without junk."""
        report = self.getReport() or {}
        if not cleaningRows(report):
            return []
        cleaning = report['cleaning']
        oracle = cleaning['oracle']
        idOf = {k: cid for cid, k in convert.classNumbering(self.inputClasses.get()).items()}
        sizes = {}
        for k, n in zip(report['confusion']['predicted_classes'],
                        map(sum, report['confusion']['counts'])):
            sizes[int(k)] = int(n)
        selected = cleaning.get('selected')
        fidelity = (cleaning.get('fidelity') or {}).get('classes') or {}
        rows = []
        for k, share in oracle.get('junk_share', {}).items():
            k = int(k)
            rows.append((idOf.get(k, k), sizes.get(k, 0), share,
                         k in oracle['kept_classes'],
                         None if selected is None else k in selected['kept_classes'],
                         (fidelity.get(str(k)) or {}).get('fidelity')))
        return sorted(rows, key=lambda r: (-r[1], r[0]))

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
            else:
                errors += self._validateCleaningInputs(first)
        return errors

    def _validateCleaningInputs(self, firstParticle):
        errors = []
        wanted = [what for what, obj in (('true volume', self.trueVolume.get()),
                                         ('class selection', self.selectedClasses.get()))
                  if obj is not None]
        if wanted and not firstParticle.hasAttribute(cts.TRUE_KIND):
            errors.append('The %s scores junk cleaning: it needs particles with junk truth '
                          '(%s, from a simulation with junk).' % (' and '.join(wanted),
                                                                  cts.TRUE_KIND))
        if self.trueVolume.get() is not None and not self._hasRepresentatives():
            errors.append('The fidelity needs the class averages: the classes have no '
                          'representatives.')
        if self.selectedClasses.get() is not None:
            ids = selectedClassIds(self.inputClasses.get(), self.selectedClasses.get())
            errors += ids if isinstance(ids, list) else []
        return errors

    def _summary(self):
        rows = self.getMetricsTable()
        if not rows:
            return ['Metrics not computed yet.']
        against = ('true labels' if self.evaluateAgainst == cts.EVAL_TRUTH
                   else self.getObjectTag('otherClasses'))
        lines = ['%s scored against %s:' % (self.getObjectTag('inputClasses'), against)]
        lines += ['  %s: %s' % (label, formatValue(value, label)) for label, value in rows]
        lines += self._cleaningSummary()
        return lines

    def _cleaningSummary(self):
        """What the cleaning figures were measured on (the report's own config)."""
        report = self.getReport() or {}
        if not cleaningRows(report):
            return []
        cleaning = report['cleaning']
        config = report.get('config') or {}
        kinds = ', '.join('%s %d' % kv for kv in sorted(cleaning['junk_kinds'].items()))
        lines = ['Particles per true kind: %s.' % kinds,
                 'Oracle selection: the %d classes with a junk share below %g.'
                 % (len(cleaning['oracle']['kept_classes']), config.get('oracle_max_junk', 0.5))]
        if 'selected' in cleaning:
            lines.append('Selection scored beside it: %s (%d classes).'
                         % (self.getObjectTag('selectedClasses'),
                            len(cleaning['selected']['kept_classes'])))
        if 'fidelity' in cleaning:
            lines.append('Fidelity against %s (0 = white noise, 1 = a clean projection).'
                         % self.getObjectTag('trueVolume'))
        return lines

    def _methods(self):
        rows = self.getMetricsTable()
        if not rows:
            return []
        return ['The 2D classification %s was scored with the %s: %s.'
                % (self.getObjectTag('inputClasses'), self._methodsIntro(),
                   ', '.join('%s %s' % (label, formatValue(value, label))
                             for label, value in rows[:4]))]
