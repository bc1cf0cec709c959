"""Particle sets: a STAR table (or a bare stack) plus lazily read images and CTF parameters.

`load_particles` validates everything that can be checked without reading pixels (files exist,
indices in range, one square box size, pixel size known, CTF columns complete);
`ParticleSet.images` reads only the requested particles from memory-mapped stacks and checks
them for NaN/Inf.
"""
import hashlib
import os
from dataclasses import dataclass

import numpy as np

from simcryo.errors import SimcryoError, warn
from simcryo.io.mrc import StackCache, open_stack, read_apix
from simcryo.io.star import StarBlock, read_star, write_star

STACK_EXTENSIONS = (".mrcs", ".mrc", ".st", ".map")
CTF_PARTICLE_LABELS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
CTF_OPTICS_LABELS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")


@dataclass
class CTFParams:
    """Per-particle CTF parameters (arrays of length n). Defocus in Å, angle in degrees,
    voltage in kV, Cs in mm, phase shift in degrees, B-factor in Å²."""
    defocus_u: np.ndarray
    defocus_v: np.ndarray
    defocus_angle: np.ndarray
    voltage: np.ndarray
    cs: np.ndarray
    amp_contrast: np.ndarray
    phase_shift: np.ndarray
    bfactor: np.ndarray
    # True where the images are already phase-flipped (_rlnCtfDataArePhaseFlipped 1): they
    # carry |CTF|, which the CTF images then are (None: none flipped)
    flipped: np.ndarray = None

    def take(self, idx):
        return CTFParams(**{k: None if v is None else np.asarray(v)[idx]
                            for k, v in self.__dict__.items()})

    def __len__(self):
        return len(self.defocus_u)


def parse_image_name(name):
    """'12@stack.mrcs' -> (11, 'stack.mrcs') with a 0-based index."""
    if "@" not in name:
        return 0, name
    idx, path = name.split("@", 1)
    try:
        i = int(idx)
    except ValueError:
        raise SimcryoError(f"bad _rlnImageName '{name}' (expected N@stack.mrcs)")
    if i < 1:
        raise SimcryoError(f"bad _rlnImageName '{name}': indices start at 1")
    return i - 1, path


def _resolve_stack(path, star_dir):
    """The stack file of an _rlnImageName path, looked up only where RELION's conventions put
    it: an absolute path as is; a relative one in the project folder (RELION writes paths
    relative to it and runs there: the current folder) or beside the STAR (files moved with
    their stacks; simcryo's own outputs). Never in other folders, where another file of the
    same name would be read silently. When both candidates exist and are different files the
    choice would be a guess: an error. Returns None when not found."""
    if os.path.isabs(path):
        return path if os.path.isfile(path) else None
    found = [c for c in (os.path.join(os.path.abspath(star_dir), path), os.path.abspath(path))
             if os.path.isfile(c)]
    if len(found) == 2 and not os.path.samefile(*found):
        raise SimcryoError(f"image stack {path} is ambiguous: it exists beside the STAR "
                           f"({found[0]}) and in the current folder ({found[1]}); give "
                           "absolute paths or run from the project folder only")
    return found[0] if found else None


class ParticleSet:
    """Particles in input order. `particles` is the STAR table (strings), `optics` the optics
    table or None (RELION 3.0 / bare stack), `ctf` a CTFParams or None."""

    def __init__(self, source, particles, optics, stack_paths, stack_ids, slices, box, apix,
                 ctf):
        self.source = source
        self.particles = particles
        self.optics = optics
        self.stack_paths = stack_paths
        self.stack_ids = stack_ids
        self.slices = slices
        self.box = box
        self.apix = apix
        self.ctf = ctf
        self._cache = StackCache()

    @property
    def n(self):
        return len(self.stack_ids)

    def __len__(self):
        return self.n

    def images(self, indices=None):
        """float32 (len(indices), box, box) for the given particle indices (input order)."""
        indices = np.arange(self.n) if indices is None else np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), self.box, self.box), dtype=np.float32)
        sids = self.stack_ids[indices]
        for sid in np.unique(sids):
            sel = np.nonzero(sids == sid)[0]
            stack = self._cache.get(self.stack_paths[sid])
            rows = self.slices[indices[sel]]
            order = np.argsort(rows)  # sorted reads are much faster on mmapped files
            out[sel[order]] = stack[rows[order]]
        bad = ~np.isfinite(out).all(axis=(1, 2))
        if bad.any():
            i = int(indices[np.nonzero(bad)[0][0]])
            raise SimcryoError(f"particle {i + 1} ({self.image_name(i)}) contains NaN or Inf "
                               "pixels")
        return out

    def iter_batches(self, batch_size, indices=None):
        indices = np.arange(self.n) if indices is None else np.asarray(indices)
        for s in range(0, len(indices), batch_size):
            idx = indices[s:s + batch_size]
            yield idx, self.images(idx)

    def image_name(self, i):
        return f"{self.slices[i] + 1}@{self.stack_paths[self.stack_ids[i]]}"

    def column(self, label, default=None):
        return self.particles.get(label, default)

    def fingerprint(self):
        """The input's identity, for a resumed run to check it continues the same job: a hash
        of the STAR rows (every column) and optics, and each stack's size and modification
        time (a rewritten stack changes them)."""
        h = hashlib.sha256()
        for block in (self.particles, self.optics):
            for label, values in (block.columns.items() if block is not None else ()):
                h.update(label.encode())
                h.update("\x1f".join(values).encode())
        stacks = {}
        for p in self.stack_paths:
            st = os.stat(p)
            stacks[p] = [int(st.st_size), int(st.st_mtime_ns)]
        return {"n": int(self.n), "rows": h.hexdigest(), "apix": float(self.apix),
                "stacks": stacks}


