"""Projection of a 3D volume along arbitrary directions (Fourier-slice theorem).

Conventions (RELION):
- `euler_to_matrix(rot, tilt, psi)` is RELION's `Euler_angles2matrix` (ZYZ, degrees):
  A = Rz(psi) Ry(tilt) Rz(rot) in RELION's passive form.
- A projection with matrix A is P(x, y) = sum_z V(A^T (x, y, z)), i.e. the volume rotated by A
  and summed along z. The viewing direction, in the volume frame, is the third row of A:
  (sin tilt cos rot, sin tilt sin rot, cos tilt).
- Volume arrays are indexed [z, y, x] (MRC order) with the centre at voxel (D//2, D//2, D//2);
  images are [y, x] with the centre at pixel (D//2, D//2).

Method: the volume is zero-padded by `pad` (3 up to 128 px, else 2), pre-divided by the Fourier
transform of the trilinear kernel (separable sinc^2, "gridding correction") so that trilinear
interpolation of its 3D spectrum is accurate, and each projection is the 2D inverse FFT of a
central slice sampled inside the Nyquist circle. Only the Hermitian half of the spectrum is
stored and sampled. Accuracy (tests): a band-limited Gaussian blob projects to within 3 % of
its analytic projection's peak everywhere (mean error < 1 %).
Memory: the padded half spectrum of a 64 px volume is 28 MB, of a 256 px volume 0.5 GB.
"""
import weakref

import numpy as np
import torch
import torch.nn.functional as F

from simcryo.errors import SimcryoError
from simcryo.image.fourier import frequency_grid, radial_frequency, shift_phase


def euler_to_matrix(rot, tilt, psi):
    """RELION ZYZ Euler angles (degrees) -> rotation matrices.

    Accepts scalars, numpy arrays or tensors (broadcast together); returns a float32 tensor
    of shape (*batch, 3, 3) (a single (3, 3) for scalar input)."""
    rot, tilt, psi = (torch.as_tensor(a, dtype=torch.float64) for a in (rot, tilt, psi))
    rot, tilt, psi = torch.broadcast_tensors(rot, tilt, psi)
    a, b, g = (torch.deg2rad(x) for x in (rot, tilt, psi))
    ca, sa, cb, sb, cg, sg = a.cos(), a.sin(), b.cos(), b.sin(), g.cos(), g.sin()
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = torch.stack([
        cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb,
        -sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb,
        sc, ss, cb,
    ], dim=-1)
    return m.reshape(*rot.shape, 3, 3).to(torch.float32)


def matrix_to_euler(mats):
    """Rotation matrices (..., 3, 3) -> (rot, tilt, psi) in degrees (RELION's decomposition).

    For tilt ~ 0 or 180 only rot + psi (or rot - psi) is defined; psi is then set to 0."""
    m = torch.as_tensor(mats, dtype=torch.float64)
    tilt = torch.arccos(m[..., 2, 2].clamp(-1.0, 1.0))
    sin_tilt = torch.sin(tilt)
    regular = sin_tilt.abs() > 1e-6
    rot = torch.where(regular, torch.atan2(m[..., 2, 1], m[..., 2, 0]),
                      torch.atan2(-m[..., 1, 0], m[..., 0, 0]))
    psi = torch.where(regular, torch.atan2(m[..., 1, 2], -m[..., 0, 2]),
                      torch.zeros_like(tilt))
    return (torch.rad2deg(rot).float(), torch.rad2deg(tilt).float(), torch.rad2deg(psi).float())


def direction_to_angles(directions):
    """Unit viewing directions (n, 3) as (x, y, z) -> (rot, tilt) degrees."""
    d = np.asarray(directions, dtype=np.float64)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    tilt = np.degrees(np.arccos(np.clip(d[..., 2], -1.0, 1.0)))
    rot = np.degrees(np.arctan2(d[..., 1], d[..., 0]))
    return rot, tilt


def angles_to_direction(rot, tilt):
    """(rot, tilt) degrees -> unit viewing directions (n, 3) (third row of the RELION matrix)."""
    r, t = np.radians(np.asarray(rot, dtype=np.float64)), np.radians(np.asarray(tilt, np.float64))
    return np.stack([np.sin(t) * np.cos(r), np.sin(t) * np.sin(r), np.cos(t)], axis=-1)


