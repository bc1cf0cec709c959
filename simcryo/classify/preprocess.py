"""Preprocessing for classification: phase flip, background normalisation, crop around the
particle, Fourier downsampling to the working box, cached once in a memory-mapped file.

The particle radius sets both the background mask and the crop: a small particle in a large
box keeps its full resolution when the box is first cropped around it, instead of being
Fourier-downsampled together with empty background.
"""
import contextlib
import os

import numpy as np
import torch

from simcryo import distributed
from simcryo.image import ctf as ctfmod
from simcryo.image import preprocess as pp
from simcryo.image.fourier import fourier_crop, radial_frequency, radial_index
from simcryo.image.mask import normalize_background, soft_mask
from simcryo.errors import SimcryoError
from simcryo.io.pages import StreamedRows, release_pages
from simcryo.outputs import allocate, atomic_path

CACHE_NAME = "preprocessed.f32"
REFINE_CACHE = "refine_cache.f32"  # the EM's wider cache (refine_mask_scale > 1)
CACHES = (CACHE_NAME, REFINE_CACHE)  # removed when a run ends, rebuilt by a resume


def shell_index(box):
    """Integer radius (in Fourier pixels) of each fft2-layout frequency of a box."""
    return radial_index(box, full=True)


def spectral_snr(images, radius):
    """Per-shell spectral SNR of (n, box, box) images from the particle disc vs. the background.

    Power inside a soft disc of the particle radius (signal + noise) against power outside
    radius + 4 px (noise only), both normalised by the window energy; returns (box//2 + 1,)
    numpy, clipped at 0."""
    box = images.shape[-1]
    inner = soft_mask(box, radius + 1.0, width=3.0)
    outer = 1.0 - soft_mask(box, min(radius + 5.0, box / 2 - 2), width=3.0)
    p_in = (torch.fft.fft2(images * inner).abs() ** 2).mean(0) / (inner ** 2).sum()
    p_bg = (torch.fft.fft2(images * outer).abs() ** 2).mean(0) / (outer ** 2).sum()
    sh = shell_index(box).flatten()
    count = torch.bincount(sh).float()
    p_in = torch.zeros(len(count)).index_add_(0, sh, p_in.flatten()) / count
    p_bg = torch.zeros(len(count)).index_add_(0, sh, p_bg.flatten()) / count
    ssnr = ((p_in - p_bg) / p_bg.clamp_min(1e-12)).numpy()[: box // 2 + 1]
    # light smoothing: single shells of a few hundred images are noisy
    sm = np.convolve(np.pad(ssnr, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    return np.clip(sm, 0.0, None)


def resolution_shell(ssnr, threshold=0.05):
    """Last shell before the spectral SNR first stays below `threshold` (2 shells in a row)."""
    low = ssnr < threshold
    for i in range(1, len(ssnr) - 1):
        if low[i] and low[i + 1]:
            return i
    return len(ssnr) - 1


class Geometry:
    """Box sizes of the pipeline: input box -> crop window -> working box, and mask radii."""

    def __init__(self, box, apix, radius_px, working_box, shift_margin=0.08, max_freq=0.5,
                 window_scale=1.0):
        self.box = box
        self.apix = apix
        self.radius_px = radius_px
        self.window_scale = window_scale  # the crop window covers window_scale x the radius
        window = crop_window(box, radius_px * window_scale, shift_margin)
        self.window = window
        # highest frequency with measurable signal (cycles per input px), for the record
        self.max_freq = max_freq
        self.working_box = min(working_box, window)
        self.scale = self.working_box / window
        self.work_radius = radius_px * self.scale
        self.work_apix = apix / self.scale

    def widened(self, window_scale):
        """The geometry of a wider crop window (`window_scale` x the particle radius) at
        this one's pixel size, same radius and spectral SNR (the EM's own cache)."""
        window = crop_window(self.box, self.radius_px * window_scale)
        wb = int(round(window * self.scale))
        g = Geometry(self.box, self.apix, self.radius_px, wb + wb % 2, max_freq=self.max_freq,
                     window_scale=window_scale)
        g.ssnr = getattr(self, "ssnr", None)
        return g

    def as_dict(self):
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(self).items()}


def crop_window(box, radius_px, shift_margin=0.08):
    """Even crop window in px that holds a disc of `radius_px` and room for shifts."""
    window = int(np.ceil(2 * radius_px * (1 + shift_margin))) + 4
    return min(box, window + window % 2)


def center_crop(images, window):
    box = images.shape[-1]
    s = box // 2 - window // 2
    return images[..., s:s + window, s:s + window]


def prepare_batch(images, ctf, apix, geom, cfg, indices=None):
    """(n, box, box) float32 tensor of raw particles -> (n, wb, wb) working images."""
    pp.check_not_constant(images, indices)
    x = images
    if ctf is not None and cfg.phase_flip:
        x = ctfmod.phase_flip(x, ctfmod.ctf_2d(ctf, x.shape[-1], apix, device=x.device, rfft=True))
    x = normalize_background(x, geom.radius_px if geom.radius_px < 0.45 * geom.box else None)
    x = center_crop(x, geom.window)
    if geom.working_box < geom.window:
        x = fourier_crop(x, geom.working_box)
    if cfg.lowpass > 0:
        x = lowpass(x, geom.work_apix, cfg.lowpass)
    if cfg.equalize:
        x = pp.equalize_histogram(x)
    if not torch.isfinite(x).all():
        raise SimcryoError("preprocessing produced NaN/Inf values (check the input images)")
    return x


def wiener_filter(geom, device=None):
    """(wb, wb) fft2-layout filter SSNR / (1 + SSNR) from the spectral SNR measured on the data.

    The cache keeps unfiltered images (not whitened: the EM's noise model is white) for the
    likelihood-based refinement; the contrastive stage sees them through this filter, which
    removes the noise-only frequencies a network would otherwise use to tell particles
    apart."""
    wb = geom.working_box
    ssnr = torch.as_tensor(geom.ssnr, dtype=torch.float32, device=device)
    # frequency of the working box in shells of the input box
    r = radial_frequency(wb, device, full=True) / geom.scale * geom.box / wb
    i0 = r.floor().long().clamp(max=len(ssnr) - 1)
    i1 = (i0 + 1).clamp(max=len(ssnr) - 1)
    t = (r - i0).clamp(0, 1)
    s = ssnr[i0] * (1 - t) + ssnr[i1] * t
    s = torch.where(r > len(ssnr) - 1, torch.zeros_like(s), s)
    return s / (1 + s)


def apply_filter(x, filt):
    """Multiply (..., b, b) images by an fft2-layout filter."""
    return torch.fft.ifft2(torch.fft.fft2(x) * filt).real


def lowpass(x, apix, resolution):
    box = x.shape[-1]
    s2 = (radial_frequency(box, x.device, full=True) / (box * apix)) ** 2
    filt = torch.exp(-s2 * (resolution ** 2) / 2)
    return torch.fft.ifft2(torch.fft.fft2(x) * filt).real


def build_cache(pset, cfg, out_dir, device, log=print, batch=512, geom=None, name=CACHE_NAME):
    """Preprocess every particle once into OUT/`name` (memory-mapped), with `geom` or the
    Geometry measured on the data (cache_geometry).

    Returns (the cache's rows (N, wb, wb) float32, as `open_cache` gives them, Geometry).
    Under torchrun rank 0 measures the geometry and owns the file; every rank fills its
    block of the particles."""
    if geom is None:
        geom = distributed.broadcast_object(cache_geometry(pset, cfg) if distributed.is_main()
                                            else None)
    wb = geom.working_box
    path = os.path.join(out_dir, name)
    # a partial cache never has the cache's name; rank 0 moves it into place when all filled
    with (atomic_path(path) if distributed.is_main() else contextlib.nullcontext()) as tmp:
        if distributed.is_main():
            # blocks reserved first: a full disk fails here, not with SIGBUS on a page write
            allocate(tmp, pset.n * wb * wb * 4, "the preprocessed image cache")
        _fill_cache(distributed.broadcast_object(tmp), pset, cfg, geom, device, batch)
    distributed.barrier()
    return open_cache(path, pset.n, wb), geom


def open_cache(path, n, working_box):
    """The cache file as (n, wb, wb) float32 rows, read through a memory map whose pages
    are released as the rows stream (simcryo.io.pages), so RSS does not grow with N."""
    return StreamedRows(np.memmap(path, dtype=np.float32, mode="r",
                                  shape=(n, working_box, working_box)))


def cache_geometry(pset, cfg):
    """The Geometry of the cache (particle radius, crop, working box, spectral SNR),
    measured on up to 1000 particles spread over the set."""
    apix = pset.apix
    box = pset.box
    sample = np.linspace(0, pset.n - 1, min(pset.n, 1000)).astype(np.int64)
    x = torch.from_numpy(pset.images(sample))
    pp.check_not_constant(x, sample)
    ctf = pset.ctf.take(sample) if pset.ctf is not None else None
    if ctf is not None and cfg.phase_flip:
        x = ctfmod.phase_flip(x, ctfmod.ctf_2d(ctf, box, apix, rfft=True))
    x = normalize_background(x)
    if cfg.mask_diameter > 0:
        radius = min(cfg.mask_diameter / 2 / apix, 0.45 * box)
    else:
        radius = pp.estimate_radius(x)
    ssnr, max_freq = None, 0.5
    if cfg.wiener:
        ssnr = spectral_snr(x, radius)
        max_freq = min((resolution_shell(ssnr) + 2) / box, 0.5)
    geom = Geometry(box, apix, radius, cfg.working_box, max_freq=max_freq)
    geom.ssnr = None if ssnr is None else [round(float(v), 4) for v in ssnr]
    if geom.working_box < 16:
        raise SimcryoError(f"particle too small: crop window {geom.window} px leaves a "
                           f"{geom.working_box} px working box (need >= 16 px); give a larger "
                           "--mask-diameter or a larger box")
    return geom


def _fill_cache(path, pset, cfg, geom, device, batch):
    """This rank's rows of the cache (distributed.shard), then one global scale."""
    wb, apix = geom.working_box, pset.apix
    mm = np.memmap(path, dtype=np.float32, mode="r+", shape=(pset.n, wb, wb))
    for idx in distributed.shard_blocks(pset.n, batch):
        raw = torch.from_numpy(pset.images(idx)).to(device)
        ctf = pset.ctf.take(idx) if pset.ctf is not None else None
        mm[idx] = prepare_batch(raw, ctf, apix, geom, cfg, idx).cpu().numpy()
        release_pages(mm)  # written pages stay in the page cache, not in this process
    mm.flush()
    distributed.barrier()  # every rank's rows are in the file
    # one global scale: the network sees unit-variance inputs whatever the data's noise level
    scale = float(np.sqrt(np.mean(np.square(mm[: min(pset.n, 4096)], dtype=np.float64))))
    if not scale > 0:
        raise SimcryoError("all preprocessed images are zero")
    distributed.barrier()  # every rank has read the rows of the scale before any divides
    for idx in distributed.shard_blocks(pset.n, 4096):
        mm[idx] /= scale
        release_pages(mm)
    mm.flush()
    del mm
    distributed.barrier()