def _load_bare_stack(path, apix):
    stack = open_stack(path)
    n, ny, nx = stack.shape
    if ny != nx:
        raise SimcryoError(f"{path}: images are not square ({nx} x {ny})")
    if apix:
        check_apix(apix, "--apix")
    apix = apix or read_apix(path)
    if apix is None:
        raise SimcryoError(f"{path}: pixel size not set in the MRC header; give --apix")
    names = [f"{i + 1}@{os.path.basename(path)}" for i in range(n)]
    table = StarBlock({"rlnImageName": names})
    return ParticleSet(path, table, None, [os.path.abspath(path)], np.zeros(n, np.int32),
                       np.arange(n, dtype=np.int64), nx, float(apix), None)


def _find_blocks(blocks, path):
    optics = blocks.get("optics")
    if "particles" in blocks:
        particles = blocks["particles"]
    else:
        cands = [b for name, b in blocks.items() if name != "optics" and b.loop]
        if not cands:
            raise SimcryoError(f"{path}: no particle table (loop_) found")
        particles = cands[0]
    if particles.n_rows == 0:
        raise SimcryoError(f"{path}: the particle table is empty")
    if "rlnImageName" not in particles:
        raise SimcryoError(f"{path}: STAR has no _rlnImageName column")
    return particles, optics


def _per_particle(particles, optics, label, path):
    """A value that RELION 3.1 keeps in optics and 3.0 per particle -> array of length n."""
    if label in particles:
        return particles.as_float(label)
    if optics is not None and label in optics:
        groups = _optics_groups(particles, optics, path)
        return optics.as_float(label)[groups]
    return None


def _optics_groups(particles, optics, path):
    """Row index into the optics table for every particle."""
    if "rlnOpticsGroup" not in optics:
        raise SimcryoError(f"{path}: optics table has no _rlnOpticsGroup")
    ids = optics.as_int("rlnOpticsGroup")
    lookup = {g: i for i, g in enumerate(ids)}
    if "rlnOpticsGroup" not in particles:
        if len(ids) != 1:
            raise SimcryoError(f"{path}: several optics groups but particles have no "
                               "_rlnOpticsGroup")
        return np.zeros(particles.n_rows, np.int64)
    groups = particles.as_int("rlnOpticsGroup")
    missing = set(groups.tolist()) - set(lookup)
    if missing:
        raise SimcryoError(f"{path}: particles refer to unknown optics group(s) "
                           f"{sorted(missing)[:5]}")
    return np.array([lookup[g] for g in groups], dtype=np.int64)


