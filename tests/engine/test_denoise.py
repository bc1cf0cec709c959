"""Tests of `simcryo denoise` (library and command). Small boxes and nets: < 60 s on 2 cores."""
import os

import numpy as np
import pytest
import torch

from simcryo import cli
from simcryo.simulation import projection
from simcryo.denoise import noise as noise_mod
from simcryo.denoise.apply import denoise_images
from simcryo.denoise.config import DenoiseConfig
from simcryo.denoise.networks import Discriminator, Generator
from simcryo.denoise.losses import neighbor_choice, neighbor_subsample
from simcryo.denoise.model_io import load_generator
from simcryo.denoise.noise import measure_data
from simcryo.denoise.pairs import ReferencePairs, ctf_signs
from simcryo.denoise.trainers import ReferenceTrainer, SelfTrainer
from simcryo.errors import SimcryoError
from simcryo.evaluation.frc import frc
from simcryo.image.ctf import apply_ctf_padded
from simcryo.image.volume import resample_volume
from simcryo.io import CTFParams, StarBlock, load_particles, read_star, write_stack, write_star
from simcryo.io.mrc import read_apix, write_volume
from simcryo.simulation.phantom import make_phantom

BOX, APIX, N = 32, 4.0, 48
TINY = dict(channels=16, res_blocks=1, batch_size=16, images_per_epoch=64,
            projections_per_epoch=32, val_images=32, stats_images=N, threads=1)


def _ctf(n, rng):
    du = rng.uniform(15000, 25000, n)
    full = lambda v: np.full(n, float(v))  # noqa: E731
    return CTFParams(defocus_u=du, defocus_v=du - 100, defocus_angle=rng.uniform(0, 180, n),
                     voltage=full(300), cs=full(2.7), amp_contrast=full(0.1),
                     phase_shift=full(0), bfactor=full(0))


