"""Polar resampling and rotational cross-correlation.

Two polar representations are used:

* real-space rings (`sample_rings`): the image sampled on circles around a per-image centre,
  so a translation estimate is applied for free by moving the centre;
* Fourier magnitudes (`magnitude_polar`): |FFT| sampled on circles around the zero frequency;
  translation invariant, but centrosymmetric, so the rotation is only known modulo 180 degrees
  (the paper's route; see `simcryo.align.rings` for how the ambiguity is resolved).

Angles: theta_j = 2*pi*j / n_theta, point (x, y) = centre + r * (cos theta, sin theta) in pixel
coordinates (x = column, y = row). If image p is image a rotated by psi (`rotation_matrix`),
the ring of p at theta equals the ring of a at theta - psi, and the rotational correlation of
p against a peaks at psi.
"""
import math

import torch

from simcryo.align.translate import parabola_offset


def rotation_matrix(psi_deg):
    """(B,) degrees -> (B, 2, 2) matrices acting on (x, y) column vectors."""
    t = torch.deg2rad(psi_deg)
    c, s = torch.cos(t), torch.sin(t)
    return torch.stack([c, -s, s, c], -1).unflatten(-1, (2, 2))


def _to_grid_coords(xy, box):
    """Pixel coordinates -> grid_sample normalised coordinates (align_corners=False)."""
    return (2.0 * xy + 1.0) / box - 1.0


def ring_radii(box, radius=None, r_min=1.0, step=1.0):
    """Ring radii in pixels, from r_min to `radius` (default: just inside the box)."""
    radius = box // 2 - 2 if radius is None else radius
    n = max(int((radius - r_min) / step) + 1, 1)
    return r_min + step * torch.arange(n, dtype=torch.float32)


_RING_CACHE = {}


def _ring_grid(box, radii, n_theta, device):
    """Ring sample points in grid_sample coordinates around the box centre (cached): x and
    y, each (1, n_r * n_theta), ring-major."""
    key = (box, tuple(radii.tolist()), n_theta, str(device))
    if key not in _RING_CACHE:
        theta = torch.arange(n_theta, device=device, dtype=torch.float32) * (2 * math.pi / n_theta)
        r = radii.to(device)
        px = r[:, None] * torch.cos(theta)[None, :] + box // 2
        py = r[:, None] * torch.sin(theta)[None, :] + box // 2
        _RING_CACHE[key] = (_to_grid_coords(px, box).reshape(1, -1),
                            _to_grid_coords(py, box).reshape(1, -1))
    return _RING_CACHE[key]


def sample_rings(images, centres, radii, n_theta):
    """Sample images (B, n, n) on rings around per-image centres (B, 2) in px relative to the
    box centre. Returns (B, n_r, n_theta)."""
    b, n, _ = images.shape
    gx, gy = _ring_grid(n, radii, n_theta, images.device)
    offset = centres.to(images.device, torch.float32) * (2.0 / n)
    # all of an image's points in one grid row, x and y written apart: a broadcast add over
    # a last axis of 2 and a grid of n_r short rows each cost grid_sample ~30 % more
    grid = torch.empty(b, 1, gx.shape[1], 2, device=images.device)
    torch.add(gx, offset[:, :1], out=grid[:, 0, :, 0])
    torch.add(gy, offset[:, 1:], out=grid[:, 0, :, 1])
    out = torch.nn.functional.grid_sample(images[:, None], grid, mode="bilinear",
                                          padding_mode="zeros", align_corners=False)
    return out.view(b, len(radii), n_theta)


def ring_weights(radii):
    """Per-ring weights: the area element r (so the ring sum is an area integral)."""
    return radii.clone()


def rings_fft(rings):
    """Angular Fourier coefficients of rings, (B, n_r, n_theta//2+1) complex."""
    return torch.fft.rfft(rings, dim=-1)


def rotational_correlation(p_fft, a_fft, weights, upsample=4, n_theta=None):
    """Correlation over angle of ring spectra p (B, R, M) against references a (B, R, M).

    Returns (B, upsample * n_theta) real curve; index j <-> angle 360 * j / len degrees.
    Zero-padding in the angular frequency gives a finer curve at no extra sampling cost.
    """
    m = p_fft.shape[-1]
    n_theta = n_theta or 2 * (m - 1)
    prod = (p_fft * a_fft.conj() * weights[None, :, None].to(p_fft.real.dtype)).sum(1)
    return torch.fft.irfft(prod, n=upsample * n_theta, dim=-1)


def circular_peak(curve, period_deg=360.0):
    """Sub-sample peak of a periodic curve (B, L) by a parabola through the 3 top samples.

    Returns (angle in degrees in [-period/2, period/2), peak value)."""
    b, L = curve.shape
    idx = curve.argmax(-1)
    ar = torch.arange(b, device=curve.device)
    y0 = curve[ar, (idx - 1) % L]
    y1 = curve[ar, idx]
    y2 = curve[ar, (idx + 1) % L]
    off = parabola_offset(y0, y1, y2)
    peak = y1 - 0.25 * (y0 - y2) * off
    angle = (idx.to(curve.dtype) + off) * (period_deg / L)
    angle = torch.remainder(angle + period_deg / 2, period_deg) - period_deg / 2
    return angle, peak


def magnitude_polar(images, radii, n_theta, pad=2):
    """Polar resampling of Fourier magnitudes (translation invariant).

    The image is zero-padded `pad` times so that the spectrum is sampled finely enough for
    bilinear interpolation; radii are in Fourier pixels of the *unpadded* box. Only half a
    circle is sampled (|F| is centrosymmetric for real images): returns (B, n_r, n_theta)
    over [0, 180) degrees.
    """
    b, n, _ = images.shape
    big = n * pad
    spec = torch.fft.fftshift(torch.fft.fft2(images, s=(big, big)).abs(), dim=(-2, -1))
    theta = torch.arange(n_theta, device=images.device, dtype=torch.float32) * (math.pi / n_theta)
    r = radii.to(images.device) * pad
    px = r[:, None] * torch.cos(theta)[None, :] + big // 2
    py = r[:, None] * torch.sin(theta)[None, :] + big // 2
    grid = torch.stack([_to_grid_coords(px, big), _to_grid_coords(py, big)], -1)
    grid = grid[None].expand(b, -1, -1, -1)
    out = torch.nn.functional.grid_sample(spec[:, None], grid, mode="bilinear",
                                          padding_mode="zeros", align_corners=False)
    return out[:, 0]
