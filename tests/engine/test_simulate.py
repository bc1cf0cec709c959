import dataclasses
import json
import subprocess
import sys

import mrcfile
import numpy as np
import pytest
import torch

from simcryo.commands.simulate import run
from simcryo.errors import SimcryoError
from simcryo.image.ctf import apply_ctf_padded
from simcryo.image.geometry import align_images
from simcryo.image.volume import fourier_resize_volume
from simcryo.io import load_particles, read_star
from simcryo.io.mrc import write_volume
from simcryo.simulation.simulate import RealNoise, SimulateConfig, TRUTH_LABELS
from tests.engine.conftest import shared_file


def _cfg(out, **kw):
    base = dict(o=str(out), box=32, classes=4, per_class=30, batch=50, seed=1)
    base.update(kw)
    cfg = SimulateConfig(**base)
    cfg.validate()
    return cfg


def _read(path):
    with mrcfile.open(path, permissive=True) as m:
        return np.array(m.data), float(m.voxel_size.x)


def _snr(signal, noise):
    s = signal.reshape(len(signal), -1)
    n = noise.reshape(len(noise), -1)
    return s.var(axis=1) / n.var(axis=1)


def test_simulate_writes_stated_files(tmp_path):
    info = run(_cfg(tmp_path, save_clean=True, apix=2.5))
    n = 4 * 30
    parts, apix = _read(tmp_path / "particles.mrcs")
    refs, ref_apix = _read(tmp_path / "references.mrcs")
    clean, _ = _read(tmp_path / "clean.mrcs")
    assert parts.shape == (n, 32, 32) and clean.shape == (n, 32, 32) and refs.shape == (4, 32, 32)
    assert apix == pytest.approx(2.5) and ref_apix == pytest.approx(2.5)
    assert np.isfinite(parts).all() and parts.std() > 0
    blocks = read_star(str(tmp_path / "particles.star"))
    optics, table = blocks["optics"], blocks["particles"]
    assert optics.as_float("rlnImagePixelSize")[0] == pytest.approx(2.5)
    assert optics.as_int("rlnImageSize")[0] == 32
    assert optics.as_float("rlnVoltage")[0] == 300
    assert optics.as_float("rlnSphericalAberration")[0] == 2.7
    assert table.n_rows == n
    for label in TRUTH_LABELS + ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"):
        assert label in table, label
    du, dv = table.as_float("rlnDefocusU"), table.as_float("rlnDefocusV")
    assert (du >= dv).all() and (du - dv <= 0.05e4 + 1).all()
    mean_df = (du + dv) / 2
    assert mean_df.min() >= 1.0e4 - 1 and mean_df.max() <= 2.5e4 + 1  # µm on the CLI, Å stored
    labels = table.as_int("simcryoTrueClass")
    assert sorted(np.bincount(labels)[1:].tolist()) == [30] * 4
    assert not (np.diff(labels) == 0).all()  # shuffled order
    psi = table.as_float("simcryoTruePsi")
    assert psi.min() >= -180 and psi.max() < 180 and psi.std() > 60
    sx = table.as_float("simcryoTrueOriginXAngst") / 2.5
    assert 1.0 < sx.std() < 3.0  # shift_sigma 2 px
    # the STAR is readable by the project's own loader, with CTF and pixel size
    ps = load_particles(str(tmp_path / "particles.star"))
    assert ps.n == n and ps.box == 32 and ps.apix == pytest.approx(2.5) and ps.ctf is not None
    run_json = json.loads((tmp_path / "run.json").read_text())
    assert run_json["n_particles"] == n and len(run_json["classes"]) == 4
    assert run_json["min_class_separation_deg"] >= 15.0
    assert info["box"] == 32


