"""Truth columns of simulated data (or a reference partition) <-> Scipion particle extras.

Attribute name = '_' + STAR label (constants.TRUTH_ATTRS), so the conversion is 1:1."""
from pyworkflow.object import Float, Integer, String

from simcryo.io.star import StarBlock, write_star

from .. import constants as cts
from ..constants import TRUTH_ATTRS


def truthFromParticles(imgSet):
    """{particle id: {STAR label: value}} of the simulated truth carried by a particle set."""
    truth = {}
    attrs = None
    for part in imgSet.iterItems(orderBy='id'):
        if attrs is None:
            attrs = [a for a in TRUTH_ATTRS if part.hasAttribute(a)]
        if attrs:
            truth[part.getObjId()] = {a[1:]: part.getAttributeValue(a) for a in attrs}
    return truth


def truthFromClasses(classes):
    """{particle id: {STAR label: value}}: another classification used as the reference
    partition (its class number is written as the true class)."""
    from .star_writer import classNumbering, iterClassMembers   # star_writer imports this
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


def setTruthAttributes(item, row):
    """Truth columns of a STAR row dict -> per-particle extras (every item, same schema)."""
    for attr in TRUTH_ATTRS:
        label = attr[1:]
        if label in row:
            setattr(item, attr, _truthObject(attr, row[label]))


def _truthObject(attr, value):
    if attr in cts.TRUTH_STR_ATTRS:
        return String(str(value))
    if attr in cts.TRUTH_INT_ATTRS:
        return Integer(int(round(float(value))))
    return Float(float(value))


def selectedClassIds(classes, selection):
    """Ids of the classes of ``selection`` (a subset of ``classes``, e.g. the output of
    "rank and select 2D classes" or a Scipion subset: both keep the input class ids), or a
    list of error texts when ``selection`` is not a subset of ``classes``."""
    sizes = {cls.getObjId(): cls.getSize() for cls in classes.iterItems()}
    ids, errors = set(), []
    for cls in selection.iterItems():
        cid = cls.getObjId()
        if cls.getSize() and sizes.get(cid) != cls.getSize():
            errors.append('Selected class %d is not a class of the scored classification (no '
                          'class with that id and %d particles).' % (cid, cls.getSize()))
        elif cls.getSize():
            ids.add(cid)
    return errors or ids


def writeSelectionStar(starFile, numbering, selectedIds):
    """The selection as `simcryo evaluate --selection` reads it (the layout of simcryo
    select's class_scores.star): one row per engine class number (``numbering``: {engine
    number: class id}) with _simcryoSelected 1 for the classes in ``selectedIds``."""
    numbers = sorted(numbering)
    write_star(starFile, {'classes': StarBlock({
        'rlnClassNumber': numbers,
        'simcryoSelected': [int(numbering[k] in selectedIds) for k in numbers]})})
