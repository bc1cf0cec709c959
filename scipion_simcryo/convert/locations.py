"""Image locations: Scipion (index, file) <-> RELION ``N@file``, project-relative paths."""
import os

from pwem.constants import NO_INDEX


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


def projectRelative(path):
    """Paths inside the current (project) folder are stored relative, as Scipion does, so a
    moved project keeps working; others stay absolute."""
    path = os.path.abspath(path)
    cwd = os.getcwd()
    return os.path.relpath(path, cwd) if path.startswith(cwd + os.sep) else path
