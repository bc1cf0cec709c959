"""Image preprocessing shared by the commands: masks, background normalisation, Fourier
cropping, histogram equalisation."""
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
