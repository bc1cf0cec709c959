"""`simcryo align` end to end on a tiny simulated, classified STAR."""
import json
import os

import mrcfile
import numpy as np
import pytest

from simcryo.cli import main as cli_main
from simcryo.evaluation.metrics import pose_errors
from simcryo.io.particles import load_particles
from simcryo.io.star import read_star, write_star


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    """3 view classes x 60 particles of the phantom, SNR 0.5, CTF on; labels = truth."""
    d = tmp_path_factory.mktemp("sim")
    rc = cli_main(["simulate", "--o", str(d), "--classes", "3", "--per-class", "60",
                   "--snr", "0.5", "--seed", "5", "--threads", "1", "--min-separation", "30"])
    assert rc == 0
    blocks = read_star(str(d / "particles.star"))
    blocks["particles"].set("rlnClassNumber", blocks["particles"]["simcryoTrueClass"])
    blocks["particles"].set("rlnMaxValueProbDistribution",
                            [0.9] * blocks["particles"].n_rows)
    path = str(d / "classified.star")
    write_star(path, blocks)
    return path


def test_align_command_writes_contract(classified, tmp_path):
    out = str(tmp_path / "out")
    rc = cli_main(["align", "--i", classified, "--o", out, "--iterations", "4",
                   "--threads", "1", "--seed", "2", "--batch-size", "64"])
    assert rc == 0
    pset = load_particles(os.path.join(out, "particles.star"))
    src = load_particles(classified)
    assert pset.n == src.n == 180
    for label in ("rlnClassNumber", "rlnMaxValueProbDistribution", "rlnAnglePsi",
                  "rlnOriginXAngst", "rlnOriginYAngst", "simcryoTruePsi", "rlnDefocusU"):
        assert label in pset.particles, label
    assert list(pset.particles["rlnImageName"]) != []
    np.testing.assert_array_equal(pset.particles.as_int("rlnClassNumber"),
                                  src.particles.as_int("rlnClassNumber"))
    psi = pset.particles.as_float("rlnAnglePsi")
    assert np.all(np.abs(psi) <= 180) and np.std(psi) > 30
    with mrcfile.open(os.path.join(out, "class_averages.mrcs")) as m:
        avgs = np.asarray(m.data).reshape(-1, 64, 64)
        assert avgs.shape[0] == 3 and np.isfinite(avgs).all() and avgs.std() > 0
        assert abs(float(m.voxel_size.x) - pset.apix) < 1e-3
    run = json.load(open(os.path.join(out, "run.json")))
    assert len(run["classes"]) == 3
    for c in run["classes"]:
        assert c["particles"] == 60
        assert len(c["frc_half_sets"]) == 32 and c["frc_half_sets"][1] > 0.5
        assert np.isfinite(c["resolution_frc05_A"])
    assert run["iterations"] and "median_angle_change_deg" in run["iterations"][0]
    # the local refinement (default 2 cycles) is timed apart from the iterations
    assert [set(c) >= {"median_angle_change_deg", "seconds"} for c in run["local_refinement"]
            ] == [True, True]
    err = run["pose_errors_vs_truth"]
    assert err["angle_median_deg"] < 3.0 and err["shift_median_px"] < 0.6
    # the written _rlnAnglePsi / _rlnOriginX,YAngst themselves (RELION's sign): negated, the
    # errors modulo a class frame would spread over the circle
    P = pset.particles
    shift = np.stack([P.as_float("rlnOriginXAngst"), P.as_float("rlnOriginYAngst")], 1)
    true_shift = np.stack([P.as_float("simcryoTrueOriginXAngst"),
                           P.as_float("simcryoTrueOriginYAngst")], 1)
    for sign, ok in ((1, True), (-1, False)):
        ang, _, _ = pose_errors(P.as_int("rlnClassNumber"), sign * psi, sign * shift / pset.apix,
                                P.as_float("simcryoTruePsi"), true_shift / pset.apix)
        assert (np.median(ang) < 3.0) == ok


