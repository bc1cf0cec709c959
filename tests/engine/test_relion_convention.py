"""The engine's 2D pose convention is RELION's.

Measured with RELION 3.1.3 (Debian package), `relion_stack_create --apply_transformation` and
`relion_refine` 2D classification: with x = column, y = row (box centre box//2) and
R(a) the rotation (x, y) -> (x cos a - y sin a, x sin a + y cos a), RELION aligns a particle
P onto its class average A as

    A(p) = P(R(-psi) p - origin)      (translate by +origin, then rotate by +psi)

so the forward model is P = A rotated by -psi, then translated by -origin. The first test pins
this down without RELION (a scipy reference of the measured map); the others re-measure it
against the RELION binaries when they are installed.
"""
import importlib.util
import os
import shutil
import subprocess

import mrcfile
import numpy as np
import pytest
import torch
from scipy import ndimage

from simcryo.image.geometry import align_images, transform_images
from simcryo.io import StarBlock, read_star, write_star

BOX = 48
APIX = 2.0
POSES = [(30.0, 3.0, -2.0), (-75.0, -4.0, 5.0), (120.0, 1.5, 2.5), (0.0, 2.0, 0.0),
         (90.0, 0.0, 0.0)]

needs_stack_create = pytest.mark.skipif(
    shutil.which("relion_stack_create") is None,
    reason="RELION 3.1 not installed (relion_stack_create not on PATH; run .ci/install_relion.sh)")
needs_refine = pytest.mark.skipif(
    shutil.which("relion_refine") is None,
    reason="RELION 3.1 not installed (relion_refine not on PATH; run .ci/install_relion.sh)")


def _coords(box=BOX):
    yy, xx = np.mgrid[0:box, 0:box].astype(np.float64)
    return xx - box // 2, yy - box // 2


def _asymmetric_image(box=BOX, variant=0):
    """No rotational or mirror symmetry, so a wrong sign cannot pass by accident."""
    x, y = _coords(box)

    def blob(x0, y0, s):
        return np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * s * s))

    if variant == 0:
        img = blob(8, 0, 2.2) + 0.6 * blob(0, 6, 1.6) + 0.35 * blob(-5, -7, 2.0)
    else:
        img = blob(0, 0, 4.0) + 0.8 * blob(-8, 4, 1.8)
    return img.astype(np.float32)


def relion_align_reference(image, psi_deg, origin_px):
    """RELION's measured alignment map A(p) = P(R(-psi) p - origin), cubic interpolation."""
    x, y = _coords(image.shape[-1])
    a = np.deg2rad(psi_deg)
    c, s = np.cos(a), np.sin(a)
    src_x = c * x + s * y - origin_px[0]
    src_y = -s * x + c * y - origin_px[1]
    centre = image.shape[-1] // 2
    return ndimage.map_coordinates(image.astype(np.float64), [src_y + centre, src_x + centre],
                                   order=3, mode="constant").astype(np.float32)


def _inner(img, radius=0.35):
    """Pixels well inside the box, away from edge/wrap effects of either interpolator."""
    x, y = _coords(img.shape[-1])
    return img[..., x ** 2 + y ** 2 < (radius * img.shape[-1]) ** 2]


def _rel_err(a, b, ref):
    return float(np.abs(_inner(a) - _inner(b)).max() / np.abs(ref).max())


def _batch(poses):
    psi = torch.tensor([p[0] for p in poses], dtype=torch.float32)
    shift = torch.tensor([[p[1], p[2]] for p in poses], dtype=torch.float32)
    return psi, shift


def _particles(poses, image):
    psi, shift = _batch(poses)
    stack = torch.from_numpy(image)[None].repeat(len(poses), 1, 1)
    return transform_images(stack, psi, shift).numpy()


def test_engine_forward_model_is_relions_measured_map():
    A = _asymmetric_image()
    P = _particles(POSES, A)
    for (psi, ox, oy), p in zip(POSES, P):
        back = relion_align_reference(p, psi, (ox, oy))
        assert _rel_err(back, A, A) < 0.1, (
            f"psi={psi} origin=({ox},{oy}): transform_images disagrees with RELION's pose meaning "
            "(RELION: particle = average rotated by -psi, then translated by -origin)")


