"""Polar search strategies of the `Aligner` interface (poses in RELION's convention).

* `RingAligner` (default of `simcryo align`): real-space rings of the particle sampled around
  its current centre estimate, correlated over the full circle with the reference's rings by
  FFT along the angle. It keeps the phases and the signal power of the particle, which
  matters at low SNR; the translation is then refined by cross-correlation and the two steps
  alternate (`inner_rounds`). The first round tests several rotation candidates (the highest
  peaks of the ring curve and the half turn of the best) with a full translation search each
  at half the box, since the ring curve alone is measured about a centre that may be wrong:
  without it 5-8 % of the particles of some single-view sets were turned by ~180 degrees
  (benchmarks/align.py, `--set candidates=1`). The later rounds refine on the chosen peak
  only. The global check's candidates are a grid of angles; there the references are turned
  once to every grid angle and the particles are not resampled.
* `MagnitudeAligner` (the paper's): polar Fourier magnitudes, translation invariant,
  correlated over half a circle; the two candidates psi and psi + 180 are each tested with a
  translation search and the better one kept.
"""
from dataclasses import dataclass

import torch

from simcryo.align import polar
from simcryo.align.aligner import (Aligner, Alignment, rotate_shift, warp_to_reference,
                                   wrap_angle)
from simcryo.align.average import rotational_average
from simcryo.align.translate import correlation_peak_of, parabola_offset
from simcryo.image.fourier import crop_spectrum, fourier_shift, lowpass_filter


@dataclass
class AlignParams:
    method: str = "rings"          # "rings" or "magnitude"
    n_theta: int = 128             # angular samples per ring (full circle)
    angle_upsample: int = 8        # zero-padding factor of the angular correlation
    ring_radius: float = None      # outermost ring, px (default: box//2 - 2; ClassAligner
                                   # always sets its mask radius)
    ring_step: float = 1.0         # ring spacing, px
    max_shift: float = None        # largest |shift| searched per step, px (default box/4)
    lowpass: float = 0.0           # band limit of the correlations, Fourier px (0: none)
    inner_rounds: int = 2          # rotation/translation alternations per call
    phase_correlation: bool = False  # whiten the cross-power spectrum in translation search
    candidates: int = 3            # rotation candidates given a translation search (1: off)
    global_step: float = 0.0       # > 0: candidates are every angle of this grid (deg) instead
                                   # of the ring peaks (a coarse exhaustive search)
    grid_chunk: int = 1 << 18      # spectrum values of the grid search held at once (cache
                                   # bound: speed only, the poses do not depend on it)


