import os
from enum import Enum

import pyworkflow.protocol.params as params
from pyworkflow.protocol.constants import LEVEL_ADVANCED
from pwem.objects import SetOfAverages, SetOfClasses2D, SetOfParticles
from pwem.protocols import ProtAlign2D

from .. import convert
from .protocol_base import ProtSimcryoBase
from ..engine_config import engineDefault, engineHelp
from .protocol_classify2d import fillAverages, fillClasses, fillParticles


METHODS = ['rings', 'magnitude']


class AlignAverageOutputs(Enum):
    outputClasses = SetOfClasses2D
    outputParticles = SetOfParticles
    outputAverages = SetOfAverages


class ProtSimcryoAlignAverage(ProtSimcryoBase, ProtAlign2D):
    """Align the particles inside each class in Fourier space and build new class averages.

    Works on any SetOfClasses2D (this plugin, RELION, CL2D, ...). For every class, the in-plane
    rotation of each particle against the class reference comes from the rotational
    correlation of real-space polar rings (default; or the paper's polar Fourier magnitudes);
    the best ring peaks and the half turn of the best are each tested with a translation
    search (cross-correlation), and after convergence one pass tests a coarse grid of angles,
    so that no particle stays turned the wrong way. The reference is re-averaged and
    re-centred and the procedure repeated. Averages are weighted by the class probability of
    each particle (CTF-aware Wiener averages when the particles have CTF).

    Optionally (re-assignment) each particle may move to the class average it matches best
    after alignment.

    Output: refined classes (representatives = new averages), the particles, every one
    with a 2D alignment Transform (ALIGN_2D), and the averages as a SetOfAverages.
    """
    _label = 'align and average classes'
    _possibleOutputs = AlignAverageOutputs
    _engineCommand = 'align'

    def _defineParams(self, form):
        form.addSection(label='Input')
        form.addParam('inputClasses', params.PointerParam, pointerClass='SetOfClasses2D',
                      important=True, label='Input classes',
                      help='2D classes from any classifier; their particles are aligned.')
        form.addParam('useInputAlignment', params.BooleanParam, default=False,
                      expertLevel=LEVEL_ADVANCED, label='Start from the input alignment?',
                      help='Pass the classes\' current 2D alignment to the engine as a '
                           'starting point. No: align from scratch.')

        form.addSection(label='Alignment')
        self._addEngineParam(form, 'iterations', params.IntParam, 'iterations',
                             'Iterations', validators=[params.GE(1)])
        self._defineMaskDiameterParam(
            form, use='soft mask of the references and the outermost ring of the rotation '
                      'search (at most the box)',
            auto='estimated from the particles: 1.1 x their diameter measured from the excess '
                 'variance over the noise, at most the box minus 4 px')
        form.addParam('method', params.EnumParam, choices=METHODS,
                      default=METHODS.index(engineDefault('align', 'method')),
                      expertLevel=LEVEL_ADVANCED, label='Rotation search',
                      help=engineHelp('align', 'method') + '.\nEngine flag: --method.')
        self._addEngineParam(form, 'reassign', params.BooleanParam, 'reassign',
                             'Re-assign particles?')
        self._addEngineParam(form, 'candidates', params.IntParam, 'candidates',
                             'Rotation candidates per particle', expertLevel=LEVEL_ADVANCED,
                             validators=[params.GE(1)])
        self._addEngineParam(form, 'globalStep', params.FloatParam, 'global_step',
                             'Global check step (deg)', expertLevel=LEVEL_ADVANCED,
                             validators=[params.Range(0, 90)])
        self._defineComputeParams(form)

    # ------------------------------------------------------------------ steps
    def _convertInput(self):
        # Already phase-flipped particles keep their CTF: the optics table says
        # _rlnCtfDataArePhaseFlipped 1, and the engine then uses |CTF| for them.
        convert.writeClassesStar(self.inputClasses.get(), self._getFileName('input_star'),
                                 writeAlignment=self.useInputAlignment.get())

    def _getEngineArgs(self):
        args = ['--i', os.path.abspath(self._getFileName('input_star')),
                '--o', os.path.abspath(self._getFileName('output_dir'))]
        args += self._engineParamArgs() + ['--method', METHODS[self.method.get()]]
        args += self._maskDiameterArgs()
        return self._formatArgs(args + self._getComputeArgs())

    def _inputParticles(self):
        classes = self.inputClasses.get()
        return classes.getImagesPointer() if hasattr(classes, 'getImagesPointer') \
            else classes.getImages()

    def createOutputStep(self):
        inputSet = self.inputClasses.get().getImages()
        result = convert.EngineResult(self._getFileName('out_particles'),
                                      apix=inputSet.getSamplingRate())
        averages = convert.projectRelative(self._getFileName('out_averages'))
        classes = self._createSetOfClasses2D(self._inputParticles())
        fillClasses(classes, result, averages, inputSet.getSamplingRate())
        parts = self._createSetOfParticles()
        fillParticles(parts, inputSet, result)
        avgs = self._createSetOfAverages()
        fillAverages(avgs, classes)
        self._defineOutputs(**{AlignAverageOutputs.outputClasses.name: classes,
                               AlignAverageOutputs.outputParticles.name: parts,
                               AlignAverageOutputs.outputAverages.name: avgs})
        for out in (classes, parts, avgs):
            self._defineSourceRelation(self.inputClasses, out)

    # ------------------------------------------------------------------ info
    def _validate(self):
        errors = []
        classes = self.inputClasses.get()
        if classes is not None and not any(c.getSize() for c in classes):
            errors.append('The input classes are empty.')
        if classes is not None:
            errors += self._validateMaskDiameter(classes.getImages())
            errors += self._validateAcquisition(classes.getImages())
        return errors

    def _warnings(self):
        warnings = []
        classes = self.inputClasses.get()
        if classes is not None and any(0 < c.getSize() < 3 for c in classes):
            warnings.append('Some classes have fewer than 3 particles: their averages stay '
                            'noisy.')
        return warnings

    def _summary(self):
        summary = ['Input: %s.' % self.getObjectTag('inputClasses')]
        if self.reassign:
            summary.append('Particles re-assigned to their best-matching average.')
        if self.hasAttribute('outputClasses'):
            summary.append('Output: %s (%d classes), %s with 2D alignment.'
                           % (self.getObjectTag('outputClasses'),
                              self.outputClasses.getSize(),
                              self.getObjectTag('outputParticles')))
            summary += self._maskSummary()
            runLog = self._readRunLog()
            moved = runLog.get('reassigned', runLog.get('moved'))
            if isinstance(moved, (int, float)):
                summary.append('%d particles changed class.' % moved)
        return summary

    def _methods(self):
        if not self.hasAttribute('outputClasses'):
            return []
        search = ('polar Fourier-magnitude rotational correlation (SimCryoCluster; the '
                  '180-degree ambiguity resolved by a translation search)'
                  if self.method.get() == 1 else
                  'rotational correlation of real-space polar rings (FFT along the angle)')
        runLog = self._readRunLog()
        cfg = runLog.get('config', {})
        if cfg.get('candidates', 1) > 1:
            search += (', %d rotation candidates per particle each tested by a translation '
                       'search' % cfg['candidates'])
        if cfg.get('global_step', 0) > 0:
            search += (', and a final check of every %g degrees' % cfg['global_step'])
        mask = self._maskText()
        return ['The particles of %s were aligned inside their classes by %s and '
                'cross-correlation shifts, inside a circular mask%s, and averaged with '
                'class-probability weights%s, with the %s%s.'
                % (self.getObjectTag('inputClasses'), search,
                   ' of %s' % mask if mask else '',
                   ' (CTF-corrected Wiener averages)' if runLog.get('ctf_used') else '',
                   self._methodsIntro(),
                   '; particles were re-assigned to their best-matching average'
                   if self.reassign else '')]

    def _citations(self):
        # the polar Fourier-magnitude search is the paper's; the ring search is not
        return ['Simcryocluster'] if METHODS[self.method.get()] == 'magnitude' else []
