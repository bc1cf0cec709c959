import math

import numpy as np
import pytest
import torch

from simcryo.errors import SimcryoError
from simcryo.simulation.phantom import make_phantom
from simcryo.simulation.projection import (Projector, angles_to_direction, euler_to_matrix,
                                gaussian_image, gaussian_volume, matrix_to_euler,
                                min_angular_separation, project, random_rotations,
                                view_directions)


def _analytic(box, centre, sigma, R):
    c = R.double() @ torch.tensor(centre, dtype=torch.float64)
    return gaussian_image(box, (float(c[0]), float(c[1])), sigma, sigma * math.sqrt(2 * math.pi))


@pytest.mark.parametrize("box", [64, 48])
def test_gaussian_projection_matches_analytic(box):
    centre, sigma = (6.0, -9.0, 4.0), 2.5
    vol = gaussian_volume(box, centre, sigma)
    R = torch.cat([torch.eye(3)[None], random_rotations(40, torch.Generator().manual_seed(1))])
    proj = project(vol, R)
    assert proj.shape == (41, box, box) and proj.dtype == torch.float32
    errs = []
    for i in range(len(R)):
        ref = _analytic(box, centre, sigma, R[i])
        errs.append(float((proj[i] - ref).abs().max() / ref.max()))
        assert errs[-1] < 0.03, (i, errs[-1])
        # the blob lands where the convention says: centre of mass (within 3 sigma of the
        # expected position) = (A c)_xy
        expect = R[i].double() @ torch.tensor(centre, dtype=torch.float64)
        g = torch.arange(box, dtype=torch.float64) - box // 2
        y, x = torch.meshgrid(g, g, indexing="ij")
        w = proj[i].double() * (((x - expect[0]) ** 2 + (y - expect[1]) ** 2) < (3 * sigma) ** 2)
        cx, cy = float((w * x).sum() / w.sum()), float((w * y).sum() / w.sum())
        assert abs(cx - expect[0]) < 0.1 and abs(cy - expect[1]) < 0.1
    assert np.mean(errs) < 0.01


def test_relion_euler_convention():
    # RELION Euler_angles2matrix(90, 0, 0): rows (0, 1, 0), (-1, 0, 0), (0, 0, 1)
    A = euler_to_matrix(90.0, 0.0, 0.0)
    assert torch.allclose(A, torch.tensor([[0., 1, 0], [-1, 0, 0], [0, 0, 1]]), atol=1e-6)
    # third row = viewing direction (sin t cos r, sin t sin r, cos t)
    A = euler_to_matrix(30.0, 50.0, 70.0)
    d = angles_to_direction(30.0, 50.0)
    assert np.allclose(A[2].numpy(), d, atol=1e-6)
    # batched, orthonormal, round trip through matrix_to_euler
    g = torch.Generator().manual_seed(0)
    rot, tilt, psi = (torch.rand(50, generator=g) * s for s in (360, 170, 360))
    tilt = tilt + 5
    M = euler_to_matrix(rot, tilt, psi)
    assert M.shape == (50, 3, 3)
    assert torch.allclose(M @ M.transpose(1, 2), torch.eye(3).expand(50, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(M), torch.ones(50), atol=1e-5)
    assert torch.allclose(euler_to_matrix(*matrix_to_euler(M)), M, atol=1e-4)


def test_projection_of_phantom_conserves_mass_and_differs_by_view():
    vol = torch.from_numpy(make_phantom(48))
    rot, tilt = view_directions(6, 30.0, seed=0)
    P = project(vol, euler_to_matrix(rot, tilt, np.zeros(6)))
    assert torch.allclose(P.sum(dim=(1, 2)), vol.sum().expand(6), rtol=0.03)
    flat = P.reshape(6, -1)
    flat = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True)
    corr = flat @ flat.T / flat.shape[1]
    assert float(corr[~torch.eye(6, dtype=bool)].max()) < 0.9


def test_project_cache_follows_inplace_changes():
    vol = gaussian_volume(32, (0.0, 0.0, 0.0), 2.0)
    a = project(vol, torch.eye(3)[None])
    vol.mul_(2.0)
    b = project(vol, torch.eye(3)[None])
    assert torch.allclose(b, 2 * a, rtol=1e-4, atol=1e-5)
    c = Projector(vol, pad=2).project(torch.eye(3))
    assert c.shape == (1, 32, 32)


def test_view_directions_separated_and_deterministic():
    r1, t1 = view_directions(10, 30.0, seed=3)
    r2, t2 = view_directions(10, 30.0, seed=3)
    assert np.array_equal(r1, r2) and np.array_equal(t1, t2) and len(r1) == 10
    d = angles_to_direction(r1, t1)
    assert min_angular_separation(d) >= 30.0
    assert min_angular_separation(d, mirrors_distinct=False) <= min_angular_separation(d, True)
    with pytest.raises(SimcryoError):
        view_directions(40, 60.0, seed=0)


def test_phantom_deterministic_asymmetric():
    a, b = make_phantom(32, seed=0), make_phantom(32, seed=0)
    assert a.shape == (32, 32, 32) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert abs(a.max() - 1.0) < 1e-6
    # no mirror or 180-degree symmetry about the box axes
    for flipped in (a[::-1], a[:, ::-1], a[:, :, ::-1], np.rot90(a, 2, axes=(1, 2))):
        num = ((a - a.mean()) * (flipped - flipped.mean())).sum()
        assert num / ((a - a.mean()) ** 2).sum() < 0.8


def test_bad_volume_shape():
    with pytest.raises(SimcryoError):
        project(torch.zeros(8, 8, 6), torch.eye(3)[None])
