"""MRC stacks and volumes via mrcfile, memory-mapped so large stacks are never loaded whole."""
import os
import warnings
from collections import OrderedDict

import mrcfile
import numpy as np

from simcryo.errors import SimcryoError
from simcryo.io.pages import StreamedRows
from simcryo.outputs import (allocate, atomic_path, check_free_space, discard, temp_name,
                             umask)


def _open_mmap(path):
    if not os.path.exists(path):
        raise SimcryoError(f"image file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mrcfile.mmap(path, mode="r", permissive=True)
    except (ValueError, OSError) as exc:
        raise SimcryoError(f"cannot read {path} as MRC: {exc}")


def _as_stack(data, path):
    if data is None:
        raise SimcryoError(f"{path}: MRC header could not be read")
    if data.ndim == 2:
        return data[None]
    if data.ndim != 3:
        raise SimcryoError(f"{path}: expected a 2D image or a stack, got {data.ndim} dimensions")
    return data


def open_stack(path):
    """Memory-mapped (n, ny, nx) view of an MRC stack (a single image gives n = 1)."""
    return _as_stack(_open_mmap(path).data, path)


def read_apix(path):
    """Pixel size (Å/px) from the MRC header, or None when the header says 0 (unset)."""
    with _open_mmap(path) as mrc:
        apix = float(mrc.voxel_size.x)
    return apix if apix > 0 else None


def read_volume(path):
    """(volume float32 (D, D, D), apix or None) from an MRC map; cubic maps only."""
    mrc = _open_mmap(path)
    data = mrc.data
    if data is None or data.ndim != 3:
        raise SimcryoError(f"{path}: not a 3D map")
    if len(set(data.shape)) != 1:
        raise SimcryoError(f"{path}: map is not cubic {tuple(data.shape)}")
    vol = np.array(data, dtype=np.float32)
    apix = float(mrc.voxel_size.x)
    mrc.close()
    if not np.isfinite(vol).all():
        raise SimcryoError(f"{path}: map contains NaN or Inf values")
    return vol, (apix if apix > 0 else None)


def write_stack(path, images, apix=1.0):
    """Write (n, box, box) float32 as an MRC stack (.mrcs) with the pixel size in the header."""
    images = np.ascontiguousarray(images, dtype=np.float32)
    if images.ndim == 2:
        images = images[None]
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(images)
        mrc.set_image_stack()
        mrc.voxel_size = float(apix)
        mrc.update_header_stats()


def write_volume(path, volume, apix=1.0):
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(volume, dtype=np.float32))
        mrc.set_volume()
        mrc.voxel_size = float(apix)


class StackWriter:
    """Stream images into a pre-allocated MRC stack: memory stays O(batch). The stack is
    written under a temporary name with its blocks reserved (a full disk fails at the start,
    not with SIGBUS on a page write) and moved into place by `close()`; `abort()` (or an
    exception inside `with`) removes it."""

    def __init__(self, path, n, box, apix=1.0):
        self.path = path
        self.tmp = temp_name(path)
        check_free_space(os.path.dirname(os.path.abspath(path)), 4 * n * box * box,
                         f"the stack {os.path.basename(path)}")
        try:
            self._mrc = mrcfile.new_mmap(self.tmp, shape=(n, box, box), mrc_mode=2,
                                         overwrite=True)
            allocate(self.tmp, os.path.getsize(self.tmp), f"the stack {os.path.basename(path)}")
            self._mrc.set_image_stack()
            self._mrc.voxel_size = float(apix)
        except BaseException:
            if getattr(self, "_mrc", None) is not None:
                self._mrc.close()
            discard(self.tmp)
            raise

    def write(self, start, images):
        images = np.asarray(images, dtype=np.float32)
        self._mrc.data[start:start + len(images)] = images

    def close(self):
        """Finish the stack and move it into place."""
        if self._mrc is not None:
            self._mrc.update_header_stats()
            self._mrc.close()
            self._mrc = None
            os.chmod(self.tmp, 0o666 & ~umask())
            os.replace(self.tmp, self.path)

    def abort(self):
        if self._mrc is not None:
            self._mrc.close()
            self._mrc = None
        discard(self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()


class StackRows:
    """Writes rows of an (n, box, box) float32 MRC stack that another process created (a
    StackWriter's file on rank 0), with positioned writes: the data are the file's last
    bytes. Not a memory map: ranks on other nodes of a shared file system then never
    write back a whole page that holds another rank's rows."""

    def __init__(self, path, n, box):
        self.row = 4 * box * box
        self.fd = os.open(path, os.O_WRONLY)
        self.offset = os.fstat(self.fd).st_size - n * self.row
        if self.offset < 0:
            os.close(self.fd)
            raise ValueError(f"{path} is smaller than a {n} x {box} x {box} stack")

    def write(self, start, images):
        view = memoryview(np.ascontiguousarray(images, dtype=np.float32)).cast("B")
        pos = self.offset + start * self.row
        while len(view):
            written = os.pwrite(self.fd, view, pos)
            view, pos = view[written:], pos + written

    def close(self):
        """The rows on disk (visible to rank 0, also on another node), the file closed."""
        if self.fd is not None:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class StackCache:
    """Keeps a bounded number of stacks open (RELION projects have one stack per micrograph)."""

    def __init__(self, max_open=64):
        self.max_open = max_open
        self._open = OrderedDict()

    def get(self, path):
        if path in self._open:
            self._open.move_to_end(path)
            return self._open[path]
        stack = StreamedRows(open_stack(path))  # RSS stays flat while a stack streams
        self._open[path] = stack
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return stack
