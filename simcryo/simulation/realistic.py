"""What makes simulated picks look like a facility's: continuous views, junk, coloured noise,
per-image contrast.

- Views (`--views`): `discrete` (the view classes of simcryo.simulation.simulate), `uniform`
  (directions uniform over the sphere) or `preferred` (a share `preferred_fraction` of the
  good particles drawn from Fisher distributions of width `preferred_spread` degrees about
  `preferred_views` random directions, the rest uniform). A continuous-view particle's
  `_simcryoTrueClass` is its nearest of the `--classes` well separated directions, so
  clustering scores stay defined.
- Junk (`--junk-fraction`, `--junk-kinds`): a share of all output particles, kinds drawn in
  equal proportions: `empty` (noise only), `blob` (ice / aggregate: a cluster of 2-8 smooth
  Gaussian blobs of 1.5-8 % of the box, no view), `offcentre` (a particle of the volume moved
  by 25-45 % of the box, so the box edge cuts it; no wrap-around), `other` (particles of
  --junk-volume). Junk has `_simcryoTrueClass` 0; its kind is `_simcryoTrueKind`.
- Coloured noise (`--noise coloured`): Gaussian noise of power spectrum
  P(s) = 1 + (s_c / s)^alpha, s_c = 1 / noise_corner Å: 1/f-like below the corner frequency,
  flat above it (the shape of a real micrograph background), standardised per image.
- Contrast (`--contrast-sigma`): each image's signal is multiplied by exp(N(0, sigma^2))
  after the SNR scaling (ice thickness varies between picks), written as _simcryoTrueContrast.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from simcryo.image.fourier import radial_frequency, shift_images

KINDS = ("good", "empty", "blob", "offcentre", "other")
JUNK_KINDS = KINDS[1:]
VIEW_MODES = ("discrete", "uniform", "preferred")


# ---------------------------------------------------------------- views

def unit_vectors(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def uniform_directions(n, rng):
    """n directions uniform over the sphere (n, 3)."""
    return unit_vectors(rng.normal(size=(n, 3)))


def fisher_directions(centres, spread_deg, rng):
    """One direction per row of `centres` (n, 3), Fisher-distributed about it with
    kappa = 1 / spread^2 (spread in degrees ~ the angular standard deviation per axis)."""
    n = len(centres)
    kappa = 1.0 / math.radians(max(spread_deg, 1e-3)) ** 2
    u = rng.uniform(size=n)
    cos_t = 1.0 + np.log(u + (1.0 - u) * np.exp(-2.0 * kappa)) / kappa
    sin_t = np.sqrt(np.clip(1.0 - cos_t ** 2, 0.0, 1.0))
    phi = rng.uniform(0.0, 2 * math.pi, n)
    # an orthonormal frame (a, b, c) per centre
    c = unit_vectors(np.asarray(centres, dtype=np.float64))
    helper = np.where(np.abs(c[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    a = unit_vectors(np.cross(c, helper))
    b = np.cross(c, a)
    return unit_vectors(cos_t[:, None] * c + sin_t[:, None] * (np.cos(phi)[:, None] * a +
                                                                 np.sin(phi)[:, None] * b))


def continuous_directions(n, mode, preferred_views, preferred_fraction, preferred_spread, rng):
    """Viewing directions (n, 3) for `uniform` or `preferred` views (module docstring)."""
    dirs = uniform_directions(n, rng)
    if mode == "preferred":
        centres = uniform_directions(preferred_views, rng)
        near = rng.uniform(size=n) < preferred_fraction
        pick = centres[rng.integers(0, preferred_views, int(near.sum()))]
        dirs[near] = fisher_directions(pick, preferred_spread, rng)
    return dirs


def nearest_centre(directions, centres, mirrors_distinct=False):
    """Index (0-based) of the nearest centre of each direction (mirror-aware as
    simcryo.simulation.view_directions: opposite directions count as close unless
    mirrors_distinct)."""
    c = np.asarray(directions) @ np.asarray(centres).T
    return np.argmax(c if mirrors_distinct else np.abs(c), axis=1)


def sample_kinds(n_good, junk_fraction, kinds, rng):
    """Kind codes (index into KINDS) of all particles, shuffled: n_good good particles plus
    round(f n_good / (1 - f)) junk, so junk is a share f of the output; kinds in equal
    proportions (the remainder spread over the first kinds)."""
    n_junk = int(round(junk_fraction * n_good / (1.0 - junk_fraction))) if junk_fraction else 0
    codes = [KINDS.index(k) for k in kinds] or [KINDS.index("empty")]
    junk = np.array([codes[i % len(codes)] for i in range(n_junk)], dtype=np.int64)
    all_kinds = np.concatenate([np.zeros(n_good, dtype=np.int64), junk])
    return all_kinds[rng.permutation(len(all_kinds))]


def offcentre_shifts(n, box, rng):
    """Shifts (n, 2) px of 25-45 % of the box in random directions (the pick misses the
    particle; part of it leaves the box)."""
    r = rng.uniform(0.25, 0.45, n) * box
    phi = rng.uniform(0.0, 2 * math.pi, n)
    return np.stack([r * np.cos(phi), r * np.sin(phi)], axis=1)


def shift_without_wrap(images, shift):
    """Translate images (B, n, n) by (B, 2) px with zero fill: the part leaving the box is
    lost instead of wrapping around (shifts up to n/2)."""
    n = images.shape[-1]
    p = n // 2
    padded = F.pad(images, (p, p, p, p))
    return shift_images(padded, shift)[:, p:p + n, p:p + n]


# ---------------------------------------------------------------- junk images

def blob_images(n, box, generator, device="cpu"):
    """Ice / aggregate picks: each a cluster of 2-8 isotropic Gaussian blobs, widths 1.5-8 %
    of the box, centres within 0.3 box of the centre, amplitudes 0.3-1 (n, box, box)."""
    g = torch.arange(box, dtype=torch.float32, device=device) - box // 2
    y, x = torch.meshgrid(g, g, indexing="ij")
    out = torch.zeros((n, box, box), device=device)
    counts = torch.randint(2, 9, (n,), generator=generator)
    m = 8
    centre = (torch.rand((n, m, 2), generator=generator) * 2 - 1) * 0.3 * box
    width = (0.015 + 0.065 * torch.rand((n, m), generator=generator)) * box
    amp = 0.3 + 0.7 * torch.rand((n, m), generator=generator)
    amp = amp * (torch.arange(m)[None] < counts[:, None])
    for j in range(m):
        cx, cy = centre[:, j, 0].to(device), centre[:, j, 1].to(device)
        r2 = (x[None] - cx[:, None, None]) ** 2 + (y[None] - cy[:, None, None]) ** 2
        w = width[:, j].to(device)[:, None, None]
        out += amp[:, j].to(device)[:, None, None] * torch.exp(-r2 / (2 * w ** 2))
    return out


# ---------------------------------------------------------------- coloured noise

def coloured_power(box, apix, corner_A, exponent, device="cpu"):
    """Power spectrum P(s) = 1 + (s_c / s)^alpha on the rfft2 grid (box, box//2+1); the
    zero frequency takes the value of the first ring."""
    s = radial_frequency(box, device) / (box * apix)          # 1/Å
    s = s.clamp_min(1.0 / (box * apix))
    return 1.0 + ((1.0 / corner_A) / s) ** exponent


def contrast_scales(n, sigma, rng):
    """Per-image signal scale exp(N(0, sigma^2)) (1 when sigma = 0)."""
    return np.exp(rng.normal(0.0, sigma, n)) if sigma > 0 else np.ones(n)
