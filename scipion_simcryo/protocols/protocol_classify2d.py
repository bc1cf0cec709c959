import os
from enum import Enum

import pyworkflow.protocol.params as params
from pyworkflow.object import Float
from pyworkflow.protocol.constants import LEVEL_ADVANCED
from pwem.objects import SetOfClasses2D, SetOfParticles
from pwem.protocols import ProtClassify2D

from .. import constants as cts
from .. import convert
from .protocol_base import ProtSimcryoBase


class Classify2DOutputs(Enum):
    outputClasses = SetOfClasses2D
    outputParticles = SetOfParticles


class ProtSimcryoClassify2D(ProtSimcryoBase, ProtClassify2D):
    """Unsupervised 2D classification by contrastive learning (SimCryoCluster).

    1. Preprocessing: background normalisation outside a circular mask, optional CTF phase
       flip and histogram equalisation, downsampling to a working box.
    2. Features: a ResNet-18 encoder trained with a SimCLR contrastive loss on augmented views
       of each particle (full-circle in-plane rotations, shifts, crops, contrast and noise
       jitter), so that two views of one particle map close together.
    3. Neighbours: the k most similar particles of each particle in feature space.
    4. Clustering: SCAN heads (neighbour consistency + entropy), then self-labelling on the
       confident particles.

    Output: a SetOfClasses2D whose representatives are the class averages (aligned inside each
    class), every particle with its class, its in-plane alignment (2D Transform) and the
    probability of its class (_simcryoClassProb, in [0, 1]); the same particles as
    outputParticles. Use "simcryo - align and average classes" to refine the alignment and
    averages, and "simcryo - evaluate 2D classification" to score simulated data.

    An interrupted run continues from its last checkpoint when the protocol is continued.
    """
    _label = '2D classification (contrastive)'
    _possibleOutputs = Classify2DOutputs
    _engineCommand = 'classify'

    # ------------------------------------------------------------------ form
    def _defineParams(self, form):
        form.addSection(label='Input')
        form.addParam('inputParticles', params.PointerParam, pointerClass='SetOfParticles',
                      important=True, label='Input particles')
        form.addParam('numberOfClasses', params.IntParam, default=10,
                      validators=[params.GE(2)], label='Number of classes (K)',
                      help='Number of 2D classes. More classes than distinct views is fine: '
                           'SCAN leaves unneeded classes small.')

        form.addSection(label='Preprocessing')
        self._defineMaskDiameterParam(
            form, use='the background outside it normalises the images and the images are '
                      'cropped around it (at most 0.9 x the box)',
            auto='estimated from the particles (radial variance of the images)')
        form.addParam('phaseFlip', params.BooleanParam, default=True,
                      label='CTF phase flip?',
                      help='Phase-flip the images with their CTF before learning features '
                           '(only when the particles have CTF).')
        form.addParam('equalize', params.BooleanParam, default=False,
                      expertLevel=LEVEL_ADVANCED, label='Histogram equalisation?')
        form.addParam('workingBox', params.IntParam, default=0, expertLevel=LEVEL_ADVANCED,
                      label='Working box (px)',
                      help='Images are cropped and Fourier-downsampled to this box before '
                           'learning (the low frequencies carry the view information). '
                           '0: engine default (32 px).')

        form.addSection(label='Features')
        form.addParam('pretextEpochs', params.IntParam, default=0,
                      label='Contrastive epochs',
                      help='Epochs of SimCLR training. 0: engine default.')
        form.addParam('batchSize', params.IntParam, default=0, expertLevel=LEVEL_ADVANCED,
                      label='Batch size', help='Contrastive batch (pairs). 0: engine default.')
        form.addParam('networkWidth', params.IntParam, default=0, expertLevel=LEVEL_ADVANCED,
                      label='ResNet-18 base width',
                      help='64 as in the paper (GPU); 16 is the CPU preset. 0: engine '
                           'default.')
        form.addParam('allowMirrors', params.BooleanParam, default=False,
                      expertLevel=LEVEL_ADVANCED, label='Merge mirror views?',
                      help='Add horizontal flips to the augmentations: a view and its '
                           'mirror fall in the same class. No: mirrors are different views.')

        form.addSection(label='Clustering')
        form.addParam('numberOfNeighbours', params.IntParam, default=0,
                      label='Neighbours per particle',
                      help='k of the k-nearest-neighbour mining. 0: engine default.')
        form.addParam('scanEpochs', params.IntParam, default=0, expertLevel=LEVEL_ADVANCED,
                      label='SCAN epochs', help='0: engine default.')
        form.addParam('selfLabelEpochs', params.IntParam, default=-1,
                      expertLevel=LEVEL_ADVANCED, label='Self-labelling epochs',
                      help='0 disables self-labelling. -1: engine default.')
        form.addParam('selfLabelThreshold', params.FloatParam, default=0.0,
                      expertLevel=LEVEL_ADVANCED, label='Self-labelling threshold',
                      help='Class probability above which a particle is used as a pseudo-'
                           'label. 0: engine default (0.95 in the paper).')
        self._defineComputeParams(form)

    # ------------------------------------------------------------------ steps
    def convertInputStep(self):
        os.makedirs(os.path.dirname(self._getFileName('input_star')), exist_ok=True)
        parts = self.inputParticles.get()
        stack = (self._getFileName('input_stack')
                 if convert.needsStackConversion(parts) else None)
        convert.ParticleStarWriter(parts, stackFile=stack).write(
            self._getFileName('input_star'))

    def _getEngineArgs(self):
        args = ['--i', os.path.abspath(self._getFileName('input_star')),
                '--o', os.path.abspath(self._getFileName('output_dir')),
                '--K', self.numberOfClasses.get()]
        parts = self.inputParticles.get()
        args += self._maskDiameterArgs()
        optional = [('--working-box', self.workingBox.get(), 0),
                    ('--pretext-epochs', self.pretextEpochs.get(), 0),
                    ('--batch-size', self.batchSize.get(), 0),
                    ('--width', self.networkWidth.get(), 0),
                    ('--knn', self.numberOfNeighbours.get(), 0),
                    ('--scan-epochs', self.scanEpochs.get(), 0),
                    ('--selflabel-epochs', self.selfLabelEpochs.get(), -1),
                    ('--confidence', self.selfLabelThreshold.get(), 0.0)]
        for flag, value, unset in optional:
            if value != unset:
                args += [flag, value]
        args += ['--phase-flip' if (self.phaseFlip and parts.hasCTF()) else '--no-phase-flip',
                 '--equalize' if self.equalize else '--no-equalize',
                 '--mirror' if self.allowMirrors else '--no-mirror']
        return self._formatArgs(args + self._getComputeArgs())

    def runStep(self, argsText):
        os.makedirs(self._getFileName('output_dir'), exist_ok=True)
        if self._hasCheckpoint():
            self.info('Checkpoint found: continuing the interrupted run.')
            argsText += ' --resume'
        self.runEngine(argsText)

    def createOutputStep(self):
        inputSet = self.inputParticles.get()
        result = convert.EngineResult(self._getFileName('out_particles'),
                                      apix=inputSet.getSamplingRate())
        averages = convert.projectRelative(self._getFileName('out_averages'))
        classes = self._createSetOfClasses2D(self.inputParticles)
        fillClasses(classes, result, averages, inputSet.getSamplingRate())
        parts = self._createSetOfParticles()
        fillParticles(parts, inputSet, result)
        self._defineOutputs(**{Classify2DOutputs.outputClasses.name: classes,
                               Classify2DOutputs.outputParticles.name: parts})
        self._defineSourceRelation(self.inputParticles, classes)
        self._defineSourceRelation(self.inputParticles, parts)

    # ------------------------------------------------------------------ info
    def _validate(self):
        errors = []
        parts = self.inputParticles.get()
        if parts is None:
            return errors
        n, K = parts.getSize(), self.numberOfClasses.get()
        if K > n:
            errors.append('%d classes for %d particles: K must not exceed the number of '
                          'particles.' % (K, n))
        box = parts.getXDim() or 0
        if box and box < 16:
            errors.append('Box of %d px is too small (at least 16 px).' % box)
        errors += self._validateMaskDiameter(parts)
        return errors

    def _warnings(self):
        warnings = []
        parts = self.inputParticles.get()
        if parts is None:
            return warnings
        if parts.getSize() < 20 * self.numberOfClasses.get():
            warnings.append('Fewer than 20 particles per class on average: contrastive '
                            'features and class averages will be noisy.')
        diameter, box = self.maskDiameterA.get(), parts.getXDim() or 0
        if diameter and box and diameter <= box * parts.getSamplingRate() < diameter / 0.9:
            warnings.append('Mask diameter %d Å is wider than 0.9 x the box: the engine '
                            'limits it to %.0f Å.' % (diameter,
                                                      0.9 * box * parts.getSamplingRate()))
        if self.phaseFlip and not parts.hasCTF():
            warnings.append('The particles have no CTF: phase flipping is skipped.')
        if not self._useGpu() and parts.getSize() > 20000:
            warnings.append('%d particles on CPU: training may take hours; use a GPU.'
                            % parts.getSize())
        return warnings

    def _summary(self):
        summary = ['Input: %s, %d classes requested.' % (self.getObjectTag('inputParticles'),
                                                         self.numberOfClasses.get())]
        if self.hasAttribute('outputClasses'):
            summary.append('Output: %s with %d non-empty classes.'
                           % (self.getObjectTag('outputClasses'),
                              self.outputClasses.getSize()))
            summary += self._maskSummary()
            runLog = self._readRunLog()
            for key, label in [('metrics', 'metrics vs true labels (engine)')]:
                if isinstance(runLog.get(key), dict):
                    values = ', '.join('%s %.3f' % (k, v) for k, v in runLog[key].items()
                                       if isinstance(v, (int, float)))
                    if values:
                        summary.append('%s: %s' % (label, values))
        return summary

    def _methods(self):
        if not self.hasAttribute('outputClasses'):
            return []
        mask = self._maskText()
        return ['%s were classified into %d classes by contrastive learning (SimCLR with a '
                'ResNet-18 encoder) followed by SCAN clustering and self-labelling, as in '
                'SimCryoCluster, with the %s%s.'
                % (self.getObjectTag('inputParticles'), self.outputClasses.getSize(),
                   self._methodsIntro(),
                   '; the images were normalised outside a circular mask of %s' % mask
                   if mask else '')]

    def _citations(self):
        return ['Simcryocluster', 'Chen2020SimCLR', 'VanGansbeke2020SCAN', 'He2016ResNet']