def test_snr_and_truth_poses_without_ctf(tmp_path):
    run(_cfg(tmp_path, ctf=False, save_clean=True, snr=0.3, spread=0.0))
    parts, _ = _read(tmp_path / "particles.mrcs")
    clean, _ = _read(tmp_path / "clean.mrcs")
    refs, _ = _read(tmp_path / "references.mrcs")
    noise = parts - clean
    snr = _snr(clean, noise)
    assert np.allclose(snr, 0.3, rtol=1e-3)
    assert noise.reshape(len(noise), -1).std(axis=1) == pytest.approx(1.0, rel=1e-3)
    table = read_star(str(tmp_path / "particles.star"))["particles"]
    assert "rlnDefocusU" not in table
    label = table.as_int("simcryoTrueClass")
    psi = torch.tensor(table.as_float("simcryoTruePsi"), dtype=torch.float32)
    shift = torch.tensor(np.stack([table.as_float("simcryoTrueOriginXAngst"),
                                   table.as_float("simcryoTrueOriginYAngst")], 1) / 3.0,
                         dtype=torch.float32)
    # undoing the true pose brings each clean particle onto its class reference
    back = align_images(torch.from_numpy(clean), psi, shift).numpy()

    def corr(a, b):
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))

    own = [corr(back[i], refs[label[i] - 1]) for i in range(len(back))]
    other = [corr(back[i], refs[label[i] % 4]) for i in range(len(back))]
    assert min(own) > 0.97 and np.mean(other) < 0.8


def test_snr_with_ctf_matches_star_parameters(tmp_path):
    run(_cfg(tmp_path, save_clean=True, snr=0.5, spread=3.0))
    parts, apix = _read(tmp_path / "particles.mrcs")
    clean, _ = _read(tmp_path / "clean.mrcs")
    ps = load_particles(str(tmp_path / "particles.star"))
    signal = apply_ctf_padded(torch.from_numpy(clean), ps.ctf, apix).numpy()
    noise = parts - signal
    assert np.allclose(_snr(signal, noise), 0.5, rtol=1e-3)
    # the noise is independent of the signal
    s = signal.reshape(len(signal), -1)
    n = noise.reshape(len(noise), -1)
    c = ((s - s.mean(1, keepdims=True)) * n).mean(1) / (s.std(1) * n.std(1))
    assert np.abs(c).mean() < 0.05


def test_volume_input_resampled_and_apix_from_header(tmp_path):
    g = np.arange(40) - 20
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    vol = (np.exp(-((x - 5) ** 2 + y ** 2 + (z + 3) ** 2) / 8.0)
           + 0.5 * np.exp(-((x + 4) ** 2 + (y - 6) ** 2 + z ** 2) / 18.0)).astype(np.float32)
    path = tmp_path / "map.mrc"
    write_volume(str(path), vol, apix=1.5)
    run(_cfg(tmp_path / "out", volume=str(path), box=0, per_class=5))
    parts, apix = _read(tmp_path / "out" / "particles.mrcs")
    assert parts.shape == (20, 40, 40) and apix == pytest.approx(1.5)
    run(_cfg(tmp_path / "out2", volume=str(path), box=20, per_class=5))
    parts, apix = _read(tmp_path / "out2" / "particles.mrcs")
    assert parts.shape == (20, 20, 20) and apix == pytest.approx(3.0)
    # Fourier resampling keeps the voxel scale and the centre
    small = fourier_resize_volume(torch.from_numpy(vol), 20)
    assert float(small.sum()) == pytest.approx(float(vol.sum()) / 8, rel=1e-3)


