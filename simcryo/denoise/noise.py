"""Noise and signal statistics measured on the data itself.

The paper builds training pairs by adding *real* noise, cut from the data, to clean projections.
Here the noise comes from the particles' background (pixels outside a circular mask):

1. every image is normalised by its own background (mean 0, standard deviation 1 outside the
   mask), as RELION does;
2. the noise power spectrum is the average periodogram of the masked background,
   ``|FFT(mask * image)|^2 / sum(mask)`` (unbiased for stationary noise up to a slight blur by
   the mask's spectrum and a deficit in the first rings, where removing each image's mean
   takes power), smoothed over neighbouring frequencies when fewer than 100 images exist;
3. a full-box noise image is synthesised by colouring white Gaussian noise with the square root
   of that spectrum. This keeps the data's real noise colour (detector MTF, dose weighting,
   Fourier cropping, residual ice structure) without the seams and repeated pixels that tiling
   the few background patches of a small box would create.

The signal power is what is left inside the mask once the noise power is removed; it fixes the
scale of the clean projections so that the training pairs have the data's SNR.

Under torchrun (simcryo.distributed) each rank reads and normalises its block of the measured
particles, the blocks are shared (exact) and every rank computes the same statistics.
"""
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from simcryo import distributed
from simcryo.errors import SimcryoError
from simcryo.image.mask import background_stats, circular_mask


def background_mask(box, radius_fraction, device="cpu"):
    """Bool (box, box), True outside a circle of radius `radius_fraction * box / 2` centred on
    pixel (box // 2, box // 2)."""
    mask = ~circular_mask(box, radius_fraction * box / 2, device)
    if int(mask.sum()) < 0.05 * box * box:
        raise SimcryoError(f"mask radius {radius_fraction} x box/2 leaves too few background "
                           "pixels; use a smaller --mask-diameter")
    return mask


def normalize(images, mask):
    """Images scaled to background mean 0 / std 1; returns (normalised, mean, std)."""
    mean, std = background_stats(images, outside=mask)
    # a constant background (empty or padded image) must not turn into inf / NaN
    std = std.clamp_min(1e-8 * (images[:, mask].abs().max() + 1e-30))
    return (images - mean[:, None, None]) / std[:, None, None], mean, std


@dataclass
class NoiseModel:
    """Stationary Gaussian noise with a measured power spectrum (fft2 layout, per pixel units:
    white noise of variance v has psd == v everywhere)."""
    psd: torch.Tensor

    @property
    def box(self):
        return self.psd.shape[-1]

    def sample(self, n, generator=None, rows=None):
        """n noise images, or only those of `rows` among them (data parallel: every rank
        draws the whole batch's white noise, so the generator advances alike, and colours
        its own rows)."""
        # drawn on the CPU so that one seeded CPU generator drives every device
        white = torch.randn((n, self.box, self.box), generator=generator, dtype=torch.float32)
        if rows is not None:
            white = white[torch.as_tensor(rows, dtype=torch.long)]
        white = white.to(self.psd.device)
        colored = torch.fft.ifft2(torch.fft.fft2(white) * self.psd.sqrt())
        return colored.real.contiguous()

    def state_dict(self):
        return {"psd": self.psd.cpu()}

    @classmethod
    def from_state(cls, state, device="cpu"):
        return cls(state["psd"].to(device))


def background_psd(images, mask):
    """Average periodogram of the masked, mean-removed background (fft2 layout, per pixel)."""
    m = mask.to(images.dtype)
    centred = images - images[:, mask].mean(dim=1)[:, None, None]
    psd = (torch.fft.fft2(centred * m).abs() ** 2).mean(dim=0) / m.sum()
    # The masked background has no DC of its own (mean removed); borrow it from the neighbours
    # so that synthesised noise keeps a realistic low-frequency level.
    psd[0, 0] = 0.25 * (psd[0, 1] + psd[1, 0] + psd[0, -1] + psd[-1, 0])
    if len(images) < 100:  # few images: average neighbouring frequencies to tame variance
        psd = F.avg_pool2d(F.pad(psd[None, None], (1, 1, 1, 1), mode="circular"), 3,
                           stride=1)[0, 0]
    return psd.contiguous()


def estimate_noise_model(images, mask):
    """NoiseModel from the background of background-normalised images (n, box, box)."""
    return NoiseModel(background_psd(images, mask))


def remove_signal(noise_psd, signal_images, mask, floor=0.05):
    """Noise spectrum without the signal that leaks into the background.

    The CTF delocalises signal beyond the particle (by lambda * defocus * frequency: tens of
    Å), so the background periodogram is noise *plus* that signal. `signal_images` are
    noise-free estimates of the particles' signal on the same scale (scaled projections in the
    reference mode, current denoised particles in the self mode); their background periodogram
    is subtracted, floored at `floor` times the raw estimate."""
    leak = background_psd(signal_images, mask)
    return NoiseModel(torch.maximum(noise_psd - leak, floor * noise_psd))


def signal_power(images, mask):
    """Signal power per pixel inside the mask of background-normalised images: mean squared
    value inside minus the background (noise) mean square. Can be <= 0 for pure noise."""
    return signal_power_with_error(images, mask)[0]


def signal_power_with_error(images, mask):
    """(signal power, its standard error over images): a power within ~3 standard errors of
    zero means no particle signal was detected."""
    per_image = (images[:, ~mask] ** 2).mean(dim=1) - (images[:, mask] ** 2).mean(dim=1)
    se = float(per_image.std() / len(per_image) ** 0.5) if len(per_image) > 1 else float("inf")
    return float(per_image.mean()), se


def estimate_snr(images, mask):
    """Whole-box SNR estimate (signal variance / noise variance, signal assumed inside the
    mask) of background-normalised images."""
    inside_fraction = float((~mask).float().mean())
    noise = float((images[:, mask] ** 2).mean())
    return signal_power(images, mask) * inside_fraction / noise


@dataclass
class DataStats:
    """What training needs to know about the particles, measured on a subset."""
    noise: NoiseModel
    signal_power: float
    signal_power_se: float
    snr: float
    mean_image: torch.Tensor


def measure_data(read_images, n, mask, n_stats, seed, device):
    """read_images(indices) -> float32 (k, box, box) numpy; uses up to n_stats particles."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(n, n_stats), replace=False))
    images = torch.zeros((len(idx),) + tuple(mask.shape), device=device)
    for rows in distributed.shard_blocks(len(idx), 1024):  # this rank's block, then all
        images[rows] = normalize(torch.from_numpy(read_images(idx[rows])).to(device), mask)[0]
    distributed.share_all(images)
    power, se = signal_power_with_error(images, mask)
    return DataStats(noise=estimate_noise_model(images, mask),
                     signal_power=power, signal_power_se=se,
                     snr=estimate_snr(images, mask),
                     mean_image=images.mean(0))