# ---------------------------------------------------------------------- shared with align
def _updateItemFromResult(item, result):
    """Class, 2D alignment and class probability of the engine row of this particle. Every
    item gets the same attributes (the first item defines the sqlite schema)."""
    r = result.rowOf(item.getObjId())
    if r is None:
        item._appendItem = False
        return
    if result.classes is not None:
        item.setClassId(int(result.classes[r]))
    if result.hasPose():
        item.setTransform(result.transform(r))
    prob = float(result.prob[r]) if result.prob is not None else 1.0
    setattr(item, cts.CLASS_PROB, Float(prob))


def fillClasses(classes, result, averagesFile, apix):
    """SetOfClasses2D from an engine result: class k's representative is image k of the
    averages stack; classes and their particles are flagged ALIGN_2D."""
    meanProb = result.meanProbPerClass()

    def updateItem(item, row):
        _updateItemFromResult(item, result)

    def updateClass(cls):
        k = cls.getObjId()
        cls.setAlignment2D()
        rep = cls.getRepresentative()
        rep.setLocation(k, averagesFile)
        rep.setSamplingRate(apix)
        setattr(cls, cts.CLASS_MEAN_PROB, Float(meanProb.get(k, 0.0)))

    classes.classifyItems(updateItemCallback=updateItem, updateClassCallback=updateClass,
                          itemDataIterator=None)


def fillParticles(parts, inputSet, result):
    parts.copyInfo(inputSet)
    if result.hasPose():
        parts.setAlignment2D()

    def update(item, row):
        _updateItemFromResult(item, result)

    parts.copyItems(inputSet, updateItemCallback=update)
