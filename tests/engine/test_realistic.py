"""Issue 14: realistic simulation (continuous views, junk, coloured noise, contrast), the
cleaning evaluation (oracle selection, view spread, fidelity) and class selection."""
import json

import mrcfile
import numpy as np
import pytest
import torch
from scipy import stats

from simcryo.cli import main as cli_main
from simcryo.commands.simulate import run
from simcryo.evaluation.cleaning import (cleaning_report, kmeans_view_spread, oracle_selection,
                                         view_spread)
from simcryo.evaluation.fidelity import FidelityScorer
from simcryo.image.fourier import radial_index, shell_sums
from simcryo.image.geometry import align_images, transform_images
from simcryo.io import read_star, write_star
from simcryo.io.mrc import write_stack, write_volume
from simcryo.selection import class_features, rank_classes, score_classes
from simcryo.simulation import angles_to_direction, euler_to_matrix, make_phantom, project
from simcryo.simulation.realistic import coloured_power, continuous_directions
from simcryo.simulation.simulate import ColouredNoise, SimulateConfig


def _sim(out, **kw):
    base = dict(o=str(out), box=32, classes=4, per_class=30, batch=64, seed=3, snr=0.5,
                save_clean=True)
    base.update(kw)
    cfg = SimulateConfig(**base)
    cfg.validate()
    run(cfg)
    table = read_star(str(out / "particles.star"))["particles"]
    if not cfg.save_clean:
        return table, None
    clean = np.array(mrcfile.open(str(out / "clean.mrcs"), permissive=True).data)
    return table, clean


@pytest.fixture(scope="module")
def junk_sim(tmp_path_factory):
    d = tmp_path_factory.mktemp("junk")
    write_volume(str(d / "other.mrc"), np.roll(make_phantom(32, seed=5), 3, axis=0)[::-1].copy(),
                 3.0)
    table, clean = _sim(d / "sim", views="uniform", particles=60, junk_fraction=0.4,
                        junk_kinds="empty,blob,offcentre,other",
                        junk_volume=str(d / "other.mrc"), contrast_sigma=0.3, ctf=False)
    return d / "sim", table, clean


def test_truth_columns_of_every_junk_kind(junk_sim):
    _, table, clean = junk_sim
    kind = np.array(table["simcryoTrueKind"])
    label = table.as_int("simcryoTrueClass")
    assert len(kind) == 100 and (kind == "good").sum() == 60
    for k in ("empty", "blob", "offcentre", "other"):
        assert (kind == k).sum() == 10, k
    assert (label[kind != "good"] == 0).all() and (label[kind == "good"] >= 1).all()
    rot, tilt = table.as_float("simcryoTrueAngleRot"), table.as_float("simcryoTrueAngleTilt")
    psi = table.as_float("simcryoTruePsi")
    shift = np.stack([table.as_float("simcryoTrueOriginXAngst"),
                      table.as_float("simcryoTrueOriginYAngst")], 1) / 3.0
    no_view = np.isin(kind, ["empty", "blob"])
    assert (rot[no_view] == 0).all() and (tilt[no_view] == 0).all()
    assert np.abs(clean[kind == "empty"]).max() == 0
    assert (np.abs(clean[kind == "blob"]).reshape(10, -1).max(1) > 0).all()
    r = np.linalg.norm(shift[kind == "offcentre"], axis=1)
    assert (r >= 0.25 * 32 - 1e-3).all() and (r <= 0.45 * 32 + 1e-3).all()
    contrast = table.as_float("simcryoTrueContrast")
    assert contrast.std() > 0.1
    # a good particle's clean image is the projection at its true view and pose
    vol = torch.from_numpy(make_phantom(32))
    good = np.flatnonzero(kind == "good")[:5]
    proj = project(vol, euler_to_matrix(rot[good], tilt[good], np.zeros(5)))
    model = transform_images(proj, torch.tensor(psi[good], dtype=torch.float32),
                             torch.tensor(shift[good], dtype=torch.float32)).numpy()
    for a, b in zip(model, clean[good]):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    # 'other' particles are not the phantom: far less like its projection at the same pose
    other = np.flatnonzero(kind == "other")[:5]
    proj = project(vol, euler_to_matrix(rot[other], tilt[other], np.zeros(5)))
    model = transform_images(proj, torch.tensor(psi[other], dtype=torch.float32),
                             torch.tensor(shift[other], dtype=torch.float32)).numpy()
    cc = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(model, clean[other])]
    assert np.median(cc) < 0.9