def test_engine_align_is_relions_measured_map():
    rng = np.random.default_rng(1)
    P = np.stack([_asymmetric_image() + 0.02 * rng.standard_normal((BOX, BOX)).astype(np.float32)
                  for _ in POSES])
    psi, shift = _batch(POSES)
    ours = align_images(torch.from_numpy(P), psi, shift).numpy()
    for (ps, ox, oy), p, o in zip(POSES, P, ours):
        assert _rel_err(o, relion_align_reference(p, ps, (ox, oy)), P) < 0.1, (
            f"align_images(psi={ps}, shift=({ox},{oy})) is not RELION's alignment")


def test_a_wrong_sign_would_be_caught():
    A = _asymmetric_image()
    for psi, ox, oy in POSES[:3]:
        wrong = relion_align_reference(A, -psi, (-ox, -oy))
        right = relion_align_reference(A, psi, (ox, oy))
        assert _rel_err(wrong, right, A) > 0.3


def _write_relion31(folder, name, images, poses, extra=None):
    stack = os.path.join(folder, name + ".mrcs")
    with mrcfile.new(stack, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(images, dtype=np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = APIX
    n = len(images)
    optics = StarBlock({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                        "rlnImagePixelSize": [APIX], "rlnImageSize": [images.shape[-1]],
                        "rlnImageDimensionality": [2], "rlnVoltage": [300.0],
                        "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    cols = {"rlnImageName": [f"{i + 1:06d}@{name}.mrcs" for i in range(n)],
            "rlnOpticsGroup": [1] * n}
    if poses is not None:
        cols.update({"rlnAnglePsi": [p[0] for p in poses],
                     "rlnOriginXAngst": [p[1] * APIX for p in poses],
                     "rlnOriginYAngst": [p[2] * APIX for p in poses]})
    cols.update(extra or {})
    star = os.path.join(folder, name + ".star")
    write_star(star, {"optics": optics, "particles": StarBlock(cols)})
    return star


@needs_stack_create
def test_relion_stack_create_undoes_transform_images(tmp_path):
    A = _asymmetric_image()
    P = _particles(POSES, A)
    _write_relion31(str(tmp_path), "particles", P, POSES)
    subprocess.run(["relion_stack_create", "--i", "particles.star", "--o", "aligned",
                    "--apply_transformation"], cwd=tmp_path, check=True, capture_output=True)
    aligned = mrcfile.read(str(tmp_path / "aligned.mrcs"))
    assert aligned.shape == P.shape
    for pose, out in zip(POSES, aligned):
        assert _rel_err(out, A, A) < 0.1, (
            f"RELION does not map transform_images(A, {pose}) back to A")
    psi, shift = _batch(POSES)
    ours = align_images(torch.from_numpy(P), psi, shift).numpy()
    for pose, out, mine in zip(POSES, aligned, ours):
        assert _rel_err(out, mine, A) < 0.1, f"align_images differs from RELION for {pose}"


def _load_relion_driver():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "relion.py")
    spec = importlib.util.spec_from_file_location("simcryo_bench_relion", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wrap_deg(a):
    return (np.asarray(a) + 180.0) % 360.0 - 180.0


@needs_refine
def test_relion_refine_2d_poses_follow_the_same_convention(tmp_path):
    """relion_refine's psi/origin for particles made with transform_images equal the true pose
    up to the class average's own rotation and centre (one constant per class)."""
    rng = np.random.default_rng(0)
    per_class, box = 40, 40
    truth, images, poses = [], [], []
    for k in range(2):
        A = _asymmetric_image(box, variant=k)
        psi = rng.uniform(-180, 180, per_class)
        shift = rng.uniform(-2.5, 2.5, (per_class, 2))
        stack = torch.from_numpy(A)[None].repeat(per_class, 1, 1)
        P = transform_images(stack, torch.tensor(psi, dtype=torch.float32),
                             torch.tensor(shift, dtype=torch.float32)).numpy()
        images.append(P + 0.25 * rng.standard_normal(P.shape).astype(np.float32))
        truth += [k + 1] * per_class
        poses += [(a, s[0], s[1]) for a, s in zip(psi, shift)]
    images = np.concatenate(images)
    images = (images - images.mean()) / images.std()
    star = _write_relion31(str(tmp_path), "toy", images, None,
                           extra={"simcryoTrueClass": truth})
    relion = _load_relion_driver()
    res = relion.run_relion_2d(star, 2, str(tmp_path / "relion"), threads=2, iterations=8,
                               seed=0, ctf=False, particle_diameter_A=0.8 * box * APIX)
    truth = np.asarray(truth)
    true_psi = np.array([p[0] for p in poses])
    true_shift = np.array([[p[1], p[2]] for p in poses])
    checked = 0
    for k in np.unique(res["labels"]):
        members = res["labels"] == k
        major = np.bincount(truth[members]).argmax()
        sel = members & (truth == major)
        if sel.sum() < 20:
            continue
        d = _wrap_deg(res["psi"][sel] - true_psi[sel])
        offset = np.rad2deg(np.angle(np.mean(np.exp(1j * np.deg2rad(d)))))
        assert np.median(np.abs(_wrap_deg(d - offset))) < 6.0, (
            "RELION's psi minus the true psi is not constant within a class: opposite sign")
        # origin - shift = R(-psi) c for the class average's centre offset c
        a = np.deg2rad(res["psi"][sel])
        diff = res["shifts_px"][sel] - true_shift[sel]
        back = np.stack([np.cos(a) * diff[:, 0] - np.sin(a) * diff[:, 1],
                         np.sin(a) * diff[:, 0] + np.cos(a) * diff[:, 1]], 1)
        c = back.mean(0)
        resid = back - c
        assert np.median(np.hypot(resid[:, 0], resid[:, 1])) < 1.5, (
            "RELION's origin does not follow the engine's shift convention")
        checked += 1
    assert checked >= 1, f"RELION found no pure class: labels {np.bincount(res['labels'])}"


def test_relion_result_rows_are_matched_back_by_image_name(tmp_path):
    """RELION may reorder particles; the driver returns them in input order, shifts in px."""
    star = _write_relion31(str(tmp_path), "parts", np.zeros((6, 8, 8), np.float32), None)
    order = [3, 0, 5, 1, 4, 2]
    optics = StarBlock({"rlnOpticsGroup": [1], "rlnImagePixelSize": [APIX],
                        "rlnImageSize": [8]})
    rows = StarBlock({"rlnImageName": [f"{i + 1:06d}@parts.mrcs" for i in order],
                      "rlnClassNumber": [i % 3 + 1 for i in order],
                      "rlnAnglePsi": [10.0 * i for i in order],
                      "rlnOriginXAngst": [0.5 * i * APIX for i in order],
                      "rlnOriginYAngst": [-1.0 * i * APIX for i in order]})
    out = str(tmp_path / "run_it001_data.star")
    write_star(out, {"optics": optics, "particles": rows})
    labels, psi, shifts = _load_relion_driver().read_relion_result(out, star)
    np.testing.assert_array_equal(labels, [i % 3 + 1 for i in range(6)])
    np.testing.assert_allclose(psi, [10.0 * i for i in range(6)])
    np.testing.assert_allclose(shifts, [[0.5 * i, -1.0 * i] for i in range(6)])


@needs_refine
def test_relion_ctf_sign_is_the_engines(tmp_path):
    """Particles made with the engine's CTF (a bright object) must give RELION class averages
    that are bright too: with the opposite CTF sign RELION's CTF-corrected averages come out
    contrast-inverted. Compared through rotational averages (RELION picks its own frame)."""
    from simcryo.image.ctf import ctf_2d
    from simcryo.io.particles import CTFParams
    rng = np.random.default_rng(1)
    n = 80
    A = _asymmetric_image(variant=1)
    defocus = rng.uniform(8000.0, 15000.0, n)
    ctf = CTFParams(defocus, defocus, np.zeros(n), np.full(n, 300.0), np.full(n, 2.7),
                    np.full(n, 0.1), np.zeros(n), np.zeros(n))
    spec = torch.fft.rfft2(torch.from_numpy(A))[None] * ctf_2d(ctf, BOX, APIX, rfft=True)
    images = torch.fft.irfft2(spec, s=(BOX, BOX)).numpy()
    images = images + 0.2 * images.std() * rng.standard_normal(images.shape).astype(np.float32)
    images = (images - images.mean()) / images.std()
    star = _write_relion31(str(tmp_path), "ctf", images, None, extra={
        "rlnDefocusU": defocus.tolist(), "rlnDefocusV": defocus.tolist(),
        "rlnDefocusAngle": [0.0] * n, "rlnCtfBfactor": [0.0] * n, "rlnPhaseShift": [0.0] * n})
    relion = _load_relion_driver()
    res = relion.run_relion_2d(star, 2, str(tmp_path / "relion"), threads=2, iterations=6,
                               seed=0, ctf=True, particle_diameter_A=0.8 * BOX * APIX)
    averages = mrcfile.read(res["class_averages"])
    from simcryo.align.average import rotational_average
    truth = rotational_average(torch.from_numpy(A)[None])[0].numpy().ravel()
    populated = [k for k in range(2) if np.any(res["labels"] == k + 1)]
    for k in populated:
        ring = rotational_average(torch.from_numpy(averages[k].copy())[None])[0].numpy().ravel()
        cc = np.corrcoef(ring, truth)[0, 1]
        assert cc > 0.5, f"RELION's average {k + 1} correlates {cc:.2f} with the object"


@pytest.fixture(scope="module")
def posed_set(tmp_path_factory):
    """Simulated particles with known _simcryoTruePsi / _simcryoTrueOriginX/YAngst (CTF on,
    high SNR, 3 views) for the sign tests of `simcryo classify`."""
    from simcryo.commands.simulate import run as simulate
    from simcryo.simulation.simulate import SimulateConfig
    out = tmp_path_factory.mktemp("posed")
    cfg = SimulateConfig(o=str(out), box=32, classes=3, per_class=24, snr=3.0, batch=64,
                         seed=11)
    cfg.validate()
    simulate(cfg)
    return str(out / "particles.star")


@pytest.mark.parametrize("refine_iterations", [3, 0])  # the EM's poses, the class aligner's
def test_classify_writes_relion_psi(posed_set, tmp_path, refine_iterations):
    """Every classify path that writes _rlnAnglePsi / _rlnOriginX/YAngst gives RELION poses:
    the error against the true pose, modulo each class's own frame
    (simcryo.evaluation.metrics.pose_errors), is small; a negated psi gives ~90 degrees."""
    from simcryo.classify.config import ClassifyConfig
    from simcryo.commands.classify import run
    from simcryo.evaluation.metrics import pose_errors
    cfg = ClassifyConfig(i=posed_set, o=str(tmp_path / "o"), K=3, width=4, working_box=32,
                         batch_size=32, pretext_epochs=2, tta_rotations=2, knn=5,
                         scan_heads=2, scan_epochs=3, selflabel_epochs=0,
                         refine_iterations=refine_iterations, refine_align_iterations=2,
                         refine_angles=72, average_iterations=3, threads=1).validate()
    run(cfg)
    table = read_star(str(tmp_path / "o" / "particles.star"))["particles"]
    true_shift = np.stack([table.as_float("simcryoTrueOriginXAngst"),
                           table.as_float("simcryoTrueOriginYAngst")], 1)
    shift = np.stack([table.as_float("rlnOriginXAngst"), table.as_float("rlnOriginYAngst")], 1)
    # judged on the particles of each output class's majority view (the tiny network's
    # clustering may mix views; a mixed-in view has its own frame)
    cls, truth = table.as_int("rlnClassNumber"), table.as_int("simcryoTrueClass")
    major = np.array([np.bincount(truth[cls == c]).argmax() for c in cls])
    ang, sh, _ = pose_errors(cls, table.as_float("rlnAnglePsi"), shift,
                             table.as_float("simcryoTruePsi"), true_shift, mask=truth == major)
    assert np.nanmedian(ang) < 6.0, np.nanmedian(ang)
    assert np.nanmedian(sh) < 2.0 * APIX, np.nanmedian(sh)
