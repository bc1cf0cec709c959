"""Combined in-plane rotation + translation alignment of particles against references.

Pose conventions. Public results (`align_to_references`, `ClassAligner.poses`) follow
`simcryo.image.geometry` / RELION: p ~= transform_images(A, psi, shift), so
`geometry.align_images(p, psi, shift)` ~= A (psi in degrees, [-180, 180); shift (x, y) px).
Internally (`align_internal`, `warp_to_reference`, ClassAligner.psi/shift) the pose is
(psi_i, s_i) with p(R(psi_i) u + s_i) = A(u), u measured from the box centre, i.e. A rotated
by +psi_i then translated by +s_i; geometry's forward model rotates by -psi and translates by
-shift, so the two are related by a sign: psi = -psi_i, shift = -s_i (`to_geometry`).

Two rotation searches are provided (choose with `AlignParams.method`):

* "rings" (default): real-space rings of the particle sampled around its current centre
  estimate, correlated over the full circle with the reference's rings by FFT along the
  angle. It keeps the phases (so no 180-degree ambiguity) and the signal power of the
  particle, which matters at low SNR; the translation is then refined by cross-correlation
  and the two steps alternate (`inner_rounds`).
* "magnitude" (the paper): polar Fourier magnitudes, translation invariant, correlated over
  half a circle; the two candidates psi and psi + 180 are each tested in real space with a
  translation search and the better one kept.
"""
from dataclasses import dataclass

import torch

from simcryo.align import polar
from simcryo.align.average import rotational_average
from simcryo.align.translate import correlation_peak, cross_correlate
from simcryo.image.fourier import fourier_shift, lowpass_filter


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


_BASE_CACHE = {}


def _base_grid(box, device):
    """(box*box, 3) rows [ux, uy, 1] in px from the box centre (cached per box/device)."""
    key = (box, str(device))
    if key not in _BASE_CACHE:
        ax = torch.arange(box, device=device, dtype=torch.float32) - box // 2
        uy, ux = torch.meshgrid(ax, ax, indexing="ij")
        _BASE_CACHE[key] = torch.stack([ux.reshape(-1), uy.reshape(-1),
                                        torch.ones(box * box, device=device)], -1)
    return _BASE_CACHE[key]


def warp_grid(psi, shift, box, device):
    """grid_sample grid for a(u) = p(R(psi) u + shift): output pixel u (from the box centre)
    reads the input at R u + shift. One batched matmul (align_corners=False coordinates)."""
    t = torch.deg2rad(psi.to(device, torch.float32))
    c, s = torch.cos(t), torch.sin(t)
    sh = shift.to(device, torch.float32)
    scale = 2.0 / box
    off = (2 * (box // 2) + 1) / box - 1.0
    theta = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1),
                         torch.stack([sh[:, 0] * scale + off, sh[:, 1] * scale + off], -1)], 1)
    theta[:, :2] *= scale
    base = _base_grid(box, device)
    return torch.matmul(base, theta).view(-1, box, box, 2)


def warp_to_reference(images, psi, shift, mode="bilinear"):
    """Bring particles into the reference frame (fast, bilinear): a(u) = p(R u + shift)."""
    grid = warp_grid(psi, shift, images.shape[-1], images.device)
    out = torch.nn.functional.grid_sample(images[:, None], grid, mode=mode,
                                          padding_mode="zeros", align_corners=False)
    return out[:, 0]


def rotate_shift(psi, delta):
    """R(psi) delta for (B,) angles and (B, 2) vectors."""
    return (polar.rotation_matrix(psi) @ delta[..., None])[..., 0]


def wrap_angle(psi):
    return torch.remainder(psi + 180.0, 360.0) - 180.0


class References:
    """Everything about a set of K reference images that the alignment needs, computed once
    per iteration: their spectra (band-limited), real-space rings and magnitude rings."""

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
        self._mag = None
        self.round_spectra = torch.fft.rfft2(rotational_average(filtered))

    def magnitude_rings(self):
        if self._mag is None:
            self._mag = _magnitude_features(self.images, self.params)
        return self._mag

    def max_shift(self):
        return self.params.max_shift if self.params.max_shift is not None else self.box / 4