def test_align_command_options_gap_and_missing_labels(classified, tmp_path, capsys):
    # class numbers 1, 2, 4: class 3 is empty and must come out blank, in place
    blocks = read_star(classified)
    cls = [4 if c == 3 else c for c in blocks["particles"].as_int("rlnClassNumber")]
    blocks["particles"].set("rlnClassNumber", cls)
    gap = os.path.join(os.path.dirname(classified), "gap.star")
    write_star(gap, blocks)
    out = str(tmp_path / "re")
    rc = cli_main(["align", "--i", gap, "--o", out, "--iterations", "3", "--reassign",
                   "--snr-weights", "--threads", "1", "--method", "magnitude", "--no-ctf"])
    assert rc == 0
    run = json.load(open(os.path.join(out, "run.json")))
    assert run["reassigned"] is not None and 0 <= run["reassigned"] <= 180
    assert run["ctf_used"] is False
    assert [c["particles"] for c in run["classes"]][2] == 0
    with mrcfile.open(os.path.join(out, "class_averages.mrcs")) as m:
        avgs = np.asarray(m.data).reshape(-1, 64, 64)
    assert avgs.shape[0] == 4 and np.abs(avgs[2]).max() == 0 and avgs[3].std() > 0
    assert set(load_particles(os.path.join(out, "particles.star"))
               .particles.as_int("rlnClassNumber")) <= {1, 2, 4}

    blocks = read_star(classified)
    blocks["particles"].remove("rlnClassNumber")
    bad = str(tmp_path / "nolabels.star")
    write_star(bad, blocks)
    # the STAR refers to the stack by a relative path: write it next to the original
    os.replace(bad, os.path.join(os.path.dirname(classified), "nolabels.star"))
    bad = os.path.join(os.path.dirname(classified), "nolabels.star")
    rc = cli_main(["align", "--i", bad, "--o", str(tmp_path / "x")])
    assert rc == 2
    assert "_rlnClassNumber" in capsys.readouterr().err


def test_auto_search_box():
    from simcryo.commands.align import auto_align_box
    assert auto_align_box(64, 0) == 64          # small boxes are searched whole
    assert auto_align_box(48, 0) == 48
    assert auto_align_box(100, 0) == 64         # box/2, at least 64
    assert auto_align_box(160, 0) == 80
    assert auto_align_box(400, 0) == 128        # at most 128
    assert auto_align_box(64, 33) == 32         # a requested box is made even
    assert auto_align_box(64, 96) == 64         # and never larger than the particles


def test_align_mask_diameter_is_converted_to_px_and_recorded(classified, tmp_path):
    """--mask-diameter (Å) becomes the library's mask radius in px of the input box:
    diameter / 2 / apix; run.json records both. 0 (default): estimated from the particles."""
    apix = load_particles(classified).apix
    out = str(tmp_path / "m")
    common = ["--i", classified, "--iterations", "1", "--final-iterations", "0",
              "--starts", "1", "--threads", "1", "--batch-size", "64", "--refine-cycles", "0"]
    assert cli_main(["align", "--o", out, "--mask-diameter", "120", *common]) == 0
    run = json.load(open(os.path.join(out, "run.json")))
    assert run["local_refinement"] == []
    assert run["config"]["mask_diameter"] == 120
    assert run["mask_radius_px"] == pytest.approx(120 / 2 / apix)
    assert run["mask_diameter_A"] == pytest.approx(120)
    auto = str(tmp_path / "a")
    assert cli_main(["align", "--o", auto, *common]) == 0
    run = json.load(open(os.path.join(auto, "run.json")))
    assert run["config"]["mask_diameter"] == 0
    assert 0 < run["mask_radius_px"] <= 64 / 2 - 2
    assert run["mask_diameter_A"] == pytest.approx(2 * run["mask_radius_px"] * apix, abs=1e-2)


def test_align_mask_diameter_wider_than_the_box_is_one_line(classified, tmp_path, capsys):
    apix = load_particles(classified).apix
    rc = cli_main(["align", "--i", classified, "--o", str(tmp_path / "w"),
                   "--mask-diameter", str(64 * apix + 10)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is wider than the box" in err[0], err


@pytest.mark.parametrize("flag,value", [("--refine-step", "0"), ("--refine-cycles", "-1")])
def test_align_refinement_flags_out_of_range_are_one_line(classified, tmp_path, capsys, flag,
                                                          value):
    rc = cli_main(["align", "--i", classified, "--o", str(tmp_path / "r"), flag, value])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0], err
