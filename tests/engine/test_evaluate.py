import json
import math
import subprocess
import sys

import mrcfile
import numpy as np
import pytest
import torch

from simcryo.commands.evaluate import EvaluateConfig, evaluate, format_report
from simcryo.errors import SimcryoError
from simcryo.image.geometry import transform_images
from simcryo.io import read_star, write_star, write_stack

K, M, BOX = 4, 25, 32
DELTA = {1: 25.0, 2: -140.0, 3: 95.0, 4: 0.0}      # class-average rotation per predicted class
OFFSET = {1: (1.0, -0.5), 2: (0.0, 1.5), 3: (-1.0, 0.0), 4: (0.5, 0.5)}  # and shift (px)
RELABEL = {1: 3, 2: 1, 3: 4, 4: 2}                  # true class -> predicted class number


def _simcryo(*args):
    return subprocess.run([sys.executable, "-m", "simcryo", *args], capture_output=True,
                          text=True)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    res = _simcryo("simulate", "--o", str(out), "--box", str(BOX), "--classes", str(K),
                   "--per-class", str(M), "--seed", "3", "--snr", "0.5")
    assert res.returncode == 0, res.stderr
    return out


def _classified(sim, tmp_path, labels=None, name="classified.star"):
    """A 'classification' of the simulated set: relabelled truth (or given labels), poses
    relative to class averages that are the references rotated by DELTA and shifted by
    OFFSET, plus those averages."""
    blocks = read_star(str(sim / "particles.star"))
    table = blocks["particles"]
    apix = float(blocks["optics"].as_float("rlnImagePixelSize")[0])
    true = table.as_int("simcryoTrueClass")
    pred = np.array([RELABEL[t] for t in true]) if labels is None else np.asarray(labels)
    tpsi = table.as_float("simcryoTruePsi")
    tshift = np.stack([table.as_float("simcryoTrueOriginXAngst"),
                       table.as_float("simcryoTrueOriginYAngst")], 1) / apix
    ppsi = np.empty(len(true))
    pshift = np.empty((len(true), 2))
    for i, p in enumerate(pred):
        ppsi[i] = tpsi[i] - DELTA[p]
        a = math.radians(ppsi[i])
        d = OFFSET[p]
        rd = (math.cos(a) * d[0] + math.sin(a) * d[1], -math.sin(a) * d[0] + math.cos(a) * d[1])
        pshift[i] = tshift[i] - rd
    table.set("rlnClassNumber", pred)
    table.set("rlnAnglePsi", ppsi)
    table.set("rlnOriginXAngst", pshift[:, 0] * apix)
    table.set("rlnOriginYAngst", pshift[:, 1] * apix)
    table.set("rlnImageName", [f"{i + 1}@{sim / 'particles.mrcs'}" for i in range(len(true))])
    path = tmp_path / name
    write_star(str(path), blocks)
    with mrcfile.open(str(sim / "references.mrcs")) as m:
        refs = torch.from_numpy(np.array(m.data))
    avgs = torch.zeros_like(refs)
    for t, p in RELABEL.items():
        avgs[p - 1] = transform_images(refs[t - 1:t], torch.tensor([DELTA[p]]),
                                       torch.tensor([OFFSET[p]]))[0]
    write_stack(str(tmp_path / "class_averages.mrcs"), avgs.numpy(), apix)
    return path, apix


def test_round_trip_perfect_classification(sim, tmp_path):
    star, apix = _classified(sim, tmp_path)
    report_path = tmp_path / "report.json"
    res = _simcryo("evaluate", "--i", str(star), "--references", str(sim / "references.mrcs"),
                   "--averages", str(tmp_path / "class_averages.mrcs"), "--o", str(report_path))
    assert res.returncode == 0, res.stderr
    assert "ACC 1.0000" in res.stdout and "FRC" in res.stdout
    r = json.loads(report_path.read_text())
    for key in ("acc", "nmi", "ari", "fmi"):
        assert r["scores"][key] == pytest.approx(1.0)
    assert r["matching"] == {str(p): t for t, p in RELABEL.items()}
    assert all(c["precision"] == 1.0 and c["recall"] == 1.0 for c in r["per_class"])
    counts = np.array(r["confusion"]["counts"])
    expect = np.zeros((K, K), dtype=int)
    for t, p in RELABEL.items():
        expect[p - 1, t - 1] = M
    assert r["confusion"]["predicted_classes"] == [1, 2, 3, 4]
    assert np.array_equal(counts, expect)
    # averages are the references in another frame: the FRC search finds it, FRC ~ 1
    frc = r["frc"]
    assert len(frc["classes"]) == K
    for c in frc["classes"]:
        assert c["res_frc05_A"] < 3.0 * apix and c["res_frc0143_A"] < 2.5 * apix
        assert c["contrast_inverted"] is False
        delta = DELTA[c["predicted_class"]]
        assert abs(((c["align_psi"] - delta) + 180) % 360 - 180) < 1.0
    # poses relative to each class frame are exact
    pose = r["pose"]
    assert pose["available"] and pose["angle_error_deg"]["n"] == K * M
    assert pose["angle_error_deg"]["p90"] < 1e-3 and pose["shift_error_px"]["p90"] < 1e-3
    for p, off in pose["class_offsets"].items():
        assert abs(((off["psi"] - DELTA[int(p)]) + 180) % 360 - 180) < 1e-3


