import os
from enum import Enum

import pyworkflow.protocol.params as params
from pyworkflow.object import Float
from pyworkflow.protocol.constants import LEVEL_ADVANCED
from pwem.objects import SetOfAverages, SetOfClasses2D, SetOfParticles
from pwem.constants import ALIGN_NONE
from pwem.protocols import ProtClassify2D

from .. import constants as cts
from .. import convert
from .protocol_base import ProtSimcryoBase
from ..metrics import formatValue, metricRows


class Classify2DOutputs(Enum):
    outputClasses = SetOfClasses2D
    outputParticles = SetOfParticles
    outputAverages = SetOfAverages


class ProtSimcryoClassify2D(ProtSimcryoBase, ProtClassify2D):
    """Unsupervised 2D classification by contrastive learning (after SimCryoCluster).

    1. Preprocessing: background normalisation outside a circular mask, optional CTF phase
       flip and histogram equalisation, downsampling to a working box.
    2. Features (default "invariant" encoder): each particle is centred on its density
       centroid and sampled on rings; the angular Fourier spectra of the rings are
       rotation invariant. Every particle is compared with every other (above a size
       limit: with candidates picked by the invariants) after the best in-plane rotation,
       which gives its rotational neighbours. An MLP on the invariants is trained
       contrastively (SimCLR's loss) with a particle and one of its rotational neighbours
       as the positive pair. The "resnet" encoder is the paper's: a ResNet-18 trained with
       SimCLR on augmented images, neighbours in its feature space.
    3. Clustering: SCAN heads (neighbour consistency + entropy), then self-labelling on the
       confident particles.
    4. EM refinement: the clusters seed a multi-reference refinement of every particle's
       class, in-plane rotation and shift against the class averages (expectation-
       maximisation under a Gaussian noise model); its posteriors are the final classes.
       run.json's "classes_from" says which stage gave them; with simulated truth its
       metrics give the neighbour purity and the accuracy before and after the EM.

    Output: a SetOfClasses2D whose representatives are the class averages (aligned inside each
    class), every particle with its class, its in-plane alignment (2D Transform) and the
    posterior probability of its class (_simcryoClassProb, in [0, 1]); the same particles as
    outputParticles; the averages as outputAverages. Use "simcryo - align and average
    classes" to refine the alignment and averages, and "simcryo - evaluate 2D
    classification" to score simulated data.

    Continue: an interrupted run resumes from its checkpoint; after a parameter change the
    engine reuses every stage before the first one the change affects (a new K reuses the
    preprocessing, the contrastive features and the neighbours). A changed input starts
    afresh.
    """
    _label = '2D classification (contrastive)'
    _possibleOutputs = Classify2DOutputs
    _engineCommand = 'classify'
    _resumable = True

    # ------------------------------------------------------------------ form
    def _defineParams(self, form):
        form.addSection(label='Input')
        form.addParam('inputParticles', params.PointerParam, pointerClass='SetOfParticles',
                      important=True, label='Input particles')
        form.addParam('inputReferences', params.PointerParam,
                      pointerClass='SetOfAverages, SetOfClasses2D', allowsNull=True,
                      label='Initial references (optional)',
                      help='Class averages to start from (e.g. another classification\'s '
                           'classes or averages), of the particles\' box and pixel size: '
                           'one class each, and K is their number. Each particle starts in '
                           'the class of the reference it correlates best with (normalised, '
                           'at its best in-plane rotation and shift, so another program\'s '
                           'scaling or CTF correction does not matter); the EM refinement '
                           'goes on from there, and the contrastive stages do not run. '
                           'Empty: the classes come from the contrastive stages.')
        self._addEngineParam(
            form, 'numberOfClasses', params.IntParam, 'K', 'Number of classes (K)',
            validators=[params.GE(2)],
            help='More classes than distinct views is fine: SCAN leaves unneeded classes '
                 'small. Changing K and continuing the protocol reuses the preprocessing, '
                 'the contrastive features and the neighbours, and recomputes from SCAN on. '
                 'With initial references, K is their number.')

        form.addSection(label='Preprocessing')
        self._defineMaskDiameterParam(
            form, use='the background outside it normalises the images and the images are '
                      'cropped around it (at most 0.9 x the box)',
            auto='estimated from the particles (radial excess variance of the phase-flipped '
                 'images over the noise, plus 2 px); the wizard shows that estimate')
        self._addEngineParam(
            form, 'phaseFlip', params.BooleanParam, 'phase_flip', 'CTF phase flip?',
            help='Only when the particles have CTF. Particles already phase-flipped '
                 '(e.g. by Xmipp or Relion preprocessing) are never flipped again, whatever '
                 'this says.')
        self._addEngineParam(
            form, 'equalize', params.BooleanParam, 'equalize', 'Histogram equalisation?',
            expertLevel=LEVEL_ADVANCED,
            help='Each image\'s grey levels are replaced by their ranks (a uniform '
                 'histogram in [-1, 1]), as the SimCryoCluster paper does. Off by default: '
                 'the background normalisation and the Wiener weighting already put every '
                 'image on one scale.')
        self._addEngineParam(
            form, 'workingBox', params.IntParam, 'working_box', 'Working box (px)',
            expertLevel=LEVEL_ADVANCED, validators=[params.GE(16)],
            help='The low frequencies carry the view information: the images are cropped '
                 'around the mask and Fourier-downsampled to at most this box before any '
                 'learning. Even number.')

        form.addSection(label='Features')
        self._addEngineChoiceParam(form, 'encoder', 'encoder', 'Encoder')
        self._addEngineParam(form, 'pretextEpochs', params.IntParam, 'pretext_epochs',
                             'Contrastive epochs', validators=[params.GE(0)],
                             help='0 leaves the encoder untrained (an ablation).')
        self._addEngineParam(form, 'batchSize', params.IntParam, 'batch_size',
                             'Batch size (pairs)', expertLevel=LEVEL_ADVANCED,
                             validators=[params.GE(1)])
        self._addEngineParam(form, 'invariantAngular', params.IntParam, 'invariant_angular',
                             'Angular frequencies per ring', expertLevel=LEVEL_ADVANCED,
                             validators=[params.GE(1)], condition='encoder == 0')
        self._addEngineParam(form, 'invariantExactLimit', params.IntParam,
                             'invariant_exact_limit', 'All pairs up to (particles)',
                             expertLevel=LEVEL_ADVANCED, validators=[params.GE(0)],
                             condition='encoder == 0')
        self._addEngineParam(form, 'invariantCandidates', params.IntParam,
                             'invariant_candidates', 'Candidates per particle',
                             expertLevel=LEVEL_ADVANCED, validators=[params.GE(1)],
                             condition='encoder == 0')
        self._addEngineParam(form, 'pretextBox', params.IntParam, 'pretext_box',
                             'Network input box (px)', expertLevel=LEVEL_ADVANCED,
                             condition='encoder == 1')
        self._addEngineParam(form, 'networkWidth', params.IntParam, 'width',
                             'ResNet-18 base width', expertLevel=LEVEL_ADVANCED,
                             validators=[params.GE(1)], condition='encoder == 1',
                             help='On a GPU, 64 (the paper\'s) learns finer features.')
        self._addEngineParam(form, 'allowMirrors', params.BooleanParam, 'mirror',
                             'Merge mirror views?', expertLevel=LEVEL_ADVANCED,
                             condition='encoder == 1',
                             help='Yes: horizontal flips join the augmentations, so a view '
                                  'and its mirror fall in the same class. No: mirrors are '
                                  'different views.')
        self._addEngineParam(form, 'ttaRotations', params.IntParam, 'tta_rotations',
                             'Rotations averaged per feature', expertLevel=LEVEL_ADVANCED,
                             validators=[params.GE(1)], condition='encoder == 1')

        form.addSection(label='Clustering')
        self._addEngineParam(form, 'numberOfNeighbours', params.IntParam, 'knn',
                             'Neighbours per particle (k)', validators=[params.GE(1)],
                             help='SCAN pulls each particle towards the class of its '
                                  'neighbours: the rotational neighbours with the invariant '
                                  'encoder, the nearest in feature space with the ResNet.')
        self._addEngineParam(form, 'scanEpochs', params.IntParam, 'scan_epochs',
                             'SCAN epochs', expertLevel=LEVEL_ADVANCED,
                             validators=[params.GE(1)])
        self._addEngineParam(form, 'scanHeads', params.IntParam, 'scan_heads',
                             'SCAN heads', expertLevel=LEVEL_ADVANCED,
                             validators=[params.GE(1)])
        self._addEngineParam(form, 'selfLabelEpochs', params.IntParam, 'selflabel_epochs',
                             'Self-labelling epochs', expertLevel=LEVEL_ADVANCED,
                             validators=[params.GE(0)])
        self._addEngineParam(form, 'selfLabelThreshold', params.FloatParam, 'confidence',
                             'Self-labelling threshold', expertLevel=LEVEL_ADVANCED,
                             validators=[params.Range(0.0, 1.0)],
                             help='Only particles whose SCAN class probability exceeds it '
                                  'serve as pseudo-labels (0.95 in the SCAN paper).')

        form.addSection(label='EM refinement')
        form.addParam('refineHelp', params.LabelParam,
                      label='The result comes from this stage: the clustering seeds an '
                            'EM refinement of the particles against the class averages '
                            '(rotation, shift and class of every particle).',
                      help='Expectation: each particle\'s posterior over classes x in-plane '
                           'angles x shifts under a Gaussian white-noise model; '
                           'maximisation: each average is rebuilt from all particles with '
                           'those weights. The class probability stored on every output '
                           'particle (%s) is its posterior of the chosen class, and the '
                           'gallery shows its mean per class. Against the right class '
                           'averages it is calibrated (simulated shapes where 1 particle '
                           'in 5 fits a wrong class best: mean posterior within 0.04 of '
                           'the share right). Where the EM merges similar views into one '
                           'class it is too sure: 2,000 particles of a real map, 10 views, '
                           'seed 0, mean probability 0.97 (SNR 0.1) and 0.90 (SNR 0.03) '
                           'against 0.72 and 0.61 of the particles in their class\'s '
                           'majority view. It still ranks them: a particle with a lower '
                           'probability is more often misclassified (AUROC 0.81 and 0.76).'
                           % cts.CLASS_PROB)
        self._addEngineChoiceParam(form, 'refineInit', 'refine_init', 'Start from',
                                   expertLevel=LEVEL_ADVANCED)
        self._addEngineParam(form, 'refineIterations', params.IntParam, 'refine_iterations',
                             'EM iterations', validators=[params.GE(0)],
                             help='0 disables the stage: the clustering labels are final and '
                                  'the class aligner gives the poses.')
        self._addEngineParam(form, 'refineAlignIterations', params.IntParam,
                             'refine_align_iterations', 'Alignment-only iterations',
                             expertLevel=LEVEL_ADVANCED, validators=[params.GE(0)])
        self._addEngineParam(form, 'refineSearchClasses', params.IntParam,
                             'refine_search_classes', 'Classes searched per particle (M)',
                             expertLevel=LEVEL_ADVANCED, validators=[params.GE(0)],
                             help='What keeps K = 50-200 affordable: the cost of the EM '
                                  'grows with M, not K.')
        self._addEngineParam(form, 'refineSubset', params.IntParam, 'refine_subset',
                             'Particles in the early EM iterations',
                             expertLevel=LEVEL_ADVANCED, validators=[params.GE(0)])
        self._addEngineParam(form, 'refineFullIterations', params.IntParam,
                             'refine_full_iterations', 'Last EM iterations on all particles',
                             expertLevel=LEVEL_ADVANCED, validators=[params.GE(1)],
                             condition='refineSubset > 0')
        self._addEngineParam(form, 'refineAngles', params.IntParam, 'refine_angles',
                             'In-plane angles searched', expertLevel=LEVEL_ADVANCED,
                             validators=[params.GE(4)],
                             help='The angular step is 360 / this (degrees).')
        self._addEngineParam(form, 'refineShift', params.FloatParam, 'refine_shift',
                             'Largest shift (fraction of the working box)',
                             expertLevel=LEVEL_ADVANCED, validators=[params.Range(0.0, 0.5)])
        self._addEngineParam(form, 'refineTemperature', params.FloatParam,
                             'refine_temperature', 'Posterior temperature',
                             expertLevel=LEVEL_ADVANCED, validators=[params.Positive],
                             help='At 1 the posteriors of well-separated classes are '
                                  'numerically 1.0; larger values give softer class '
                                  'probabilities (and softer averages).')
        self._addEngineParam(form, 'refineCtf', params.BooleanParam, 'refine_ctf',
                             'CTF in the refinement?', expertLevel=LEVEL_ADVANCED)
        self._defineComputeParams(form)

    # ------------------------------------------------------------------ steps
    def _convertInput(self):
        parts = self.inputParticles.get()
        stack = (self._getFileName('input_stack')
                 if convert.needsStackConversion(parts) else None)
        convert.ParticleStarWriter(parts, stackFile=stack).write(
            self._getFileName('input_star'))
        refs = self.inputReferences.get()
        if refs is not None:
            convert.writeReferenceStack(convert.referenceImages(refs),
                                        self._getFileName('input_references'),
                                        refs.getSamplingRate())

    def _convertedFiles(self):
        files = ProtSimcryoBase._convertedFiles(self)
        if self.inputReferences.get() is not None:
            files.append(self._getFileName('input_references'))
        return files

    def _numberOfReferences(self):
        refs = self.inputReferences.get()
        return None if refs is None else len(convert.referenceImages(refs))

    def _numberOfClasses(self):
        """K as the engine runs it: the number of initial references when there are."""
        return self._numberOfReferences() or self.numberOfClasses.get()

    def _getEngineArgs(self):
        parts = self.inputParticles.get()
        args = ['--i', os.path.abspath(self._getFileName('input_star')),
                '--o', os.path.abspath(self._getFileName('output_dir'))]
        args += self._maskDiameterArgs()
        skip = ['phaseFlip']
        if self.inputReferences.get() is not None:   # K is the number of references
            args += ['--references', os.path.abspath(self._getFileName('input_references')),
                     '--K', str(self._numberOfClasses())]
            skip.append('numberOfClasses')
        args += self._engineParamArgs(skip=skip)
        args.append('--phase-flip' if self._flipsPhases(parts) else '--no-phase-flip')
        return self._formatArgs(args + self._getComputeArgs())

    def _flipsPhases(self, parts):
        """The engine flips only particles with CTF that are not phase-flipped already."""
        return bool(self.phaseFlip) and parts.hasCTF() and not parts.isPhaseFlipped()

    def createOutputStep(self):
        inputSet = self.inputParticles.get()
        result = convert.EngineResult(self._getFileName('out_particles'),
                                      apix=inputSet.getSamplingRate())
        averages = convert.projectRelative(self._getFileName('out_averages'))
        classes = self._createSetOfClasses2D(self.inputParticles)
        fillClasses(classes, result, averages, inputSet.getSamplingRate())
        parts = self._createSetOfParticles()
        fillParticles(parts, inputSet, result)
        avgs = self._createSetOfAverages()
        fillAverages(avgs, classes)
        self._defineOutputs(**{Classify2DOutputs.outputClasses.name: classes,
                               Classify2DOutputs.outputParticles.name: parts,
                               Classify2DOutputs.outputAverages.name: avgs})
        for out in (classes, parts, avgs):
            self._defineSourceRelation(self.inputParticles, out)

    # ------------------------------------------------------------------ info
    def _validate(self):
        errors = []
        parts = self.inputParticles.get()
        if parts is None:
            return errors
        n, K = parts.getSize(), self._numberOfClasses()
        if K > n:
            errors.append('%d classes for %d particles: K must not exceed the number of '
                          'particles.' % (K, n))
        box = parts.getXDim() or 0
        if box and box < 16:
            errors.append('Box of %d px is too small (at least 16 px).' % box)
        errors += self._validateReferences(parts)
        errors += self._validateMaskDiameter(parts)
        errors += self._validateAcquisition(parts)
        return errors

    def _validateReferences(self, parts):
        refs = self.inputReferences.get()
        if refs is None:
            return []
        errors = []
        k = self._numberOfReferences()
        if k < 2:
            errors.append('Initial references: %d image(s); at least 2 are needed.' % k)
        if refs.getXDim() and parts.getXDim() and refs.getXDim() != parts.getXDim():
            errors.append('Initial references of %d px, particles of %d px: the boxes must '
                          'be equal.' % (refs.getXDim(), parts.getXDim()))
        apix, refApix = parts.getSamplingRate(), refs.getSamplingRate()
        if apix and refApix and abs(refApix - apix) > 0.01 * apix:
            errors.append('Initial references at %g Å/px, particles at %g Å/px: the pixel '
                          'sizes must be equal.' % (refApix, apix))
        return errors

    def _warnings(self):
        warnings = []
        parts = self.inputParticles.get()
        if parts is None:
            return warnings
        if parts.getSize() < 20 * self._numberOfClasses():
            warnings.append('Fewer than 20 particles per class on average: contrastive '
                            'features and class averages will be noisy.')
        diameter, box = self.maskDiameterA.get(), parts.getXDim() or 0
        if diameter and box and diameter <= box * parts.getSamplingRate() < diameter / 0.9:
            warnings.append('Mask diameter %d Å is wider than 0.9 x the box: the engine '
                            'limits it to %.0f Å.' % (diameter,
                                                      0.9 * box * parts.getSamplingRate()))
        if self.phaseFlip and not parts.hasCTF():
            warnings.append('The particles have no CTF: phase flipping is skipped.')
        if self.phaseFlip and parts.hasCTF() and parts.isPhaseFlipped():
            warnings.append('The particles are already phase-flipped: they are not flipped '
                            'again.')
        if not self._useGpu() and parts.getSize() > 20000:
            warnings.append('%d particles on CPU: training may take hours; use a GPU.'
                            % parts.getSize())
        return warnings

    def _summary(self):
        if self.inputReferences.get() is not None:
            summary = ['Input: %s, %d classes from the initial references %s.'
                       % (self.getObjectTag('inputParticles'), self._numberOfClasses(),
                          self.getObjectTag('inputReferences'))]
        else:
            summary = ['Input: %s, %d classes requested.'
                       % (self.getObjectTag('inputParticles'), self.numberOfClasses.get())]
        if self.hasAttribute('outputClasses'):
            summary.append('Output: %s with %d non-empty classes.'
                           % (self.getObjectTag('outputClasses'),
                              self.outputClasses.getSize()))
            summary += self._maskSummary()
            rows = metricRows(self._readRunLog().get('metrics'))
            if rows:
                summary.append('Against the true labels: %s.' % ', '.join(
                    '%s %s' % (label, formatValue(v, label)) for label, v in rows))
        return summary

    def _methods(self):
        if not self.hasAttribute('outputClasses'):
            return []
        mask = self._maskText()
        refine = ('; %d iterations of EM refinement against the class averages gave the final '
                  'classes and poses' % self.refineIterations.get()
                  if self.refineIterations.get() > 0 else '')
        if self.inputReferences.get() is not None:
            return ['%s were classified into %d classes starting from the %d initial '
                    'references of %s (each particle in the class of the reference it '
                    'correlates best with after in-plane alignment)%s, with the %s%s.'
                    % (self.getObjectTag('inputParticles'), self.outputClasses.getSize(),
                       self._numberOfClasses(), self.getObjectTag('inputReferences'),
                       refine, self._methodsIntro(),
                       '; the images were normalised outside a circular mask of %s' % mask
                       if mask else '')]
        return ['%s were classified into %d classes by contrastive learning (SimCLR '
                '[Chen2020SimCLR] with %s) followed by SCAN clustering and self-labelling '
                '[VanGansbeke2020SCAN], after SimCryoCluster [Simcryocluster]%s, with the '
                '%s%s.'
                % (self.getObjectTag('inputParticles'), self.outputClasses.getSize(),
                   self._encoderText(), refine, self._methodsIntro(),
                   '; the images were normalised outside a circular mask of %s' % mask
                   if mask else '')]

    def _usesResnet(self):
        return self._engineChoices['encoder'][self.encoder.get()] == 'resnet'

    def _encoderText(self):
        if self._usesResnet():
            return 'a ResNet-18 encoder [He2016ResNet] on augmented images'
        return ('an MLP encoder on rotation-invariant ring spectra of the centred particles, '
                'each particle paired with its nearest neighbour after in-plane rotation')

    def _citations(self):
        if self.inputReferences.get() is not None:   # the contrastive stages do not run
            return ['Simcryocluster']
        cites = ['Simcryocluster', 'Chen2020SimCLR', 'VanGansbeke2020SCAN']
        return cites + (['He2016ResNet'] if self._usesResnet() else [])


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


def fillAverages(avgs, classes):
    """SetOfAverages of the class representatives, item id = class id, in class order."""
    avgs.copyInfo(classes.getImages())
    avgs.setHasCTF(False)
    avgs.setAlignment(ALIGN_NONE)
    for cls in classes.iterItems(orderBy='id'):
        rep = cls.getRepresentative().clone()
        rep.setObjId(cls.getObjId())
        rep.setSamplingRate(avgs.getSamplingRate())
        avgs.append(rep)


def fillParticles(parts, inputSet, result):
    parts.copyInfo(inputSet)
    if result.hasPose():
        parts.setAlignment2D()

    def update(item, row):
        _updateItemFromResult(item, result)

    parts.copyItems(inputSet, updateItemCallback=update)
