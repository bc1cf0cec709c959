"""Contrast transfer function (RELION convention) and its simple corrections.

CTF(s) = sin(chi(s)) * exp(-B |s|^2 / 4), with
chi = pi * lambda * dF(alpha) * |s|^2 - pi/2 * Cs * lambda^3 * |s|^4 + phase_shift + asin(w),
dF(alpha) = (dU + dV)/2 + (dU - dV)/2 * cos(2 (alpha - alpha_ast)), defocus > 0 = underfocus.
Frequencies follow torch.fft.fft2 layout (or rfft2 with `rfft=True`), x = column, y = row.
The sign is RELION's: CTF(0) = +w, the convention of particles extracted with inverted contrast
(protein bright), so CTF-corrected averages of such particles come out bright, as RELION's do.
Checked against relion_refine: with the opposite sign its 2D class averages of our simulated
particles were contrast-inverted relative to the true projections.
"""
import math

import numpy as np
import torch


def electron_wavelength(voltage_kv):
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    v = np.asarray(voltage_kv, dtype=np.float64) * 1e3
    return 12.2643247 / np.sqrt(v * (1.0 + v * 0.978466e-6))


def frequency_grid(box, apix, device=None, rfft=False, dtype=torch.float64):
    """(fy, fx) spatial frequencies in 1/Å, each (box, box) or (box, box//2+1)."""
    fy = torch.fft.fftfreq(box, d=apix, device=device, dtype=dtype)
    fx = (torch.fft.rfftfreq if rfft else torch.fft.fftfreq)(box, d=apix, device=device,
                                                            dtype=dtype)
    return torch.meshgrid(fy, fx, indexing="ij")


class CTFEvaluator:
    """CTF images of any subset of particles, optionally seen in a rotated frame.

    chi is linear in five per-frequency terms [s^2, s^2 cos 2a, s^2 sin 2a, s^4, 1], so the
    grid part is computed once and each call costs one small matmul per batch; with `psi` (deg,
    one per particle, RELION's _rlnAnglePsi) the CTF is seen in the class frame, i.e. after
    geometry.align_images(particle, psi, origin) rotated the particle by +psi: the
    astigmatism axis turns with it, to defocus_angle + psi."""

    def __init__(self, ctf, box, apix, device=None, rfft=False, dtype=torch.float32):
        fy, fx = frequency_grid(box, apix, device, rfft, torch.float64)
        s2 = fx ** 2 + fy ** 2
        alpha = torch.atan2(fy, fx)
        self.shape, self.dtype, self.device = tuple(s2.shape), dtype, device
        self.s2 = s2.to(dtype)
        self.basis = torch.stack([s2, s2 * torch.cos(2 * alpha), s2 * torch.sin(2 * alpha),
                                  s2 ** 2, torch.ones_like(s2)]).reshape(5, -1).to(dtype)
        lam = electron_wavelength(ctf.voltage)
        du = np.asarray(ctf.defocus_u, np.float64)
        dv = np.asarray(ctf.defocus_v, np.float64)
        w = np.clip(np.asarray(ctf.amp_contrast, np.float64), 0.0, 0.999)
        self.n = len(du)
        self.mean_def = math.pi * lam * 0.5 * (du + dv)
        self.ast_def = math.pi * lam * 0.5 * (du - dv)
        self.angle = np.deg2rad(np.asarray(ctf.defocus_angle, np.float64))
        self.quartic = -0.5 * math.pi * np.asarray(ctf.cs, np.float64) * 1e7 * lam ** 3
        self.const = np.deg2rad(np.asarray(ctf.phase_shift, np.float64)) + np.arcsin(w)
        self.bfac = -np.asarray(ctf.bfactor, np.float64) / 4.0
        flipped = getattr(ctf, "flipped", None)
        self.flipped = None if flipped is None else np.asarray(flipped, bool)

    def _column(self, values, idx):
        values = np.broadcast_to(np.asarray(values, np.float64), (self.n,))
        return torch.as_tensor(values[idx], device=self.device)

    def __call__(self, indices=None, psi=None):
        """(B, box, box or box//2+1) CTF images of particles `indices` (default: all)."""
        idx = np.arange(self.n) if indices is None else np.asarray(indices)
        ang = self._column(self.angle, idx)
        if psi is not None:
            ang = ang + torch.deg2rad(torch.as_tensor(psi, device=self.device).double())
        ast = self._column(self.ast_def, idx)
        coef = torch.stack([self._column(self.mean_def, idx), ast * torch.cos(2 * ang),
                            ast * torch.sin(2 * ang), self._column(self.quartic, idx),
                            self._column(self.const, idx)], 1).to(self.dtype)
        out = torch.sin((coef @ self.basis).view(len(idx), *self.shape))
        bf = self._column(self.bfac, idx).to(self.dtype)
        if bool((bf != 0).any()):
            out = out * torch.exp(bf[:, None, None] * self.s2)
        if self.flipped is not None and self.flipped[idx].any():
            # phase-flipped images carry |CTF|: matched filters and Wiener averages use that
            flip = torch.as_tensor(self.flipped[idx], device=out.device)
            out = torch.where(flip[:, None, None], out.abs(), out)
        return out


def ctf_2d(ctf, box, apix, device=None, rfft=False, dtype=torch.float32):
    """CTF images (n, box, box[/2+1]) for a CTFParams (or any object with the same arrays).
    In float32 the phase error stays below ~1e-4 rad for any real defocus."""
    return CTFEvaluator(ctf, box, apix, device, rfft, dtype)()


def _filter(images, kernel):
    """Multiply by a Fourier-space kernel given in rfft2 layout (n, box, box//2+1) or fft2
    layout (n, box, box)."""
    box = images.shape[-1]
    if kernel.shape[-1] == box // 2 + 1:
        return torch.fft.irfft2(torch.fft.rfft2(images) * kernel, s=images.shape[-2:])
    return torch.fft.ifft2(torch.fft.fft2(images) * kernel).real


def apply_ctf(images, ctf_images):
    """Multiply images by their CTF in Fourier space."""
    return _filter(images, ctf_images)


def phase_flip(images, ctf_images):
    """Flip the phases where the CTF is negative: cheap, noise-neutral CTF correction."""
    return _filter(images, torch.sign(ctf_images))


def apply_ctf_padded(images, ctf, apix):
    """CTF-modulate (n, D, D) images on a 2D x 2D zero-padded box (image centre D//2 at the
    padded centre D), then crop back: signal the CTF delocalises leaves the box instead of
    wrapping around into it, as in a real extraction."""
    n, D, _ = images.shape
    P = 2 * D
    o = P // 2 - D // 2
    padded = torch.zeros((n, P, P), dtype=images.dtype, device=images.device)
    padded[:, o:o + D, o:o + D] = images
    c = ctf_2d(ctf, P, apix, device=images.device, rfft=True)
    return apply_ctf(padded, c)[:, o:o + D, o:o + D]
