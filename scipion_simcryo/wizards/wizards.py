"""Wizards: the particle/mask diameter in Å (picked on a preview of the input particles,
starting at the engine's own automatic estimate) and a number of classes derived from the
number of particles."""
import os
import tempfile

from pwem.constants import UNIT_ANGSTROM
from pwem.wizards.wizard import ParticleMaskRadiusWizard
from pyworkflow.wizard import Wizard

from .. import convert
from ..protocols import (ProtSimcryoClassify2D, ProtSimcryoDenoise, ProtSimcryoAlignAverage,
                         ProtSimcryoSimulate)

# ~50 particles per class: more classes than views cost little (SCAN leaves unneeded classes
# small), too few merge views; at least 2, at most 100.
PARTICLES_PER_CLASS = 50
MAX_SUGGESTED_CLASSES = 100


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
        if not diameter or diameter <= 0:  # 0: automatic: start at what the engine would use
            diameter = engineMaskDiameter(form.protocol)
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


def engineMaskDiameter(protocol, sample=1000):
    """The diameter (Å) the engine's automatic estimate (--mask-diameter 0) gives for this
    protocol's particles, computed by the engine's own functions on the same sample:
    classify: `estimate_radius` of up to `sample` phase-flipped, background-normalised
    particles; align: `simcryo.align.auto_mask_radius` (1.1 x that radius, at most box/2 - 2);
    denoise and the simulation's noise particles: 0.8 x the box. 0 without particles.
    Without torch in Scipion's Python (engine in its own environment), 0.9 x the box."""
    parts = inputParticlesOf(protocol).get()
    if parts is None or not hasattr(parts, 'getXDim') or not parts.getSize():
        return 0
    box, apix = parts.getXDim() or 0, parts.getSamplingRate() or 0
    from ..protocols import ProtSimcryoClassify2D, ProtSimcryoAlignAverage
    if not isinstance(protocol, (ProtSimcryoClassify2D, ProtSimcryoAlignAverage)):
        return 0.8 * box * apix
    try:
        import torch  # noqa: F401 (the engine's estimator needs it)
    except ImportError:
        return 0.9 * box * apix
    with tempfile.TemporaryDirectory(prefix='simcryo-wizard-') as tmp:
        star = os.path.join(tmp, 'particles.star')
        stack = os.path.join(tmp, 'particles.mrcs') if convert.needsStackConversion(parts) \
            else None
        convert.ParticleStarWriter(parts, stackFile=stack, writeTruth=False).write(star)
        radius = _engineRadius(star, isinstance(protocol, ProtSimcryoAlignAverage),
                               flip=_flipsForMask(protocol, parts), sample=sample)
    return 2.0 * radius * apix


def _flipsForMask(protocol, parts):
    flips = getattr(protocol, '_flipsPhases', None)
    return flips(parts) if flips is not None else parts.hasCTF()


def _engineRadius(star, forAlign, flip, sample):
    """Radius (px) of the engine's automatic mask for the particles of `star`."""
    import numpy as np
    import torch
    from simcryo.io import load_particles
    pset = load_particles(star)
    if forAlign:
        from simcryo.align import ParticleSource, auto_mask_radius
        source = ParticleSource(pset.images, pset.n, pset.box, 'cpu', ctf=pset.ctf,
                                apix=pset.apix)
        return auto_mask_radius(source, sample=sample)
    # classify (simcryo.classify.preprocess.build_cache): the same sample and steps
    from simcryo.image import ctf as ctfmod
    from simcryo.image.mask import normalize_background
    from simcryo.image.preprocess import estimate_radius
    idx = np.linspace(0, pset.n - 1, min(pset.n, sample)).astype(np.int64)
    x = torch.from_numpy(pset.images(idx))
    if flip and pset.ctf is not None:
        x = ctfmod.phase_flip(x, ctfmod.ctf_2d(pset.ctf.take(idx), pset.box, pset.apix,
                                               rfft=True))
    return estimate_radius(normalize_background(x))


def suggestedNumberOfClasses(nParticles):
    return max(2, min(MAX_SUGGESTED_CLASSES, nParticles // PARTICLES_PER_CLASS))


def numberOfClassesMessage(nParticles, K):
    return ('K = %d for %d particles: about %d particles per class (at least 2, at most %d '
            'classes). Give more classes than the views you expect: SCAN leaves unneeded '
            'classes small, while too few classes merge views.'
            % (K, nParticles, PARTICLES_PER_CLASS, MAX_SUGGESTED_CLASSES))


class SimcryoNumberOfClassesWizard(Wizard):
    """Suggest K from the number of particles (about 50 particles per class) and say why."""
    _targets = [(ProtSimcryoClassify2D, ['numberOfClasses'])]

    def show(self, form, *args):
        parts = form.protocol.inputParticles.get()
        if parts is None:
            form.showWarning('Choose the input particles first.')
            return
        K = suggestedNumberOfClasses(parts.getSize())
        form.setVar('numberOfClasses', K)
        form.showInfo(numberOfClassesMessage(parts.getSize(), K))
