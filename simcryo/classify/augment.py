"""Cryo-EM augmentations, batched on the device.

All geometric changes (full-circle rotation, shift, zoom = crop+resize, optional mirror) are
folded into one affine grid per image and applied with a single `grid_sample`; intensity
changes are per-image scalars; blur is a Gaussian multiplier in Fourier space. Randomness comes
from an explicit `torch.Generator`, so a seed fixes every view.
"""
import math

import torch
import torch.nn.functional as F

from simcryo.image.fourier import radial_frequency
from simcryo.image.mask import soft_mask


def _uniform(n, lo, hi, gen, device):
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def _affine(cos, sin, tx, ty, scale):
    # affine_grid maps output coords to input coords; rows = [x; y] in normalised units.
    n = cos.shape[0]
    theta = torch.empty(n, 2, 3, device=cos.device, dtype=cos.dtype)
    theta[:, 0, 0] = cos / scale
    theta[:, 0, 1] = -sin / scale
    theta[:, 1, 0] = sin / scale
    theta[:, 1, 1] = cos / scale
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    return theta


def _warp(x, theta):
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def gaussian_blur(x, sigma):
    """Blur (n, 1, b, b) images with per-image sigma (px) through an FFT multiplier."""
    b = x.shape[-1]
    k2 = (radial_frequency(b, x.device, full=True) / b) ** 2
    filt = torch.exp(-2 * math.pi ** 2 * sigma.view(-1, 1, 1, 1) ** 2 * k2)
    return torch.fft.ifft2(torch.fft.fft2(x) * filt).real


class Augmenter:
    """Random views of a batch of preprocessed particles (n, 1, b, b) -> (n, 1, b, b)."""

    def __init__(self, cfg, box, mask_radius, device):
        self.cfg = cfg
        self.box = box
        self.device = device
        self.mask = soft_mask(box, mask_radius, width=2.0, device=device)

    def __call__(self, x, gen):
        cfg, n, dev = self.cfg, x.shape[0], x.device
        angle = _uniform(n, 0.0, 2 * math.pi, gen, dev)
        scale = _uniform(n, cfg.scale_min, cfg.scale_max, gen, dev)
        # shifts in normalised grid units (2 / box per px)
        s = 2 * cfg.max_shift
        tx = _uniform(n, -s, s, gen, dev)
        ty = _uniform(n, -s, s, gen, dev)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = _affine(cos, sin, tx, ty, scale)
        if cfg.mirror:
            flip = torch.rand(n, generator=gen, device=dev) < 0.5
            theta[flip, :, 0] = -theta[flip, :, 0]
        out = _warp(x, theta)
        if cfg.blur > 0:
            sigma = _uniform(n, 0.0, cfg.blur, gen, dev)
            sigma = sigma * (torch.rand(n, generator=gen, device=dev) < 0.5)
            out = gaussian_blur(out, sigma)
        gain = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, gen, dev).view(-1, 1, 1, 1)
        offset = _uniform(n, -cfg.brightness, cfg.brightness, gen, dev).view(-1, 1, 1, 1)
        out = out * gain + offset
        if cfg.noise > 0:
            level = _uniform(n, 0.0, cfg.noise, gen, dev).view(-1, 1, 1, 1)
            out = out + level * torch.randn(out.shape, generator=gen, device=dev)
        return out * self.mask
