"""Scipion sets -> the engine's input STAR (RELION 3.1: optics + particles blocks)."""
from pwem.constants import ALIGN_2D

from simcryo.io.star import StarBlock, write_star

from .. import constants as cts
from .locations import locationToRelion
from .poses import poseFromMatrix
from .stacks import StackCopier
from .truth import TRUTH_ATTRS


ACQUISITION_LABELS = [('rlnVoltage', 'getVoltage', 'voltage (kV)'),
                      ('rlnSphericalAberration', 'getSphericalAberration',
                       'spherical aberration (mm)'),
                      ('rlnAmplitudeContrast', 'getAmplitudeContrast', 'amplitude contrast')]


def missingAcquisition(acq):
    """Names of the acquisition values a CTF needs that ``acq`` lacks (None or unset)."""
    return [what for _, getter, what in ACQUISITION_LABELS
            if acq is None or getattr(acq, getter)() is None]


def acquisitionRow(imgSet, boxSize, acq=None, group=1, name=None, withCtf=None):
    """One optics row (RELION 3.1): pixel size, box, the acquisition ``acq`` (default: the
    set's). With CTF (``withCtf``, default: the set has CTF) a missing voltage, Cs or
    amplitude contrast is an error, as no default is right for every microscope; without CTF
    the missing values are left out."""
    acq = acq if acq is not None else imgSet.getAcquisition()
    withCtf = imgSet.hasCTF() if withCtf is None else withCtf
    row = {
        'rlnOpticsGroup': group,
        'rlnOpticsGroupName': name or 'opticsGroup%d' % group,
        'rlnImagePixelSize': imgSet.getSamplingRate(),
        'rlnImageSize': boxSize,
        'rlnImageDimensionality': 2,
    }
    missing = missingAcquisition(acq)
    if withCtf and missing:
        raise ValueError('The particles have CTF but their acquisition has no %s: set it '
                         '(e.g. re-import the particles with it) before running simcryo.'
                         % ', '.join(missing))
    for label, getter, _ in ACQUISITION_LABELS:
        value = getattr(acq, getter)() if acq is not None else None
        if value is not None:
            row[label] = value
    if withCtf:
        row['rlnCtfDataArePhaseFlipped'] = int(bool(imgSet.isPhaseFlipped()))
    return row


class OpticsGroups:
    """Optics groups of the particles written, in order of first appearance (RELION 3.1
    convention, as scipion-em-relion): a particle's group is its ``_rlnOpticsGroup`` extra
    when it has one (particles from RELION), otherwise its acquisition (voltage, Cs,
    amplitude contrast); ``opticsGroupName`` of the acquisition names it when set."""

    def __init__(self, imgSet, writeCtf):
        self.imgSet, self.writeCtf = imgSet, writeCtf
        self._groups = {}   # key -> (number, optics row)

    def numberOf(self, part):
        acq = part.getAcquisition()
        if acq is None or all(getattr(acq, g)() is None for _, g, _ in ACQUISITION_LABELS):
            acq = self.imgSet.getAcquisition()
        given = part.getAttributeValue('_rlnOpticsGroup') \
            if part.hasAttribute('_rlnOpticsGroup') else None
        key = ('group', int(given)) if given is not None else \
            ('acq',) + tuple(getattr(acq, g)() for _, g, _ in ACQUISITION_LABELS)
        if key not in self._groups:
            number = len(self._groups) + 1
            name = getattr(acq, 'opticsGroupName', None)
            name = name.get() if name is not None and hasattr(name, 'get') else None
            self._groups[key] = (number, acquisitionRow(
                self.imgSet, self.imgSet.getXDim(), acq=acq, group=number, name=name,
                withCtf=self.writeCtf))
        return self._groups[key][0]

    def block(self):
        rows = [row for _, row in sorted(self._groups.values(), key=lambda g: g[0])]
        labels = list(rows[0])
        for row in rows[1:]:
            labels += [k for k in row if k not in labels]
        return StarBlock({k: [row.get(k, 0) for row in rows] for k in labels})


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

    def __init__(self, imgSet, stackFile=None, writeAlignment=False, writeTruth=True,
                 writeCtf=True):
        self.imgSet = imgSet
        self.apix = imgSet.getSamplingRate() or 1.0
        self.stackFile = stackFile
        self.writeAlignment = writeAlignment and imgSet.getAlignment() == ALIGN_2D
        self.writeCtf = writeCtf and imgSet.hasCTF()
        self.writeTruth = writeTruth

    def write(self, starFile, particles=None, classOf=None):
        """Write the STAR; ``particles`` defaults to the enabled items of the set (by id).
        ``classOf(particle) -> int`` adds ``rlnClassNumber``. Returns the list of ids written."""
        particles = particles if particles is not None else iterEnabled(self.imgSet)
        cols = {}
        ids = self.ids = []
        self.names = []
        truth = None
        optics = OpticsGroups(self.imgSet, self.writeCtf)
        stack = StackCopier(self.stackFile) if self.stackFile else None
        for n, part in enumerate(particles, 1):
            if truth is None:
                truth = [a for a in TRUTH_ATTRS
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
            row = {'rlnImageName': name, 'rlnImageId': part.getObjId(),
                   'rlnOpticsGroup': optics.numberOf(part)}
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
        write_star(starFile, {'optics': optics.block(), 'particles': StarBlock(cols)})
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


def writeClassesStar(classes, starFile, writeAlignment=True, keep=None, writeCtf=True):
    """SetOfClasses2D -> STAR of its particles with ``rlnClassNumber`` 1..K (classes renumbered
    in id order, empty classes dropped); ``keep``: only these particle ids.
    Returns (writer, {engine number: original class id}); ``writer.ids``/``writer.names`` hold
    the rows written, in order."""
    numbering = classNumbering(classes)
    writer = ParticleStarWriter(classes.getImages(), writeAlignment=False, writeCtf=writeCtf)
    writer.writeAlignment = writeAlignment and classesHave2DAlignment(classes)
    writer.write(starFile, particles=iterClassMembers(classes, numbering, keep),
                 classOf=lambda p: p._simcryoClassNumber)
    return writer, {k: cid for cid, k in numbering.items()}
