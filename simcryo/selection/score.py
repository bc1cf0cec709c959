"""Class quality from what every 2D classifier writes: the class averages and the class sizes.

Features of class k (average A_k, n_k particles, mask radius R px, box D):
- `contrast`: std of A_k inside R after a low-pass to D / `lowpass_fraction` Fourier px and
  removal of the background mean (the ring outside R), divided by the size-weighted median of
  all classes. An empty pick averages to a flat image (low contrast); a class of particles
  keeps its low-resolution structure, whatever the tool and its scaling (the median is of
  the same classification).
- `centring`: 1 - |energy centroid| / R (simcryo.align.centre_of_mass): an off-centre pick
  averages to density at the mask edge.
- `profile`: the highest |normalised correlation| of A_k's radial profile (mean of the
  low-passed, background-removed average over rings of 1 px, out to R) with the profile of
  another *trusted* class: one whose other terms (contrast, centring, size and, when known,
  consistency) score at least `ScoreParams.profile_trust`. How particle-like the average
  is, judged against the classification's own good classes; an aggregate, ice or off-centre
  class has another mass distribution; |.| ignores the contrast sign. The nearest trusted
  class, not the median of all: the views of an elongated particle have different mass
  distributions, but views are continuous, so each view class has a neighbour that looks
  alike. Against the size-weighted median profile (before 2026-12-06) pure hand-map classes
  of 262-361 particles scored 0.08-0.41 and were rejected (benchmarks/realistic.py, hand,
  seeds 0 and 1: automatic recall 0.81 against the oracle's 0.99).
- `size`: n_k / (N / K).
Tried and left out: roundness (1 - correlation with the rotational average), expecting ice
and aggregate classes to average to round smears; on the simulated junk set (phantom, 1,000
particles, 15 % junk of three kinds, SNR 0.05, K = 20) the junk classes came out less round
(0.38-0.69) than the good ones (0.11-0.54).

Score = contrast_term * centring_term * profile_term * size_term (x consistency_term when the
particles' poses are known: simcryo.selection.consistency), each term in [0, 1]: a
saturating ramp (value / reference, clipped at 1), so that a class is penalised only for what
it lacks. The references are `ScoreParams` fields. Measured on two simulated junk sets
(phantom, 1,000 and 600 particles, SNR 0.05, K = 20, simcryo classify): good classes had
contrast >= 0.67, centring >= 0.85 and profile >= 0.96; the five junk-dominated classes
contrast 0.32-0.69 and profile 0.07-0.97, scores 0.02-0.40 against 0.60-1 for the good ones
(profile then against the median profile).
`size_full` was raised from 0.2 to 0.5 after RELION 3.1's classes of the 600-particle set,
many of 1-11 particles, let three small junk classes through. The defaults were set on these
sets; benchmarks/realistic.py measures other seeds and volumes.
"""
from dataclasses import dataclass

import numpy as np
import torch

from simcryo.align import centre_of_mass
from simcryo.image.fourier import lowpass_filter, shell_sums
from simcryo.image.mask import background_stats, circular_mask, radius_grid


@dataclass
class ScoreParams:
    lowpass_fraction: float = 8.0   # low-pass to box / this Fourier px (the class's shape)
    contrast_full: float = 1.0      # contrast (x median) at which the contrast term is 1
    centring_full: float = 0.95     # centring at which the centring term is 1
    profile_full: float = 0.9       # profile likeness at which its term is 1 (0: term off)
    size_full: float = 0.5          # size (x N/K) at which the size term is 1
    consistency_full: float = 0.8   # member consistency (x median) at which its term is 1
                                    # (simcryo.selection.consistency; 0: term off)
    profile_trust: float = 0.8      # a class whose other terms score >= this is trusted;
                                    # profiles are judged against trusted classes' profiles


def _lowpassed(averages, fraction):
    n = averages.shape[-1]
    filt = lowpass_filter(n, n / fraction, averages.device)
    return torch.fft.irfft2(torch.fft.rfft2(averages) * filt, s=(n, n))


def background_removed(images, radius):
    outside = ~circular_mask(images.shape[-1], radius, images.device)
    if outside.any():
        return images - background_stats(images, outside=outside)[0][:, None, None]
    return images - images.mean((-2, -1), keepdim=True)