class References:
    """Everything about a set of K reference images that the polar searches need, computed
    once per iteration: their spectra (band-limited), real-space rings, magnitude rings,
    rotational averages (for centring) and half-box spectra (for the candidate tests)."""

    def __init__(self, images, params):
        k, n, _ = images.shape
        self.box = n
        self.params = params
        dev = images.device
        self.filter = lowpass_filter(n, params.lowpass, dev)
        self.images = images
        self.spectra = torch.fft.rfft2(images) * self.filter
        filtered = torch.fft.irfft2(self.spectra, s=(n, n))
        self.radii = polar.ring_radii(n, params.ring_radius, step=params.ring_step).to(dev)
        self.weights = polar.ring_weights(self.radii)
        zero = torch.zeros(k, 2, device=dev)
        self.rings_fft = polar.rings_fft(polar.sample_rings(filtered, zero, self.radii,
                                                            params.n_theta))
        self.round_spectra = torch.fft.rfft2(rotational_average(filtered))
        self._mag = None
        self._coarse = None
        self._turned = None

    def magnitude_rings(self):
        if self._mag is None:
            self._mag = _magnitude_features(self.images, self.params)
        return self._mag

    def coarse_box(self):
        """Box of the candidate tests (half the box, at least 32 px) and its scale."""
        small = min(self.box, max(32, self.box // 2 // 2 * 2))
        return small, small / self.box

    def coarse_spectra(self):
        if self._coarse is None:
            self._coarse = crop_spectrum(self.spectra, self.coarse_box()[0])
        return self._coarse

    def turned_coarse_spectra(self, step):
        """Half-box spectra (K, G, s, s//2+1) of the references turned by each angle of the
        grid of `step` degrees (psi = -grid angle), so that a grid search resamples K x G
        references once instead of every particle at every angle."""
        if self._turned is None or self._turned[0] != step:
            small, _ = self.coarse_box()
            grid = torch.arange(0.0, 360.0, step, device=self.images.device)
            k, g = self.images.shape[0], len(grid)
            imgs = torch.fft.irfft2(self.coarse_spectra(), s=(small, small))
            imgs = imgs[:, None].expand(k, g, small, small).reshape(k * g, small, small)
            # warp_to_reference(a, -psi, 0)(v) = a(R(psi) v): the reference in the frame of
            # a particle whose pose is psi
            psi = wrap_angle(-grid).repeat(k)
            turned = warp_to_reference(imgs, -psi, torch.zeros(k * g, 2, device=psi.device),
                                       mode="bicubic")
            self._turned = (step, grid, torch.fft.rfft2(turned).view(k, g, small, -1))
        return self._turned[1], self._turned[2]

    def max_shift(self):
        return self.params.max_shift if self.params.max_shift is not None else self.box / 4


class _PolarAligner(Aligner):
    def __init__(self, params):
        self.params = params

    def prepare(self, references):
        return References(references, self.params)

    def align(self, images, refs, labels, shift0=None):
        labels = torch.as_tensor(labels, device=images.device, dtype=torch.long)
        max_shift = refs.max_shift()
        if shift0 is None:
            shift = centre_particles(images, refs, labels, max_shift)
        else:
            shift = torch.as_tensor(shift0, dtype=torch.float32).to(images.device).clone()
        return self._search(images, refs, labels, shift, max_shift)


class RingAligner(_PolarAligner):
    """Real-space ring search with candidate tests (module docstring)."""

    def _search(self, images, refs, labels, shift, max_shift):
        p = refs.params
        rounds = max(p.inner_rounds, 1)
        psi = None
        if p.candidates > 1 or p.global_step > 0:
            # the candidate test is the first round: it chooses the peak and a coarse shift
            psi, shift = _best_candidate(images, refs, labels, shift, max_shift)
            rounds = max(rounds - 1, 1)
        for _ in range(rounds):
            curve = _ring_curve(images, refs, labels, shift)
            if psi is None:
                angle, _ = polar.circular_peak(curve, 360.0)
            else:
                # refine on the chosen peak only: the global maximum of the ring curve may be
                # the wrong-way candidate that the phase-sensitive test rejected
                angle = _local_peak(curve, -psi, _local_window(p))
            psi = wrap_angle(-angle)   # the curve peaks at the reference's turn: -psi
            shift, spec, peak = _translation(images, refs, labels, psi, shift, max_shift)
        return Alignment(wrap_angle(psi), shift, peak, spec)


class MagnitudeAligner(_PolarAligner):
    """The paper's route: rotation mod 180 from magnitudes, then both candidates tested with a
    translation search in real space; the higher correlation peak wins."""

    def _search(self, images, refs, labels, shift, max_shift):
        angle = _rotation_magnitude(images, refs, labels)
        best = None
        for cand in (angle, angle + 180.0):
            psi = wrap_angle(-cand)
            new_shift, spec, peak = _translation(images, refs, labels, psi, shift, max_shift)
            if best is None:
                best = [psi, new_shift, spec, peak]
                continue
            better = peak > best[3]
            best[0] = torch.where(better, psi, best[0])
            best[1] = torch.where(better[:, None], new_shift, best[1])
            best[2] = torch.where(better[:, None, None], spec, best[2])
            best[3] = torch.where(better, peak, best[3])
        psi, shift = best[0], best[1]
        # one more translation pass from the chosen pose sharpens the sub-pixel estimate
        shift, spec, peak = _translation(images, refs, labels, psi, shift, max_shift)
        return Alignment(psi, shift, peak, spec)


def centre_particles(images, refs, labels, max_shift=None):
    """Rotation-independent starting shift (RELION origin, px): cross-correlation with the
    rotationally averaged references locates each particle's centre at -origin."""
    centre, _ = correlation_peak_of(torch.fft.rfft2(images), refs.round_spectra[labels],
                                    refs.max_shift() if max_shift is None else max_shift)
    return -centre


def _ring_curve(images, refs, labels, shift):
    """Rotational correlation (B, L) of the particles' rings about their centres (-shift)
    with their references' rings; it peaks at the reference's turn onto the particle."""
    p = refs.params
    rings = polar.sample_rings(images, -shift, refs.radii, p.n_theta)
    return polar.rotational_correlation(polar.rings_fft(rings), refs.rings_fft[labels],
                                        refs.weights, p.angle_upsample, p.n_theta)


def _local_window(params):
    """Half-width (deg) of the ring-curve window around a chosen candidate: a ring peak moves
    little when the centre is refined; a grid candidate is within half a step of its peak."""
    return max(params.global_step, 10.0)


def _local_peak(curve, angle, window):
    """Sub-sample peak of circular curves (B, L) within +-window degrees of `angle` (B,)."""
    L = curve.shape[-1]
    grid = torch.arange(L, device=curve.device, dtype=curve.dtype) * (360.0 / L)
    near = wrap_angle(grid[None] - angle[:, None]).abs() <= window
    masked = torch.where(near, curve, torch.full_like(curve, -float("inf")))
    idx = masked.argmax(-1, keepdim=True)
    # the three samples around the windowed maximum (the window holds them but for its edge)
    y = curve.gather(-1, torch.cat([(idx - 1) % L, idx, (idx + 1) % L], -1))
    off = parabola_offset(y[:, 0], y[:, 1], y[:, 2])
    return wrap_angle((idx[:, 0].to(curve.dtype) + off) * (360.0 / L))


def _candidate_angles(curve, count):
    """The `count` highest local maxima of each circular curve (B, L), plus the angle half a
    turn from the best. Returns curve angles (B, count + 1) in degrees."""
    L = curve.shape[-1]
    is_max = (curve >= curve.roll(1, -1)) & (curve >= curve.roll(-1, -1))
    vals = torch.where(is_max, curve, torch.full_like(curve, -float("inf")))
    top = vals.topk(count, dim=-1).indices
    half = (top[:, :1] + L // 2) % L
    return torch.cat([top, half], -1).to(curve.dtype) * (360.0 / L)


def _best_candidate(images, refs, labels, shift, max_shift):
    """Phase-sensitive choice among rotation candidates: each candidate angle gets a
    translation search (cross-correlation over every shift in the disc) at half the box, and
    the highest correlation peak wins. The low frequencies decide between such candidates at
    a quarter of the cost of a full-box search. Candidates: the ring curve's peaks, or every
    angle of a grid (`global_step`)."""
    p = refs.params
    small, scale = refs.coarse_box()
    xs = images if small == refs.box else torch.fft.irfft2(
        crop_spectrum(torch.fft.rfft2(images), small), s=(small, small))
    if p.global_step > 0:
        return _best_on_grid(xs, refs, labels, shift, max_shift)
    cands = _candidate_angles(_ring_curve(images, refs, labels, shift), p.candidates - 1)
    # every candidate of every particle in one batch, candidate-major: (C * B,)
    b, c = cands.shape
    psi = wrap_angle(-cands.t().reshape(-1))
    shifts = shift.repeat(c, 1)
    fa = torch.fft.rfft2(warp_to_reference(xs.repeat(c, 1, 1), psi, shifts * scale))
    delta, peak = correlation_peak_of(fa.view(c, b, *fa.shape[1:]), refs.coarse_spectra()[labels],
                                      max_shift * scale)
    # the first of equal peaks wins, as in a loop over the candidates
    pick = peak.view(c, b).argmax(0) * b + torch.arange(b, device=images.device)
    psi, delta = psi[pick], delta[pick]
    return psi, _clamp_norm(shift - rotate_shift(-psi, delta / scale), max_shift)


def _best_on_grid(xs, refs, labels, shift, max_shift):
    """`_best_candidate` over a grid of angles, with the references turned instead of the
    particles: the particle is only moved to its centre (a phase ramp), and at pose psi the
    correlation with the turned reference peaks at d = R(-psi) delta, so the new shift is
    shift - d (full-box px). The particles are taken a few at a time against every grid
    angle at once (params.grid_chunk: the maps of a chunk stay in the CPU cache); the
    first of equal peaks wins, as in the candidate loop."""
    small, scale = refs.coarse_box()
    grid, turned = refs.turned_coarse_spectra(refs.params.global_step)
    centred = fourier_shift(torch.fft.rfft2(xs), shift * scale)
    b, g = len(xs), len(grid)
    d = torch.empty(b, g, 2, device=xs.device)
    peak = torch.empty(b, g, device=xs.device)
    chunk = max(1, int(refs.params.grid_chunk) // (g * centred[0].numel()))
    # conjugated once: the product with a lazily conjugated, broadcast operand is slower
    conj = turned.conj().resolve_conj()
    for s in range(0, b, chunk):
        cd, cp = correlation_peak_of(centred[s:s + chunk, None],
                                     conj[labels[s:s + chunk]].conj(), max_shift * scale)
        d[s:s + chunk], peak[s:s + chunk] = cd.view(-1, g, 2), cp.view(-1, g)
    best = peak.argmax(1)
    rows = torch.arange(b, device=xs.device)
    return wrap_angle(-grid)[best], _clamp_norm(shift - d[rows, best] / scale, max_shift)


def _translation(images, refs, labels, psi, shift, max_shift):
    """Bring the particles into the reference frame with the current pose, find the residual
    shift delta there by cross-correlation (aligned ~= reference moved by delta) and fold it
    into the pose. Returns the new shift, the aligned spectrum (moved back by -delta) and the
    correlation peak."""
    a = warp_to_reference(images, psi, shift)
    fa = torch.fft.rfft2(a)
    delta, peak = correlation_peak_of(fa, refs.spectra[labels], max_shift,
                                      phase=refs.params.phase_correlation)
    new_shift = _clamp_norm(shift - rotate_shift(-psi, delta), max_shift)
    return new_shift, fourier_shift(fa, -delta), peak


def _magnitude_radii(box, params):
    top = params.lowpass if 0 < params.lowpass < box / 2 else box / 2 - 1
    return torch.arange(2, max(int(top), 3), dtype=torch.float32)


def _magnitude_features(images, params):
    """Ring-mean-subtracted polar magnitude spectra -> angular FFT (half circle)."""
    radii = _magnitude_radii(images.shape[-1], params)
    mag = polar.magnitude_polar(images, radii, params.n_theta // 2)
    mag = mag - mag.mean(-1, keepdim=True)
    return polar.rings_fft(mag), radii.to(images.device)


def _rotation_magnitude(images, refs, labels):
    """Turn of the references onto the particles modulo 180 degrees, from magnitudes."""
    feats, radii = refs.magnitude_rings()
    p = refs.params
    mine = polar.magnitude_polar(images, radii, p.n_theta // 2)
    mine = polar.rings_fft(mine - mine.mean(-1, keepdim=True))
    curve = polar.rotational_correlation(mine, feats[labels], radii, p.angle_upsample,
                                         p.n_theta // 2)
    return polar.circular_peak(curve, 180.0)[0]


def _clamp_norm(shift, limit):
    norm = shift.norm(dim=-1, keepdim=True)
    return torch.where(norm > limit, shift * (limit / norm.clamp_min(1e-9)), shift)
