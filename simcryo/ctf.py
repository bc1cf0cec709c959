"""Contrast transfer function (RELION convention) and its simple corrections.

CTF(s) = -sin(chi(s)) * exp(-B |s|^2 / 4), with
chi = pi * lambda * dF(alpha) * |s|^2 - pi/2 * Cs * lambda^3 * |s|^4 + phase_shift + asin(w),
dF(alpha) = (dU + dV)/2 + (dU - dV)/2 * cos(2 (alpha - alpha_ast)), defocus > 0 = underfocus.
Frequencies follow torch.fft.fft2 layout (or rfft2 with `rfft=True`), x = column, y = row.
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


def ctf_2d(ctf, box, apix, device=None, rfft=False, dtype=torch.float32):
    """CTF images (n, box, box[/2+1]) for a CTFParams (or any object with the same arrays).
    Computed in `dtype`: float32 keeps the phase error below 1e-4 rad for any real defocus."""
    fy, fx = frequency_grid(box, apix, device, rfft, dtype)
    s2 = (fx ** 2 + fy ** 2)[None]
    alpha = torch.atan2(fy, fx)[None]

    def col(values):
        return torch.as_tensor(np.asarray(values, dtype=np.float64), device=device,
                               dtype=dtype)[:, None, None]

    du, dv = col(ctf.defocus_u), col(ctf.defocus_v)
    ang = col(np.deg2rad(np.asarray(ctf.defocus_angle, dtype=np.float64)))
    lam = col(electron_wavelength(ctf.voltage))
    cs = col(np.asarray(ctf.cs, dtype=np.float64) * 1e7)  # mm -> Å
    w = np.clip(np.asarray(ctf.amp_contrast, dtype=np.float64), 0.0, 0.999)
    amp_phase = col(np.arcsin(w))
    shift = col(np.deg2rad(np.asarray(ctf.phase_shift, dtype=np.float64)))
    bfac = col(ctf.bfactor)
    defocus = 0.5 * (du + dv) + 0.5 * (du - dv) * torch.cos(2.0 * (alpha - ang))
    chi = (math.pi * lam * defocus * s2 - 0.5 * math.pi * cs * lam ** 3 * s2 ** 2
           + shift + amp_phase)
    return -torch.sin(chi) * torch.exp(-bfac * s2 / 4.0)


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
