"""RELION STAR files (3.0 single-block and 3.1 optics + particles).

Values are kept as strings exactly as read so that columns we do not touch are written back
unchanged; typed access goes through `StarBlock.as_float` / `as_int`.
"""
import os
import shlex

import numpy as np

from simcryo.errors import SimcryoError
from simcryo.outputs import atomic_path


class StarBlock:
    """One `data_` block: either a loop (table) or a list of key/value pairs (one row)."""

    def __init__(self, columns=None, loop=True):
        self.columns = {}
        self.loop = loop
        for label, values in (columns or {}).items():
            self.set(label, values)

    @property
    def labels(self):
        return list(self.columns)

    @property
    def n_rows(self):
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __len__(self):
        return self.n_rows

    def __contains__(self, label):
        return _norm(label) in self.columns

    def __getitem__(self, label):
        try:
            return self.columns[_norm(label)]
        except KeyError:
            raise SimcryoError(f"STAR column _{_norm(label)} is missing")

    def get(self, label, default=None):
        return self.columns.get(_norm(label), default)

    def set(self, label, values):
        """Add or replace a column; numbers are formatted, strings kept."""
        values = [_fmt(v) for v in values]
        if self.columns and len(values) != self.n_rows and _norm(label) not in self.columns:
            raise ValueError(f"column {label} has {len(values)} rows, block has {self.n_rows}")
        self.columns[_norm(label)] = values

    def remove(self, label):
        self.columns.pop(_norm(label), None)

    def as_float(self, label):
        try:
            return np.asarray(self[label], dtype=np.float64)
        except ValueError:
            raise SimcryoError(f"STAR column _{_norm(label)} has non-numeric values")

    def as_int(self, label):
        return np.rint(self.as_float(label)).astype(np.int64)

    def take(self, rows):
        """A new block with the given row indices."""
        return StarBlock({k: [v[i] for i in rows] for k, v in self.columns.items()}, self.loop)


def _norm(label):
    return label[1:] if label.startswith("_") else label


def _fmt(v):
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    return str(v)


def _split(line):
    if '"' in line or "'" in line:
        return shlex.split(line)
    return line.split()


def read_star(path):
    """Read every block of a STAR file -> {block_name: StarBlock} (names without `data_`)."""
    if not os.path.exists(path):
        raise SimcryoError(f"STAR file not found: {path}")
    blocks = {}
    try:
        with open(path, encoding="utf-8") as fh:
            return _parse(fh, path, blocks)
    except UnicodeDecodeError:
        raise SimcryoError(f"{path}: not a STAR file (binary, not text)") from None


def _parse(fh, path, blocks):
    name, block, in_loop_header = None, None, False
    for lineno, raw in enumerate(fh, 1):
        if "\x00" in raw:
            raise UnicodeDecodeError("utf-8", b"", 0, 1, "NUL byte")
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("data_"):
            name = line[5:]
            block = StarBlock(loop=False)
            blocks[name] = block
            in_loop_header = False
            continue
        if block is None:
            raise SimcryoError(f"{path}:{lineno}: not a STAR file (no data_ block before "
                               "content)")
        if line.startswith("loop_"):
            block.loop, in_loop_header = True, True
            continue
        if line.startswith("_"):
            parts = line.split(None, 1)
            label = parts[0][1:]
            if block.loop and in_loop_header:
                block.columns[label] = []
            else:
                value = _split(parts[1])[0] if len(parts) > 1 else ""
                block.columns[label] = [value]
            continue
        in_loop_header = False
        if not block.loop:
            raise SimcryoError(f"{path}:{lineno}: value outside a loop")
        values = _split(line)
        if len(values) != len(block.columns):
            raise SimcryoError(f"{path}:{lineno}: {len(values)} values for "
                               f"{len(block.columns)} columns")
        for col, v in zip(block.columns.values(), values):
            col.append(v)
    if not blocks:
        raise SimcryoError(f"{path}: not a STAR file (no data_ block)")
    return blocks


def _quote(v):
    if v == "" or any(c.isspace() for c in v):
        return '"' + v + '"'
    return v


def write_star(path, blocks, version_comment="# version 30001"):
    """Write {name: StarBlock}; loop blocks as tables, others as key/value pairs."""
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write(f"\n{version_comment}\n")
        for name, block in blocks.items():
            fh.write(f"\ndata_{name}\n\n")
            labels = block.labels
            if block.loop:
                fh.write("loop_\n")
                for i, label in enumerate(labels, 1):
                    fh.write(f"_{label} #{i}\n")
                cols = [block.columns[l] for l in labels]
                for row in zip(*cols):
                    fh.write(" ".join(_quote(v) for v in row) + "\n")
            else:
                for label in labels:
                    fh.write(f"_{label} {_quote(block.columns[label][0])}\n")
            fh.write("\n")