def test_offcentre_particles_are_cut_not_wrapped(junk_sim):
    _, table, clean = junk_sim
    kind = np.array(table["simcryoTrueKind"])
    shift = np.stack([table.as_float("simcryoTrueOriginXAngst"),
                      table.as_float("simcryoTrueOriginYAngst")], 1) / 3.0
    for img, s in zip(clean[kind == "offcentre"], shift[kind == "offcentre"]):
        # the particle moved by -origin: the half-box on the origin's side stays near empty
        g = np.arange(32) - 16
        side = (g[None, :] * s[0] + g[:, None] * s[1]) > 0.6 * np.linalg.norm(s) ** 2
        assert np.abs(img[side]).sum() < 0.05 * np.abs(img).sum()


def test_sphere_uniform_and_preferred_directions():
    rng = np.random.default_rng(0)
    d = continuous_directions(20000, "uniform", 2, 0.5, 10.0, rng)
    assert stats.kstest(d[:, 2], "uniform", args=(-1, 2)).pvalue > 1e-3
    phi = np.arctan2(d[:, 1], d[:, 0])
    assert stats.kstest(phi, "uniform", args=(-np.pi, 2 * np.pi)).pvalue > 1e-3
    p = continuous_directions(20000, "preferred", 1, 0.5, 10.0, np.random.default_rng(1))
    # half of them cluster about one direction (10 deg wide): the densest point of the
    # sphere holds far more than a uniform cap's share
    mean_dir = p[np.argmax((p @ p[:500].T > np.cos(np.radians(20))).sum(0))]
    near = (p @ mean_dir > np.cos(np.radians(30))).mean()
    assert 0.45 < near < 0.6   # 0.5 preferred + 0.067 of the uniform half


def test_uniform_views_in_the_star(tmp_path):
    table, _ = _sim(tmp_path / "u", views="uniform", particles=600, ctf=False, save_clean=False)
    tilt = table.as_float("simcryoTrueAngleTilt")
    assert stats.kstest(np.cos(np.radians(tilt)), "uniform", args=(-1, 2)).pvalue > 1e-3
    assert set(np.unique(table.as_int("simcryoTrueClass"))) == {1, 2, 3, 4}


def test_coloured_noise_spectrum_shape():
    box, apix = 64, 3.0
    noise = ColouredNoise(box, apix, 40.0, 1.0, torch.Generator().manual_seed(0)).sample(400)
    power = (torch.fft.rfft2(noise).abs() ** 2).mean(0)
    rad = radial_index(box)
    expected = coloured_power(box, apix, 40.0, 1.0)

    def ring(v):  # mean per ring 1 .. box/2 - 1
        sums = shell_sums(v[None].double(), rad, int(rad.max()) + 1)[0]
        return (sums / torch.bincount(rad.reshape(-1)).double())[1:box // 2]
    ratio = ring(power) / ring(expected)
    assert float(ratio.std() / ratio.mean()) < 0.1  # the measured shape follows P(s)
    e = ring(expected)
    assert float(e[0] / e[-1]) > 3.0  # 1/f-like at low frequency, flat at high
    assert float(e[-5] / e[-1]) < 1.2


def test_oracle_selection_on_a_toy_assignment():
    pred = np.array([1, 1, 1, 1, 2, 2, 2, 3, 3])
    junk = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0], dtype=bool)
    r = oracle_selection(pred, junk)
    assert r["kept_classes"] == [1, 3]
    assert r["recall"] == pytest.approx(5 / 6)
    assert r["contamination"] == pytest.approx(1 / 6)
    assert r["junk_rejected"] == pytest.approx(2 / 3)
    kinds = np.where(junk, "empty", "good")
    dirs = np.tile([0.0, 0.0, 1.0], (9, 1))
    c = cleaning_report(pred, kinds, dirs, selected=[3])
    assert c["selected"]["recall"] == pytest.approx(2 / 6)
    assert c["selected"]["contamination"] == 0.0
    assert c["oracle"]["view_spread_deg"] == 0.0


