import os
import shlex
from enum import Enum

import pyworkflow.protocol.params as params
from pyworkflow.protocol.constants import LEVEL_ADVANCED
from pwem.objects import SetOfParticles
from pwem.protocols import ProtProcessParticles

from .. import constants as cts
from .. import convert
from .protocol_base import ProtSimcryoBase


class DenoiseOutputs(Enum):
    outputParticles = SetOfParticles


class ProtSimcryoDenoise(ProtSimcryoBase, ProtProcessParticles):
    """Denoise particle images before 2D classification.

    Reference-guided mode (the SimCryoCluster paper's): a GAN (generator with a convolution
    block, residual blocks and a sub-pixel convolution block; five-layer discriminator) is
    trained on pairs made on the fly from projections of a volume, with the data's CTF and real
    noise cut from the background of the particles themselves; no clean data is needed.

    Self-supervised mode (no volume): a denoiser trained on the noisy particles alone.

    Output: the same particles (same ids, CTF, alignment and pixel size) pointing at the
    denoised stack.
    """
    _label = 'denoise particles'
    _possibleOutputs = DenoiseOutputs
    _engineCommand = 'denoise'
    _maskAutoText = '0.8 x the box'
    _resumable = True

    def _defineParams(self, form):
        form.addSection(label='Input')
        form.addParam('inputParticles', params.PointerParam, pointerClass='SetOfParticles',
                      important=True, label='Input particles')
        form.addParam('denoiseMode', params.EnumParam, default=cts.DENOISE_SELF,
                      choices=cts.DENOISE_CHOICES, label='Mode',
                      help='Reference-guided: needs a volume of the molecule (e.g. an initial '
                           'model). Self-supervised: the particles alone.')
        form.addParam('inputVolume', params.PointerParam, pointerClass='Volume',
                      allowsNull=True, condition='denoiseMode == %d' % cts.DENOISE_GAN,
                      label='Reference volume')

        form.addSection(label='Preprocessing')
        self._defineMaskDiameterParam(
            form, use='pixels outside it are background: they give the noise statistics and '
                      'the normalisation',
            auto='0.8 x the box (not estimated from the particles: give the particle\'s '
                 'diameter when it fills less of the box)')

        form.addSection(label='Training')
        self._addEngineParam(form, 'epochs', params.IntParam, 'epochs', 'Training epochs',
                             validators=[params.GE(1)])
        self._addEngineParam(form, 'imagesPerEpoch', params.IntParam, 'images_per_epoch',
                             'Images per epoch', expertLevel=LEVEL_ADVANCED,
                             validators=[params.GE(1)])
        self._addEngineParam(form, 'batchSize', params.IntParam, 'batch_size',
                             'Batch size (images)', expertLevel=LEVEL_ADVANCED,
                             validators=[params.GE(1)])
        self._addEngineParam(form, 'phaseFlip', params.BooleanParam, 'phase_flip',
                             'Denoise phase-flipped images?', expertLevel=LEVEL_ADVANCED,
                             help='Particles that are already phase-flipped are never '
                                  'flipped again, whatever this says.')
        self._defineComputeParams(form)

    # ------------------------------------------------------------------ steps
    def _createFilenameTemplates(self):
        ProtSimcryoBase._createFilenameTemplates(self)
        self._updateFilenamesDict({'model_dir': self._getExtraPath('model')})

    def _engineOutputDirs(self):
        return [self._getFileName('model_dir'), self._getFileName('output_dir')]

    def _convertInput(self):
        parts = self.inputParticles.get()
        stack = (self._getFileName('input_stack')
                 if convert.needsStackConversion(parts) else None)
        convert.ParticleStarWriter(parts, stackFile=stack, writeAlignment=True).write(
            self._getFileName('input_star'))

    def _getEngineArgs(self):
        """Arguments of `denoise train`; `denoise apply` is derived from them."""
        args = ['--i', os.path.abspath(self._getFileName('input_star')),
                '--o', os.path.abspath(self._getFileName('model_dir'))]
        if self.denoiseMode == cts.DENOISE_GAN:
            vol = self.inputVolume.get()
            args += ['--mode', 'reference', '--volume', self._getVolumeFile(self.inputVolume.get()),
                     '--volume-apix', vol.getSamplingRate()]
        else:
            args += ['--mode', 'self']
        args += self._maskDiameterArgs()
        parts = self.inputParticles.get()
        args += self._engineParamArgs(skip=['phaseFlip'])
        flip = bool(self.phaseFlip) and parts.hasCTF() and not parts.isPhaseFlipped()
        args.append('--phase-flip' if flip else '--no-phase-flip')
        return self._formatArgs(args + self._getComputeArgs())

    def runStep(self, argsText):
        os.makedirs(self._getFileName('output_dir'), exist_ok=True)
        self.runEngine(argsText + self._resumeArgs(self._getFileName('model_dir')),
                       command='denoise train')
        apply = ['--i', os.path.abspath(self._getFileName('input_star')),
                 '--model', os.path.abspath(self._getFileName('model_dir')),
                 '--o', os.path.abspath(self._getFileName('output_dir'))]
        apply = ' '.join(shlex.quote(str(a)) for a in apply + self._getComputeArgs())
        self.runEngine(apply, command='denoise apply')

    def _readRunLog(self):
        import json
        fn = os.path.join(self._getFileName('model_dir'), 'run.json')
        if not os.path.exists(fn):
            return {}
        with open(fn) as f:
            return json.load(f)

    def createOutputStep(self):
        inputSet = self.inputParticles.get()
        result = convert.EngineResult(self._getFileName('out_particles'),
                                      apix=inputSet.getSamplingRate())
        names = result.block['rlnImageName']
        folder = os.path.dirname(os.path.abspath(self._getFileName('out_particles')))
        parts = self._createSetOfParticles()
        parts.copyInfo(inputSet)

        def update(item, row):
            r = result.rowOf(item.getObjId())
            if r is None:
                item._appendItem = False
                return
            index, fn = convert.relionToLocation(names[r])
            item.setLocation(index, convert.projectRelative(
                fn if os.path.isabs(fn) else os.path.join(folder, fn)))

        parts.copyItems(inputSet, updateItemCallback=update)
        self._defineOutputs(**{DenoiseOutputs.outputParticles.name: parts})
        self._defineTransformRelation(self.inputParticles, parts)

    # ------------------------------------------------------------------ info
    def _validate(self):
        errors = []
        if self.denoiseMode == cts.DENOISE_GAN:
            vol = self.inputVolume.get()
            if vol is None:
                errors.append('The reference-guided mode needs a volume.')
        errors += self._validateMaskDiameter(self.inputParticles.get())
        errors += self._validateAcquisition(self.inputParticles.get())
        return errors

    def _warnings(self):
        vol, parts = self.inputVolume.get(), self.inputParticles.get()
        if self.denoiseMode == cts.DENOISE_GAN and vol is not None and parts is not None:
            ratio = vol.getSamplingRate() / parts.getSamplingRate()
            if abs(ratio - 1) > 0.05:
                return ['Volume pixel size (%.3f Å) differs from the particles\' (%.3f Å): '
                        'the engine resamples the projections.'
                        % (vol.getSamplingRate(), parts.getSamplingRate())]
        return []

    def _summary(self):
        mode = cts.DENOISE_CHOICES[self.denoiseMode.get()]
        summary = ['Input: %s, mode: %s.' % (self.getObjectTag('inputParticles'), mode)]
        if self.hasAttribute('outputParticles'):
            summary.append('Output: %s (%d particles).'
                           % (self.getObjectTag('outputParticles'),
                              self.outputParticles.getSize()))
            summary += self._maskSummary()
        return summary

    def _methods(self):
        if not self.hasAttribute('outputParticles'):
            return []
        how = ('a GAN trained on projections of %s with noise harvested from the particles'
               % self.getObjectTag('inputVolume')
               if self.denoiseMode == cts.DENOISE_GAN else 'a self-supervised denoiser')
        mask = self._maskText()
        return ['%s were denoised with %s (%s)%s.'
                % (self.getObjectTag('inputParticles'), how, self._methodsIntro(),
                   '; the background outside a circular mask of %s gave the noise '
                   'statistics' % mask if mask else '')]

    def _citations(self):
        # the reference-guided GAN is the paper's; the self-supervised mode is not
        return ['Simcryocluster'] if self.denoiseMode == cts.DENOISE_GAN else []