def test_real_noise_tiling_keeps_variance_and_spectrum():
    gen = torch.Generator().manual_seed(0)
    # coloured source noise: white noise low-passed in Fourier space
    src = torch.randn(300, 96, 96, generator=gen)
    f = torch.fft.fftfreq(96)
    lowpass = torch.exp(-(f[:, None] ** 2 + f[None, :] ** 2) / (2 * 0.15 ** 2))
    src = torch.fft.ifft2(torch.fft.fft2(src) * lowpass).real
    noise = RealNoise(src, 40.0, 48, np.random.default_rng(0))
    assert 8 <= noise.P < 48 and noise.T >= 2  # tiled
    out = noise.sample(800)
    assert out.shape == (800, 48, 48)
    # the variance profile across rows and columns is flat: no dark or bright seams
    pix_var = out.var(dim=0)
    for profile in (pix_var.mean(dim=0), pix_var.mean(dim=1)):
        assert float(profile.min()) > 0.88 and float(profile.max()) < 1.12
    # the tiled noise keeps the source's spectrum (compare radial power, normalised)
    def radial(img):
        p = (torch.fft.fft2(img).abs() ** 2).mean(dim=0)
        box = img.shape[-1]
        fy = torch.fft.fftfreq(box)
        r = torch.sqrt(fy[:, None] ** 2 + fy[None, :] ** 2)
        bins = torch.linspace(0.02, 0.3, 8)
        return torch.stack([p[(r >= a) & (r < b)].mean() for a, b in zip(bins[:-1], bins[1:])])
    ref = radial(src[:, :48, :48] / src.std())
    got = radial(out)
    ratio = (got / got.sum()) / (ref / ref.sum())
    assert float(ratio.min()) > 0.7 and float(ratio.max()) < 1.4


@pytest.mark.parametrize("source", ["relion31.star", "relion31.mrcs"])
def test_realistic_noise_mode_on_real_stack(tmp_path, source):
    star = shared_file(source)
    info = run(_cfg(tmp_path, noise="real", noise_stack=star, ctf=False, save_clean=True,
                    snr=0.2, box=48))
    parts, _ = _read(tmp_path / "particles.mrcs")
    clean, _ = _read(tmp_path / "clean.mrcs")
    assert np.allclose(_snr(clean, parts - clean), 0.2, rtol=1e-3)
    noise = info["noise"]
    assert noise["model"] == "real" and noise["noise_images_used"] == 5
    assert noise["noise_patch_px"] >= 8
    assert json.loads((tmp_path / "run.json").read_text())["noise"]["noise_stack"] == star


def test_config_validation():
    with pytest.raises(SimcryoError):
        _cfg("x", classes=0)
    with pytest.raises(SimcryoError):
        _cfg("x", noise="real")
    with pytest.raises(SimcryoError):
        _cfg("x", spread=10.0, min_separation=15.0)
    with pytest.raises(SimcryoError):
        _cfg("x", box=33)
    with pytest.raises(SimcryoError):
        _cfg("x", defocus_min=3.0, defocus_max=1.0)
    assert {f.name for f in dataclasses.fields(SimulateConfig)} >= {"o", "snr", "save_clean"}


@pytest.mark.parametrize("args,needle,subproc", [
    (["--volume", "/nonexistent/map.mrc"], "not found", True),
    (["--noise", "real"], "--noise-stack", False),
    (["--classes", "60", "--min-separation", "40", "--spread", "2"], "cannot place", False),
    (["--noise", "real", "--noise-stack", "/nonexistent.star"], "not found", False),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, capsys, args, needle, subproc):
    argv = ["simulate", "--o", str(tmp_path / "o")] + args
    if subproc:
        out = subprocess.run([sys.executable, "-m", "simcryo"] + argv, capture_output=True,
                             text=True)
        code, err = out.returncode, out.stderr
    else:
        from simcryo.cli import main
        code, err = main(argv), capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("simcryo simulate: error:") and needle in lines[0]


def test_failed_simulation_leaves_no_stack_behind(tmp_path, monkeypatch):
    """An error mid-simulation leaves neither particles.mrcs nor clean.mrcs (nor their
    temporaries) in the output folder, and no run.json."""
    import simcryo.commands.simulate as sim_cmd
    real = sim_cmd.simulate_batches

    def failing(*args, **kw):
        for i, batch in enumerate(real(*args, **kw)):
            if i == 1:
                raise OSError(28, "No space left on device")
            yield batch
    monkeypatch.setattr(sim_cmd, "simulate_batches", failing)
    out = tmp_path / "sim"
    with pytest.raises(OSError):
        run(_cfg(out, save_clean=True))
    left = sorted(p.name for p in out.iterdir())
    assert not [n for n in left if n.endswith(".mrcs") and n != "references.mrcs"], left
    assert "run.json" not in left and "particles.star" not in left
