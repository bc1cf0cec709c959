"""Exhaustive in-plane search: every angle of a grid x every shift (FFT cross-correlation).

The references are rotated once per `prepare` to every grid angle; a particle's correlation
with a rotated reference at every shift is one FFT product. Two uses:

* the classification EM (simcryo.classify.refine) scores every particle against every
  (class, angle, shift) cell (`scores`) and marginalises over the cells: `psi` and `shifts`
  give each cell's pose, `marginal_spectra` the posterior-weighted particle per angle;
* precise single poses (`align`): the coarse grid, then `fine_rounds` of a finer angular grid
  around the peak after the shift found so far is undone exactly (Fourier), with parabolic
  sub-sample peaks in angle and shift (simcryo.evaluation.frc, benchmarks);
* local refinement of poses that are already close (`refine`, the last stage of
  simcryo.align.classalign): the grid angle nearest each pose and its two neighbours, from
  references turned once to every grid angle.

Poses are RELION's (simcryo.image.geometry): cell (psi, shift) models
particle ~= transform_images(reference, psi, shift).
"""
import math
from dataclasses import dataclass

import torch

from simcryo.align.aligner import Aligner, Alignment, warp_to_reference, wrap_angle
from simcryo.align.polar import circular_peak
from simcryo.align.scores import half_plane_weights
from simcryo.align.translate import (correlation_peak, correlation_window, cross_correlate,
                                     parabola_offset, window_peak)
from simcryo.image.fourier import fourier_shift, shift_images
from simcryo.image.geometry import rotate_images


@dataclass
class ExhaustiveParams:
    n_angles: int = 36              # coarse grid: psi = j * 360 / n_angles deg
    max_shift: float = None         # largest |shift| searched, px (None: the whole box,
                                    # circular; `scores` needs a value: its cells are a disc)
    fine_rounds: int = 0            # `align`: rounds of the finer angular grid
    fine_factor: int = 10           # finer step = coarse step / fine_factor, over
                                    # +-fine_factor finer steps around the current angle
    interpolation: str = "bicubic"  # rotation of the references (grid_sample mode): bilinear
                                    # smooths every angle but the multiples of 90 degrees, which
                                    # then win (one benchmark average: 89.9 instead of 82.3)
    chunk_values: int = 1 << 20     # `align`, `scores`: correlation values held at once.
                                    # Bounds their memory, and keeps each array under glibc's
                                    # 32 MB mmap threshold: above it every allocation is mapped
                                    # and faulted in afresh, and an EM step of 1,500 particles
                                    # x 10 classes (32 px, 2 cores) took 7.7 s at 1 << 24,
                                    # 2.3 s at 1 << 20