def _read_ctf(particles, optics, path):
    present = [l for l in CTF_PARTICLE_LABELS if l in particles]
    if not present:
        return None
    n = particles.n_rows
    missing = [l for l in CTF_PARTICLE_LABELS[:2] if l not in particles]
    values = {}
    for label in CTF_OPTICS_LABELS:
        v = _per_particle(particles, optics, label, path)
        if v is None:
            missing.append(label)
        values[label] = v
    if missing:
        raise SimcryoError(f"{path}: CTF columns incomplete, missing "
                           + ", ".join("_" + m for m in missing))

    def opt(label, default):
        v = _per_particle(particles, optics, label, path)
        return np.full(n, default, np.float64) if v is None else v

    ctf = CTFParams(
        defocus_u=particles.as_float("rlnDefocusU"),
        defocus_v=particles.as_float("rlnDefocusV"),
        defocus_angle=opt("rlnDefocusAngle", 0.0),
        voltage=values["rlnVoltage"], cs=values["rlnSphericalAberration"],
        amp_contrast=values["rlnAmplitudeContrast"],
        phase_shift=opt("rlnPhaseShift", 0.0), bfactor=opt("rlnCtfBfactor", 0.0))
    flipped = _per_particle(particles, optics, "rlnCtfDataArePhaseFlipped", path)
    if flipped is not None and (flipped > 0.5).any():
        ctf.flipped = flipped > 0.5
    for k, v in ctf.__dict__.items():
        if v is not None and not np.isfinite(v).all():
            raise SimcryoError(f"{path}: CTF parameter {k} has NaN/Inf values")
    negative = int(((ctf.defocus_u < 0) | (ctf.defocus_v < 0)).sum())
    if negative:
        warn(f"{path}: {negative} of {n} particles have a negative defocus; RELION's "
             "underfocus is positive (Å): check the sign convention of the CTF columns")
    return ctf


def _pixel_size(particles, optics, path, apix, header_apix):
    """The pixel size in Å/px, > 0: a negative one would flip every shift's sign."""
    value, source = _pixel_size_source(particles, optics, path, apix, header_apix)
    check_apix(value, f"{path}: {source}")
    return value


def check_apix(value, where):
    if not (np.isfinite(value) and value > 0):
        raise SimcryoError(f"{where}: the pixel size must be > 0 Å/px (got {value:g})")
    return float(value)


def _pixel_size_source(particles, optics, path, apix, header_apix):
    if apix:
        return float(apix), "--apix"
    for label in ("rlnImagePixelSize", "rlnPixelSize"):
        v = _per_particle(particles, optics, label, path)
        if v is not None:
            if np.ptp(v) > 1e-4:
                raise SimcryoError(f"{path}: mixed pixel sizes ({v.min():.4g}-{v.max():.4g} Å); "
                                   "process each optics group separately")
            return float(v[0]), "_" + label
    mag = _per_particle(particles, optics, "rlnMagnification", path)
    det = _per_particle(particles, optics, "rlnDetectorPixelSize", path)
    if mag is not None and det is not None:
        return float(det[0] * 1e4 / mag[0]), "_rlnDetectorPixelSize / _rlnMagnification"
    if header_apix:
        return float(header_apix), "MRC header"
    raise SimcryoError(f"{path}: pixel size unknown (no _rlnImagePixelSize, no "
                       "magnification/detector pixel, no MRC header value); give --apix")


def star_poses(table, psi_label, x_label, y_label, apix):
    """(psi deg (n,), shift px (n, 2)) of a particle table (RELION's convention), or None
    when the columns are absent. Shift columns are in Å; RELION 3.0 pixel origins
    (_rlnOriginX/Y) are used when the Å ones are absent."""
    if psi_label not in table:
        return None
    if x_label in table and y_label in table:
        shift = np.stack([table.as_float(x_label), table.as_float(y_label)], axis=1) / apix
    elif x_label == "rlnOriginXAngst" and "rlnOriginX" in table and "rlnOriginY" in table:
        shift = np.stack([table.as_float("rlnOriginX"), table.as_float("rlnOriginY")], axis=1)
    else:
        return None
    return table.as_float(psi_label), shift


def load_particles(path, apix=None, require_ctf=False):
    """Open a RELION STAR (3.0 or 3.1) or a bare MRC stack as a ParticleSet."""
    if not os.path.exists(path):
        raise SimcryoError(f"input not found: {path}")
    if path.lower().endswith(STACK_EXTENSIONS):
        pset = _load_bare_stack(path, apix)
    elif path.lower().endswith(".star"):
        pset = _load_star(path, apix)
    else:
        raise SimcryoError(f"{path}: expected a .star file or an MRC stack (.mrcs)")
    if require_ctf and pset.ctf is None:
        raise SimcryoError(f"{path}: CTF parameters required (_rlnDefocusU, _rlnDefocusV, "
                           "_rlnVoltage, _rlnSphericalAberration, _rlnAmplitudeContrast)")
    return pset


def image_keys(names, star_path):
    """(0-based index, stack path) of each _rlnImageName of a STAR, the stack resolved as
    `load_particles` does (else taken relative to the STAR's folder), so that the same
    particle has the same key in STAR files written in different folders."""
    star_dir = os.path.dirname(os.path.abspath(star_path))
    stacks, keys = {}, []
    for name in names:
        idx, rel = parse_image_name(name)
        if rel not in stacks:
            try:
                full = _resolve_stack(rel, star_dir)
            except SimcryoError:
                full = None
            stacks[rel] = os.path.realpath(full or os.path.join(star_dir, rel))
        keys.append((idx, stacks[rel]))
    return keys


