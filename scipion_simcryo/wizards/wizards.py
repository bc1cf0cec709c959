"""Wizards: the particle/mask diameter in Å (picked on a preview of the input particles) and
a number of classes derived from the number of particles."""
from pwem.constants import UNIT_ANGSTROM
from pwem.wizards.wizard import ParticleMaskRadiusWizard
from pyworkflow.wizard import Wizard

from ..protocols import (ProtSimcryoClassify2D, ProtSimcryoDenoise, ProtSimcryoAlignAverage,
                         ProtSimcryoSimulate)

PARTICLES_PER_CLASS = 200  # a class average of ~200 particles is clearly readable


class SimcryoMaskDiameterWizard(ParticleMaskRadiusWizard):
    """Pick the mask diameter (Å) on a preview of the input particles. The preview dialog
    works with a radius in Å: the diameter is halved for it and its radius doubled back
    (as scipion-em-relion's maskDiameterA wizard)."""
    _targets = [(ProtSimcryoClassify2D, ['maskDiameterA']),
                (ProtSimcryoDenoise, ['maskDiameterA']),
                (ProtSimcryoAlignAverage, ['maskDiameterA']),
                (ProtSimcryoSimulate, ['noiseMaskDiameterA'])]
    _unit = UNIT_ANGSTROM

    def _getParameters(self, protocol):
        label, value = self._getInputProtocol(self._targets, protocol)
        return {'input': inputParticlesOf(protocol), 'label': label, 'value': value}

    def _getProvider(self, protocol):
        return ParticleMaskRadiusWizard._getListProvider(
            self, self._getParameters(protocol)['input'])

    def show(self, form, *args):
        p = self._getParameters(form.protocol)
        diameter = p['value']
        if not diameter or diameter <= 0:  # 0: automatic, start the preview at a typical size
            diameter = defaultMaskDiameter(form.protocol)
        ParticleMaskRadiusWizard.show(self, form, diameter / 2.0, p['label'], UNIT_ANGSTROM)

    def setVar(self, form, label, value):
        form.setVar(label, int(round(2 * value)))  # the dialog's radius (Å) -> diameter


def inputParticlesOf(protocol):
    """Pointer-like object holding the particles of a protocol (classes: their images;
    simulate: the particles the noise is taken from)."""
    if hasattr(protocol, 'inputParticles'):
        return protocol.inputParticles
    if hasattr(protocol, 'noiseParticles'):
        return protocol.noiseParticles
    classes = protocol.inputClasses.get()
    return classes.getImagesPointer() if classes is not None else protocol.inputClasses


def defaultMaskDiameter(protocol):
    """90% of the box in Å (a typical particle), 0 without input particles."""
    parts = inputParticlesOf(protocol).get()
    if parts is None or not hasattr(parts, 'getXDim'):
        return 0
    box, apix = parts.getXDim() or 0, parts.getSamplingRate() or 0
    return int(round(0.9 * box * apix))


def suggestedNumberOfClasses(nParticles):
    return max(2, min(200, nParticles // PARTICLES_PER_CLASS))


class SimcryoNumberOfClassesWizard(Wizard):
    """Suggest K from the number of particles (about 200 particles per class)."""
    _targets = [(ProtSimcryoClassify2D, ['numberOfClasses'])]

    def show(self, form, *args):
        parts = form.protocol.inputParticles.get()
        if parts is not None:
            form.setVar('numberOfClasses', suggestedNumberOfClasses(parts.getSize()))