def _magnitude_radii(box, params):
    top = params.lowpass if 0 < params.lowpass < box / 2 else box / 2 - 1
    return torch.arange(2, max(int(top), 3), dtype=torch.float32)


def _magnitude_features(images, params):
    """Ring-mean-subtracted polar magnitude spectra -> angular FFT (half circle)."""
    radii = _magnitude_radii(images.shape[-1], params)
    mag = polar.magnitude_polar(images, radii, params.n_theta // 2)
    mag = mag - mag.mean(-1, keepdim=True)
    return polar.rings_fft(mag), radii.to(images.device)


def _rotation_rings(images, refs, labels, shift):
    p = refs.params
    rings = polar.sample_rings(images, shift, refs.radii, p.n_theta)
    curve = polar.rotational_correlation(polar.rings_fft(rings), refs.rings_fft[labels],
                                         refs.weights, p.angle_upsample, p.n_theta)
    return polar.circular_peak(curve, 360.0)


def _translation(images, refs, labels, psi, shift, max_shift):
    """Warp by the current pose, find the residual shift delta in the reference frame by
    cross-correlation. Returns new shift, the aligned spectrum (shifted by -delta), peak."""
    a = warp_to_reference(images, psi, shift)
    fa = torch.fft.rfft2(a)
    cc = cross_correlate(fa, refs.spectra[labels], weight=None,
                         phase=refs.params.phase_correlation)
    delta, peak = correlation_peak(cc, max_shift)
    return shift + rotate_shift(psi, delta), fourier_shift(fa, -delta), peak


def _rotation_magnitude(images, refs, labels):
    feats, radii = refs.magnitude_rings()
    p = refs.params
    mine = polar.magnitude_polar(images, radii, p.n_theta // 2)
    mine = polar.rings_fft(mine - mine.mean(-1, keepdim=True))
    curve = polar.rotational_correlation(mine, feats[labels], radii, p.angle_upsample,
                                         p.n_theta // 2)
    return polar.circular_peak(curve, 180.0)


def to_geometry(psi_i, shift_i):
    """Internal pose -> simcryo.image.geometry / RELION pose (and back: the map is its own inverse)."""
    return wrap_angle(-psi_i), -shift_i


def align_to_references(images, refs, labels, shift0=None):
    """Align particles (B, n, n) to references `refs` (a References), particle i against
    reference labels[i]; shift0: starting shift estimates (B, 2) px, default: a
    rotation-independent centring. Poses in the simcryo.image.geometry convention:
    align_images(images[i], psi[i], shift[i]) ~= reference labels[i].

    Returns a dict: psi (B,), shift (B, 2), score (B,) (cross-correlation peak) and spectrum
    (B, n, n//2+1): the rfft2 of each particle brought into its reference's frame."""
    start = None if shift0 is None else -torch.as_tensor(shift0, dtype=torch.float32)
    out = align_internal(images, refs, labels, start)
    out["psi"], out["shift"] = to_geometry(out["psi"], out["shift"])
    return out


def align_internal(images, refs, labels, shift0=None):
    """`align_to_references` with poses in the internal convention (module docstring)."""
    b, n, _ = images.shape
    dev = images.device
    labels = torch.as_tensor(labels, device=dev, dtype=torch.long)
    shift = torch.zeros(b, 2, device=dev) if shift0 is None else shift0.to(dev).float().clone()
    max_shift = refs.max_shift()
    p = refs.params
    if shift0 is None:
        shift = centre_particles(images, refs, labels, max_shift)
    if p.method == "magnitude":
        return _align_magnitude(images, refs, labels, shift, max_shift)
    if p.method != "rings":
        raise ValueError(f"unknown alignment method {p.method!r}")
    for _ in range(max(p.inner_rounds, 1)):
        psi, _ = _rotation_rings(images, refs, labels, shift)
        shift, spec, peak = _translation(images, refs, labels, psi, shift, max_shift)
        shift = _clamp_norm(shift, max_shift)
    return {"psi": wrap_angle(psi), "shift": shift, "score": peak, "spectrum": spec}


def centre_particles(images, refs, labels, max_shift=None):
    """Rotation-independent centre estimate: cross-correlation with the rotationally
    averaged references."""
    cc = cross_correlate(torch.fft.rfft2(images), refs.round_spectra[labels])
    shift, _ = correlation_peak(cc, refs.max_shift() if max_shift is None else max_shift)
    return shift


def _clamp_norm(shift, limit):
    norm = shift.norm(dim=-1, keepdim=True)
    return torch.where(norm > limit, shift * (limit / norm.clamp_min(1e-9)), shift)


def _align_magnitude(images, refs, labels, shift, max_shift):
    """Paper route: rotation mod 180 from magnitudes, then both candidates tested with a
    translation search in real space; the higher correlation peak wins."""
    psi_a, _ = _rotation_magnitude(images, refs, labels)
    best = None
    for cand in (psi_a, psi_a + 180.0):
        new_shift, spec, peak = _translation(images, refs, labels, cand, shift, max_shift)
        if best is None:
            best = [cand, new_shift, spec, peak]
            continue
        better = peak > best[3]
        best[0] = torch.where(better, cand, best[0])
        best[1] = torch.where(better[:, None], new_shift, best[1])
        best[2] = torch.where(better[:, None, None], spec, best[2])
        best[3] = torch.where(better, peak, best[3])
    psi, shift, spec, peak = best
    # One more translation pass from the chosen pose sharpens the sub-pixel estimate.
    shift, spec, peak = _translation(images, refs, labels, psi, _clamp_norm(shift, max_shift),
                                     max_shift)
    return {"psi": wrap_angle(psi), "shift": _clamp_norm(shift, max_shift), "score": peak,
            "spectrum": spec}


_HALF_PLANE_CACHE = {}


def _half_plane_weights(n, m, device):
    """Weights that turn a sum over the rfft2 half plane into the full-plane sum (the mean
    term excluded)."""
    key = (n, m, str(device))
    if key not in _HALF_PLANE_CACHE:
        w = torch.full((n, m), 2.0, device=device)
        w[:, 0] = 1.0
        if n % 2 == 0:
            w[:, -1] = 1.0
        w[0, 0] = 0.0
        _HALF_PLANE_CACHE[key] = w
    return _HALF_PLANE_CACHE[key]


def spectral_power(spec):
    """Sum of |F|^2 over the full plane (mean excluded) from rfft2 spectra (B, n, m)."""
    w = _half_plane_weights(spec.shape[-2], spec.shape[-1], spec.device)
    return ((spec.real ** 2 + spec.imag ** 2) * w).sum((-2, -1))


def normalized_correlation(spec, ref_spec, ctf2=None, part_pow=None):
    """Normalised cross-correlation of aligned particle spectra (B, n, m) with reference
    spectra (B, n, m) (mean excluded).

    With CTF: `spec` is CTF * F (the particle multiplied by its CTF, in the reference frame),
    ctf2 the CTF^2 there and part_pow the power of the particle itself (`spectral_power` of
    F): the result is the correlation of the particle with the reference seen through its
    CTF, so different classes are compared fairly."""
    w = _half_plane_weights(spec.shape[-2], spec.shape[-1], spec.device)
    num = ((spec * ref_spec.conj()).real * w).sum((-2, -1))
    ref_pow = ref_spec.real ** 2 + ref_spec.imag ** 2
    if ctf2 is not None:
        ref_pow = ref_pow * ctf2
    if part_pow is None:
        part_pow = spectral_power(spec)
    den = torch.sqrt((ref_pow * w).sum((-2, -1)) * part_pow).clamp_min(1e-30)
    return num / den
