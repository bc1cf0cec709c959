"""Scipion sets -> the engine's input STAR (RELION 3.1: optics + particles blocks)."""
from pwem.constants import ALIGN_2D

from simcryo.io.star import StarBlock, write_star

from .. import constants as cts
from .locations import locationToRelion
from .poses import poseFromMatrix
from .stacks import StackCopier


def acquisitionRow(imgSet, boxSize):
    """The optics row of a set: pixel size, box and its acquisition (defaults when unset)."""
    acq = imgSet.getAcquisition()
    return {
        'rlnOpticsGroup': 1,
        'rlnOpticsGroupName': 'opticsGroup1',
        'rlnImagePixelSize': imgSet.getSamplingRate(),
        'rlnImageSize': boxSize,
        'rlnImageDimensionality': 2,
        'rlnVoltage': acq.getVoltage() or 300.0,
        'rlnSphericalAberration': acq.getSphericalAberration() or 2.7,
        'rlnAmplitudeContrast': acq.getAmplitudeContrast() or 0.1,
    }


def ctfToRow(ctf):
    dU, dV, angle = ctf.getDefocusU(), ctf.getDefocusV(), ctf.getDefocusAngle()
    row = {'rlnDefocusU': dU, 'rlnDefocusV': dV, 'rlnDefocusAngle': angle}
    phase = ctf.getPhaseShift()
    row['rlnPhaseShift'] = phase or 0.0
    return row


def iterEnabled(imgSet):
    """Enabled items in id order (the order classifyItems and copyItems iterate)."""
    for item in imgSet.iterItems(orderBy='id'):
        if item.isEnabled():
            yield item


class ParticleStarWriter:
    """Write an iterable of Scipion particles as a RELION 3.1 STAR (optics + particles).

    Rows follow the iteration order. Columns: image name (absolute ``N@file``), ``rlnImageId``
    (Scipion id, used to read results back), CTF when the set has it, pose when
    ``writeAlignment`` and the particle has a 2D transform, ``rlnClassNumber`` when ``classOf``
    gives it, and the simulated truth columns when the first particle carries them. With
    ``stackFile`` the images are also copied into one MRC stack (needed for non-MRC inputs).
    """

    def __init__(self, imgSet, stackFile=None, writeAlignment=False, writeTruth=True):
        self.imgSet = imgSet
        self.apix = imgSet.getSamplingRate() or 1.0
        self.stackFile = stackFile
        self.writeAlignment = writeAlignment and imgSet.getAlignment() == ALIGN_2D
        self.writeCtf = imgSet.hasCTF()
        self.writeTruth = writeTruth

    def write(self, starFile, particles=None, classOf=None):
        """Write the STAR; ``particles`` defaults to the enabled items of the set (by id).
        ``classOf(particle) -> int`` adds ``rlnClassNumber``. Returns the list of ids written."""
        particles = particles if particles is not None else iterEnabled(self.imgSet)
        cols = {}
        ids = self.ids = []
        self.names = []
        truth = None
        stack = StackCopier(self.stackFile) if self.stackFile else None
        for n, part in enumerate(particles, 1):
            if truth is None:
                truth = [a for a in cts.TRUTH_ATTRS
                         if self.writeTruth and part.hasAttribute(a)]
                # Class probability of a previous classification (ours or RELION's) becomes
                # the engine's averaging weight.
                probAttr = next((a for a in (cts.CLASS_PROB, '_rlnMaxValueProbDistribution')
                                 if classOf is not None and part.hasAttribute(a)), None)
            if stack is not None:
                stack.add(part)
                name = locationToRelion(n, self.stackFile)
            else:
                name = locationToRelion(*part.getLocation())
            row = {'rlnImageName': name, 'rlnImageId': part.getObjId(), 'rlnOpticsGroup': 1}
            if self.writeCtf:
                row.update(ctfToRow(part.getCTF()))
            if self.writeAlignment and part.hasTransform():
                psi, sx, sy, _ = poseFromMatrix(part.getTransform().getMatrix())
                row.update({'rlnAnglePsi': psi, 'rlnOriginXAngst': sx * self.apix,
                            'rlnOriginYAngst': sy * self.apix})
            if classOf is not None:
                row['rlnClassNumber'] = classOf(part)
            if probAttr is not None:
                row['rlnMaxValueProbDistribution'] = part.getAttributeValue(probAttr)
            for attr in truth:
                row[attr[1:]] = part.getAttributeValue(attr)
            if not cols:
                cols = {k: [] for k in row}
            for k in cols:
                cols[k].append(row.get(k, 0))
            ids.append(part.getObjId())
            self.names.append(name)
        if stack is not None:
            stack.close()
        if not ids:
            raise ValueError('No enabled particles to write to %s' % starFile)
        optics = StarBlock({k: [v] for k, v in
                            acquisitionRow(self.imgSet, self.imgSet.getXDim()).items()})
        write_star(starFile, {'optics': optics, 'particles': StarBlock(cols)})
        return ids


# --------------------------------------------------------------------------- classes
def classNumbering(classes):
    """{class id: engine number 1..K} in id order, empty classes dropped."""
    numbering = {}
    for cls in classes.iterItems(orderBy='id'):
        if cls.getSize():
            numbering[cls.getObjId()] = len(numbering) + 1
    return numbering


def iterClassMembers(classes, numbering, keep=None):
    """Enabled members of the numbered classes (class by class), tagged with their number."""
    for cls in classes.iterItems(orderBy='id'):
        if cls.getObjId() not in numbering:
            continue
        k = numbering[cls.getObjId()]
        for part in cls.iterItems(orderBy='id'):
            if part.isEnabled() and (keep is None or part.getObjId() in keep):
                part._simcryoClassNumber = k
                yield part


def classesHave2DAlignment(classes):
    first = classes.getFirstItem()
    return first is not None and first.getAlignment() == ALIGN_2D


def writeClassesStar(classes, starFile, writeAlignment=True, keep=None):
    """SetOfClasses2D -> STAR of its particles with ``rlnClassNumber`` 1..K (classes renumbered
    in id order, empty classes dropped); ``keep``: only these particle ids.
    Returns (writer, {engine number: original class id}); ``writer.ids``/``writer.names`` hold
    the rows written, in order."""
    numbering = classNumbering(classes)
    writer = ParticleStarWriter(classes.getImages(), writeAlignment=False)
    writer.writeAlignment = writeAlignment and classesHave2DAlignment(classes)
    writer.write(starFile, particles=iterClassMembers(classes, numbering, keep),
                 classOf=lambda p: p._simcryoClassNumber)
    return writer, {k: cid for cid, k in numbering.items()}