class GridReferences:
    """References (K, n, n) rotated to every grid angle (masked when the aligner has a mask):
    images (K, A, n, n), spectra (K, A, n, n//2+1) and power (K, A, n, n//2+1) = |spectra|^2
    weighted so that a sum over the rfft2 half plane is the full-plane sum / n^2."""

    def __init__(self, references, rotated, mask):
        k, n, _ = references.shape
        self.references = references
        self.mask = mask
        self.images = rotated
        self.spectra = torch.fft.rfft2(rotated)
        w = half_plane_weights(n, n // 2 + 1, references.device).clone()
        w[0, 0] = 1.0  # the mean term counts too: the correlations include it
        self.power = (self.spectra.real ** 2 + self.spectra.imag ** 2) * (w / (n * n))


class ExhaustiveAligner(Aligner):
    """Grid search over (angle, shift); see the module docstring. `mask` (n, n), optional,
    multiplies every rotated reference."""

    def __init__(self, params=None, mask=None):
        self.p = params or ExhaustiveParams()
        self.mask = mask

    # -- the grid -------------------------------------------------------------------------
    def psi(self, device=None):
        """Grid angles (A,) deg in [-180, 180): cell j's rotated reference is
        transform_images(reference, psi[j], 0)."""
        step = 360.0 / self.p.n_angles
        return wrap_angle(torch.arange(self.p.n_angles, device=device,
                                       dtype=torch.float32) * step)

    def shifts(self, device=None):
        """Grid shifts (S, 2) px (RELION _rlnOriginX/Y): the integer shifts within max_shift."""
        r = int(math.floor(self.p.max_shift))
        d = torch.arange(-r, r + 1, device=device)
        sy, sx = torch.meshgrid(d, d, indexing="ij")
        keep = sx ** 2 + sy ** 2 <= self.p.max_shift ** 2 + 1e-6
        return torch.stack([sx[keep], sy[keep]], -1).float()

    def _rotate(self, references, psi):
        """transform_images(reference, psi, 0) of (R, n, n) references, masked."""
        out = rotate_images(references, -psi, mode=self.p.interpolation)
        return out if self.mask is None else out * self.mask

    def prepare(self, references):
        k, n, _ = references.shape
        psi = self.psi(references.device)
        a = len(psi)
        rotated = self._rotate(references.repeat_interleave(a, 0), psi.repeat(k))
        return GridReferences(references, rotated.view(k, a, n, n), self.mask)

    # -- the EM's score grid ----------------------------------------------------------------
    def scores(self, images, prepared, ctf=None, classes=None):
        """Correlations of every particle with every grid cell: (cc (B, K, A, S), power
        (B, K, A)), cc = <x, C T_cell(reference)> and power = ||C T_cell(reference)||^2
        for the particle's CTF C (`ctf` (B, n, n//2+1), real and even; None: C = 1), so
        -||x - C T(ref)||^2 / 2 = cc - power / 2 - ||x||^2 / 2. `classes` (B, M): score
        particle b only against references classes[b] (the K axis becomes M)."""
        b, n, _ = images.shape
        k, a = prepared.spectra.shape[:2]
        xf = torch.fft.rfft2(images)
        flat_power = prepared.power.reshape(k, a, -1)
        kk = k if classes is None else classes.shape[1]
        if ctf is None:
            total = flat_power.sum(-1)
            power = (total[None] if classes is None else total[classes]).expand(b, kk, a)
        else:
            xf = xf * ctf  # <x, C T> = <C x, T> for a real, even C
            # every class's power, then the searched ones: flat_power[classes] would hold a
            # (particle, class, angle) spectrum each
            power = torch.einsum("bf,kaf->bka", (ctf ** 2).reshape(b, -1), flat_power)
            if classes is not None:
                power = power.gather(1, classes[:, :, None].expand(-1, -1, a))
        iy, ix = self._cell_index(n, images.device)
        # particles in chunks of at most chunk_values correlation values: the (particle,
        # class, angle) maps and their spectra grow with the classes searched, which the
        # EM's re-seeded classes can take to dozens
        chunk = max(1, self.p.chunk_values // (kk * a * n * n))
        cells = []
        for s in range(0, b, chunk):
            part = slice(s, s + chunk)
            ref_spec = (prepared.spectra.view(1, k * a, n, -1) if classes is None
                        else prepared.spectra[classes[part]].flatten(1, 2))
            cells.append(cross_correlate(xf[part, None], ref_spec)[:, :, iy, ix])
        return torch.cat(cells).view(b, kk, a, -1), power

    def _cell_index(self, n, device):
        """Pixels of an FFT-order correlation map holding each grid shift: the map peaks at
        d where particle ~= reference moved by d, i.e. at d = -shift."""
        s = self.shifts(device).long()
        return (-s[:, 1]) % n, (-s[:, 0]) % n

    def marginal_spectra(self, spectra, post):
        """Particles averaged over the shift grid: spectra (P, n, m) of particles, post
        (P, A, S) weights of the cells -> (P, A, n, m) = sum_s post[p, a, s] * the spectrum
        of particle p translated by shift s (the translation half of align_images), i.e. in
        the frame of grid angle a's rotated reference."""
        p, n = spectra.shape[:2]
        a = post.shape[1]
        s = self.shifts(spectra.device).long()
        wmap = torch.zeros(p, a, n, n, device=spectra.device, dtype=post.dtype)
        wmap[:, :, s[:, 1] % n, s[:, 0] % n] = post
        return spectra[:, None] * torch.fft.rfft2(wmap)

    # -- precise single poses -------------------------------------------------------------
    def align(self, images, prepared, labels, shift0=None):
        """Best pose of particle i against reference labels[i]: coarse grid, then the finer
        angular rounds (module docstring). Scores: normalised correlation peaks."""
        b, n, _ = images.shape
        lab = torch.as_tensor(labels, device=images.device).long()
        x = images
        if shift0 is not None:
            shift0 = torch.as_tensor(shift0, dtype=torch.float32, device=images.device)
            x = shift_images(images, shift0)  # search about the given shifts
        a = prepared.spectra.shape[1]
        chunk = max(1, int(self.p.chunk_values // (a * n * n)))
        parts = [self._coarse(x[s:s + chunk], prepared, lab[s:s + chunk])
                 for s in range(0, b, chunk)]
        psi, shift, score = (torch.cat(t) for t in zip(*parts))
        for _ in range(self.p.fine_rounds):
            psi, shift, score = self._fine(x, prepared.references[lab], psi, shift)
        if shift0 is not None:
            shift = shift + shift0
        spectrum = torch.fft.rfft2(warp_to_reference(images, psi, shift))
        return Alignment(psi=psi, shift=shift, score=score, spectrum=spectrum)

    def _coarse(self, images, prepared, labels):
        """Best grid angle (parabolic, circular) and sub-pixel shift of each particle."""
        b, n, _ = images.shape
        a = prepared.spectra.shape[1]
        cc = cross_correlate(torch.fft.rfft2(images)[:, None], prepared.spectra[labels])
        d, peak = _subpixel_peak(cc.view(b * a, n, n), self.p.max_shift)
        psi, _ = circular_peak(peak.view(b, a))
        best = peak.view(b, a).argmax(1)
        rows = torch.arange(b, device=images.device)
        norm2 = (prepared.images[labels, best] ** 2).sum((-2, -1))
        score = peak.view(b, a)[rows, best] / _norm(images, norm2)
        return psi, -d.view(b, a, 2)[rows, best], score

    def _fine(self, images, references, psi, shift):
        """One finer angular round about (psi, shift): the shift is undone exactly first, so
        that its sub-pixel part no longer biases the angle."""
        b, n, _ = images.shape
        f = int(self.p.fine_factor)
        step = 360.0 / self.p.n_angles / f
        offsets = torch.arange(-f, f + 1, device=images.device, dtype=torch.float32) * step
        angles = psi[:, None] + offsets[None]                         # (B, F)
        nf = len(offsets)
        rotated = self._rotate(references.repeat_interleave(nf, 0), angles.reshape(-1))
        norm2 = (rotated ** 2).sum((-2, -1)).view(b, nf)
        return _local_best(torch.fft.rfft2(shift_images(images, shift)),
                           torch.fft.rfft2(rotated).view(b, nf, n, -1), norm2, angles, step,
                           shift, images)

    def refine(self, images, prepared, labels, psi, shift):
        """Local refinement of poses (psi (B,) deg, shift (B, 2) px) that are already close:
        the grid angle nearest psi and its two neighbours, the particle moved by its shift
        exactly (Fourier), the residual shift within params.max_shift, psi at the vertex of
        the parabola through the three correlations (`_vertex_of_three`). `prepared` (of
        `prepare`) holds the references turned to every grid angle once, so a particle
        costs three correlation maps and no resampling.
        -> Alignment (spectrum None)."""
        b, n, _ = images.shape
        a = prepared.spectra.shape[1]
        step = 360.0 / a
        lab = torch.as_tensor(labels, device=images.device).long()[:, None]
        near = torch.round(torch.remainder(psi.to(images.device), 360.0) / step).long()
        cells = (near[:, None] + torch.arange(-1, 2, device=images.device)[None]) % a
        norm2 = (prepared.images[lab, cells] ** 2).sum((-2, -1))
        xf = fourier_shift(torch.fft.rfft2(images), shift.to(images.device))
        angles = (near[:, None] + torch.arange(-1, 2, device=images.device)[None]).float() * step
        psi, shift, score = _vertex_of_three(xf, prepared.spectra[lab, cells], norm2, angles,
                                             step, psi.to(images.device),
                                             shift.to(images.device), images,
                                             self.p.max_shift)
        return Alignment(psi=psi, shift=shift, score=score)


def _local_best(xf, ref_spec, norm2, angles, step, shift, images):
    """The best of F candidate angles (B, F) deg, `step` apart, for particles whose spectra
    xf (B, n, m) are already moved by `shift` (B, 2): each angle's reference spectrum
    (B, F, n, m) (norm2 (B, F): its squared norm) is correlated at every shift, its sub-pixel
    peak taken, and the angle refined by the parabola through the best peak and its
    neighbours (none at the ends). Returns (psi, shift, normalised score)."""
    b, nf = angles.shape
    d, peak = _peaks(xf, ref_spec, None)
    best = peak.argmax(1)
    rows = torch.arange(b, device=xf.device)
    inner = (best > 0) & (best < nf - 1)
    lo, hi = (best - 1).clamp(min=0), (best + 1).clamp(max=nf - 1)
    off = parabola_offset(peak[rows, lo], peak[rows, best], peak[rows, hi])
    new_psi = wrap_angle(angles[rows, best] + torch.where(inner, off, 0.0) * step)
    new_shift = shift - d[rows, best]
    return new_psi, new_shift, peak[rows, best] / _norm(images, norm2[rows, best])


def _vertex_of_three(xf, ref_spec, norm2, angles, step, psi, shift, images, max_shift):
    """`refine`'s choice among three angles (B, 3) `step` apart around the start psi (B,):
    the vertex of the parabola through their three peaks, within one step of the middle
    angle (taking the best angle alone would snap psi to the grid whenever an end wins); where
    the three do not bend down, psi stays. Each peak is the correlation at the sub-pixel
    shift of its map, evaluated there exactly (a phase ramp), per unit reference norm: the
    peaks of angles a degree apart differ by ~1e-4 (relative), less than the error of the
    map's interpolated peak values and than the few 1e-5 by which the bicubic turn lowers a
    reference's norm (more at 45 than at 90 degrees). On noise-free particles at half-degree
    angles this brought the error from up to 0.19 to under 0.01 deg (one shift for the three
    angles, from the middle map: 0.1 deg; tests/engine/test_align.py). Returns (psi, shift
    at the cell nearest the vertex, normalised score)."""
    b, nf, n = ref_spec.shape[:3]
    d, _ = _peaks(xf, ref_spec, max_shift)
    moved = fourier_shift(xf[:, None].expand(b, nf, *xf.shape[1:]).reshape(b * nf, n, -1),
                          -d.reshape(-1, 2))
    w = half_plane_weights(n, xf.shape[-1], xf.device).clone()
    w[0, 0] = 1.0  # the mean term counts, as in the norms
    peak = ((moved.view(b, nf, n, -1) * ref_spec.conj()).real * w).sum((-2, -1))
    peak = peak / (n * n * norm2.clamp_min(1e-30).sqrt())
    ym, y0, yp = peak.unbind(1)
    stay = wrap_angle(psi - angles[:, 1]) / step
    off = torch.where(ym - 2 * y0 + yp < 0, parabola_offset(ym, y0, yp, limit=1.0), stay)
    cell = torch.round(off).long() + 1
    rows = torch.arange(b, device=xf.device)
    new_psi = wrap_angle(angles[:, 1] + off * step)
    return new_psi, shift - d[rows, cell], peak[rows, cell] / _norm(images, 1.0)


def _peaks(xf, ref_spec, max_shift):
    """Sub-pixel peaks (d (B, F, 2), value (B, F)) of the correlation maps of particle
    spectra xf (B, n, m) with reference spectra (B, F, n, m): `_subpixel_peak`, from the
    maps' window about the disc where max_shift leaves one (translate.correlation_window:
    at 64 px and 2 px, 7 of 64 rows are transformed and 49 pixels searched)."""
    b, nf, n = ref_spec.shape[:3]
    got = correlation_window(xf[:, None], ref_spec, max_shift, margin=2)
    if got is None:
        cc = cross_correlate(xf[:, None], ref_spec)
        d, peak = _subpixel_peak(cc.view(b * nf, n, n), max_shift)
    else:
        d, peak = _subpixel_window_peak(*got)
    return d.view(b, nf, 2), peak.view(b, nf)


def _subpixel_window_peak(flat, win):
    """`_subpixel_peak` on the values (B, (2w+1)^2) of a translate.Window of margin 2: the
    rounded shift is at most one pixel beyond the disc (a peak on its edge, offset by half
    a pixel outwards), so it and its neighbours are in the window."""
    d, _ = window_peak(flat, win)
    i = torch.round(d)
    s = 2 * win.w + 1
    at = ((i[:, 1] + win.w) * s + (i[:, 0] + win.w)).long()
    val = flat.gather(1, at[:, None] + win.near)   # self, left, up, right, down
    off = d - i
    gain = val[:, 3:5] - val[:, 1:3]                # (x, y)
    return d, val[:, 0] + 0.25 * (gain[:, 0] * off[:, 0] + gain[:, 1] * off[:, 1])


def _subpixel_peak(cc, max_shift=None):
    """correlation_peak's sub-pixel shift d (B, 2) of FFT-order maps (B, n, n), with the
    value of its separable parabolas there: angles are ranked by it, since the value at the
    nearest integer shift is lower by up to a few % at half-pixel shifts, enough to favour a
    wrong angle whose rotation moves the particle onto an integer shift."""
    b, n, _ = cc.shape
    d, _ = correlation_peak(cc, max_shift)
    i = torch.round(d).long()
    off = d - i
    ix, iy = i[:, 0] % n, i[:, 1] % n
    rows = torch.arange(b, device=cc.device)
    y0 = cc[rows, iy, ix]
    gain_x = cc[rows, iy, (ix + 1) % n] - cc[rows, iy, (ix - 1) % n]
    gain_y = cc[rows, (iy + 1) % n, ix] - cc[rows, (iy - 1) % n, ix]
    return d, y0 + 0.25 * (gain_x * off[:, 0] + gain_y * off[:, 1])


def _norm(images, ref_norm2):
    return torch.sqrt((images ** 2).sum((-2, -1)) * ref_norm2).clamp_min(1e-12)
