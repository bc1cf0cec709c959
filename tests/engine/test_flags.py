"""The one particle/mask size parameter: `--mask-diameter` (Å) in classify, align and
denoise; the removed flags (`--mask-radius`, `--particle-diameter`) and config keys stop with
one line naming it; each command converts the diameter to its px radius (diameter / 2 / apix)
and records both in run.json."""
import dataclasses
import json
import os

import pytest
import torch

from simcryo import cli
from simcryo.classify.config import ClassifyConfig
from simcryo.commands.align import AlignConfig, align_params
from simcryo.denoise.config import DenoiseConfig
from simcryo.errors import SimcryoError
from simcryo.io.particles import load_particles
from simcryo.io.star import read_star, write_star

pytestmark = pytest.mark.usefixtures("one_thread")

BOX = 32
OLD_FLAGS = [(["align"], "--mask-radius"), (["align"], "--particle-diameter"),
             (["classify"], "--particle-diameter"), (["classify"], "--mask-radius"),
             (["denoise", "train"], "--mask-radius"),
             (["denoise", "train"], "--particle-diameter")]
COMMANDS = [["align"], ["classify"], ["denoise", "train"]]
TINY_CLASSIFY = ["--K", "3", "--width", "4", "--working-box", "16", "--pretext-box", "16",
                 "--batch-size", "32", "--pretext-epochs", "1", "--tta-rotations", "2",
                 "--knn", "5", "--scan-heads", "1", "--scan-epochs", "2",
                 "--selflabel-epochs", "0", "--refine-iterations", "0",
                 "--average-iterations", "1", "--threads", "1"]
TINY_DENOISE = ["--channels", "8", "--res-blocks", "1", "--batch-size", "16",
                "--images-per-epoch", "32", "--val-images", "16", "--stats-images", "48",
                "--epochs", "1", "--threads", "1"]


def _main(argv):
    return cli.main([str(a) for a in argv])


def _one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def star(tmp_path_factory):
    """3 classes x 16 phantom particles of 32 px (3 Å/px x 64/32 = 6 Å/px), classified by
    their true label."""
    d = tmp_path_factory.mktemp("flags")
    assert _main(["simulate", "--o", d, "--box", BOX, "--classes", 3, "--per-class", 16,
                  "--snr", 1.0, "--seed", 3, "--threads", 1]) == 0
    blocks = read_star(str(d / "particles.star"))
    blocks["particles"].set("rlnClassNumber", blocks["particles"]["simcryoTrueClass"])
    path = str(d / "classified.star")
    write_star(path, blocks)
    return path


@pytest.fixture(scope="module")
def apix(star):
    return load_particles(star).apix


# ----------------------------------------------------------------------------- removed flags
@pytest.mark.parametrize("command,old", OLD_FLAGS)
def test_removed_flag_stops_with_one_line_naming_mask_diameter(command, old, tmp_path, capsys):
    argv = command + ["--i", tmp_path / "p.star", "--o", tmp_path / "o", old, "20"]
    assert _main(argv) == 2
    line = _one_line(capsys)
    assert line == (f"simcryo {command[0]}: error: {old} was removed; give the particle/mask "
                    "diameter in Å with --mask-diameter (e.g. --mask-diameter 150)")
    assert not os.path.exists(tmp_path / "o")  # stopped before doing anything


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("old", ["mask_radius", "particle_diameter"])
def test_removed_key_in_config_file_stops_with_one_line(command, old, tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({old: 20}))
    argv = command + ["--i", tmp_path / "p.star", "--o", tmp_path / "o", "--config", cfg]
    assert _main(argv) == 2
    line = _one_line(capsys)
    assert f"'{old}' was removed" in line and "'mask_diameter'" in line, line
    assert line.startswith(f"simcryo {command[0]}: error: config file ")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_only_mask_diameter(command):
    parser = cli.build_parser([command[0]])
    sub = parser._subparsers._group_actions[0].choices[command[0]]
    if len(command) > 1:
        sub = sub._subparsers._group_actions[0].choices[command[1]]
    text = sub.format_help()
    assert "--mask-diameter" in text and "Å" in text
    assert "--mask-radius" not in text and "--particle-diameter" not in text


@pytest.mark.parametrize("config_cls", [AlignConfig, ClassifyConfig, DenoiseConfig])
def test_every_config_has_the_one_mask_diameter_field(config_cls):
    names = {f.name for f in dataclasses.fields(config_cls)}
    assert "mask_diameter" in names
    assert not names & {"mask_radius", "particle_diameter"}
    assert config_cls().mask_diameter == 0.0  # automatic by default


