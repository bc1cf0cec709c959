"""Class-average fidelity: how much a class average looks like a clean projection of the truth.

Raw score of an image: the best normalised cross-correlation (both means removed) with a
clean projection of the volume over
- viewing directions: a near-uniform grid over the whole sphere, `view_step` degrees apart
  (Fibonacci points; opposite directions are distinct: mirror images),
- in-plane rotations (`angle_step` degrees) and integer shifts within `max_shift` px, every
  cell scored by the one exhaustive aligner (simcryo.align.ExhaustiveAligner.scores),
- then, at the best direction, the aligner's finer in-plane rounds (sub-degree, sub-pixel),
and both contrasts (CTF-modulated averages may be inverted: the sign is a display
convention). Fidelity rescales it so that 0 is the mean raw score white-noise images reach in
the same search and 1 the mean raw score of clean projections at random (off-grid)
directions, rotations and shifts: fidelity = (raw - noise) / (clean - noise).
"""
import math

import numpy as np
import torch

from simcryo.align import ExhaustiveAligner, ExhaustiveParams
from simcryo.errors import SimcryoError
from simcryo.image.geometry import transform_images
from simcryo.simulation import Projector, direction_to_angles, euler_to_matrix


def sphere_grid(step_deg):
    """Near-uniform directions (m, 3) over the whole sphere, neighbours ~step_deg apart."""
    m = max(2, int(math.ceil(4 * math.pi / math.radians(step_deg) ** 2)))
    i = np.arange(m) + 0.5
    z = 1.0 - 2.0 * i / m
    phi = math.pi * (1.0 + math.sqrt(5.0)) * i
    r = np.sqrt(1.0 - z ** 2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _centred(images):
    return images - images.mean((-2, -1), keepdim=True)


class FidelityScorer:
    """Fidelity of class averages against one volume (see the module docstring)."""

    def __init__(self, volume, view_step=10.0, angle_step=10.0, max_shift=None, calibration=8,
                 chunk_views=8, seed=0, device="cpu"):
        vol = torch.as_tensor(volume, dtype=torch.float32, device=device)
        self.box = vol.shape[0]
        self.device = device
        self.max_shift = float(max_shift if max_shift is not None else self.box / 8)
        self.projector = Projector(vol)
        rot, tilt = direction_to_angles(sphere_grid(view_step))
        self.views = _centred(self.projector.project(euler_to_matrix(rot, tilt, 0 * rot)))
        n_angles = max(1, int(round(360.0 / angle_step)))
        self.coarse = ExhaustiveAligner(ExhaustiveParams(n_angles=n_angles,
                                                         max_shift=self.max_shift))
        self.fine = ExhaustiveAligner(ExhaustiveParams(n_angles=n_angles,
                                                       max_shift=self.max_shift,
                                                       fine_rounds=2))
        self.chunks = [self.coarse.prepare(self.views[s:s + chunk_views])
                       for s in range(0, len(self.views), chunk_views)]
        self.chunk_views = chunk_views
        self.noise_level, self.clean_level = self._calibrate(calibration, seed)
        if not self.clean_level > self.noise_level:
            raise SimcryoError("fidelity: clean projections score no better than noise; is the "
                               "volume empty?")

    def raw_scores(self, images):
        """Best normalised correlation (B,) of images (B, D, D) with any clean projection."""
        x = _centred(torch.as_tensor(images, dtype=torch.float32, device=self.device))
        if x.shape[-1] != self.box:
            raise SimcryoError(f"fidelity: images are {x.shape[-1]} px, the volume "
                               f"{self.box} px")
        xnorm2 = (x ** 2).sum((-2, -1)).clamp_min(1e-30)
        best = torch.full((len(x),), -2.0, device=x.device)
        best_view = torch.zeros(len(x), dtype=torch.long, device=x.device)
        sign = torch.ones(len(x), device=x.device)
        for c, prepared in enumerate(self.chunks):
            cc, power = self.coarse.scores(x, prepared)               # (B, V, A, S), (B, V, A)
            ncc = cc / torch.sqrt(xnorm2[:, None, None, None] * power[..., None]).clamp_min(1e-30)
            for s in (1.0, -1.0):
                per_view = (s * ncc).amax(dim=(2, 3))                # (B, V)
                value, view = per_view.max(dim=1)
                better = value > best
                best = torch.where(better, value, best)
                best_view = torch.where(better, view + c * self.chunk_views, best_view)
                sign = torch.where(better, torch.full_like(sign, s), sign)
        fine = self.fine(sign[:, None, None] * x, self.views[best_view]).score
        return torch.maximum(best, fine)

    def _calibrate(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn((n, self.box, self.box), generator=g).to(self.device)
        rng = np.random.default_rng(seed)
        d = rng.normal(size=(n, 3))
        rot, tilt = direction_to_angles(d)
        clean = self.projector.project(euler_to_matrix(rot, tilt, 0 * rot))
        psi = torch.as_tensor(rng.uniform(-180, 180, n), dtype=torch.float32)
        shift = torch.as_tensor(rng.uniform(-0.5, 0.5, (n, 2)) * self.max_shift / math.sqrt(2),
                                dtype=torch.float32)
        clean = transform_images(clean, psi.to(self.device), shift.to(self.device))
        return (float(self.raw_scores(noise).mean()), float(self.raw_scores(clean).mean()))

    def fidelity(self, images):
        """(fidelity (B,) numpy, raw scores (B,) numpy)."""
        raw = self.raw_scores(images)
        fid = (raw - self.noise_level) / (self.clean_level - self.noise_level)
        return fid.cpu().numpy().astype(np.float64), raw.cpu().numpy().astype(np.float64)


def size_weighted(values, sizes):
    """sum(n_k v_k) / sum(n_k) over the classes with a value (None when there is none)."""
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(sizes, dtype=np.float64)
    ok = np.isfinite(v) & (w > 0)
    return float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else None
