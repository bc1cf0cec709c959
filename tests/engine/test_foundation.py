import argparse
import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from simcryo.config import add_config_arguments, config_from_args
from simcryo.image.ctf import ctf_2d, electron_wavelength, phase_flip
from simcryo.errors import SimcryoError
from simcryo.image.geometry import align_images, compose, rotate_images, transform_images
from simcryo.io import CTFParams
from simcryo.image.fourier import fourier_crop, fourier_pad
from simcryo.image.mask import circular_mask, normalize_background
from simcryo.image.preprocess import equalize_histogram, estimate_radius, mask_radius_for
from simcryo.runtime import resolve_device


def band_limited(n, box, seed=0):
    g = torch.Generator().manual_seed(seed)
    # an odd cropped size keeps the spectrum Hermitian (no unpaired Nyquist term)
    return fourier_pad(fourier_crop(torch.randn(n, box, box, generator=g), box // 2 - 1), box)


def test_rotation_direction_follows_documented_convention():
    img = torch.zeros(1, 32, 32)
    img[0, 16, 16 + 6] = 1.0  # (x=6, y=0) relative to the centre
    out = rotate_images(img, 90.0, mode="bilinear")
    assert tuple(np.argwhere(out[0].numpy() > 0.5)[0]) == (16 + 6, 16)  # -> (x=0, y=6)


def test_origin_is_where_relion_expects_the_particle_centre():
    # RELION re-centres a particle by translating it by +origin, so the particle drawn from a
    # centred average sits at centre - origin.
    img = torch.zeros(1, 32, 32)
    img[0, 16, 16] = 1.0
    out = transform_images(img, 0.0, torch.tensor([[3.0, -2.0]]))
    assert tuple(np.argwhere(out[0].numpy() > 0.5)[0]) == (18, 13)
    back = align_images(out, 0.0, torch.tensor([[3.0, -2.0]]))
    assert tuple(np.argwhere(back[0].numpy() > 0.5)[0]) == (16, 16)


def test_align_inverts_transform():
    imgs = band_limited(4, 48)
    psi = torch.tensor([30.0, -70.0, 10.0, 123.0])
    shift = torch.tensor([[1.5, -2.0], [0.0, 0.0], [3.0, 3.0], [-4.0, 1.0]])
    back = align_images(transform_images(imgs, psi, shift), psi, shift)
    m = circular_mask(48, 16)
    err = (back - imgs)[:, m].pow(2).mean() / imgs[:, m].pow(2).mean()
    assert err < 0.01


def test_compose_matches_two_transforms():
    img = band_limited(1, 48, seed=3)
    p1, s1, p2, s2 = 25.0, np.array([2.0, -1.0]), -60.0, np.array([-1.5, 3.0])
    two = transform_images(transform_images(img, p1, torch.tensor([s1])), p2, torch.tensor([s2]))
    psi, s = compose(p1, s1, p2, s2)
    one = transform_images(img, float(psi), torch.tensor(s[None], dtype=torch.float32))
    m = circular_mask(48, 16)
    assert (two - one)[:, m].pow(2).mean() / img[:, m].pow(2).mean() < 0.01


def test_ctf_known_values():
    assert electron_wavelength(300) == pytest.approx(0.019687, rel=1e-4)
    params = CTFParams(*(np.array([v]) for v in (20000.0, 20000.0, 0.0, 300.0, 2.7, 0.1, 0.0, 0.0)))
    c = ctf_2d(params, 64, 1.0)[0]
    assert c[0, 0].item() == pytest.approx(0.1, abs=1e-6)  # sin(asin(w)) at s = 0 (RELION)
    # first zero of an isotropic CTF: pi*lambda*dF*s^2 ~= pi - asin(w) (Cs negligible there)
    lam = electron_wavelength(300)
    s0 = math.sqrt((math.pi - math.asin(0.1)) / (math.pi * lam * 20000.0))
    k = s0 * 64
    row = c[0, :32].numpy()
    crossing = np.nonzero(np.diff(np.sign(row)))[0][0]
    assert abs(crossing + 0.5 - k) < 1.0


def test_ctf_astigmatism_angle_rotates_pattern():
    base = dict(defocus_v=np.array([10000.0]), voltage=np.array([300.0]), cs=np.array([2.7]),
                amp_contrast=np.array([0.1]), phase_shift=np.zeros(1), bfactor=np.zeros(1))
    a = ctf_2d(CTFParams(defocus_u=np.array([20000.0]), defocus_angle=np.array([0.0]), **base), 64, 1.0)[0]
    b = ctf_2d(CTFParams(defocus_u=np.array([20000.0]), defocus_angle=np.array([90.0]), **base), 64, 1.0)[0]
    assert torch.allclose(a, b.T, atol=5e-4)


def _ctf_reference(ctf, box, apix, i):
    """Particle i's CTF (fft2 layout) straight from the formula in float64 numpy."""
    f = np.fft.fftfreq(box, d=apix)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    s2, alpha = fx ** 2 + fy ** 2, np.arctan2(fy, fx)
    lam = electron_wavelength(ctf.voltage[i])
    dfs = 0.5 * (ctf.defocus_u[i] + ctf.defocus_v[i]) + 0.5 * (
        ctf.defocus_u[i] - ctf.defocus_v[i]) * np.cos(2 * (alpha - np.deg2rad(ctf.defocus_angle[i])))
    chi = (np.pi * lam * dfs * s2 - 0.5 * np.pi * ctf.cs[i] * 1e7 * lam ** 3 * s2 ** 2
           + np.deg2rad(ctf.phase_shift[i]) + np.arcsin(ctf.amp_contrast[i]))
    return np.sin(chi) * np.exp(-ctf.bfactor[i] * s2 / 4)


def test_ctf_evaluator_matches_formula_and_turns_with_psi():
    from simcryo.image.ctf import CTFEvaluator
    rng = np.random.default_rng(0)
    n = 4
    ctf = CTFParams(rng.uniform(1e4, 3e4, n), rng.uniform(1e4, 3e4, n), rng.uniform(0, 180, n),
                    np.full(n, 300.0), np.full(n, 2.7), np.full(n, 0.1), rng.uniform(0, 30, n),
                    rng.uniform(0, 40, n))
    full = ctf_2d(ctf, 48, 1.5).numpy()
    for i in range(n):
        assert np.abs(full[i] - _ctf_reference(ctf, 48, 1.5, i)).max() < 1e-3
    half = CTFEvaluator(ctf, 48, 1.5, rfft=True)
    # rfft layout: the same values (the Nyquist column is +fx there, -fx in fft layout)
    assert np.allclose(half([2, 0]).numpy()[..., :24], full[[2, 0], :, :24], atol=1e-4)
    # in the class frame of pose psi (RELION) the astigmatism axis is at defocus_angle + psi
    psi = np.array([10.0, -40.0, 95.0, 170.0])
    turned = ctf.take(np.arange(n))
    turned.defocus_angle = turned.defocus_angle + psi
    assert (half(None, torch.tensor(psi)) - ctf_2d(turned, 48, 1.5, rfft=True)).abs().max() < 1e-4


def test_ctf_in_class_frame_follows_align_images():
    """The CTF that CTFEvaluator gives for pose psi is the particle's CTF pattern rotated the
    way geometry.align_images rotates the particle (pins the sign of the class frame)."""
    from simcryo.image.ctf import CTFEvaluator
    box, apix = 64, 2.0
    ctf = CTFParams(np.array([9000.0]), np.array([21000.0]), np.array([30.0]),
                    np.array([300.0]), np.array([2.7]), np.array([0.1]), np.array([0.0]),
                    np.array([0.0]))
    own = torch.fft.fftshift(ctf_2d(ctf, box, apix), dim=(-2, -1))  # centred: rotate as an image
    for psi in (35.0, -70.0):
        seen = torch.fft.fftshift(CTFEvaluator(ctf, box, apix)(None, torch.tensor([psi])),
                                  dim=(-2, -1))
        rotated = align_images(own, torch.tensor([psi]), torch.zeros(1, 2))
        inside = circular_mask(box, box // 4)   # low frequencies: sampled finely enough
        wrong = align_images(own, torch.tensor([-psi]), torch.zeros(1, 2))
        err = (seen - rotated)[0][inside].abs().mean()
        assert err < 0.05 < (seen - wrong)[0][inside].abs().mean()


def test_phase_flip_twice_is_identity():
    imgs = band_limited(2, 32)
    params = CTFParams(*(np.full(2, v) for v in (15000.0, 14000.0, 30.0, 300.0, 2.7, 0.1, 0.0, 0.0)))
    c = ctf_2d(params, 32, 1.5, rfft=True)
    assert torch.allclose(phase_flip(phase_flip(imgs, c), c), imgs, atol=1e-4)


def test_fourier_crop_preserves_mean_and_low_frequencies():
    imgs = band_limited(3, 64)
    small = fourier_crop(imgs, 32)
    assert small.shape == (3, 32, 32)
    assert torch.allclose(small.mean(dim=(1, 2)), imgs.mean(dim=(1, 2)), atol=1e-5)
    assert torch.allclose(fourier_pad(small, 64), imgs, atol=1e-4)


def test_normalize_background_and_equalize():
    imgs = torch.randn(2, 32, 32) * 5 + 3
    out = normalize_background(imgs, 12)
    outside = ~circular_mask(32, 12)
    assert torch.allclose(out[:, outside].mean(1), torch.zeros(2), atol=1e-5)
    assert torch.allclose(out[:, outside].std(1), torch.ones(2), atol=1e-4)
    eq = equalize_histogram(imgs)
    assert eq.min() == -1 and eq.max() == 1


@dataclasses.dataclass
class _Cfg:
    epochs: int = dataclasses.field(default=10, metadata={"help": "training epochs"})
    lr: float = dataclasses.field(default=0.1, metadata={"help": "learning rate"})
    phase_flip: bool = dataclasses.field(default=True, metadata={"help": "flip phases"})


def test_radius_estimate_finds_a_small_particle():
    rng = np.random.default_rng(0)
    box = 64
    yy, xx = np.mgrid[:box, :box] - box // 2
    signal = 3 * np.exp(-(yy ** 2 + xx ** 2) / (2 * 5.0 ** 2))
    imgs = signal[None] * rng.standard_normal((200, 1, 1)) + rng.standard_normal((200, box, box))
    r = estimate_radius(torch.as_tensor(imgs, dtype=torch.float32))
    assert 9 <= r <= 18
    assert mask_radius_for(r, box) == pytest.approx(1.1 * r)
    assert mask_radius_for(31, box) == box / 2 - 2


def test_config_precedence_flag_over_file_over_default(tmp_path):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, _Cfg)
    assert "training epochs (default: 10)" in parser.format_help()
    (tmp_path / "c.json").write_text(json.dumps({"epochs": 3, "lr": 0.5}))
    args = parser.parse_args(["--config", str(tmp_path / "c.json"), "--lr", "0.2",
                              "--no-phase-flip"])
    assert config_from_args(_Cfg, args) == _Cfg(epochs=3, lr=0.2, phase_flip=False)
    (tmp_path / "bad.json").write_text(json.dumps({"epoch": 3}))
    with pytest.raises(SimcryoError, match="unknown parameter"):
        config_from_args(_Cfg, parser.parse_args(["--config", str(tmp_path / "bad.json")]))


def test_device_errors():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(SimcryoError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(SimcryoError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_cli_help_and_unknown_command():
    out = subprocess.run([sys.executable, "-m", "simcryo", "--help"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "COMMAND" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "simcryo", "frobnicate"], capture_output=True,
                         text=True)
    assert bad.returncode == 2
