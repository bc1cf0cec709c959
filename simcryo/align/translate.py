"""Translation search: cross-correlation / phase-correlation maps and their sub-pixel peaks.

Spectra are in `torch.fft.rfft2` layout (n, n//2+1); Fourier shifts live in
simcryo.image.fourier. A shift s = (sx, sy) px moves image content from x to x + s.
"""
import torch

from simcryo.image.fourier import radial_frequency


def parabola_offset(ym, y0, yp, limit=0.5):
    """Offset in [-limit, limit] samples of the vertex of the parabola through three samples
    (left, centre, right) around a maximum (0.5: the centre is the highest sample)."""
    denom = ym - 2 * y0 + yp
    off = torch.where(denom.abs() > 1e-12, 0.5 * (ym - yp) / denom, torch.zeros_like(y0))
    return off.clamp(-limit, limit)


_DISC_CACHE = {}


def _wrapped_disc(n, radius, device):
    """Pixels of an unshifted (FFT-order) correlation map within `radius` of zero shift."""
    key = (n, float(radius), str(device))
    if key not in _DISC_CACHE:
        _DISC_CACHE[key] = radial_frequency(n, device, full=True) <= radius
    return _DISC_CACHE[key]


def correlation_peak(cc, max_shift=None):
    """Sub-pixel peak of correlation maps (B, n, n) in FFT order (zero shift at pixel 0).

    Searches within `max_shift` px of zero; returns (shift (B, 2) as (x, y), peak value)."""
    b, n, _ = cc.shape
    if max_shift is not None and max_shift < n / 2:
        inside = _wrapped_disc(n, max_shift, cc.device)
        flat = cc.masked_fill(~inside, float("-inf")).reshape(b, -1)
    else:
        flat = cc.reshape(b, -1)
    idx = flat.argmax(-1)
    iy, ix = idx // n, idx % n
    ar = torch.arange(b, device=cc.device)
    y0 = cc[ar, iy, ix]
    offx = parabola_offset(cc[ar, iy, (ix - 1) % n], y0, cc[ar, iy, (ix + 1) % n])
    offy = parabola_offset(cc[ar, (iy - 1) % n, ix], y0, cc[ar, (iy + 1) % n, ix])
    wx = torch.remainder(ix + n // 2, n) - n // 2
    wy = torch.remainder(iy + n // 2, n) - n // 2
    shift = torch.stack([wx.float() + offx, wy.float() + offy], -1)
    return shift, y0


def cross_correlate(spec_a, spec_ref, weight=None, phase=False, eps=1e-6):
    """Cross-correlation maps of a against ref (both rfft2 spectra), FFT order (zero shift
    at pixel 0).

    phase=True whitens the cross-power spectrum (classic phase correlation: sharp peaks at
    high SNR, but it amplifies noise, so it is off by default for particles)."""
    n = spec_a.shape[-2]
    prod = spec_a * spec_ref.conj()
    if phase:
        prod = prod / (prod.abs() + eps * prod.abs().mean(dim=(-2, -1), keepdim=True) + 1e-30)
    if weight is not None:
        prod = prod * weight
    return torch.fft.irfft2(prod, s=(n, n))


def phase_correlation_shift(a, ref, max_shift=None, weight=None, phase=True):
    """Shift s (B, 2) px such that a ~= ref shifted by s, with its correlation peak value.
    a, ref: (B, n, n) real images."""
    sa, sr = torch.fft.rfft2(a), torch.fft.rfft2(ref)
    cc = cross_correlate(sa, sr, weight=weight, phase=phase)
    return correlation_peak(cc, max_shift)
