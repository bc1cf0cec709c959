"""Masks and background statistics, one implementation each. Box centre is pixel
(box//2, box//2); radii and widths in px."""
import math

import torch


def radius_grid(box, device=None):
    """Distance (px) of every pixel from the box centre, (box, box)."""
    c = torch.arange(box, device=device, dtype=torch.float32) - box // 2
    return torch.sqrt(c[:, None] ** 2 + c[None, :] ** 2)


def circular_mask(box, radius=None, device=None):
    """Boolean (box, box) mask of pixels within `radius` px of the centre (default
    box//2 - 1)."""
    radius = box // 2 - 1 if radius is None else radius
    return radius_grid(box, device) <= radius


def soft_mask(box, radius, width=4.0, device=None):
    """(box, box) circular mask: 1 inside `radius` px, a raised-cosine edge `width` px wide."""
    t = ((radius_grid(box, device) - radius) / width).clamp(0, 1)
    return 0.5 * (1 + torch.cos(math.pi * t))


def background_stats(images, outside=None, radius=None):
    """Mean and std per image (B, n, n) of the background pixels: those where the boolean
    (n, n) `outside` is True, default the pixels beyond `radius` (circular_mask)."""
    if outside is None:
        outside = ~circular_mask(images.shape[-1], radius, images.device)
    bg = images[:, outside.to(images.device)]
    return bg.mean(dim=1), bg.std(dim=1)


def normalize_background(images, radius=None, eps=1e-6):
    """RELION-style normalisation: background (outside the mask) to mean 0, std 1."""
    mean, std = background_stats(images, radius=radius)
    return (images - mean[:, None, None]) / (std[:, None, None] + eps)