def view_directions(K, min_separation_deg, seed=0, mirrors_distinct=False, candidates=20000):
    """K well separated viewing directions -> (rot, tilt) arrays in degrees, shape (K,).

    Greedy farthest-point sampling over `candidates` random directions (seeded), so the K
    directions spread over the sphere. With `mirrors_distinct=False` (default) the distance
    between two directions is min(angle(d1, d2), angle(d1, -d2)): opposite views of a molecule
    give mirror-image projections, which look alike, so they count as close.
    Raises SimcryoError when the directions cannot be `min_separation_deg` apart."""
    K = int(K)
    if K < 1:
        raise SimcryoError(f"number of view classes must be >= 1 (got {K})")
    rng = np.random.default_rng(seed)
    cand = rng.normal(size=(candidates, 3))
    cand /= np.linalg.norm(cand, axis=1, keepdims=True)
    if not mirrors_distinct:
        cand[cand[:, 2] < 0] *= -1.0  # one representative per mirror pair: upper hemisphere

    def closeness(d):  # cosine of the angular distance from every candidate to d
        c = cand @ d
        return np.abs(c) if not mirrors_distinct else c

    chosen = [0]
    max_cos = closeness(cand[0])
    for _ in range(1, K):
        nxt = int(np.argmin(max_cos))
        chosen.append(nxt)
        max_cos = np.maximum(max_cos, closeness(cand[nxt]))
    dirs = cand[chosen]
    sep = min_angular_separation(dirs, mirrors_distinct)
    if K > 1 and sep < min_separation_deg:
        raise SimcryoError(
            f"cannot place {K} view directions at least {min_separation_deg:g} deg apart "
            f"(best found {sep:.1f} deg); lower the separation or the number of classes")
    return direction_to_angles(dirs)


def min_angular_separation(directions, mirrors_distinct=False):
    """Smallest pairwise angle (degrees) between unit directions (n, 3)."""
    d = np.asarray(directions, dtype=np.float64)
    if len(d) < 2:
        return 180.0
    c = d @ d.T
    if not mirrors_distinct:
        c = np.abs(c)
    np.fill_diagonal(c, -1.0)
    return float(np.degrees(np.arccos(np.clip(c.max(), -1.0, 1.0))))


def _sinc2_correction(n, device):
    """1D trilinear-kernel transform sinc^2(x / n) on a centred grid of n points."""
    x = torch.arange(n, device=device, dtype=torch.float64) - n // 2
    s = torch.sinc(x / n)
    return (s * s).to(torch.float32)