def _simulate(volume, n, snr, seed):
    """(noisy, clean CTF-modulated) (n, BOX, BOX) tensors and their CTFParams."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    ctf = _ctf(n, rng)
    clean = apply_ctf_padded(projection.project(volume, projection.random_rotations(n, g)), ctf,
                             APIX)
    sigma = (clean.var() / snr).sqrt()
    return clean + sigma * torch.randn(clean.shape, generator=g), clean, ctf


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def volume():
    return torch.from_numpy(make_phantom(BOX, seed=0))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, volume):
    """A small RELION 3.1 project: stack + STAR (CTF and extra columns) + the volume."""
    d = tmp_path_factory.mktemp("denoise_data")
    noisy, clean, ctf = _simulate(volume, N, snr=0.5, seed=1)
    write_stack(str(d / "stack.mrcs"), noisy.numpy(), apix=APIX)
    write_volume(str(d / "vol.mrc"), volume.numpy(), apix=APIX)
    optics = StarBlock({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["g1"],
                        "rlnVoltage": [300], "rlnSphericalAberration": [2.7],
                        "rlnAmplitudeContrast": [0.1], "rlnImagePixelSize": [APIX],
                        "rlnImageSize": [BOX], "rlnImageDimensionality": [2]})
    order = np.random.default_rng(2).permutation(N)  # STAR order differs from stack order
    particles = StarBlock({"rlnImageName": [f"{i + 1}@stack.mrcs" for i in order],
                           "rlnOpticsGroup": [1] * N,
                           "rlnDefocusU": ctf.defocus_u[order],
                           "rlnDefocusV": ctf.defocus_v[order],
                           "rlnDefocusAngle": ctf.defocus_angle[order],
                           "rlnMicrographName": [f"mic{i % 5}.mrc" for i in order],
                           "simcryoTrueClass": [int(i % 3) + 1 for i in order]})
    write_star(str(d / "particles.star"), {"optics": optics, "particles": particles})
    return d


def _run(*argv):
    return cli.main(["denoise", *[str(a) for a in argv]])


def _tiny_flags(**over):
    flags = dict(TINY, epochs=1)
    flags.update(over)
    out = []
    for k, v in flags.items():
        out += ["--" + k.replace("_", "-"), v]
    return out


# ----------------------------------------------------------------------------- library
def test_generator_keeps_any_shape_and_discriminator_gives_patch_logits():
    G = Generator(channels=8, res_blocks=1, scale=4)
    for h, w in ((32, 32), (30, 30), (33, 35)):
        assert G(torch.randn(2, 1, h, w)).shape == (2, 1, h, w)
    assert Discriminator(8)(torch.randn(2, 1, 32, 32)).shape[:2] == (2, 1)


def test_odd_generator_is_odd():
    G = Generator(channels=8, res_blocks=2, odd=True)
    for p in G.parameters():  # any weights, not only the initial ones
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 1, 32, 32)
    assert torch.allclose(G(-x), -G(x), atol=1e-5)
    assert not torch.allclose(G(x), torch.zeros_like(x))


def test_noise_model_recovers_background_spectrum_and_signal_power():
    g = torch.Generator().manual_seed(0)
    f = torch.fft.fftfreq(BOX)
    true_psd = 0.2 + 2.0 * torch.exp(-(f[:, None] ** 2 + f[None, :] ** 2) / 0.02)
    true_psd = true_psd / true_psd.mean()  # unit variance
    model = noise_mod.NoiseModel(true_psd)
    noise = model.sample(2000, g)
    assert abs(float(noise.var()) - 1.0) < 0.05
    mask = noise_mod.background_mask(BOX, 0.8)
    z = noise_mod.normalize(noise, mask)[0]
    est = noise_mod.estimate_noise_model(z, mask).psd
    # the spectrum's shape is recovered beyond the first rings (mean removal takes power there)
    for k in (2, 4):
        assert abs(float(est[k, k] / est[8, 8]) / float(true_psd[k, k] / true_psd[8, 8]) - 1) \
            < 0.15
    assert abs(noise_mod.signal_power(z, mask)) < 0.03  # pure noise: no signal
    blob = projection.gaussian_image(BOX, (0, 0), 4.0, amplitude=2.0)
    assert noise_mod.signal_power(noise_mod.normalize(noise + blob, mask)[0], mask) > 0.3


def test_pairs_match_data_signal_power_and_contrast(volume):
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    noisy, _, ctf = _simulate(volume, 400, snr=0.2, seed=3)
    mask = noise_mod.background_mask(BOX, 0.8)
    for sign in (1.0, -1.0):
        data = noise_mod.normalize(sign * noisy, mask)[0]
        stats = measure_data(lambda i: data[i].numpy(), len(data), mask, 400, 0, "cpu")
        pairs = ReferencePairs(volume, stats.noise, mask, APIX, _ctf(50, rng),
                               stats.signal_power, max_shift=1.0)
        pairs.calibrate(stats.mean_image, generator=g)
        assert pairs.polarity == sign
        sim_noisy, _ = pairs.sample(400, g)
        sim_power = noise_mod.signal_power(sim_noisy[:, 0], mask)
        assert abs(sim_power / stats.signal_power - 1) < 0.25
        # same contrast: the mean particle of the pairs correlates with the data's
        corr = torch.corrcoef(torch.stack([sim_noisy[:, 0].mean(0).flatten(),
                                           stats.mean_image.flatten()]))[0, 1]
        assert corr > 0.5


def test_resample_volume_changes_pixel_size_and_box():
    vol = projection.gaussian_volume(32, (0, 0, 0), 3.0)
    out = resample_volume(vol, 2.0, 4.0, 24)  # 32 px at 2 Å -> 16 px at 4 Å, padded to 24
    assert out.shape == (24, 24, 24)
    c = out[12, 12]
    width = float((c > c.max() / 2).sum())  # FWHM in px: 2.355 * 3 px at 2 Å = ~3.5 px at 4 Å
    assert 2 <= width <= 5
    assert abs(float(out.sum()) * 8 / float(vol.sum()) - 1) < 0.02  # mass kept per Å^3


def test_neighbor_subsampler_takes_adjacent_distinct_pixels():
    img = torch.arange(64.0).reshape(1, 1, 8, 8)
    i1, i2 = neighbor_choice(img.shape, torch.Generator().manual_seed(0))
    a, b = neighbor_subsample(img, i1), neighbor_subsample(img, i2)
    diff = (a - b).abs()
    assert a.shape == (1, 1, 4, 4)
    assert set(diff.unique().tolist()) <= {1.0, 8.0}  # left/right or up/down neighbour


def test_tiny_reference_training_decreases_loss(volume):
    noisy, _, ctf = _simulate(volume, 64, snr=0.3, seed=4)
    mask = noise_mod.background_mask(BOX, 0.8)
    stats = measure_data(lambda i: noisy[i].numpy(), 64, mask, 64, 0, "cpu")
    cfg = DenoiseConfig(**dict(TINY, epochs=3, gan_warmup_epochs=1))
    pairs = ReferencePairs(volume, stats.noise, mask, APIX, ctf, stats.signal_power, 2.0, 0.1)
    pairs.calibrate(stats.mean_image)
    trainer = ReferenceTrainer(cfg, pairs, torch.device("cpu"))
    before = trainer.validate()
    history = [trainer.train_epoch(e) for e in range(cfg.epochs)]
    assert history[-1]["val"] < 0.8 * before
    assert history[-1]["adversarial"] > 0 and history[0]["adversarial"] == 0  # GAN after warm-up


@pytest.mark.parametrize("method", ["sure", "n2n"])
def test_tiny_self_supervised_training_decreases_loss(volume, method):
    noisy, clean, _ = _simulate(volume, 64, snr=0.3, seed=5)
    mask = noise_mod.background_mask(BOX, 0.8)
    cfg = DenoiseConfig(**dict(TINY, epochs=3, lr=3e-3, self_method=method))
    trainer = SelfTrainer(cfg, lambda i: noisy[i].numpy(), 64, mask, torch.device("cpu"))
    before = trainer.validate(0)
    history = [trainer.train_epoch(e) for e in range(cfg.epochs)]
    # the N2N loss has a floor (the noise of the target half-image): it drops, but not by much
    assert history[-1]["val"] < before
    out = denoise_images(trainer.G, noisy, 0.8)
    mse_out = float(((out - clean) ** 2).mean())
    assert mse_out < 0.5 * float(((noisy - clean) ** 2).mean())
    if method == "sure":  # its validation loss estimates the MSE (noise-variance units)
        z, _, std = noise_mod.normalize(noisy, mask)
        true_mse = float((((out - clean) / std[:, None, None]) ** 2).mean())
        assert abs(history[-1]["val"] - true_mse) < 0.5 * true_mse + 0.02


def _chance_frc(images, refs):
    """Mean FRC over images in rings 1..box/4 and its 3-sigma chance bound per ring."""
    curve = frc(images, refs)[:, 1:BOX // 4].mean(0)
    ring_px = torch.tensor([4 * r for r in range(1, BOX // 4)], dtype=torch.float32)
    # each (image, ring): correlation of ~ring_px/2 independent complex pairs
    bound = 3.0 / torch.sqrt(ring_px / 2 * len(images))
    return curve, bound


@pytest.mark.parametrize("mode", ["reference", "self"])
def test_denoised_pure_noise_has_no_structure(volume, mode):
    """A denoiser fed pure noise must not invent the reference: the FRC of its output against
    projections of the volume stays at chance level (no 'Einstein from noise')."""
    g = torch.Generator().manual_seed(7)
    mask = noise_mod.background_mask(BOX, 0.8)
    noisy, _, ctf = _simulate(volume, 96, snr=0.3, seed=6)
    cfg = DenoiseConfig(**dict(TINY, epochs=4, images_per_epoch=128, adversarial_weight=0))
    if mode == "reference":
        stats = measure_data(lambda i: noisy[i].numpy(), 96, mask, 96, 0, "cpu")
        pairs = ReferencePairs(volume, stats.noise, mask, APIX, ctf, stats.signal_power, 2.0,
                               0.2)
        pairs.calibrate(stats.mean_image)
        trainer = ReferenceTrainer(cfg, pairs, torch.device("cpu"))
    else:
        trainer = SelfTrainer(cfg, lambda i: noisy[i].numpy(), 96, mask, torch.device("cpu"))
    for e in range(cfg.epochs):
        trainer.train_epoch(e)
    pure = torch.randn((300, BOX, BOX), generator=g)
    refs = apply_ctf_padded(projection.project(volume, projection.random_rotations(300, g)),
                            _ctf(300, np.random.default_rng(8)), APIX)
    out = denoise_images(trainer.G, pure, 0.8)
    curve, bound = _chance_frc(out, refs)
    assert (curve.abs() < bound).all(), (curve, bound)
    # sanity: the same check does see structure in denoised particles
    den = denoise_images(trainer.G, noisy[:96], 0.8)
    curve_p, bound_p = _chance_frc(den, refs[:96])
    assert (curve_p.abs() > bound_p).any()


# ----------------------------------------------------------------------------- command
def test_train_apply_keeps_order_metadata_and_pixel_size(dataset, tmp_path):
    model, out = tmp_path / "model", tmp_path / "out"
    assert _run("train", "--i", dataset / "particles.star", "--volume", dataset / "vol.mrc",
                "--o", model, *_tiny_flags()) == 0
    assert {"model.pt", "checkpoint.pt", "run.json"} <= set(os.listdir(model))
    assert _run("apply", "--i", dataset / "particles.star", "--model", model, "--o", out,
                "--threads", 1) == 0
    src, res = read_star(str(dataset / "particles.star")), read_star(str(out / "particles.star"))
    for label in src["particles"].labels:
        if label != "rlnImageName":
            assert res["particles"][label] == src["particles"][label], label
    assert res["particles"]["rlnImageName"] == [f"{i + 1}@particles.mrcs" for i in range(N)]
    assert abs(read_apix(str(out / "particles.mrcs")) - APIX) < 1e-4
    pin, pout = load_particles(str(dataset / "particles.star")), load_particles(
        str(out / "particles.star"))
    assert pout.apix == pytest.approx(APIX) and pout.n == N and pout.box == BOX
    # row i of the output is the model applied to row i of the input (STAR order, which
    # differs from the stack order)
    record = torch.load(model / "model.pt", weights_only=False)
    G = load_generator(record, torch.device("cpu"))
    assert record["phase_flip"]  # CTF columns present: the model works phase-flipped
    signs = ctf_signs(pin.ctf, BOX, APIX)
    assert record["mask_radius_px"] == pytest.approx(0.8 * BOX / 2)  # --mask-diameter 0
    expected = denoise_images(G, pin.images(), record["mask_radius_px"] / (BOX / 2),
                              signs=signs)
    assert torch.allclose(torch.from_numpy(pout.images()), expected, atol=1e-5)
    assert not torch.allclose(expected, torch.from_numpy(pin.images()), atol=1e-2)


def test_resume_continues_exactly(dataset, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--i", dataset / "particles.star", "--volume", dataset / "vol.mrc"]
    assert _run("train", *common, "--o", a, *_tiny_flags(epochs=2)) == 0
    assert _run("train", *common, "--o", b, *_tiny_flags(epochs=1)) == 0
    assert _run("train", *common, "--o", b, "--resume", *_tiny_flags(epochs=2)) == 0
    wa = torch.load(a / "model.pt", weights_only=False)["generator"]
    wb = torch.load(b / "model.pt", weights_only=False)["generator"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_self_mode_command_runs_without_volume(dataset, tmp_path):
    model = tmp_path / "m"
    assert _run("train", "--i", dataset / "particles.star", "--o", model,
                *_tiny_flags()) == 0
    assert torch.load(model / "model.pt", weights_only=False)["mode"] == "self"


def test_bad_inputs_give_one_line_errors(dataset, tmp_path, capsys):
    star = dataset / "particles.star"
    cases = [
        (["train", "--i", star, "--o", tmp_path / "x", "--mode", "reference"], "needs --volume"),
        (["train", "--i", tmp_path / "missing.star", "--o", tmp_path / "x"], "not found"),
        (["train", "--i", star, "--o", tmp_path / "x", "--mask-diameter", "1000"],
         "smaller --mask-diameter"),
        (["train", "--i", star, "--o", tmp_path / "r", "--resume"], "no checkpoint"),
        (["apply", "--i", star, "--model", tmp_path / "none", "--o", tmp_path / "y"],
         "no model.pt"),
    ]
    for argv, message in cases:
        assert _run(*argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_pure_noise_input_is_refused_in_reference_mode(dataset, tmp_path, capsys):
    noise = np.random.default_rng(0).normal(size=(40, BOX, BOX)).astype(np.float32)
    write_stack(str(tmp_path / "noise.mrcs"), noise, apix=APIX)
    assert _run("train", "--i", tmp_path / "noise.mrcs", "--volume", dataset / "vol.mrc",
                "--o", tmp_path / "m", *_tiny_flags()) == 2
    assert "no particle signal" in capsys.readouterr().err


def test_apply_refuses_other_box_or_overwriting_input(dataset, tmp_path, capsys):
    model = tmp_path / "m"
    assert _run("train", "--i", dataset / "particles.star", "--o", model, *_tiny_flags()) == 0
    write_stack(str(tmp_path / "big.mrcs"), np.zeros((2, 48, 48), np.float32) + 1, apix=APIX)
    assert _run("apply", "--i", tmp_path / "big.mrcs", "--model", model, "--o",
                tmp_path / "o") == 2
    assert "48 px" in capsys.readouterr().err
    write_stack(str(tmp_path / "particles.mrcs"),
                np.random.default_rng(0).normal(size=(2, BOX, BOX)).astype(np.float32), APIX)
    assert _run("apply", "--i", tmp_path / "particles.mrcs", "--model", model, "--o",
                tmp_path) == 2
    assert "input stack" in capsys.readouterr().err
    assert _run("apply", "--i", tmp_path / "particles.mrcs", "--model", model, "--o",
                tmp_path / "o2") == 2
    assert "no CTF columns" in capsys.readouterr().err  # the model works phase-flipped


def test_library_rejects_bad_config():
    with pytest.raises(SimcryoError):
        DenoiseConfig(empty_fraction=1.5).validate()
    with pytest.raises(SimcryoError):
        DenoiseConfig(content_weight=0, adversarial_weight=0).validate()
    with pytest.raises(SimcryoError, match="self-method"):
        DenoiseConfig(self_method="noise2void").validate()
