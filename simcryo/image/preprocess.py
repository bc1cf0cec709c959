"""Image preprocessing shared by the commands: masks, background normalisation, particle
radius, Fourier cropping, histogram equalisation."""
import numpy as np
import torch

from simcryo.errors import SimcryoError


def circular_mask(box, radius=None, device=None):
    """Boolean (box, box) mask of pixels within `radius` px of the centre (box//2).
    Default radius: box//2 - 1."""
    radius = box // 2 - 1 if radius is None else radius
    c = torch.arange(box, device=device, dtype=torch.float32) - box // 2
    return (c[:, None] ** 2 + c[None, :] ** 2) <= radius ** 2


def background_stats(images, radius=None):
    """Mean and std of the pixels outside the particle mask, per image."""
    outside = ~circular_mask(images.shape[-1], radius, images.device)
    bg = images[:, outside]
    return bg.mean(dim=1), bg.std(dim=1)


def normalize_background(images, radius=None, eps=1e-6):
    """RELION-style normalisation: background (outside the mask) to mean 0, std 1."""
    mean, std = background_stats(images, radius)
    return (images - mean[:, None, None]) / (std[:, None, None] + eps)


def radial_power_profile(images):
    """Mean of the images' squared pixels per integer radius from the box centre."""
    box = images.shape[-1]
    c = torch.arange(box, dtype=torch.float32) - box // 2
    r = torch.sqrt(c[:, None] ** 2 + c[None, :] ** 2).round().long().flatten()
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


def fourier_crop(images, new_box):
    """Downsample (n, box, box) to (n, new_box, new_box) by cropping the Fourier transform.
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
