"""In-plane 2D poses (RELION meaning, see docs/ARCHITECTURE.md).

A particle p and its class average A satisfy p = transform_images(A, psi, shift):
A is rotated by psi degrees about the box centre (pixel box//2), then translated by shift
(x, y) pixels. With x = column and y = row, rotating by psi maps (x, y) to
(x cos psi - y sin psi, x sin psi + y cos psi) (counter-clockwise when y points up, as in
MRC viewers). align_images undoes it.
"""
import math

import torch
import torch.nn.functional as F


def _as_batch(values, n, device, dtype):
    t = torch.as_tensor(values, device=device, dtype=dtype)
    return t.expand(n) if t.ndim == 0 else t


def rotate_images(images, psi_deg, mode="bicubic"):
    """Rotate each image of (n, H, W) by psi degrees about pixel (H//2, W//2)."""
    n, h, w = images.shape
    dtype = images.dtype if images.is_floating_point() else torch.float32
    psi = _as_batch(psi_deg, n, images.device, dtype) * (math.pi / 180.0)
    ys = torch.arange(h, device=images.device, dtype=dtype) - h // 2
    xs = torch.arange(w, device=images.device, dtype=dtype) - w // 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    c, s = torch.cos(psi)[:, None, None], torch.sin(psi)[:, None, None]
    # Output pixel x samples the input at R(-psi) x.
    src_x = c * gx + s * gy + w // 2
    src_y = -s * gx + c * gy + h // 2
    grid = torch.stack((src_x * 2.0 / (w - 1) - 1.0, src_y * 2.0 / (h - 1) - 1.0), dim=-1)
    out = F.grid_sample(images[:, None].to(dtype), grid, mode=mode, padding_mode="zeros",
                        align_corners=True)
    return out[:, 0]


def shift_images(images, shift_px):
    """Translate each image by (x, y) pixels with a Fourier phase ramp (exact, circular)."""
    n, h, w = images.shape
    shift = torch.as_tensor(shift_px, device=images.device, dtype=torch.float64)
    if shift.ndim == 1:
        shift = shift.expand(n, 2)
    fy = torch.fft.fftfreq(h, device=images.device, dtype=torch.float64)
    fx = torch.fft.rfftfreq(w, device=images.device, dtype=torch.float64)
    phase = -2.0 * math.pi * (fx[None, None, :] * shift[:, 0, None, None]
                              + fy[None, :, None] * shift[:, 1, None, None])
    ramp = torch.polar(torch.ones_like(phase), phase).to(torch.complex64)
    return torch.fft.irfft2(torch.fft.rfft2(images) * ramp, s=(h, w))


def transform_images(images, psi_deg, shift_px):
    """Forward model: rotate by psi, then translate by shift (average -> particle)."""
    return shift_images(rotate_images(images, psi_deg), shift_px)


def align_images(images, psi_deg, shift_px):
    """Inverse model: translate by -shift, then rotate by -psi (particle -> average frame)."""
    shift = torch.as_tensor(shift_px, device=images.device, dtype=torch.float32)
    psi = torch.as_tensor(psi_deg, device=images.device, dtype=torch.float32)
    return rotate_images(shift_images(images, -shift), -psi)


def compose(psi1, shift1, psi2, shift2):
    """Pose equal to applying (psi1, shift1) and then (psi2, shift2); numpy arrays/scalars."""
    import numpy as np
    a = np.deg2rad(psi2)
    c, s = np.cos(a), np.sin(a)
    shift1 = np.asarray(shift1, dtype=np.float64)
    sx = c * shift1[..., 0] - s * shift1[..., 1] + np.asarray(shift2)[..., 0]
    sy = s * shift1[..., 0] + c * shift1[..., 1] + np.asarray(shift2)[..., 1]
    return (np.asarray(psi1) + psi2 + 180.0) % 360.0 - 180.0, np.stack([sx, sy], axis=-1)