class Projector:
    """Holds the padded, gridding-corrected half spectrum of one volume; projects on demand."""

    def __init__(self, volume, pad=None):
        vol = torch.as_tensor(volume)
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise SimcryoError(f"volume must be a cube (D, D, D), got shape {tuple(vol.shape)}")
        if not torch.isfinite(vol).all():
            raise SimcryoError("volume contains NaN or Inf values")
        self.device = vol.device
        self.box = D = vol.shape[0]
        # pad 3 keeps the interpolation error of a band-limited object below ~0.5 % of its peak
        # (pad 2: ~1-3 %); pad 2 above 128 px keeps the spectrum's memory reasonable
        self.pad = int(pad) if pad else (3 if D <= 128 else 2)
        N = self.N = self.pad * D
        vol = vol.to(torch.float32)
        padded = torch.zeros((N, N, N), dtype=torch.float32, device=self.device)
        o = N // 2 - D // 2  # keeps the centre voxel D//2 at the padded centre N//2
        padded[o:o + D, o:o + D, o:o + D] = vol
        c = _sinc2_correction(N, self.device)
        padded /= c[:, None, None] * c[None, :, None] * c[None, None, :]
        spec = torch.fft.rfftn(torch.fft.ifftshift(padded), dim=(0, 1, 2))
        spec = torch.fft.fftshift(spec, dim=(0, 1))  # z and y: index = k + N//2; x: index = k
        # grid_sample wants channels first: (1, 2, Nz, Ny, Nx_half)
        self.spec = torch.stack([spec.real, spec.imag]).unsqueeze(0).contiguous()
        self._setup_slice_grid()

    def _setup_slice_grid(self):
        D, dev = self.box, self.device
        QY, QX = torch.broadcast_tensors(*frequency_grid(D, dev))  # rfft2 grid, Fourier px
        inside = radial_frequency(D, dev) <= D / 2
        self.inside = inside
        self.half_shape = QY.shape
        self.q2 = torch.stack([QX[inside], QY[inside]], dim=-1) * self.pad  # (m, 2)
        # the slice has its origin at pixel 0: shift it by D//2 in x and y to the box centre
        self.checker = shift_phase(torch.tensor([[D // 2, D // 2]]), D, dev)[0][inside]
        nz, ny, nxh = self.spec.shape[2:]
        N = self.N
        self.grid_scale = torch.tensor([2.0 / (nxh - 1), 2.0 / (ny - 1), 2.0 / (nz - 1)],
                                       device=dev)
        self.grid_offset = torch.tensor([-1.0, 2.0 * (N // 2) / (ny - 1) - 1.0,
                                         2.0 * (N // 2) / (nz - 1) - 1.0], device=dev)

    def project(self, rotmats, batch=512):
        """rotmats (n, 3, 3) -> projections (n, D, D) float32 on the volume's device."""
        R = torch.as_tensor(rotmats, dtype=torch.float32).to(self.device)
        if R.ndim == 2:
            R = R[None]
        if R.ndim != 3 or R.shape[-2:] != (3, 3):
            raise SimcryoError(f"rotation matrices must have shape (n, 3, 3), got {tuple(R.shape)}")
        out = torch.empty((R.shape[0], self.box, self.box), dtype=torch.float32,
                          device=self.device)
        for i in range(0, R.shape[0], batch):
            out[i:i + batch] = self._project_batch(R[i:i + batch])
        return out

    def _project_batch(self, R):
        n, D = R.shape[0], self.box
        # 3D frequency = A^T (qx, qy, 0) = qx * A[0, :] + qy * A[1, :], in padded-grid units
        k3 = torch.matmul(self.q2, R[:, :2, :])  # (n, m, 3)
        sign = torch.where(k3[..., :1] < 0, -1.0, 1.0)  # Hermitian half: F(-k) = conj(F(k))
        k3 = k3 * sign
        # to grid_sample coordinates (align_corners=True): index i -> 2 i / (size - 1) - 1
        k3 = k3 * self.grid_scale + self.grid_offset
        vals = F.grid_sample(self.spec, k3.reshape(1, 1, n, -1, 3), mode="bilinear",
                             padding_mode="zeros", align_corners=True)[0, :, 0]  # (2, n, m)
        half = torch.zeros((n, *self.half_shape), dtype=torch.complex64, device=self.device)
        # the checkerboard moves the image origin from pixel 0 to pixel D//2 (an fftshift)
        half[:, self.inside] = torch.complex(vals[0], vals[1] * sign[..., 0]) * self.checker
        return torch.fft.irfft2(half, s=(D, D))


_cache = {"ref": None, "key": None, "projector": None}


def _cached_projector(volume, pad):
    """Reuse the spectrum of the last volume projected (callers project one volume many times)."""
    ref = _cache["ref"]
    key = (getattr(volume, "_version", None), tuple(volume.shape), volume.dtype,
           str(volume.device), pad)
    if ref is not None and ref() is volume and _cache["key"] == key:
        return _cache["projector"]
    proj = Projector(volume, pad=pad)
    try:
        _cache.update(ref=weakref.ref(volume), key=key, projector=proj)
    except TypeError:  # not weak-referenceable (e.g. numpy array): no caching
        pass
    return proj


def project(volume, rotmats, batch=512, pad=None):
    """Project `volume` (D, D, D) tensor for each rotation matrix in `rotmats` (n, 3, 3).

    Returns (n, D, D) float32 on the volume's device. The spectrum of the most recent volume is
    cached (keyed by tensor identity and version), so repeated calls on one volume are cheap."""
    if not isinstance(volume, torch.Tensor):
        volume = torch.as_tensor(np.asarray(volume, dtype=np.float32))
    return _cached_projector(volume, pad).project(rotmats, batch=batch)


def random_rotations(n, generator=None):
    """n uniformly distributed rotation matrices (n, 3, 3) (from random unit quaternions)."""
    q = torch.randn((n, 4), generator=generator, dtype=torch.float64)
    q = q / q.norm(dim=1, keepdim=True)
    w, x, y, z = q.unbind(1)
    m = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], dim=1)
    return m.reshape(n, 3, 3).float()


def axis_angle_matrix(axis, angle_deg):
    """Rotation matrices about unit axes (n, 3) by angles (n,) degrees (Rodrigues), (n, 3, 3)."""
    u = torch.as_tensor(axis, dtype=torch.float64)
    t = torch.deg2rad(torch.as_tensor(angle_deg, dtype=torch.float64))
    u = u / u.norm(dim=-1, keepdim=True)
    c, s = t.cos()[..., None, None], t.sin()[..., None, None]
    zero = torch.zeros_like(u[..., 0])
    K = torch.stack([zero, -u[..., 2], u[..., 1],
                     u[..., 2], zero, -u[..., 0],
                     -u[..., 1], u[..., 0], zero], dim=-1).reshape(*u.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=torch.float64).expand_as(K)
    return (eye + s * K + (1 - c) * (K @ K)).float()


def gaussian_volume(box, centre, sigma):
    """Analytic test object: a 3D Gaussian (D, D, D) at `centre` (x, y, z) px from the box
    centre, width `sigma` px. Its projection under A is `gaussian_image(box, (A c)[:2], sigma) *
    sigma * sqrt(2 pi)`."""
    g = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(g, g, g, indexing="ij")
    cx, cy, cz = centre
    r2 = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2
    return torch.exp(-r2 / (2 * sigma ** 2)).float()


def gaussian_image(box, centre, sigma, amplitude=1.0):
    g = torch.arange(box, dtype=torch.float64) - box // 2
    y, x = torch.meshgrid(g, g, indexing="ij")
    cx, cy = centre
    return (amplitude * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2))).float()


__all__ = ["euler_to_matrix", "matrix_to_euler", "project", "Projector", "view_directions",
           "min_angular_separation", "direction_to_angles", "angles_to_direction",
           "random_rotations", "axis_angle_matrix", "gaussian_volume", "gaussian_image"]
