"""Conversion between Scipion objects and the engine's files (RELION 3.1 STAR + MRC stacks).

2D pose convention (one converter pair, `matrixFromPose` / `poseFromMatrix`): Scipion keeps 2D
alignment in a 4x4 `Transform` matrix whose upper-left 2x2 block is the in-plane rotation
``[[cos psi, -sin psi], [sin psi, cos psi]]`` and whose [0,3], [1,3] entries are the shifts in
pixels. This is the mapping scipion-em-relion uses between a 2D `Transform` and
``_rlnAnglePsi`` / ``_rlnOriginXAngst`` / ``_rlnOriginYAngst`` (shift in pixels times the pixel
size), so particles aligned by RELION, CL2D or this plugin read the same way. A mirror is a
negative determinant, ``M[:2,:2] = diag(-1, 1) @ R(psi)`` (Xmipp's flip convention); the engine
and RELION have no mirror column, so mirrored particles are written with their rotation only and
the flag is reported by `poseFromMatrix`.

The engine imports nothing from here; this module may import the engine's pure-Python
`simcryo.io` (STAR reader/writer).
"""
import math
import os

import numpy as np

import pwem.objects as emobj
from pwem.constants import ALIGN_2D, ALIGN_NONE, NO_INDEX
from pyworkflow.object import Float, Integer

from simcryo.io.star import StarBlock, read_star, write_star

from . import constants as cts

MRC_EXTENSIONS = ('.mrcs', '.mrc', '.st', '.map')


# --------------------------------------------------------------------------- poses
def matrixFromPose(psi, shiftX, shiftY, mirror=False):
    """4x4 Scipion 2D transform from psi (degrees) and shifts (pixels)."""
    a = math.radians(psi)
    c, s = math.cos(a), math.sin(a)
    M = np.eye(4)
    M[:2, :2] = [[c, -s], [s, c]]
    if mirror:
        M[0, :2] *= -1.0
    M[0, 3] = shiftX
    M[1, 3] = shiftY
    return M


def poseFromMatrix(M):
    """(psi degrees in (-180, 180], shiftX px, shiftY px, mirror) from a 4x4 2D transform."""
    M = np.asarray(M, dtype=float)
    R = M[:2, :2].copy()
    mirror = bool(np.linalg.det(R) < 0)
    if mirror:
        R[0, :] *= -1.0
    psi = math.degrees(math.atan2(R[1, 0], R[0, 0]))
    if psi <= -180.0:
        psi += 360.0
    return psi, float(M[0, 3]), float(M[1, 3]), mirror


def transformFromPose(psi, shiftX, shiftY, mirror=False):
    return emobj.Transform(matrixFromPose(psi, shiftX, shiftY, mirror))


# --------------------------------------------------------------------------- locations
def locationToRelion(index, filename):
    """Scipion (index, file) -> RELION ``N@file`` with an absolute path (engine runs elsewhere)."""
    filename = os.path.abspath(stripFormatSuffix(filename))
    return '%06d@%s' % (index if index and index != NO_INDEX else 1, filename)


def relionToLocation(name):
    if '@' in name:
        index, filename = name.split('@', 1)
        return int(index), filename
    return NO_INDEX, name


def stripFormatSuffix(filename):
    """Scipion marks stacks stored as .mrc with ``file.mrc:mrcs``; the engine wants the path."""
    for suffix in (':mrcs', ':mrc', ':spi', ':st'):
        if filename.endswith(suffix):
            return filename[:-len(suffix)]
    return filename


def needsStackConversion(imgSet):
    """True when some image is not in an MRC file the engine can memory-map."""
    for fn in imgSet.getFiles():
        if os.path.splitext(stripFormatSuffix(fn))[1].lower() not in MRC_EXTENSIONS:
            return True
    return False


# --------------------------------------------------------------------------- writing
def _acquisitionRow(imgSet, boxSize):
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
        stack = None
        if self.stackFile:
            stack = _StackCopier(self.stackFile, self.imgSet.getXDim())
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
                            _acquisitionRow(self.imgSet, self.imgSet.getXDim()).items()})
        write_star(starFile, {'optics': optics, 'particles': StarBlock(cols)})
        return ids


class _StackCopier:
    """Copy particles one by one into an MRC stack (never all in memory)."""

    def __init__(self, filename, box):
        from pwem.emlib.image import ImageHandler
        self._ih = ImageHandler()
        self._filename = filename
        self._n = 0

    def add(self, part):
        self._n += 1
        self._ih.convert(part, (self._n, self._filename))

    def close(self):
        pass


def iterEnabled(imgSet):
    """Enabled items in id order (the order classifyItems and copyItems iterate)."""
    for item in imgSet.iterItems(orderBy='id'):
        if item.isEnabled():
            yield item


def ctfToRow(ctf):
    dU, dV, angle = ctf.getDefocusU(), ctf.getDefocusV(), ctf.getDefocusAngle()
    row = {'rlnDefocusU': dU, 'rlnDefocusV': dV, 'rlnDefocusAngle': angle}
    phase = ctf.getPhaseShift()
    row['rlnPhaseShift'] = phase or 0.0
    return row


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


