"""Image preprocessing shared by the commands: particle radius, histogram equalisation,
working box. (Masks and background statistics: simcryo.image.mask; Fourier crop/pad:
simcryo.image.fourier.)"""
import numpy as np
import torch

from simcryo.errors import SimcryoError
from simcryo.image.mask import radius_grid


def radial_power_profile(images):
    """Mean of the images' squared pixels per integer radius from the box centre."""
    r = radius_grid(images.shape[-1]).round().long().flatten()
    power = (images.reshape(len(images), -1) ** 2).mean(0)
    counts = torch.bincount(r).float()
    return (torch.zeros(len(counts)).index_add_(0, r, power) / counts.clamp_min(1)).numpy()


def estimate_radius(images, threshold=0.05):
    """Particle radius in px from the excess variance over the noise floor.

    Noise is (nearly) flat across the box while the particles add variance near the centre;
    the radius is where the excess falls below `threshold` of its peak, plus 2 px.
    """
    box = images.shape[-1]
    prof = radial_power_profile(images)[:box // 2]
    floor = np.median(prof[int(0.8 * (box // 2)):])
    excess = prof - floor
    peak = excess[: max(box // 4, 2)].max()
    if not peak > 0:
        return 0.4 * box
    above = np.nonzero(excess > threshold * peak)[0]
    radius = float(above.max()) + 2.0 if len(above) else 0.4 * box
    return float(np.clip(radius, 0.15 * box, 0.45 * box))


def mask_radius_for(radius, box):
    """Soft-mask radius (px) for a particle of `radius` px: 10 % larger, inside the box."""
    return float(min(1.1 * radius, box / 2 - 2))


def check_not_constant(images, indices=None, eps=1e-12):
    """Raise SimcryoError for an empty (all-zero) or constant image."""
    flat = images.reshape(len(images), -1)
    bad = (flat.max(dim=1).values - flat.min(dim=1).values) <= eps
    if bad.any():
        i = int(torch.nonzero(bad)[0])
        number = int(indices[i]) + 1 if indices is not None else i + 1
        raise SimcryoError(f"particle {number} is empty or constant; remove it from the input")


def equalize_histogram(images):
    """Per-image rank transform to a uniform distribution in [-1, 1] (the paper's contrast
    enhancement, without its 16-bit PNG detour)."""
    n = images.shape[0]
    flat = images.reshape(n, -1)
    ranks = flat.argsort(dim=1).argsort(dim=1).to(images.dtype)
    return (ranks / (flat.shape[1] - 1) * 2.0 - 1.0).reshape(images.shape)


def working_box(box, apix, target_box):
    """Working box (even, <= box) and its pixel size after Fourier cropping."""
    if target_box is None or target_box >= box:
        return box, apix
    if target_box < 8:
        raise SimcryoError(f"working box {target_box} px is too small")
    new_box = int(target_box) // 2 * 2
    return new_box, apix * box / new_box
