import os

import mrcfile
import numpy as np
import pytest

from simcryo.errors import SimcryoError
from simcryo.io import (StarBlock, load_particles, read_star, write_particles, write_stack,
                        write_star)
from tests.engine.conftest import shared_file


def make_set(tmp_path, n=6, box=16, apix=2.0, ctf=True, rng=None):
    rng = rng or np.random.default_rng(0)
    images = rng.normal(size=(n, box, box)).astype(np.float32)
    write_stack(str(tmp_path / "stack.mrcs"), images, apix)
    optics = StarBlock({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                        "rlnImagePixelSize": [apix], "rlnImageSize": [box],
                        "rlnImageDimensionality": [2], "rlnVoltage": [300.0],
                        "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    cols = {"rlnImageName": [f"{i + 1}@stack.mrcs" for i in range(n)],
            "rlnOpticsGroup": [1] * n, "rlnMicrographName": [f"mic {i}.mrc" for i in range(n)]}
    if ctf:
        cols.update(rlnDefocusU=[15000.0 + i for i in range(n)],
                    rlnDefocusV=[14000.0] * n, rlnDefocusAngle=[10.0] * n)
    write_star(str(tmp_path / "particles.star"), {"optics": optics,
                                                  "particles": StarBlock(cols)})
    return str(tmp_path / "particles.star"), images


def test_star_roundtrip_keeps_values_and_quoted_strings(tmp_path):
    path, _ = make_set(tmp_path)
    blocks = read_star(path)
    assert list(blocks) == ["optics", "particles"]
    assert blocks["particles"]["rlnMicrographName"][2] == "mic 2.mrc"
    write_star(str(tmp_path / "copy.star"), blocks)
    again = read_star(str(tmp_path / "copy.star"))
    assert again["particles"].columns == blocks["particles"].columns
    assert again["optics"].columns == blocks["optics"].columns


def test_load_particles_31_reads_images_ctf_and_apix(tmp_path):
    path, images = make_set(tmp_path)
    ps = load_particles(path)
    assert (ps.n, ps.box, ps.apix) == (6, 16, 2.0)
    np.testing.assert_array_equal(ps.images([4, 1]), images[[4, 1]])
    assert ps.ctf.defocus_u[3] == 15003.0 and ps.ctf.voltage[0] == 300.0
    assert ps.ctf.cs[5] == 2.7 and ps.ctf.amp_contrast[0] == pytest.approx(0.1)


def test_write_particles_keeps_rows_columns_and_finds_images(tmp_path):
    path, images = make_set(tmp_path)
    ps = load_particles(path)
    out = tmp_path / "out"
    out.mkdir()
    write_particles(str(out / "particles.star"), ps,
                    {"rlnClassNumber": np.arange(6) % 2 + 1, "rlnAnglePsi": np.zeros(6)})
    back = load_particles(str(out / "particles.star"))
    assert back.particles["rlnMicrographName"] == ps.particles["rlnMicrographName"]
    assert back.particles.as_int("rlnClassNumber").tolist() == [1, 2, 1, 2, 1, 2]
    np.testing.assert_array_equal(back.images(), images)
    np.testing.assert_array_equal(back.ctf.defocus_u, ps.ctf.defocus_u)


def test_bare_stack_and_apix_from_header(tmp_path):
    write_stack(str(tmp_path / "s.mrcs"), np.ones((3, 8, 8), np.float32) * np.arange(3)[:, None, None], 1.5)
    ps = load_particles(str(tmp_path / "s.mrcs"))
    assert (ps.n, ps.box, ps.apix, ps.ctf) == (3, 8, 1.5, None)
    assert ps.images([2])[0, 0, 0] == 2.0


def test_relion30_single_block_with_magnification():
    ps = load_particles(shared_file("empiar_10076_7.star"))
    assert ps.n == 7 and ps.box == 320
    assert ps.apix == pytest.approx(5e4 / 38168, rel=1e-6)
    assert ps.ctf.defocus_u[0] == pytest.approx(15301.1)
    assert ps.ctf.voltage[0] == 300


def test_real_relion31_star():
    ps = load_particles(shared_file("relion31.star"))
    assert ps.n == 5 and ps.box == 256 and ps.apix == pytest.approx(2.806)  # _rlnImagePixelSize
    assert ps.ctf.cs[0] == pytest.approx(0.01) and ps.ctf.defocus_u[0] == pytest.approx(13108.082418)
    assert ps.images([0]).shape == (1, 256, 256)


def test_missing_stack_named_in_error(tmp_path):
    path, _ = make_set(tmp_path)
    os.remove(tmp_path / "stack.mrcs")
    with pytest.raises(SimcryoError, match="image stack not found: stack.mrcs"):
        load_particles(path)


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b["particles"].remove("rlnImageName"), "no _rlnImageName"),
    (lambda b: b["particles"].set("rlnImageName", ["99@stack.mrcs"] * 6), "out of range"),
    (lambda b: b["optics"].remove("rlnVoltage"), "CTF columns incomplete"),
    (lambda b: b["particles"].remove("rlnDefocusV"), "CTF columns incomplete"),
    (lambda b: b["optics"].set("rlnImageSize", [32]), "does not match"),
])
def test_bad_star_inputs_raise_one_line_errors(tmp_path, mutate, message):
    path, _ = make_set(tmp_path)
    blocks = read_star(path)
    mutate(blocks)
    write_star(path, blocks)
    with pytest.raises(SimcryoError, match=message):
        load_particles(path)