def test_view_spread_and_kmeans_floor():
    same = np.tile([0.3, 0.4, 0.5], (10, 1))
    assert view_spread(same, np.ones(10)) == pytest.approx(0.0, abs=1e-5)
    rng = np.random.default_rng(0)
    centres = angles_to_direction([0, 120, 240], [90, 45, 135])
    pts = np.repeat(centres, 50, 0) + rng.normal(0, 0.02, (150, 3))
    labels = np.repeat([1, 2, 3], 50)
    tight = view_spread(pts, labels)
    assert tight < 3.0
    assert kmeans_view_spread(pts, 3) == pytest.approx(tight, abs=0.5)
    assert view_spread(pts, rng.integers(1, 4, 150)) > 30.0  # mixed views spread widely


@pytest.fixture(scope="module")
def scorer():
    return FidelityScorer(torch.from_numpy(make_phantom(32)), view_step=20.0, angle_step=15.0)


def test_fidelity_is_one_for_a_clean_projection_and_zero_for_noise(scorer):
    rot, tilt = np.array([37.0, 200.0]), np.array([71.0, 128.0])
    proj = project(torch.from_numpy(make_phantom(32)), euler_to_matrix(rot, tilt, [0, 0]))
    proj = transform_images(proj, torch.tensor([33.0, -120.0]), torch.tensor([[1.0, -1.5],
                                                                             [0.5, 0.0]]))
    noise = torch.randn((4, 32, 32), generator=torch.Generator().manual_seed(7))
    fid, _ = scorer.fidelity(torch.cat([proj, -proj, noise]))
    assert (fid[:4] > 0.9).all() and (fid[:4] < 1.1).all()   # either contrast
    assert np.abs(fid[4:]).max() < 0.2
    noisy, _ = scorer.fidelity(proj + 2 * proj.std() * torch.randn(proj.shape))
    assert (noisy < 0.8).all() and (noisy > 0.1).all()


def _toy_classification(d):
    """Discrete views (4 classes) + empty and off-centre junk, classified by the truth: a
    good class per view, one class per junk kind; averages from the true poses."""
    table, _ = _sim(d / "sim", classes=4, per_class=40, junk_fraction=0.25,
                    junk_kinds="empty,offcentre", snr=0.05, save_clean=False, ctf=False)
    kind = np.array(table["simcryoTrueKind"])
    label = table.as_int("simcryoTrueClass")
    pred = np.where(kind == "empty", 5, np.where(kind == "offcentre", 6, label))
    imgs = torch.from_numpy(np.array(mrcfile.open(str(d / "sim" / "particles.mrcs")).data))
    psi = torch.tensor(table.as_float("simcryoTruePsi"), dtype=torch.float32)
    shift = torch.tensor(np.stack([table.as_float("simcryoTrueOriginXAngst"),
                                   table.as_float("simcryoTrueOriginYAngst")], 1) / 3.0,
                         dtype=torch.float32)
    aligned = align_images(imgs, psi, torch.where(torch.tensor(pred == 6)[:, None], 0.0, shift))
    avgs = np.stack([aligned[torch.tensor(pred == k)].mean(0).numpy() for k in range(1, 7)])
    blocks = read_star(str(d / "sim" / "particles.star"))
    blocks["particles"].set("rlnClassNumber", pred.tolist())
    write_star(str(d / "sim" / "classified.star"), blocks)
    write_stack(str(d / "sim" / "averages.mrcs"), avgs.astype(np.float32), 3.0)
    return pred, avgs


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    pred, avgs = _toy_classification(d)
    return d / "sim", pred, avgs


def test_ranking_puts_junk_classes_last(toy):
    _, pred, avgs = toy
    sizes = np.bincount(pred - 1, minlength=6)
    feats = class_features(avgs, sizes, radius=0.8 * 16)
    order = rank_classes(score_classes(feats))
    assert set(order[-2:]) == {4, 5}  # classes 5 (empty) and 6 (off-centre)


