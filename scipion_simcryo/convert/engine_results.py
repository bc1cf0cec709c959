"""The engine's output STAR files read back into Scipion objects."""
import os

import numpy as np

import pwem.objects as emobj
from pwem.constants import ALIGN_NONE
from pyworkflow.object import Float, Integer

from simcryo.io.star import read_star

from .locations import projectRelative, relionToLocation
from .poses import transformFromPose
from .truth import setTruthAttributes


class EngineResult:
    """Per-row arrays of an engine ``particles.star`` (input order), indexed by Scipion id."""

    def __init__(self, starFile, apix=None):
        blocks = read_star(starFile)
        self.block = blocks.get('particles') or next(iter(blocks.values()))
        self.optics = blocks.get('optics')
        if apix is None and self.optics is not None and 'rlnImagePixelSize' in self.optics:
            apix = float(self.optics.as_float('rlnImagePixelSize')[0])
        self.apix = apix or 1.0
        b = self.block
        self.n = len(b)
        self.ids = b.as_int('rlnImageId') if 'rlnImageId' in b else np.arange(1, self.n + 1)
        self.classes = b.as_int('rlnClassNumber') if 'rlnClassNumber' in b else None
        self.prob = (b.as_float('rlnMaxValueProbDistribution')
                     if 'rlnMaxValueProbDistribution' in b else None)
        self.psi = b.as_float('rlnAnglePsi') if 'rlnAnglePsi' in b else None
        self.ox = b.as_float('rlnOriginXAngst') if 'rlnOriginXAngst' in b else None
        self.oy = b.as_float('rlnOriginYAngst') if 'rlnOriginYAngst' in b else None
        self._row = {int(i): r for r, i in enumerate(self.ids)}

    def rowOf(self, objId):
        return self._row.get(int(objId))

    def hasPose(self):
        return self.psi is not None

    def transform(self, r):
        ox = self.ox[r] / self.apix if self.ox is not None else 0.0
        oy = self.oy[r] / self.apix if self.oy is not None else 0.0
        return transformFromPose(self.psi[r], ox, oy)

    def classSizes(self):
        return np.bincount(self.classes)[1:] if self.classes is not None else None

    def meanProbPerClass(self):
        if self.classes is None or self.prob is None:
            return {}
        out = {}
        for k in np.unique(self.classes):
            out[int(k)] = float(self.prob[self.classes == k].mean())
        return out


def rowToCtf(row):
    ctf = emobj.CTFModel()
    ctf.setStandardDefocus(float(row['rlnDefocusU']), float(row['rlnDefocusV']),
                           float(row.get('rlnDefocusAngle', 0.0)))
    if 'rlnPhaseShift' in row:
        ctf.setPhaseShift(float(row['rlnPhaseShift']))
    return ctf


def opticsToAcquisition(optics, row=0):
    """Acquisition of optics row ``row`` (values the row lacks stay unset)."""
    acq = emobj.Acquisition()
    get = (lambda k: float(optics[k][row]) if optics is not None and k in optics else None)
    acq.setVoltage(get('rlnVoltage'))
    acq.setSphericalAberration(get('rlnSphericalAberration'))
    acq.setAmplitudeContrast(get('rlnAmplitudeContrast'))
    acq.setMagnification(50000)
    return acq


def opticsAcquisitions(optics):
    """{optics group number: Acquisition} of an optics block ({1: unset} without one)."""
    if optics is None or 'rlnOpticsGroup' not in optics:
        return {1: opticsToAcquisition(optics)}
    return {int(g): opticsToAcquisition(optics, r)
            for r, g in enumerate(optics['rlnOpticsGroup'])}


def readSetOfParticles(starFile, partSet, apix=None):
    """Fill a new SetOfParticles from an engine STAR (simulate/denoise output): locations
    resolved relative to the STAR folder, CTF, acquisition, truth extras on every item."""
    blocks = read_star(starFile)
    block = blocks.get('particles') or next(iter(blocks.values()))
    optics = blocks.get('optics')
    if apix is None:
        apix = float(optics['rlnImagePixelSize'][0]) if optics is not None and \
            'rlnImagePixelSize' in optics else 1.0
    acqs = opticsAcquisitions(optics)
    partSet.setSamplingRate(apix)
    partSet.setAcquisition(acqs[min(acqs)])
    partSet.setIsPhaseFlipped(optics is not None and 'rlnCtfDataArePhaseFlipped' in optics
                              and int(optics['rlnCtfDataArePhaseFlipped'][0]) == 1)
    hasCtf = 'rlnDefocusU' in block
    partSet.setHasCTF(hasCtf)
    partSet.setAlignment(ALIGN_NONE)
    folder = os.path.dirname(os.path.abspath(starFile))
    labels = block.labels
    for values in zip(*[block.columns[l] for l in labels]):
        row = dict(zip(labels, values))
        index, fn = relionToLocation(row['rlnImageName'])
        if not os.path.isabs(fn):
            fn = os.path.join(folder, fn)
        fn = projectRelative(fn)
        part = emobj.Particle()
        part.setLocation(index, fn)
        part.setSamplingRate(apix)
        group = int(row.get('rlnOpticsGroup', min(acqs)))
        part.setAcquisition(acqs.get(group, acqs[min(acqs)]).clone())
        if len(acqs) > 1:
            part._rlnOpticsGroup = Integer(group)
        if 'rlnImageId' in row:
            part.setObjId(int(row['rlnImageId']))
        if hasCtf:
            part.setCTF(rowToCtf(row))
        setTruthAttributes(part, row)
        partSet.append(part)
    return partSet


# Columns of `simcryo select`'s class_scores.star -> per-class extras of the output classes
# (attribute '_' + label). The selection flag is not copied: every output class is selected.
# simcryoConsistency is written only when the particles had poses: a run's rows all have it
# or all lack it, so every item of one output set has the same attributes.
CLASS_SCORE_LABELS = {'simcryoClassScore': Float, 'simcryoClassRank': Integer,
                      'simcryoContrast': Float, 'simcryoCentring': Float,
                      'simcryoProfile': Float, 'simcryoSize': Float,
                      'simcryoConsistency': Float}


class ClassScores:
    """`simcryo select`'s class_scores.star: one row per class (engine numbering 1..K),
    best first."""

    def __init__(self, starFile):
        block = read_star(starFile)['classes']
        labels = block.labels
        self.rows = [dict(zip(labels, values))
                     for values in zip(*[block.columns[l] for l in labels])]
        self._byNumber = {int(r['rlnClassNumber']): r for r in self.rows}

    def selected(self):
        """Engine class numbers of the selected classes, best first."""
        return [int(r['rlnClassNumber']) for r in self.rows if int(r['simcryoSelected'])]

    def row(self, number):
        return self._byNumber.get(int(number))

    def setExtras(self, item, number):
        """The score, rank and features of class ``number`` as extras of ``item`` (every
        item gets the same attributes: the first defines the sqlite schema)."""
        row = self._byNumber[int(number)]
        for label, objClass in CLASS_SCORE_LABELS.items():
            if label not in row:
                continue
            value = float(row[label])
            setattr(item, '_' + label, objClass(int(value) if objClass is Integer else value))
