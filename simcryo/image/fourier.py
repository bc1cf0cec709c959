"""Fourier helpers, one implementation each: frequency grids and the radial (shell) index,
exact Fourier shifts, Fourier crop / pad (images and rfft2 spectra), raised-cosine low-pass.

Spectra are in `torch.fft.rfft2` layout (n, n//2+1) unless a name says otherwise. A shift
s = (sx, sy) px moves image content from x to x + s (x = column, y = row).
"""
import torch


def frequency_grid(n, device=None, dtype=torch.float32):
    """(ky, kx) in cycles per box (integer Fourier pixels) for the rfft2 layout, shapes
    (n, 1) and (1, n//2+1)."""
    ky = torch.fft.fftfreq(n, d=1.0 / n, device=device).to(dtype)[:, None]
    kx = torch.fft.rfftfreq(n, d=1.0 / n, device=device).to(dtype)[None, :]
    return ky, kx


def radial_frequency(n, device=None, full=False):
    """|k| in Fourier pixels on the rfft2 grid (n, n//2+1), or the fft2 grid (n, n) with
    full=True."""
    ky, kx = frequency_grid(n, device)
    if full:
        kx = ky.reshape(1, -1)
    return torch.sqrt(ky ** 2 + kx ** 2)


def radial_index(n, device=None, full=False):
    """Integer Fourier shell (round(|k|)) of every pixel of the rfft2 (or fft2) grid."""
    return radial_frequency(n, device, full).round().long()


def shift_phase(shift, n, device=None):
    """exp(-2 pi i k.s / n) for shifts (B, 2) px: multiplying an rfft2 spectrum by it shifts
    the image by +s. Separable: only B * (n + n//2 + 1) complex exponentials are evaluated."""
    ky, kx = frequency_grid(n, device, torch.float64)
    s = torch.as_tensor(shift, device=device).to(torch.float64).reshape(-1, 2)
    one = torch.ones(1, device=device, dtype=torch.float64)
    px = torch.polar(one, (-2 * torch.pi / n) * kx[0][None] * s[:, :1])
    py = torch.polar(one, (-2 * torch.pi / n) * ky[:, 0][None] * s[:, 1:])
    return (py[:, :, None] * px[:, None, :]).to(torch.complex64)


def fourier_shift(spectra, shift):
    """Shift images given by rfft2 spectra (B, n, n//2+1) by (B, 2) px (exact, periodic)."""
    return spectra * shift_phase(shift, spectra.shape[-2], spectra.device)


def shift_images(images, shift):
    """Translate real images (B, n, n) by (x, y) px: (B, 2) or one (2,) shift for all."""
    n = images.shape[-1]
    shift = torch.as_tensor(shift, device=images.device, dtype=torch.float32)
    if shift.ndim == 1:
        shift = shift.expand(images.shape[0], 2)
    return torch.fft.irfft2(fourier_shift(torch.fft.rfft2(images), shift), s=(n, n))


def crop_spectrum(spec, box):
    """Fourier crop of rfft2 spectra (..., n, n//2+1) to (..., box, box//2+1); pixel values
    keep their scale (the mean is preserved)."""
    n = spec.shape[-2]
    if box >= n:
        return spec
    h = box // 2
    rows = torch.cat([spec[..., :h, :], spec[..., n - h:, :]], dim=-2)
    return rows[..., : h + 1] * (box / n) ** 2


def fourier_crop(images, new_box):
    """Downsample (..., box, box) to (..., new_box, new_box) by cropping the Fourier transform.
    Pixel values keep their scale (the mean is preserved)."""
    box = images.shape[-1]
    if new_box == box:
        return images
    if new_box > box:
        raise ValueError("fourier_crop cannot enlarge; use fourier_pad")
    f = torch.fft.fftshift(torch.fft.fft2(images), dim=(-2, -1))
    start = box // 2 - new_box // 2
    f = f[..., start:start + new_box, start:start + new_box]
    out = torch.fft.ifft2(torch.fft.ifftshift(f, dim=(-2, -1))).real
    return out * (new_box / box) ** 2


def fourier_pad(images, new_box):
    """Upsample by zero-padding the Fourier transform (inverse of fourier_crop)."""
    box = images.shape[-1]
    if new_box == box:
        return images
    f = torch.fft.fftshift(torch.fft.fft2(images), dim=(-2, -1))
    out = torch.zeros(images.shape[:-2] + (new_box, new_box), dtype=f.dtype, device=f.device)
    start = new_box // 2 - box // 2
    out[..., start:start + box, start:start + box] = f
    res = torch.fft.ifft2(torch.fft.ifftshift(out, dim=(-2, -1))).real
    return res * (new_box / box) ** 2


def lowpass_filter(n, cutoff, device=None, width=2.0):
    """Raised-cosine low-pass on the rfft2 grid; cutoff and width in Fourier pixels.
    cutoff <= 0 or >= n/2 returns all ones (no band limit)."""
    k = radial_frequency(n, device)
    if cutoff is None or cutoff <= 0 or cutoff >= n / 2:
        return torch.ones_like(k)
    lo = cutoff - width / 2
    t = ((k - lo) / width).clamp(0, 1)
    return 0.5 * (1 + torch.cos(torch.pi * t))


def shell_sums(values, index, n_shells):
    """Sum of real values (K, ...) over the pixels of each shell of `index` (same trailing
    shape) -> (K, n_shells)."""
    flat = values.reshape(values.shape[0], -1)
    out = torch.zeros(values.shape[0], n_shells, device=values.device, dtype=flat.dtype)
    return out.index_add_(1, index.reshape(-1), flat)