def test_profiles_are_judged_against_the_nearest_trusted_class():
    """Views of an elongated particle: three end-on classes (a peaked profile) and two
    side-on ones (a flat, wide profile), plus a junk class whose other terms are weak. The
    median profile is end-on (|correlation| 0.42 with side-on), but each side-on class has a
    trusted neighbour that looks alike; the junk class's profile (an annulus) resembles no
    trusted class."""
    r = np.arange(12.0)
    end_on, side_on = np.exp(-(r / 3) ** 2), (r < 9) * 1.0
    junk = np.exp(-((r - 5) / 1.2) ** 2)  # an annulus
    g = np.random.default_rng(0)
    profiles = np.stack([end_on] * 3 + [side_on] * 2 + [junk]) + 0.01 * g.normal(size=(6, 12))
    feats = dict(contrast=np.array([1.0] * 5 + [0.5]), centring=np.ones(6), size=np.ones(6),
                 radial_profiles=profiles)
    scores = score_classes(feats)
    assert (feats["profile"][:5] > 0.99).all() and (scores[:5] > 0.99).all()
    assert feats["profile"][5] < 0.5 and scores[5] < 0.25
    # the same side-on class alone has no look-alike: judged against the end-on ones
    lone = dict(feats, contrast=np.array([1.0] * 4 + [0.5, 0.5]))
    assert score_classes(lone)[3] < 0.7


def test_select_and_evaluate_commands(toy, capsys):
    sim, pred, _ = toy
    out = sim.parent / "sel"
    rc = cli_main(["select", "--i", str(sim / "classified.star"), "--averages",
                   str(sim / "averages.mrcs"), "--o", str(out)])
    assert rc == 0
    scores = read_star(str(out / "class_scores.star"))["classes"]
    s = scores.as_float("simcryoClassScore")
    assert (np.diff(s) <= 0).all()  # written best first
    selected = set(scores.as_int("rlnClassNumber")[scores.as_int("simcryoSelected") == 1])
    assert selected == {1, 2, 3, 4}
    kept = read_star(str(out / "particles.star"))["particles"].as_int("rlnClassNumber")
    assert set(kept) == selected and len(kept) == int(np.isin(pred, list(selected)).sum())
    ranked = np.array(mrcfile.open(str(out / "class_averages_ranked.mrcs")).data)
    assert ranked.shape == (6, 32, 32)
    report = sim.parent / "ev.json"
    rc = cli_main(["evaluate", "--i", str(sim / "classified.star"), "--truth",
                   str(sim / "particles.star"), "--averages", str(sim / "averages.mrcs"),
                   "--volume", str(sim / "volume.mrc"), "--selection",
                   str(out / "class_scores.star"), "--fidelity-view-step", "20",
                   "--o", str(report)])
    assert rc == 0
    c = json.load(open(report))["cleaning"]
    assert c["oracle"]["kept_classes"] == [1, 2, 3, 4]
    assert c["oracle"]["recall"] == 1.0 and c["oracle"]["contamination"] == 0.0
    assert c["selected"]["junk_rejected"] == 1.0
    assert c["oracle"]["fidelity"] > 0.3
    assert c["oracle"]["kmeans_floor_deg"] <= c["oracle"]["view_spread_deg"] + 1e-6
    assert c["oracle"]["view_spread_p90_deg"] >= c["oracle"]["view_spread_deg"]
    assert "oracle" in capsys.readouterr().out


def test_select_errors_are_one_line(toy, capsys):
    sim, _, _ = toy
    rc = cli_main(["select", "--i", str(sim / "classified.star"), "--o",
                   str(sim.parent / "sel2")])
    assert rc == 2
    assert "class averages not found" in capsys.readouterr().err
    rc = cli_main(["select", "--i", str(sim / "classified.star"), "--averages",
                   str(sim / "averages.mrcs"), "--o", str(sim.parent / "sel3"),
                   "--profile-trust", "1.5"])
    assert rc == 2
    assert "--profile-trust must be in [0, 1]" in capsys.readouterr().err
    rc = cli_main(["simulate", "--o", str(sim.parent / "x"), "--junk-fraction", "0.2",
                   "--junk-kinds", "empty,ice"])
    assert rc == 2
    assert "unknown --junk-kinds ice" in capsys.readouterr().err


class _Stack:
    """The slice of a ParticleSet that member_correlations reads."""

    def __init__(self, images, apix=3.0):
        self._images, self.n, self.box = images, images.shape[0], images.shape[-1]
        self.apix, self.ctf = apix, None

    def images(self, idx):
        return self._images[idx]


