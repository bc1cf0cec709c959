"""Streaming reads through memory maps without growing the resident set.

The pages of a file mapping that a process has touched count in its resident memory (RSS)
until it unmaps them, so a stack streamed once through a memmap stays resident whole: at
10^5 particles of 64 px, 2.1 GB of classify's 3.7 GB peak were such pages (the input stack
and the working-box cache). `StreamedRows` copies the rows it is asked for and, every
`budget` bytes of the file its reads spanned (reads spread over the file count their whole
span), tells the kernel the process no longer needs the mapping's pages (madvise
MADV_DONTNEED). They stay in the OS page cache, so a later read is a minor fault, not a disk
read. Safe for read-only and shared writable mappings (np.memmap modes "r" and "r+", whose
data lives in the page cache); never used on copy-on-write ("c") ones.
"""
import mmap

import numpy as np

BUDGET = 64 << 20   # bytes of the file spanned by reads between releases


def mapping_of(array):
    """The mmap.mmap behind a numpy memmap or a view of one; None for other arrays."""
    a = array
    while a is not None:
        m = getattr(a, "_mmap", None)
        if isinstance(m, mmap.mmap):
            return m
        a = getattr(a, "base", None)
    return None


def release_pages(array):
    """Drop the pages of `array`'s file mapping from this process's resident set (a no-op
    for arrays in memory or a closed mapping)."""
    m = mapping_of(array)
    if m is not None and not m.closed:
        m.madvise(mmap.MADV_DONTNEED)


class StreamedRows:
    """Rows of an (N, ...) array, usually a memmap, read as copies, with the mapping's
    pages released every `budget` bytes (module docstring). Has the array's shape, dtype
    and len; rows are taken by an int, a slice, or an index or boolean array."""

    def __init__(self, array, budget=BUDGET):
        self.array, self.budget = array, budget
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._spanned = 0

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)):
            return self._read(np.array([idx]))[0]
        if isinstance(idx, slice):
            idx = np.arange(*idx.indices(self.shape[0]))
        rows = np.asarray(idx)
        if rows.dtype == bool:
            rows = np.nonzero(rows)[0]
        rows = rows.astype(np.int64, copy=False)
        return self._read(np.where(rows < 0, rows + self.shape[0], rows))

    def _read(self, rows):
        """Rows in the given order, read in pieces that each span at most `budget` bytes of
        the file: the kernel maps more than the rows read (fault-around, large folios;
        1,000 images spread over a 1.6 GB stack mapped 1.3 GB), so the span is what is
        counted, and a release between pieces keeps the peak at about one budget."""
        out = np.empty((len(rows),) + self.shape[1:], self.dtype)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        limit = max(1, self.budget // max(self._row_bytes, 1))
        start = 0
        while start < len(ordered):
            stop = int(np.searchsorted(ordered, ordered[start] + limit, side="left"))
            out[order[start:stop]] = self.array[ordered[start:stop]]
            self._spanned += int(ordered[stop - 1] - ordered[start] + 1) * self._row_bytes
            if self._spanned >= self.budget:
                release_pages(self.array)
                self._spanned = 0
            start = stop
        return out

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[:], dtype=dtype)
