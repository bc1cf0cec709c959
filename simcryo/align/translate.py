"""Translation search: cross-correlation / phase-correlation maps and their sub-pixel peaks.

Spectra are in `torch.fft.rfft2` layout (n, n//2+1); Fourier shifts live in
simcryo.image.fourier. A shift s = (sx, sy) px moves image content from x to x + s.
"""
from typing import NamedTuple

import torch

from simcryo.image.fourier import radial_frequency


def parabola_offset(ym, y0, yp, limit=0.5):
    """Offset in [-limit, limit] samples of the vertex of the parabola through three samples
    (left, centre, right) around a maximum (0.5: the centre is the highest sample)."""
    denom = ym - 2 * y0 + yp
    off = torch.where(denom.abs() > 1e-12, 0.5 * (ym - yp) / denom, 0.0)
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


class Window(NamedTuple):
    """The part of an FFT-order n x n correlation map within w = floor(radius) + margin px
    of zero shift in each axis, centred and flattened ((2w+1)^2 pixels): `penalty` is -inf
    outside correlation_peak's disc and 0 in it (the same disc, so the same pixels are
    searched), `near` the flat offsets of a pixel's [self, left, up, right, down] and `xy`
    each pixel's shift (x, y) from the window centre ((2w+1)^2, 2)."""
    w: int
    penalty: torch.Tensor
    near: torch.Tensor
    xy: torch.Tensor


_WINDOW_CACHE = {}


def _window(n, radius, device, margin=1):
    """The Window of radius `radius` (cached); None when it would wrap around the map.
    margin 1 holds the neighbours of every pixel of the disc."""
    w = int(radius) + margin
    if 2 * w + 1 > n:
        return None
    key = (n, float(radius), margin, str(device))
    if key not in _WINDOW_CACHE:
        idx = torch.arange(-w, w + 1, device=device) % n
        inside = _wrapped_disc(n, radius, device)[idx][:, idx].reshape(-1)
        penalty = torch.zeros(inside.shape, device=device).masked_fill(~inside, float("-inf"))
        s = 2 * w + 1
        d = torch.arange(-w, w + 1, device=device, dtype=torch.float32)
        xy = torch.stack(torch.meshgrid(d, d, indexing="xy"), -1).reshape(-1, 2)
        _WINDOW_CACHE[key] = Window(w, penalty, torch.tensor([0, -1, -s, 1, s], device=device),
                                    xy)
    return _WINDOW_CACHE[key]


def correlation_window(spec_a, spec_ref, max_shift, phase=False, margin=1):
    """The cross-correlation maps (cross_correlate) of rfft2 spectra (..., n, m), broadcast
    against each other, on the Window about the disc of radius max_shift (`margin`: see
    _window): (values (B, (2w+1)^2), Window), B the product of the leading dimensions;
    None when max_shift leaves no window. Only the window is computed: the inverse FFT runs
    along y over all columns, as irfft2 does, then along x only for the window's 2w+1 rows
    (64 px, max_shift 16: 35 of 64 rows, 1,225 of 4,096 pixels). The values are irfft2's
    (bit for bit with this torch's FFT, which does the same two 1D transforms)."""
    n = spec_a.shape[-2]
    win = None if max_shift is None or max_shift >= n / 2 else _window(n, max_shift,
                                                                          spec_a.device, margin)
    if win is None:
        return None
    w = win.w
    rows = torch.fft.ifft(_cross_power(spec_a, spec_ref, phase), dim=-2)
    # rows and columns -w..w in order (slices and cat: faster than index_select)
    rows = torch.cat([rows[..., n - w:, :], rows[..., :w + 1, :]], -2)
    cc = torch.fft.irfft(rows, n=n, dim=-1)
    cc = torch.cat([cc[..., n - w:], cc[..., :w + 1]], -1)
    return cc.reshape(-1, len(win.xy)), win


def correlation_peak_of(spec_a, spec_ref, max_shift, phase=False):
    """correlation_peak(cross_correlate(spec_a, spec_ref, phase=phase), max_shift) for
    rfft2 spectra (..., n, m), broadcast against each other, from the map's Window
    (correlation_window) where it has one: the shift (B, 2) px (x, y) and the peak value
    (B,), B the product of the leading dimensions."""
    got = correlation_window(spec_a, spec_ref, max_shift, phase)
    if got is None:
        n = spec_a.shape[-2]
        cc = cross_correlate(spec_a, spec_ref, phase=phase)
        return correlation_peak(cc.reshape(-1, n, n), max_shift)
    return window_peak(*got)


def window_peak(flat, win):
    """correlation_peak on the values (B, (2w+1)^2) of a Window: (shift (B, 2), value (B,)).
    The disc keeps a margin off the window's edge for the parabolas, so the peak and its
    four neighbours are one gather."""
    idx = (flat + win.penalty).argmax(-1)
    val = flat.gather(1, idx[:, None] + win.near)
    # (left, up) and (right, down) about the peak: the parabolas in x and y at once
    off = parabola_offset(val[:, 1:3], val[:, :1], val[:, 3:5])
    return win.xy[idx] + off, val[:, 0]


def _cross_power(spec_a, spec_ref, phase=False, eps=1e-6):
    """spec_a * conj(spec_ref), whitened with `phase` (see cross_correlate)."""
    prod = spec_a * spec_ref.conj()
    if phase:
        prod = prod / (prod.abs() + eps * prod.abs().mean(dim=(-2, -1), keepdim=True) + 1e-30)
    return prod


def cross_correlate(spec_a, spec_ref, weight=None, phase=False, eps=1e-6):
    """Cross-correlation maps of a against ref (both rfft2 spectra), FFT order (zero shift
    at pixel 0).

    phase=True whitens the cross-power spectrum (classic phase correlation: sharp peaks at
    high SNR, but it amplifies noise, so it is off by default for particles)."""
    n = spec_a.shape[-2]
    prod = _cross_power(spec_a, spec_ref, phase, eps)
    if weight is not None:
        prod = prod * weight
    return torch.fft.irfft2(prod, s=(n, n))


def phase_correlation_shift(a, ref, max_shift=None, weight=None, phase=True):
    """Shift s (B, 2) px such that a ~= ref shifted by s, with its correlation peak value.
    a, ref: (B, n, n) real images."""
    sa, sr = torch.fft.rfft2(a), torch.fft.rfft2(ref)
    cc = cross_correlate(sa, sr, weight=weight, phase=phase)
    return correlation_peak(cc, max_shift)