def test_mixed_box_sizes_and_non_square(tmp_path):
    path, _ = make_set(tmp_path)
    write_stack(str(tmp_path / "big.mrcs"), np.zeros((2, 32, 32), np.float32), 2.0)
    blocks = read_star(path)
    names = blocks["particles"]["rlnImageName"]
    names[0] = "1@big.mrcs"
    write_star(path, blocks)
    with pytest.raises(SimcryoError, match="mixed box sizes"):
        load_particles(path)
    with mrcfile.new(str(tmp_path / "rect.mrcs"), overwrite=True) as m:
        m.set_data(np.zeros((2, 8, 10), np.float32))
    with pytest.raises(SimcryoError, match="not square"):
        load_particles(str(tmp_path / "rect.mrcs"), apix=1.0)


def test_nan_pixels_reported_with_particle_number(tmp_path):
    path, images = make_set(tmp_path)
    images[3, 2, 2] = np.nan
    write_stack(str(tmp_path / "stack.mrcs"), images, 2.0)
    ps = load_particles(path)
    ps.images([0, 1])  # clean particles still readable
    with pytest.raises(SimcryoError, match="particle 4 .*NaN"):
        ps.images([2, 3])


def test_missing_and_wrong_files(tmp_path):
    with pytest.raises(SimcryoError, match="not found"):
        load_particles(str(tmp_path / "nope.star"))
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(SimcryoError, match="expected a .star"):
        load_particles(str(tmp_path / "x.txt"))
    (tmp_path / "bad.star").write_text("hello world\n")
    with pytest.raises(SimcryoError, match="not a STAR"):
        load_particles(str(tmp_path / "bad.star"))


def test_stacks_are_looked_up_beside_the_star_and_in_the_project_folder_only(tmp_path,
                                                                             monkeypatch):
    star, images = make_set(tmp_path)
    project = tmp_path / "project"
    (project / "Extract").mkdir(parents=True)
    # a RELION path, relative to the project folder (the current folder when RELION runs)
    os.replace(tmp_path / "stack.mrcs", project / "Extract" / "stack.mrcs")
    blocks = read_star(star)
    blocks["particles"].set("rlnImageName", [f"{i + 1}@Extract/stack.mrcs" for i in range(6)])
    sub = project / "Select" / "job1"
    sub.mkdir(parents=True)
    write_star(str(sub / "particles.star"), blocks)
    monkeypatch.chdir(project)
    assert np.array_equal(load_particles(str(sub / "particles.star")).images(), images)
    monkeypatch.chdir(tmp_path)  # not found from elsewhere: ancestors are not searched
    with pytest.raises(SimcryoError, match="image stack not found: Extract/stack.mrcs"):
        load_particles(str(sub / "particles.star"))
    # a different file of that name beside the STAR as well: ambiguous, not a guess
    monkeypatch.chdir(project)
    (sub / "Extract").mkdir()
    write_stack(str(sub / "Extract" / "stack.mrcs"), images + 1, 2.0)
    with pytest.raises(SimcryoError, match="ambiguous"):
        load_particles(str(sub / "particles.star"))


def test_outputs_are_atomic_and_follow_the_umask(tmp_path):
    from simcryo.io import StackWriter
    old = os.umask(0o002)
    try:
        write_star(str(tmp_path / "a.star"), {"particles": StarBlock({"rlnImageName": ["x"]})})
        write_stack(str(tmp_path / "a.mrcs"), np.zeros((2, 4, 4), np.float32))
        assert os.stat(tmp_path / "a.star").st_mode & 0o777 == 0o664
        assert os.stat(tmp_path / "a.mrcs").st_mode & 0o777 == 0o664
    finally:
        os.umask(old)
    with pytest.raises(RuntimeError):
        with StackWriter(str(tmp_path / "b.mrcs"), 3, 4) as w:
            w.write(0, np.ones((1, 4, 4)))
            raise RuntimeError("failed mid-stack")
    assert sorted(os.listdir(tmp_path)) == ["a.mrcs", "a.star"]  # nothing partial


def test_phase_flipped_flag_makes_the_ctf_images_its_modulus(tmp_path):
    """_rlnCtfDataArePhaseFlipped 1: the images carry |CTF|, so every CTF the engine uses
    for them (matched filter, Wiener average, phase flip) is |CTF|; a second phase flip is
    then the identity."""
    from simcryo.image.ctf import ctf_2d, phase_flip
    import torch
    path, _ = make_set(tmp_path, box=32)
    blocks = read_star(path)
    plain = load_particles(path).ctf
    blocks["optics"].set("rlnCtfDataArePhaseFlipped", [1])
    write_star(path, blocks)
    flipped = load_particles(path)
    assert flipped.ctf.flipped.all() and plain.flipped is None
    c_plain = ctf_2d(plain, 32, 2.0, rfft=True)
    c_flip = ctf_2d(flipped.ctf, 32, 2.0, rfft=True)
    assert (c_plain < 0).any()
    assert torch.allclose(c_flip, c_plain.abs())
    x = torch.as_tensor(flipped.images())
    assert torch.allclose(phase_flip(x, c_flip), x, atol=1e-5)
    assert flipped.ctf.take([1, 2]).flipped.tolist() == [True, True]
