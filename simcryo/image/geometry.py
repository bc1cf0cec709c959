"""In-plane 2D poses with RELION's meaning of _rlnAnglePsi and _rlnOriginX/Y.

x = column, y = row, box centre at pixel box//2; R(a) maps (x, y) to
(x cos a - y sin a, x sin a + y cos a) (counter-clockwise when y points up, as in MRC viewers).
RELION aligns a particle P onto its class average A as A(p) = P(R(-psi) p - origin), i.e.
translate by +origin, then rotate by +psi (measured against relion_stack_create
--apply_transformation and relion_refine; tests/engine/test_relion_convention.py).
So a particle is `transform_images(A, psi, origin)` = A rotated by -psi, then translated by
-origin, and `align_images(P, psi, origin)` undoes it.
"""
import math

import torch
import torch.nn.functional as F

from simcryo.image.fourier import shift_images


def _as_batch(values, n, device, dtype):
    t = torch.as_tensor(values, device=device, dtype=dtype)
    return t.expand(n) if t.ndim == 0 else t


def rotate_images(images, psi_deg, mode="bicubic"):
    """Rotate each image of (n, H, W) by psi degrees about pixel (H//2, W//2)."""
    n, h, w = images.shape
    dtype = images.dtype if images.is_floating_point() else torch.float32
    psi = _as_batch(psi_deg, n, images.device, dtype) * (math.pi / 180.0)
    ys = torch.arange(h, device=images.device, dtype=dtype) - h // 2
    xs = torch.arange(w, device=images.device, dtype=dtype) - w // 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    c, s = torch.cos(psi)[:, None, None], torch.sin(psi)[:, None, None]
    # Output pixel x samples the input at R(-psi) x.
    src_x = c * gx + s * gy + w // 2
    src_y = -s * gx + c * gy + h // 2
    grid = torch.stack((src_x * 2.0 / (w - 1) - 1.0, src_y * 2.0 / (h - 1) - 1.0), dim=-1)
    out = F.grid_sample(images[:, None].to(dtype), grid, mode=mode, padding_mode="zeros",
                        align_corners=True)
    return out[:, 0]


def transform_images(images, psi_deg, shift_px):
    """Forward model (RELION's pose meaning, average -> particle): rotate by -psi, then
    translate by -shift (shift = _rlnOriginX/Y in px)."""
    shift = torch.as_tensor(shift_px, device=images.device, dtype=torch.float32)
    psi = torch.as_tensor(psi_deg, device=images.device, dtype=torch.float32)
    return shift_images(rotate_images(images, -psi), -shift)


def align_images(images, psi_deg, shift_px):
    """Inverse model (particle -> average frame), what `relion_stack_create
    --apply_transformation` does: translate by +shift, then rotate by +psi."""
    shift = torch.as_tensor(shift_px, device=images.device, dtype=torch.float32)
    psi = torch.as_tensor(psi_deg, device=images.device, dtype=torch.float32)
    return rotate_images(shift_images(images, shift), psi)


def compose(psi1, shift1, psi2, shift2):
    """Pose equal to applying (psi1, shift1) and then (psi2, shift2); numpy arrays/scalars.

    transform(transform(A, p1, s1), p2, s2) = T(-s2) R(-p2) T(-s1) R(-p1) A
    = transform(A, p1 + p2, s2 + R(-p2) s1)."""
    import numpy as np
    a = np.deg2rad(psi2)
    c, s = np.cos(a), np.sin(a)
    shift1 = np.asarray(shift1, dtype=np.float64)
    sx = c * shift1[..., 0] + s * shift1[..., 1] + np.asarray(shift2)[..., 0]
    sy = -s * shift1[..., 0] + c * shift1[..., 1] + np.asarray(shift2)[..., 1]
    return (np.asarray(psi1) + psi2 + 180.0) % 360.0 - 180.0, np.stack([sx, sy], axis=-1)