def test_member_correlations_follow_relion_poses():
    from simcryo.selection import member_correlations
    g = torch.Generator().manual_seed(0)
    avg = project(make_phantom(32, seed=1), euler_to_matrix([20.0], [50.0], [0.0]))
    n = 16
    psi = torch.rand(n, generator=g) * 360 - 180
    shift = torch.rand(n, 2, generator=g) * 4 - 2
    parts = transform_images(avg.expand(n, -1, -1), psi, shift)  # RELION: particle = T(avg)
    labels = np.zeros(n, dtype=np.int64)
    right = member_correlations(_Stack(parts.numpy()), labels, psi.numpy(), shift.numpy(),
                                avg.numpy(), radius=12.0)
    wrong = member_correlations(_Stack(parts.numpy()), labels, -psi.numpy(), shift.numpy(),
                                avg.numpy(), radius=12.0)
    assert right.min() > 0.97
    assert np.median(wrong) < 0.8  # the sign of psi matters: the convention is pinned


def test_consistency_sinks_a_class_of_blobs():
    from simcryo.selection import class_consistency, member_correlations
    from simcryo.simulation.realistic import blob_images
    g = torch.Generator().manual_seed(2)
    box, n = 32, 40
    views = [project(make_phantom(box, seed=1), euler_to_matrix([r], [t], [0.0]))[0]
             for r, t in ((0.0, 30.0), (90.0, 80.0))]
    blobs = blob_images(n, box, g)
    scale = float(torch.stack(views).std())
    noise = lambda: 2.0 * scale * torch.randn(n, box, box, generator=g)  # noqa: E731
    parts = torch.cat([views[0].expand(n, -1, -1) + noise(), views[1].expand(n, -1, -1) + noise(),
                       blobs * scale / float(blobs.std()) + noise()])
    labels = np.repeat(np.arange(3), n)
    avgs = torch.stack([parts[torch.as_tensor(labels == k)].mean(0) for k in range(3)])
    zeros = np.zeros(3 * n)
    corr = member_correlations(_Stack(parts.numpy()), labels, zeros, np.zeros((3 * n, 2)),
                               avgs.numpy(), radius=12.0)
    cons = class_consistency(corr, labels, 4)   # class 4 empty
    assert cons[3] == 0.0
    assert min(cons[:2]) > 1.5 * cons[2]        # the blob class is the inconsistent one
    feats = dict(contrast=np.ones(4), centring=np.ones(4), size=np.ones(4),
                 radial_profiles=np.tile(np.arange(5.0), (4, 1)), consistency=cons)
    assert score_classes(feats)[2] < score_classes(feats)[0]
    from simcryo.selection import ScoreParams
    off = score_classes(feats, ScoreParams(consistency_full=0))
    assert (off[:3] == 1.0).all()               # --consistency-full 0: the term is left out
    no_profile = dict(feats, radial_profiles=np.eye(4, 5))  # profiles alike none
    assert (score_classes(no_profile, ScoreParams(consistency_full=0, profile_full=0))[:3]
            == 1.0).all()                       # --profile-full 0: that term is left out


def test_select_uses_poses_when_the_star_has_them(toy, capsys):
    sim, pred, _ = toy
    blocks = read_star(str(sim / "classified.star"))
    t = blocks["particles"]
    t.set("rlnAnglePsi", t["simcryoTruePsi"])
    off = pred == 6   # the off-centre class was averaged without its shifts
    for axis in ("X", "Y"):
        v = t.as_float(f"simcryoTrueOrigin{axis}Angst")
        t.set(f"rlnOrigin{axis}Angst", np.where(off, 0.0, v).tolist())
    write_star(str(sim / "posed.star"), blocks)
    out = sim.parent / "sel_posed"
    rc = cli_main(["select", "--i", str(sim / "posed.star"), "--averages",
                   str(sim / "averages.mrcs"), "--o", str(out)])
    assert rc == 0
    scores = read_star(str(out / "class_scores.star"))["classes"]
    cons = dict(zip(scores.as_int("rlnClassNumber"), scores.as_float("simcryoConsistency")))
    assert min(cons[k] for k in (1, 2, 3, 4)) > cons[5]   # the empty picks' class
    assert json.load(open(out / "run.json"))["consistency"] == "used"
    rc = cli_main(["select", "--i", str(sim / "classified.star"), "--averages",
                   str(sim / "averages.mrcs"), "--o", str(sim.parent / "sel_unposed")])
    assert rc == 0
    assert "member consistency not used" in capsys.readouterr().out
    unposed = read_star(str(sim.parent / "sel_unposed" / "class_scores.star"))["classes"]
    assert "simcryoConsistency" not in unposed
