import os
from enum import Enum

import pyworkflow.protocol.params as params
from pwem.objects import SetOfClasses2D, SetOfParticles
from pwem.protocols import ProtProcessParticles

from .. import convert
from .protocol_base import ProtSimcryoBase

SCORE_ATTR = '_simcryoClassScore'   # per-class extra of the output classes (0-1)
RANK_ATTR = '_simcryoClassRank'     # 1 = best of the input classes


class SelectClassesOutputs(Enum):
    outputClasses = SetOfClasses2D
    outputParticles = SetOfParticles


class ProtSimcryoSelectClasses(ProtSimcryoBase, ProtProcessParticles):
    """Rank the 2D classes of any classification and keep the good ones (junk out).

    Works on any SetOfClasses2D (this plugin, RELION, CryoSPARC, CL2D, ...): its
    representatives are the class averages. Each class gets a quality score in [0, 1], the
    product of saturating terms measured on its average and size: contrast (std inside
    the mask of the low-passed average, relative to the classes' size-weighted median),
    centring (how far the density's centre of mass lies from the box centre), profile
    likeness (the best correlation of the average's radial profile with that of another
    class the other terms trust) and class size (relative to N / K); when the classes have
    2D alignment, also member consistency (mean correlation of the particles with their
    average at their poses, CTF applied when known, relative to the classes' median), which
    catches classes of ice or aggregate blobs whose smeared average passes the other terms.
    Empty boxes average to flat images, off-centre picks to density at the mask edge, ice
    and aggregates to other radial profiles. Classes whose score is at least the threshold
    are selected.

    Outputs (as RELION's 2D class ranker): the selected classes (SetOfClasses2D, input
    representatives and particles, each class with its score _simcryoClassScore, its rank
    _simcryoClassRank and the features _simcryoContrast, _simcryoCentring,
    _simcryoProfile, _simcryoSize and, with alignment, _simcryoConsistency) and the
    particles of the selected classes (SetOfParticles).
    The viewer shows every class ranked, with its score and kept / rejected.
    """
    _label = 'rank and select 2D classes'
    _possibleOutputs = SelectClassesOutputs
    _engineCommand = 'select'
    _usesGpu = False
    _hasSeed = False            # deterministic: no --seed
    _defaultThreads = 1
    _maskAutoText = '0.8 x the box of the averages'

    # ------------------------------------------------------------------ form
    def _defineParams(self, form):
        form.addSection(label='Input')
        form.addParam('inputClasses', params.PointerParam, pointerClass='SetOfClasses2D',
                      important=True, label='Input 2D classes',
                      help='Classes from any 2D classifier; their representatives (the class '
                           'averages) are scored, their particles are split by class.')
        self._addEngineParam(form, 'threshold', params.FloatParam, 'threshold',
                             'Score threshold', validators=[params.Range(0.0, 1.0)],
                             help='The score is dimensionless. The viewer shows every '
                                  'class\'s score, so a second run with another threshold '
                                  'can be judged before it runs.')
        self._defineMaskDiameterParam(
            form, use='the disc in which the averages are judged (contrast, centring and '
                      'radial profile inside it, background outside)',
            auto='0.8 x the box of the averages')
        self._defineComputeParams(form)

    # ------------------------------------------------------------------ files
    def _createFilenameTemplates(self):
        ProtSimcryoBase._createFilenameTemplates(self)
        self._updateFilenamesDict({
            'out_scores': self._getExtraPath('output', 'class_scores.star'),
            'out_ranked': self._getExtraPath('output', 'class_averages_ranked.mrcs'),
        })

    # ------------------------------------------------------------------ steps
    def _insertAllSteps(self):
        self._initialize()
        # As the base's steps, but the engine step also takes the input ids: new classes
        # whose particles STAR is the same (e.g. "align and average classes" of the same
        # classes: new averages, no new assignment) must be scored again, and the engine
        # step, under a second, is cheap to repeat.
        inputIds, engineArgs = self._inputIds(), self._getEngineArgs()
        self._insertFunctionStep(self.convertInputStep, inputIds)
        self._insertFunctionStep(self.selectStep, inputIds, engineArgs)
        self._insertFunctionStep(self.outputStep, inputIds, engineArgs)

    def selectStep(self, inputIds, engineArgs):
        self.runStep(engineArgs)

    def _convertInput(self):
        classes = self.inputClasses.get()
        # The poses (when the classes have 2D alignment) and the CTF feed the member
        # consistency term; without an acquisition the CTF is left out rather than refused.
        particles = classes.getImages()
        withCtf = (particles.hasCTF() and
                   not convert.missingAcquisition(particles.getAcquisition()))
        _, numbering = convert.writeClassesStar(classes, self._getFileName('input_star'),
                                                writeAlignment=True, writeCtf=withCtf)
        averages = self._getFileName('input_averages')
        if os.path.exists(averages):   # ImageHandler writes into an existing stack
            os.remove(averages)
        convert.writeClassAverages(classes, numbering, averages)

    def _getEngineArgs(self):
        # --force: the step re-runs only when its arguments changed (Continue after a new
        # threshold or input), and its folder then holds the previous results.
        args = ['--i', os.path.abspath(self._getFileName('input_star')),
                '--averages', os.path.abspath(self._getFileName('input_averages')),
                '--o', os.path.abspath(self._getFileName('output_dir')), '--force']
        args += self._engineParamArgs() + self._maskDiameterArgs()
        return self._formatArgs(args + self._getComputeArgs())

    def classNumbers(self):
        """{input class id: engine class number} (classes numbered in id order, empty ones
        dropped, as convertInputStep wrote them)."""
        return convert.classNumbering(self.inputClasses.get())

    def getClassScores(self):
        """The engine's ClassScores, None before a run."""
        fn = self._getFileName('out_scores')
        return convert.ClassScores(fn) if os.path.exists(fn) else None

    def createOutputStep(self):
        scores = self.getClassScores()
        numbers = self.classNumbers()
        selected = set(scores.selected())
        if not selected:
            self.info('No class reached the score threshold %g: no output; lower the '
                      'threshold.' % self.threshold.get())
            self._deletePreviousOutputs()   # a Continue with a higher threshold
            return
        inputClasses = self.inputClasses.get()
        classes = self._createSetOfClasses2D(inputClasses.getImagesPointer())
        classes.copyInfo(inputClasses)
        classes.appendFromClasses(
            inputClasses,
            filterClassFunc=lambda cls: numbers.get(cls.getObjId()) in selected,
            updateClassCallback=lambda cls: scores.setExtras(cls, numbers[cls.getObjId()]))
        parts = self._createSetOfParticles()
        parts.copyInfo(inputClasses.getImages())
        parts.appendFromClasses(classes)
        self._defineOutputs(**{SelectClassesOutputs.outputClasses.name: classes,
                               SelectClassesOutputs.outputParticles.name: parts})
        for out in (classes, parts):
            self._defineSourceRelation(self.inputClasses, out)

    def _deletePreviousOutputs(self):
        for output in SelectClassesOutputs:
            if self.hasAttribute(output.name):
                self.deleteOutput(getattr(self, output.name))

    # ------------------------------------------------------------------ info
    def _validate(self):
        errors = []
        classes = self.inputClasses.get()
        if classes is None:
            return errors
        nonEmpty = [cls for cls in classes.iterItems() if cls.getSize()]
        if not nonEmpty:
            return ['The input classes are empty.']
        if not classes.hasRepresentatives() or any(
                cls.getRepresentative() is None or not cls.getRepresentative().getFileName()
                for cls in nonEmpty):
            errors.append('Every non-empty input class needs its representative (the class '
                          'average): the score is measured on it.')
        errors += self._validateMaskDiameter(classes.getImages())
        return errors

    def _warnings(self):
        classes = self.inputClasses.get()
        if classes is not None and sum(1 for cls in classes if cls.getSize()) < 3:
            return ['Fewer than 3 non-empty classes: contrast and profile are judged against '
                    'the median of the classes, which then says little.']
        return []

    def _selectionCounts(self):
        """(classes selected, classes, particles selected, particles, threshold) of the run
        (run.json), None before one."""
        runLog = self._readRunLog()
        if 'selected_classes' not in runLog:
            return None
        return (len(runLog['selected_classes']), runLog.get('n_classes', 0),
                runLog.get('particles_selected', 0), runLog.get('particles_in', 0),
                self.getRunThreshold())

    def getRunThreshold(self):
        """The threshold the engine ran with (run.json), the form's before a run."""
        config = self._readRunLog().get('config') or {}
        return config.get('threshold', self.threshold.get())

    def _summary(self):
        summary = ['Input: %s, score threshold %g.' % (self.getObjectTag('inputClasses'),
                                                       self.threshold.get())]
        counts = self._selectionCounts()
        if counts is None:
            return summary
        selected, total, kept, particles, threshold = counts
        summary.append('Selected %d of %d classes (score >= %g): %d of %d particles.'
                       % (selected, total, threshold, kept, particles))
        consistency = self._readRunLog().get('consistency')
        if consistency and consistency != 'used':
            summary.append('Member consistency not used: %s.' % consistency)
        if not selected:
            summary.append('No class reached the threshold: no output; lower it.')
        summary += self._maskSummary()
        return summary

    def _methods(self):
        counts = self._selectionCounts()
        if counts is None:
            return []
        selected, total, kept, particles, threshold = counts
        mask = self._maskText()
        used = self._readRunLog().get('consistency') == 'used'
        return ['The classes of %s were ranked by a class quality score (contrast, centring '
                'and radial-profile likeness of each class average%s, class size%s) and '
                'the %d of %d classes scoring at least %g kept (%d of %d particles), with '
                'the %s.' % (self.getObjectTag('inputClasses'),
                             ' inside a circular mask of %s' % mask if mask else '',
                             ', and the consistency of its particles with the average at '
                             'their poses' if used else '',
                             selected, total, threshold, kept, particles,
                             self._methodsIntro())]