def test_negative_diameter_is_refused(star, tmp_path, capsys):
    for command in COMMANDS:
        argv = command + ["--i", star, "--o", tmp_path / "o", "--mask-diameter", "-5"]
        assert _main(argv) == 2
        assert "--mask-diameter must be >= 0" in _one_line(capsys)


# ----------------------------------------------------------------------------- conversion
def test_align_params_convert_diameter_to_px_radius():
    cfg = AlignConfig(i="x", o="y", mask_diameter=150.0)
    assert align_params(cfg, 64, 3.0).mask_radius == pytest.approx(25.0)
    assert align_params(AlignConfig(i="x", o="y", mask_diameter=96.0), 64, 1.5) \
        .mask_radius == pytest.approx(32.0)
    assert align_params(AlignConfig(i="x", o="y"), 64, 3.0).mask_radius is None  # estimated
    with pytest.raises(SimcryoError, match="--mask-diameter 200 Å is wider than the box"):
        align_params(AlignConfig(i="x", o="y", mask_diameter=200.0), 64, 3.0)


def test_classify_converts_and_records_the_diameter(star, apix, tmp_path):
    diameter = 0.6 * BOX * apix
    out = tmp_path / "c"
    assert _main(["classify", "--i", star, "--o", out, "--mask-diameter", diameter,
                  *TINY_CLASSIFY]) == 0
    run = json.load(open(out / "run.json"))
    assert run["config"]["mask_diameter"] == pytest.approx(diameter)
    assert run["mask_radius_px"] == pytest.approx(diameter / 2 / apix, abs=1e-3)
    assert run["mask_diameter_A"] == pytest.approx(diameter, abs=1e-2)
    assert run["geometry"]["radius_px"] == pytest.approx(diameter / 2 / apix, abs=1e-3)


def test_denoise_converts_records_and_reads_old_models(star, apix, tmp_path, capsys):
    diameter = 0.5 * BOX * apix
    model, out = tmp_path / "m", tmp_path / "d"
    assert _main(["denoise", "train", "--i", star, "--o", model, "--mask-diameter", diameter,
                  *TINY_DENOISE]) == 0
    run = json.load(open(model / "run.json"))
    assert run["mask_radius_px"] == pytest.approx(diameter / 2 / apix)
    assert run["mask_diameter_A"] == pytest.approx(diameter)
    record = torch.load(model / "model.pt", weights_only=False)
    assert record["mask_radius_px"] == pytest.approx(diameter / 2 / apix)
    assert "mask_radius" not in record
    assert _main(["denoise", "apply", "--i", star, "--model", model, "--o", out,
                  "--threads", 1]) == 0
    assert json.load(open(out / "run.json"))["mask_radius_px"] == pytest.approx(BOX / 4)

    # a model file from before --mask-diameter stores a fraction of half the box
    del record["mask_radius_px"], record["mask_diameter_A"]
    record["mask_radius"] = 0.75
    torch.save(record, model / "model.pt")
    assert _main(["denoise", "apply", "--i", star, "--model", model, "--o", tmp_path / "old",
                  "--threads", 1]) == 0
    assert json.load(open(tmp_path / "old" / "run.json"))["mask_radius_px"] == \
        pytest.approx(0.75 * BOX / 2)
    capsys.readouterr()
    del record["mask_radius"]
    torch.save(record, model / "model.pt")
    assert _main(["denoise", "apply", "--i", star, "--model", model, "--o", tmp_path / "bad",
                  "--threads", 1]) == 2
    assert "stores no usable mask radius" in _one_line(capsys)


def test_denoise_default_is_the_former_08_fraction(star, apix, tmp_path):
    model = tmp_path / "m"
    assert _main(["denoise", "train", "--i", star, "--o", model, *TINY_DENOISE]) == 0
    run = json.load(open(model / "run.json"))
    assert run["mask_radius_px"] == pytest.approx(0.8 * BOX / 2)
    assert run["mask_diameter_A"] == pytest.approx(0.8 * BOX * apix)


def test_denoise_too_wide_diameter_is_one_line(star, apix, tmp_path, capsys):
    assert _main(["denoise", "train", "--i", star, "--o", tmp_path / "m", "--mask-diameter",
                  2 * BOX * apix, *TINY_DENOISE]) == 2
    assert "give a smaller --mask-diameter" in _one_line(capsys)
