"""The in-plane alignment interface every stage shares, and its pose primitives.

An `Aligner` finds, for each particle i of a batch (B, n, n), the in-plane pose against the
reference labels[i] of a set prepared once per iteration (`prepare`). Strategies are
interchangeable (`make_aligner`): real-space polar rings (`simcryo.align.rings`, the default
of `simcryo align`), the paper's Fourier magnitudes, and an exhaustive grid over angles and
shifts (`simcryo.align.exhaustive`, the classification EM and the evaluation).

Poses at this boundary are RELION's (simcryo.image.geometry): particle ~=
transform_images(reference, psi, shift), so align_images(particle, psi, shift) ~= reference;
psi in degrees in [-180, 180), shift = _rlnOriginX/Y in px. No caller converts anything.
"""
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from simcryo.align import polar


@dataclass
class Alignment:
    """Result of `Aligner.align` for a batch: psi (B,) deg, shift (B, 2) px (RELION), score
    (B,) (the strategy's correlation peak: higher is better, comparable within one call) and
    spectrum (B, n, n//2+1): the rfft2 of each particle brought into its reference's frame
    (None where a strategy does not form it)."""
    psi: torch.Tensor
    shift: torch.Tensor
    score: torch.Tensor
    spectrum: torch.Tensor = None


class Aligner(ABC):
    """One in-plane search strategy (see the module docstring)."""

    @abstractmethod
    def prepare(self, references):
        """Everything about references (K, n, n) that the search needs, computed once."""

    @abstractmethod
    def align(self, images, prepared, labels, shift0=None):
        """Align images (B, n, n), particle i against reference labels[i]; shift0: starting
        shifts (B, 2) px (RELION), default: the strategy's own centring. -> Alignment."""

    def __call__(self, images, references, labels=None, shift0=None):
        """prepare + align in one call; labels default to reference i for particle i."""
        if labels is None:
            labels = torch.arange(len(images), device=images.device)
        return self.align(images, self.prepare(references), labels, shift0)


def make_aligner(params):
    """The strategy named by params.method ('rings', 'magnitude')."""
    from simcryo.align.rings import MagnitudeAligner, RingAligner
    strategies = {"rings": RingAligner, "magnitude": MagnitudeAligner}
    if params.method not in strategies:
        raise ValueError(f"unknown alignment method {params.method!r}")
    return strategies[params.method](params)


def wrap_angle(psi):
    """Angles (deg) to [-180, 180)."""
    return torch.remainder(psi + 180.0, 360.0) - 180.0


def rotate_shift(psi, delta):
    """R(psi) delta for (B,) angles (deg) and (B, 2) vectors (geometry's R: counter-clockwise
    with y up)."""
    return (polar.rotation_matrix(psi) @ delta[..., None])[..., 0]


def warp_grid(psi, shift, box, device):
    """grid_sample grid for the pose (psi, shift): output pixel u (from the box centre) reads
    the particle at R(-psi) u - shift, so the output is the particle in its reference's frame
    (align_corners=False coordinates). Each coordinate is a row term plus a column term, so
    the grid costs one broadcast add per coordinate (a (box*box, 3) x (3, 2) matmul per
    particle cost as much as the bilinear sampling itself)."""
    t = torch.deg2rad(psi.to(device, torch.float32))
    c, s = torch.cos(t)[:, None], torch.sin(t)[:, None]
    sh = shift.to(device, torch.float32)
    scale = 2.0 / box
    off = (2 * (box // 2) + 1) / box - 1.0
    ax = ((torch.arange(box, device=device, dtype=torch.float32) - box // 2) * scale)[None]
    tx, ty = off - sh[:, :1] * scale, off - sh[:, 1:] * scale
    grid = torch.empty(len(t), box, box, 2, device=device)
    # x = c ux + (s uy + tx), y = -s ux + (c uy + ty); ux varies along the last axis
    torch.add((c * ax)[:, None, :], (s * ax + tx)[:, :, None], out=grid[..., 0])
    torch.add((-s * ax)[:, None, :], (c * ax + ty)[:, :, None], out=grid[..., 1])
    return grid


def warp_to_reference(images, psi, shift, mode="bilinear"):
    """Particles (B, n, n) brought into their reference's frame with one bilinear resampling:
    the fast form of geometry.align_images (same pose, same result up to interpolation)."""
    grid = warp_grid(psi, shift, images.shape[-1], images.device)
    out = torch.nn.functional.grid_sample(images[:, None], grid, mode=mode,
                                          padding_mode="zeros", align_corners=False)
    return out[:, 0]
