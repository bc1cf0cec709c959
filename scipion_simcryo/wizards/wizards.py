"""Wizards: particle mask radius (preview on the input particles) and a number of classes
derived from the number of particles."""
from pwem.constants import UNIT_PIXEL
from pwem.wizards.wizard import ParticleMaskRadiusWizard
from pyworkflow.wizard import Wizard

from ..protocols import ProtSimcryoClassify2D, ProtSimcryoDenoise, ProtSimcryoAlignAverage

PARTICLES_PER_CLASS = 200  # a class average of ~200 particles is clearly readable


class SimcryoMaskRadiusWizard(ParticleMaskRadiusWizard):
    """Pick the particle mask radius (px) on a preview of the input particles."""
    _targets = [(ProtSimcryoClassify2D, ['maskRadius']),
                (ProtSimcryoDenoise, ['maskRadius']),
                (ProtSimcryoAlignAverage, ['maskRadius'])]
    _unit = UNIT_PIXEL

    def _getParameters(self, protocol):
        label, value = self._getInputProtocol(self._targets, protocol)
        return {'input': inputParticlesOf(protocol), 'label': label, 'value': value}

    def _getProvider(self, protocol):
        return ParticleMaskRadiusWizard._getListProvider(
            self, self._getParameters(protocol)['input'])

    def show(self, form, *args):
        p = self._getParameters(form.protocol)
        value = p['value']
        if value is None or value < 0:
            value = defaultMaskRadius(form.protocol)
        ParticleMaskRadiusWizard.show(self, form, value, p['label'], UNIT_PIXEL)


def inputParticlesOf(protocol):
    """Pointer-like object holding the particles of a protocol (classes: their images)."""
    if hasattr(protocol, 'inputParticles'):
        return protocol.inputParticles
    classes = protocol.inputClasses.get()
    return classes.getImagesPointer() if classes is not None else protocol.inputClasses


def defaultMaskRadius(protocol):
    """45% of the box (a typical particle radius)."""
    pointer = inputParticlesOf(protocol)
    parts = pointer.get()
    if parts is not None and not hasattr(parts, 'getXDim'):
        parts = None
    box = parts.getXDim() if parts is not None else None
    return int(0.45 * box) if box else 0


def suggestedNumberOfClasses(nParticles):
    return max(2, min(200, nParticles // PARTICLES_PER_CLASS))


class SimcryoNumberOfClassesWizard(Wizard):
    """Suggest K from the number of particles (about 200 particles per class)."""
    _targets = [(ProtSimcryoClassify2D, ['numberOfClasses'])]

    def show(self, form, *args):
        parts = form.protocol.inputParticles.get()
        if parts is not None:
            form.setVar('numberOfClasses', suggestedNumberOfClasses(parts.getSize()))