def _load_star(path, apix):
    particles, optics = _find_blocks(read_star(path), path)
    star_dir = os.path.dirname(os.path.abspath(path))
    names = particles["rlnImageName"]
    stack_paths, stack_index, resolved = [], {}, {}
    stack_ids = np.empty(len(names), np.int32)
    slices = np.empty(len(names), np.int64)
    bare = {}  # stack id -> first row whose name has no N@ index
    for i, name in enumerate(names):
        idx, rel = parse_image_name(name)
        if rel not in resolved:
            full = _resolve_stack(rel, star_dir)
            if full is None:
                raise SimcryoError(f"image stack not found: {rel} (row {i + 1} of {path})")
            resolved[rel] = full
        full = resolved[rel]
        if full not in stack_index:
            stack_index[full] = len(stack_paths)
            stack_paths.append(full)
        stack_ids[i] = stack_index[full]
        slices[i] = idx
        if "@" not in name:
            bare.setdefault(stack_ids[i], i)
    box, header_apix = None, None
    for sid, sp in enumerate(stack_paths):
        stack = open_stack(sp)
        n, ny, nx = stack.shape
        if ny != nx:
            raise SimcryoError(f"{sp}: images are not square ({nx} x {ny})")
        if box is not None and nx != box:
            raise SimcryoError(f"mixed box sizes: {box} px and {nx} px ({sp}); "
                               "re-extract at one box size")
        box = nx
        if sid in bare and n > 1:
            raise SimcryoError(f"{path} row {bare[sid] + 1}: _rlnImageName "
                               f"'{names[bare[sid]]}' has no N@ image index, but {sp} holds "
                               f"{n} images")
        used = slices[stack_ids == sid]
        if used.max() >= n:
            raise SimcryoError(f"image index {used.max() + 1} out of range for {sp} "
                               f"({n} images)")
        if header_apix is None:
            header_apix = read_apix(sp)
    if optics is not None and "rlnImageSize" in optics:
        sizes = set(optics.as_int("rlnImageSize").tolist())
        if sizes != {box}:
            raise SimcryoError(f"{path}: _rlnImageSize {sorted(sizes)} does not match the "
                               f"stacks' box size {box}")
    pixel = _pixel_size(particles, optics, path, apix, header_apix)
    ctf = _read_ctf(particles, optics, path)
    return ParticleSet(path, particles, optics, stack_paths, stack_ids, slices, box, pixel, ctf)


def _output_optics(pset):
    """The optics table to write: the input's, completed, or one group made from 3.0 columns."""
    if pset.optics is not None:
        optics = StarBlock(dict(pset.optics.columns))
    else:
        optics = StarBlock({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1]})
        for label in CTF_OPTICS_LABELS:
            if label in pset.particles:
                optics.set(label, [pset.particles[label][0]])
    n_groups = optics.n_rows
    optics.set("rlnImagePixelSize", [pset.apix] * n_groups)
    optics.set("rlnImageSize", [pset.box] * n_groups)
    optics.set("rlnImageDimensionality", [2] * n_groups)
    return optics


def write_particles(path, pset, columns=None, image_names=None, remove=()):
    """Write a RELION 3.1 STAR: every input row in input order, every input column kept, plus
    `columns` ({label: values}, added or replaced). Image paths are rewritten relative to the
    output folder (or replaced by `image_names`) so the new file finds its images."""
    table = StarBlock(dict(pset.particles.columns))
    out_dir = os.path.dirname(os.path.abspath(path))
    if image_names is None:
        image_names = [f"{s + 1}@{os.path.relpath(pset.stack_paths[k], out_dir)}"
                       for s, k in zip(pset.slices, pset.stack_ids)]
    table.set("rlnImageName", image_names)
    if pset.optics is None:
        table.set("rlnOpticsGroup", [1] * pset.n)
        for label in ("rlnMagnification", "rlnDetectorPixelSize"):
            table.remove(label)
    columns = dict(columns or {})
    if "rlnOriginXAngst" in columns or "_rlnOriginXAngst" in columns:
        remove = tuple(remove) + ("rlnOriginX", "rlnOriginY")  # 3.0 pixel origins
    for label in remove:
        table.remove(label)
    for label, values in columns.items():
        if len(values) != pset.n:
            raise ValueError(f"column {label}: {len(values)} values for {pset.n} particles")
        table.set(label, values)
    write_star(path, {"optics": _output_optics(pset), "particles": table})
