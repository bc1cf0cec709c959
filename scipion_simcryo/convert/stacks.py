"""MRC stacks for the engine: when a set needs copying, and the copies themselves."""
import os

from .locations import stripFormatSuffix

MRC_EXTENSIONS = ('.mrcs', '.mrc', '.st', '.map')


def needsStackConversion(imgSet):
    """True when some image is not in an MRC file the engine can memory-map."""
    for fn in imgSet.getFiles():
        if os.path.splitext(stripFormatSuffix(fn))[1].lower() not in MRC_EXTENSIONS:
            return True
    return False


class StackCopier:
    """Copy particles one by one into an MRC stack (never all in memory)."""

    def __init__(self, filename):
        from pwem.emlib.image import ImageHandler
        self._ih = ImageHandler()
        self._filename = filename
        self._n = 0

    def add(self, part):
        self._n += 1
        self._ih.convert(part, (self._n, self._filename))

    def close(self):
        pass


def writeImagesStack(imgSet, stackFile):
    """Items of a set (id order) -> one MRC stack, item n at index n."""
    from pwem.emlib.image import ImageHandler
    ih = ImageHandler()
    for n, img in enumerate(imgSet.iterItems(orderBy='id'), 1):
        ih.convert(img, (n, stackFile))
    return stackFile


def writeReferenceStack(images, stackFile, apix):
    """Images (any format Scipion reads, in the given order) -> one float32 MRC stack whose
    header holds the pixel size ``apix`` (the engine checks it against the particles')."""
    import mrcfile
    import numpy as np
    from pwem.emlib.image import ImageHandler
    ih = ImageHandler()
    data = np.stack([np.asarray(ih.read(img.getLocation()).getData(), dtype=np.float32)
                     for img in images])
    with mrcfile.new(stackFile, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.set_image_stack()
        mrc.voxel_size = apix
    return stackFile


def referenceImages(refSet):
    """The images of a SetOfAverages (id order) or the representatives of a SetOfClasses2D's
    non-empty classes (class id order)."""
    from pwem.objects import SetOfClasses2D
    if isinstance(refSet, SetOfClasses2D):
        return [cls.getRepresentative().clone() for cls in refSet.iterItems(orderBy='id')
                if cls.getSize() and cls.getRepresentative() is not None]
    return [img.clone() for img in refSet.iterItems(orderBy='id')]


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