def test_random_labelling_near_chance_and_pose_errors_large(sim, tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(1, K + 1, K * M)
    star, _ = _classified(sim, tmp_path, labels=labels)
    r = evaluate(EvaluateConfig(i=str(star)))
    assert r["scores"]["acc"] < 0.45  # chance 0.25 (+ the matching's optimism on 100 samples)
    assert abs(r["scores"]["ari"]) < 0.1 and r["scores"]["nmi"] < 0.15
    assert "ACC" in format_report(r)
    # wrong psi (random) shows up as large angle errors
    blocks = read_star(str(star))
    blocks["particles"].set("rlnAnglePsi", rng.uniform(-180, 180, K * M))
    write_star(str(star), blocks)
    r = evaluate(EvaluateConfig(i=str(star)))
    assert r["pose"]["angle_error_deg"]["median"] > 30


def test_two_classifications_and_features(sim, tmp_path):
    star, _ = _classified(sim, tmp_path)
    # another classification that only has _rlnClassNumber (e.g. from RELION): same partition
    blocks = read_star(str(star))
    table = blocks["particles"]
    other = {k: v for k, v in table.columns.items() if not k.startswith("simcryo")}
    other["rlnClassNumber"] = [str(int(c) % K + 1) for c in table["rlnClassNumber"]]
    from simcryo.io import StarBlock
    blocks["particles"] = StarBlock(other)
    write_star(str(tmp_path / "other.star"), blocks)
    r = evaluate(EvaluateConfig(i=str(star), truth=str(tmp_path / "other.star")))
    assert r["truth_label"] == "_rlnClassNumber" and r["scores"]["acc"] == pytest.approx(1.0)
    # features: one cluster per true class -> kNN accuracy 1
    true = read_star(str(sim / "particles.star"))["particles"].as_int("simcryoTrueClass")
    rng = np.random.default_rng(1)
    feats = np.eye(K)[true - 1] * 5 + rng.normal(size=(K * M, K)) * 0.1
    np.save(tmp_path / "features.npy", feats.astype(np.float32))
    r = evaluate(EvaluateConfig(i=str(star), features=str(tmp_path / "features.npy")))
    assert r["knn"]["accuracy"] == pytest.approx(1.0) and r["knn"]["purity"] == pytest.approx(1.0)


def test_bad_inputs(sim, tmp_path, capsys):
    star, _ = _classified(sim, tmp_path)
    blocks = read_star(str(star))
    blocks["particles"] = blocks["particles"].take(range(10))
    write_star(str(tmp_path / "short.star"), blocks)
    with pytest.raises(SimcryoError, match="same particles"):
        evaluate(EvaluateConfig(i=str(star), truth=str(tmp_path / "short.star")))
    cases = [
        (["--i", str(sim / "particles.star")], "_rlnClassNumber"),
        (["--i", str(star), "--truth", str(tmp_path / "short.star")], "same particles"),
        (["--i", str(tmp_path / "missing.star")], "not found"),
        (["--i", str(star), "--features", str(tmp_path / "nope.npy")], "not found"),
    ]
    # one through a real subprocess, the rest through the same dispatcher in-process
    res = _simcryo("evaluate", *cases[0][0])
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("simcryo evaluate: error:") and cases[0][1] in lines[0]
    from simcryo.cli import main
    for args, needle in cases[1:]:
        capsys.readouterr()
        assert main(["evaluate", *args]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("simcryo evaluate: error:")
        assert needle in lines[0]