def weighted_median(values, weights):
    order = np.argsort(values)
    cw = np.cumsum(np.asarray(weights, dtype=np.float64)[order])
    return float(values[order][np.searchsorted(cw, 0.5 * cw[-1])])


def _radial_profiles(images, radius):
    """Mean of each image (K, D, D) over rings of 1 px about the centre, out to `radius`."""
    n_rings = int(radius) + 1
    ring = radius_grid(images.shape[-1], images.device).round().long().clamp(max=n_rings)
    sums = shell_sums(images, ring, n_rings + 1)[:, :n_rings]
    return sums / torch.bincount(ring.reshape(-1), minlength=n_rings + 1)[:n_rings]


def profile_likeness(profiles, trusted):
    """(K,) highest |normalised correlation| of each radial profile (K, R) with the profile
    of another class in `trusted` (K,) bool; 1 for a class that has no other trusted class
    to be judged against."""
    p = np.asarray(profiles, dtype=np.float64)
    a = p - p.mean(1, keepdims=True)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-30)
    corr = np.abs(a @ a.T)
    np.fill_diagonal(corr, -np.inf)
    corr[:, ~np.asarray(trusted, dtype=bool)] = -np.inf
    best = corr.max(1)
    return np.where(np.isfinite(best), np.clip(best, 0.0, 1.0), 1.0)


def class_features(averages, sizes, radius, params=None):
    """Features (dict of (K,) numpy arrays, see the module docstring) of averages (K, D, D)
    with class sizes (K,) and mask radius `radius` px, and "radial_profiles" (K, R), from
    which score_classes computes the "profile" likeness. Empty classes (size 0 or a
    constant average) get contrast 0."""
    p = params or ScoreParams()
    avg = torch.as_tensor(np.asarray(averages), dtype=torch.float32)
    sizes = np.asarray(sizes, dtype=np.float64)
    inside = circular_mask(avg.shape[-1], radius, avg.device)
    smooth = background_removed(_lowpassed(avg, p.lowpass_fraction), radius)
    raw = smooth[:, inside].std(-1).numpy().astype(np.float64)
    alive = (sizes > 0) & (raw > 0)
    ref = weighted_median(raw[alive], sizes[alive]) if alive.any() else 1.0
    contrast = np.where(alive, raw / max(ref, 1e-30), 0.0)
    offset = centre_of_mass(avg, radius=radius).norm(dim=-1).numpy()
    centring = np.clip(1.0 - offset / radius, 0.0, 1.0)
    profiles = _radial_profiles(smooth, radius).numpy().astype(np.float64)
    size = sizes / max(sizes.sum() / len(sizes), 1e-30)
    return dict(contrast=contrast, centring=centring, size=size, radial_profiles=profiles)


def score_classes(features, params=None):
    """Score (K,) in [0, 1] from `class_features` (module docstring), times the member
    consistency term when `features` holds "consistency" (simcryo.selection.consistency:
    it needs the particles and their poses) and params.consistency_full > 0; the profile
    term when params.profile_full > 0. The profile
    likeness needs the other terms (its trusted classes): it is computed here and stored
    in features["profile"] (0 for a dead class: empty or constant)."""
    p = params or ScoreParams()
    ramp = lambda v, full: np.clip(np.asarray(v) / full, 0.0, 1.0)  # noqa: E731
    others = (ramp(features["contrast"], p.contrast_full) *
              ramp(features["centring"], p.centring_full) *
              ramp(features["size"], p.size_full))
    if "consistency" in features and p.consistency_full > 0:
        others = others * ramp(features["consistency"], p.consistency_full)
    alive = np.asarray(features["contrast"]) > 0
    likeness = profile_likeness(features["radial_profiles"], alive & (others >= p.profile_trust))
    features["profile"] = np.where(alive, likeness, 0.0)
    if p.profile_full > 0:
        return others * ramp(features["profile"], p.profile_full)
    return others


def rank_classes(scores):
    """Class indices (0-based) from the best score to the worst (stable)."""
    return np.argsort(-np.asarray(scores), kind="stable")


def auto_select(scores, threshold):
    """Indices (0-based) of the classes whose score is >= threshold."""
    return np.flatnonzero(np.asarray(scores) >= threshold)