def writeClassesStar(classes, starFile, writeAlignment=True, keep=None):
    """SetOfClasses2D -> STAR of its particles with ``rlnClassNumber`` 1..K (classes renumbered
    in id order, empty classes dropped); ``keep``: only these particle ids.
    Returns (writer, {engine number: original class id}); ``writer.ids``/``writer.names`` hold
    the rows written, in order."""
    numbering = classNumbering(classes)
    writer = ParticleStarWriter(classes.getImages(), writeAlignment=False)
    writer.writeAlignment = writeAlignment and _classesHave2DAlignment(classes)
    writer.write(starFile, particles=iterClassMembers(classes, numbering, keep),
                 classOf=lambda p: p._simcryoClassNumber)
    return writer, {k: cid for cid, k in numbering.items()}


def truthFromParticles(imgSet):
    """{particle id: {STAR label: value}} of the simulated truth carried by a particle set."""
    truth = {}
    attrs = None
    for part in imgSet.iterItems(orderBy='id'):
        if attrs is None:
            attrs = [a for a in cts.TRUTH_ATTRS if part.hasAttribute(a)]
        if attrs:
            truth[part.getObjId()] = {a[1:]: part.getAttributeValue(a) for a in attrs}
    return truth


def truthFromClasses(classes):
    """{particle id: {STAR label: value}}: another classification used as the reference
    partition (its class number is written as the true class)."""
    numbering = classNumbering(classes)
    return {p.getObjId(): {cts.TRUE_CLASS[1:]: p._simcryoClassNumber}
            for p in iterClassMembers(classes, numbering)}


def writeTruthStar(starFile, names, ids, truth):
    """A particles STAR with the rows ``ids`` (same order and image names as the classified
    STAR) and their truth columns."""
    labels = list(next(iter(truth.values())).keys())
    cols = {'rlnImageName': list(names), 'rlnImageId': list(ids)}
    for label in labels:
        cols[label] = [truth[i][label] for i in ids]
    write_star(starFile, {'particles': StarBlock(cols)})


def writeImagesStack(imgSet, stackFile):
    """Items of a set (id order) -> one MRC stack, item n at index n."""
    from pwem.emlib.image import ImageHandler
    ih = ImageHandler()
    for n, img in enumerate(imgSet.iterItems(orderBy='id'), 1):
        ih.convert(img, (n, stackFile))
    return stackFile


def _classesHave2DAlignment(classes):
    first = classes.getFirstItem()
    return first is not None and first.getAlignment() == ALIGN_2D


def writeClassAverages(classes, numbering, stackFile):
    """Representatives in engine numbering order (class k at index k) -> one MRC stack."""
    from pwem.emlib.image import ImageHandler
    ih = ImageHandler()
    byId = {cls.getObjId(): cls.getRepresentative().clone()
            for cls in classes.iterItems(orderBy='id')}
    for k in sorted(numbering):
        rep = byId[numbering[k]]
        ih.convert(rep, (k, stackFile))
    return stackFile


# --------------------------------------------------------------------------- reading
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


def setTruthAttributes(item, row):
    """Truth columns of a STAR row dict -> per-particle extras (every item, same schema)."""
    for attr in cts.TRUTH_ATTRS:
        label = attr[1:]
        if label in row:
            value = float(row[label])
            obj = Integer(int(round(value))) if attr in cts.TRUTH_INT_ATTRS else Float(value)
            setattr(item, attr, obj)


def rowToCtf(row):
    ctf = emobj.CTFModel()
    ctf.setStandardDefocus(float(row['rlnDefocusU']), float(row['rlnDefocusV']),
                           float(row.get('rlnDefocusAngle', 0.0)))
    if 'rlnPhaseShift' in row:
        ctf.setPhaseShift(float(row['rlnPhaseShift']))
    return ctf


def opticsToAcquisition(optics):
    acq = emobj.Acquisition()
    get = (lambda k, d: float(optics[k][0]) if optics is not None and k in optics else d)
    acq.setVoltage(get('rlnVoltage', 300.0))
    acq.setSphericalAberration(get('rlnSphericalAberration', 2.7))
    acq.setAmplitudeContrast(get('rlnAmplitudeContrast', 0.1))
    acq.setMagnification(50000)
    return acq


def projectRelative(path):
    """Paths inside the current (project) folder are stored relative, as Scipion does, so a
    moved project keeps working; others stay absolute."""
    path = os.path.abspath(path)
    cwd = os.getcwd()
    return os.path.relpath(path, cwd) if path.startswith(cwd + os.sep) else path


def readSetOfParticles(starFile, partSet, apix=None):
    """Fill a new SetOfParticles from an engine STAR (simulate/denoise output): locations
    resolved relative to the STAR folder, CTF, acquisition, truth extras on every item."""
    blocks = read_star(starFile)
    block = blocks.get('particles') or next(iter(blocks.values()))
    optics = blocks.get('optics')
    if apix is None:
        apix = float(optics['rlnImagePixelSize'][0]) if optics is not None and \
            'rlnImagePixelSize' in optics else 1.0
    acq = opticsToAcquisition(optics)
    partSet.setSamplingRate(apix)
    partSet.setAcquisition(acq)
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
        part.setAcquisition(acq)
        if 'rlnImageId' in row:
            part.setObjId(int(row['rlnImageId']))
        if hasCtf:
            part.setCTF(rowToCtf(row))
        setTruthAttributes(part, row)
        partSet.append(part)
    return partSet
