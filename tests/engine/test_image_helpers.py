"""Tests of the shared image helpers: volume resampling (centre convention), CTF on a padded
box, seeded epoch generators."""
import numpy as np
import pytest
import torch

from simcryo.image.ctf import apply_ctf, apply_ctf_padded, ctf_2d
from simcryo.image.volume import fourier_resize_volume, resample_volume
from simcryo.io import CTFParams
from simcryo.runtime import epoch_generator
from simcryo.simulation.projection import gaussian_volume


def _centroid(vol):
    """(x, y, z) centre of mass in voxel indices of a [z, y, x] volume."""
    g = torch.arange(vol.shape[0], dtype=torch.float64)
    v = vol.double()
    m = v.sum()
    return tuple(float((v.sum(dim=axes) * g).sum() / m) for axes in ((0, 1), (0, 2), (1, 2)))


# 64 px at 1 Å to 64/49 Å/px: 49 voxels (odd), then cropped to a 48 px box. A resampling that
# keeps voxel 0 fixed instead of the centre puts the centre at 24.5 here, half a voxel off.
@pytest.mark.parametrize("D, apix, box", [(64, 64 / 49, 48), (63, 1.5, 40), (64, 0.5, 96)])
def test_resample_volume_keeps_the_box_centre(D, apix, box):
    vol = gaussian_volume(D, (0, 0, 0), 2.5)
    out = resample_volume(vol, 1.0, apix, box)
    assert out.shape == (box,) * 3
    assert _centroid(out) == pytest.approx((box // 2,) * 3, abs=0.02)
    assert int(out.argmax()) == np.ravel_multi_index((box // 2,) * 3, out.shape)


def test_resample_volume_moves_an_off_centre_blob_by_the_pixel_size_ratio():
    offset = np.array([6.0, -4.0, 3.0])  # (x, y, z) voxels from the centre at 1 Å/px
    vol = gaussian_volume(64, tuple(offset), 2.5)
    out = resample_volume(vol, 1.0, 64 / 49, 48)
    # 49 voxels span the old 64: distances from the centre scale by 49/64
    expected = 48 // 2 + offset * 49 / 64
    assert _centroid(out) == pytest.approx(tuple(expected), abs=0.02)


def test_fourier_resize_volume_keeps_centre_and_scale():
    vol = gaussian_volume(40, (0, 0, 0), 3.0)
    small = fourier_resize_volume(vol, 20)
    assert _centroid(small) == pytest.approx((10, 10, 10), abs=0.01)
    assert float(small.sum()) == pytest.approx(float(vol.sum()) / 8, rel=1e-3)
    assert torch.equal(fourier_resize_volume(vol, 40), vol)


def _round_ctf(n, rng):
    """CTFs without astigmatism: symmetric at Nyquist, where the fft2 and rfft2 layouts of an
    astigmatic CTF differ."""
    du = rng.uniform(1e4, 2.5e4, n)
    full = lambda v: np.full(n, float(v))  # noqa: E731
    return CTFParams(defocus_u=du, defocus_v=du, defocus_angle=full(0.0), voltage=full(300),
                     cs=full(2.7), amp_contrast=full(0.1), phase_shift=full(0.0),
                     bfactor=full(0.0))


def test_apply_ctf_padded_matches_ctf_on_the_padded_box():
    images = torch.randn(3, 24, 24, generator=torch.Generator().manual_seed(0))
    ctf = _round_ctf(3, np.random.default_rng(0))
    out = apply_ctf_padded(images, ctf, 2.0)
    padded = torch.zeros(3, 48, 48)
    padded[:, 12:36, 12:36] = images
    ref = apply_ctf(padded, ctf_2d(ctf, 48, 2.0))[:, 12:36, 12:36]  # fft2 layout
    assert out.shape == images.shape
    assert torch.allclose(out, ref, atol=1e-5)


def test_epoch_generator_is_a_function_of_seed_stream_and_epoch():
    draw = lambda *a: torch.rand(4, generator=epoch_generator(*a))  # noqa: E731
    assert torch.equal(draw(3, "train", 2), draw(3, "train", 2))
    others = [draw(4, "train", 2), draw(3, "val", 2), draw(3, "train", 1)]
    assert all(not torch.equal(draw(3, "train", 2), o) for o in others)
