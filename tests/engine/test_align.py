"""Library tests of simcryo.align: rotation/translation recovery, 180-degree case, weights,
CTF and CTF-free class alignment."""
import numpy as np
import pytest
import torch

from simcryo.align.average import (ClassAccumulator, centre_of_mass, normalize_weights,
                                   rotational_average, spectra_to_images)
from simcryo.align.aligner import make_aligner, warp_to_reference, wrap_angle
from simcryo.align import ClassAligner, ClassAlignParams, ParticleSource
from simcryo.align.rings import AlignParams
from simcryo.align.scores import normalized_correlation
from simcryo.image.fourier import crop_spectrum, radial_index
from simcryo.evaluation.metrics import pose_errors
from simcryo.align.translate import correlation_peak, cross_correlate
from simcryo.image.fourier import fourier_shift
from simcryo.image.ctf import ctf_2d
from simcryo.evaluation.frc import frc
from simcryo.image.geometry import align_images, transform_images
from simcryo.io.particles import CTFParams

BOX = 64


pytestmark = pytest.mark.usefixtures("one_thread")


def _gauss(x0, y0, sigma, box=BOX):
    ax = torch.arange(box, dtype=torch.float32) - box // 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return torch.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma ** 2))


def asymmetric_image(box=BOX):
    """A compact, clearly asymmetric test object (no rotational symmetry)."""
    return (_gauss(0, 0, 7, box) + 0.8 * _gauss(10, 3, 3, box) - 0.5 * _gauss(-6, -9, 4, box)
            + 0.6 * _gauss(4, -12, 2.5, box))


def _angle_diff(a, b):
    return (np.asarray(a) - np.asarray(b) + 180.0) % 360.0 - 180.0


@pytest.mark.parametrize("method", ["rings", "magnitude"])
def test_known_rotation_and_shift_recovered(method):
    ref = asymmetric_image()[None]
    psi = torch.tensor([37.3, -121.7, 163.2, -4.4])
    shift = torch.tensor([[1.3, -2.2], [-3.1, 0.4], [0.7, 2.9], [2.2, 1.6]])
    parts = transform_images(ref.expand(4, BOX, BOX).contiguous(), psi, shift)
    aligner = make_aligner(AlignParams(method=method, inner_rounds=6))
    out = aligner(parts, ref, torch.zeros(4, dtype=torch.long))
    assert np.abs(_angle_diff(out.psi, psi)).max() < 0.5
    assert (out.shift - shift).norm(dim=1).max() < 0.1
    back = align_images(parts, out.psi, out.shift)
    rel = ((back - ref) ** 2).mean() / (ref ** 2).mean()
    assert rel < 0.01


def test_180_degree_rotation_resolved():
    """Fourier magnitudes cannot tell psi from psi + 180; both routes must still get it."""
    ref = asymmetric_image()[None]
    psi = torch.tensor([180.0, 0.0, -179.0, 90.0])
    shift = torch.tensor([[0.5, -1.0], [0.0, 0.0], [-1.5, 0.5], [2.0, 2.0]])
    parts = transform_images(ref.expand(4, BOX, BOX).contiguous(), psi, shift)
    for method in ("rings", "magnitude"):
        aligner = make_aligner(AlignParams(method=method, inner_rounds=6))
        out = aligner(parts, ref, torch.zeros(4, dtype=torch.long))
        assert np.abs(_angle_diff(out.psi, psi)).max() < 0.5, method


def test_per_particle_references():
    a, b = asymmetric_image(), torch.flip(asymmetric_image(), dims=[1])
    refs_img = torch.stack([a, b])
    labels = torch.tensor([0, 1, 1, 0])
    psi = torch.tensor([30.0, -60.0, 120.0, 10.0])
    shift = torch.tensor([[1.0, 0.0], [0.0, -1.0], [0.5, 0.5], [-1.0, 1.0]])
    parts = transform_images(refs_img[labels], psi, shift)
    out = make_aligner(AlignParams(inner_rounds=6))(parts, refs_img, labels)
    assert np.abs(_angle_diff(out.psi, psi)).max() < 0.5
    assert (out.shift - shift).norm(dim=1).max() < 0.1


def test_warp_matches_geometry_convention():
    img = asymmetric_image()[None].expand(3, BOX, BOX).contiguous()
    psi = torch.tensor([20.0, -75.0, 140.0])
    shift = torch.tensor([[1.0, 2.0], [-2.0, 0.5], [0.0, -1.5]])
    p = transform_images(img, psi, shift)
    ours = warp_to_reference(p, psi, shift)   # the same pose as geometry.align_images
    theirs = align_images(p, psi, shift)
    assert ((ours - theirs) ** 2).mean() < 1e-3 * (theirs ** 2).mean()


def test_subpixel_correlation_peak():
    img = asymmetric_image()[None]
    s = torch.tensor([[2.37, -1.61]])
    moved = torch.fft.irfft2(fourier_shift(torch.fft.rfft2(img), s), s=(BOX, BOX))
    cc = cross_correlate(torch.fft.rfft2(moved), torch.fft.rfft2(img))
    est, _ = correlation_peak(cc, max_shift=8)
    assert (est - s).abs().max() < 0.1


def test_weights_normalise_per_class():
    w = normalize_weights([0.9, 0.3, 0.0, 0.5, 0.5, 0.0], [0, 0, 0, 1, 1, 2], 3)
    sums = torch.zeros(3).index_add_(0, torch.tensor([0, 0, 0, 1, 1, 2]), w)
    assert torch.allclose(sums, torch.ones(3))
    assert w[2] == 0 and abs(float(w[0]) - 0.75) < 1e-6
    assert float(w[5]) == 1.0  # a class whose weights are all zero falls back to uniform


def test_rotational_average_and_centre_of_mass():
    img = asymmetric_image()[None]
    ra = rotational_average(img)
    rotated = transform_images(ra, torch.tensor([33.0]), torch.zeros(1, 2))
    assert ((rotated - ra)[0, 8:-8, 8:-8] ** 2).mean() < 1e-3 * (ra ** 2).mean()
    blob = _gauss(3.0, -2.0, 4.0)[None]
    com = centre_of_mass(blob)
    assert (com - torch.tensor([[3.0, -2.0]])).abs().max() < 0.2


def test_wiener_average_undoes_ctf():
    """Noise-free particles with different defoci: the Wiener average recovers the object."""
    n = 40
    rng = np.random.default_rng(1)
    obj = asymmetric_image()
    du = rng.uniform(8000, 20000, n)
    ctf = CTFParams(du, du, np.zeros(n), np.full(n, 300.0), np.full(n, 2.7), np.full(n, 0.1),
                    np.zeros(n), np.zeros(n))
    c = ctf_2d(ctf, BOX, 2.0, rfft=True)
    parts = torch.fft.irfft2(torch.fft.rfft2(obj)[None] * c, s=(BOX, BOX))
    acc = ClassAccumulator(1, BOX, torch.device("cpu"))
    acc.add(torch.fft.rfft2(parts) * c, torch.zeros(n, dtype=torch.long), torch.ones(n),
            torch.arange(n) % 2, c * c)
    avg = spectra_to_images(acc.corrected(eps_fraction=1e-3))[0]
    plain = parts.mean(0)
    err = lambda x: float(((x - obj) ** 2).mean() / (obj ** 2).mean())  # noqa: E731
    assert err(avg) < 0.05
    assert err(avg) < 0.2 * err(plain)


def _noisy_class_set(n, snr, ctf_on, seed):
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    obj = asymmetric_image()
    psi = torch.tensor(rng.uniform(-180, 180, n), dtype=torch.float32)
    shift = torch.tensor(rng.normal(0, 1.5, (n, 2)), dtype=torch.float32)
    clean = transform_images(obj[None].expand(n, BOX, BOX).contiguous(), psi, shift)
    ctf = None
    if ctf_on:
        du = rng.uniform(8000, 20000, n)
        ctf = CTFParams(du, du - 200, rng.uniform(0, 180, n), np.full(n, 300.0),
                        np.full(n, 2.7), np.full(n, 0.1), np.zeros(n), np.zeros(n))
        clean = torch.fft.irfft2(torch.fft.rfft2(clean) * ctf_2d(ctf, BOX, 2.0, rfft=True),
                                 s=(BOX, BOX))
    noise = torch.randn(clean.shape, generator=g) * torch.sqrt(clean.var() / snr)
    return (clean + noise).numpy(), psi.numpy(), shift.numpy(), ctf, obj


@pytest.mark.parametrize("ctf_on,ctf_mode", [(False, "flip"), (True, "flip"),
                                             (True, "multiply")])
def test_class_alignment_recovers_poses(ctf_on, ctf_mode):
    n = 300
    imgs, psi, shift, ctf, obj = _noisy_class_set(n, 0.5, ctf_on, seed=3)
    src = ParticleSource(lambda idx: imgs[idx], n, BOX, torch.device("cpu"), ctf=ctf, apix=2.0)
    params = ClassAlignParams(iterations=5, batch_size=128, align_box=32, trial_size=100,
                              ctf_mode=ctf_mode)
    al = ClassAligner(src, np.zeros(n, int), np.ones(n), 1, params, log=lambda m: None).run()
    ang, sh, _ = pose_errors(np.zeros(n), *al.poses(), psi, shift)
    assert np.median(ang) < 2.0
    assert np.median(sh) < 0.5
    # The average looks like the object (up to its free in-plane frame).
    out = make_aligner(AlignParams(inner_rounds=6))(al.averages[:1], obj[None])
    back = align_images(al.averages[:1], out.psi, out.shift)[0]
    corr = float(torch.corrcoef(torch.stack([back.flatten(), obj.flatten()]))[0, 1])
    assert corr > 0.9
    assert al.history and al.history[0]["particles_per_s"] > 0


def test_mask_radius_is_estimated_from_the_particles():
    """Without --mask-radius the mask and the outermost ring follow the particle's size."""
    rng = np.random.default_rng(5)
    radii = {}
    for sigma in (3.0, 7.0):
        clean = _gauss(0, 0, sigma)[None] * torch.as_tensor(rng.uniform(2, 4, (400, 1, 1)))
        imgs = (clean + torch.as_tensor(rng.standard_normal((400, BOX, BOX)))).float().numpy()
        src = ParticleSource(lambda idx: imgs[idx], 400, BOX, torch.device("cpu"))
        al = ClassAligner(src, np.zeros(400, int), np.ones(400), 1,
                          ClassAlignParams(align_box=32), log=lambda m: None)
        assert al.p.align.ring_radius == pytest.approx(al.mask_radius * 0.5)
        radii[sigma] = al.mask_radius
    assert 2 * 3.0 < radii[3.0] < radii[7.0] < BOX / 2 - 2
    fixed = ClassAligner(src, np.zeros(400, int), np.ones(400), 1,
                         ClassAlignParams(mask_radius=20.0), log=lambda m: None)
    assert fixed.mask_radius == 20.0 and fixed.p.align.ring_radius == 20.0


def test_solvent_flattening_removes_the_solvent_before_the_shell_filter():
    n = 60
    imgs, *_ = _noisy_class_set(n, 0.5, False, seed=6)
    src = ParticleSource(lambda idx: imgs[idx], n, BOX, torch.device("cpu"))
    ax = torch.arange(BOX, dtype=torch.float32) - BOX // 2
    far = (ax[:, None] ** 2 + ax[None, :] ** 2) > 25.0 ** 2
    outside, als = {}, {}
    for flatten in (True, False):
        params = ClassAlignParams(iterations=1, starts=1, trial_iterations=0, mask_radius=20.0,
                                  flatten_solvent=flatten)
        al = ClassAligner(src, np.zeros(n, int), np.ones(n), 1, params, log=lambda m: None)
        als[flatten] = al.run()
        outside[flatten] = float(al.averages[0][far].pow(2).mean().sqrt())
    # beyond the mask only the shell filter's spill is left (measured 0.21 of the solvent)
    assert outside[True] < 0.3 * outside[False]
    # the filter after the mask scales whole shells: the masked average's FRC with the
    # unfiltered masked average is 1 in every shell
    al = als[True]
    unfiltered = spectra_to_images(al.acc.corrected()) * al.mask
    curve = frc(al.averages, unfiltered)[0]
    assert float(curve[1:].min()) > 0.999


def test_reassign_moves_mislabelled_particles():
    n = 160
    a, b = asymmetric_image(), _gauss(0, 0, 5) + _gauss(12, 0, 3) + _gauss(-12, 0, 3)
    rng = np.random.default_rng(4)
    truth = np.repeat([0, 1], n // 2)
    psi = torch.tensor(rng.uniform(-180, 180, n), dtype=torch.float32)
    clean = transform_images(torch.stack([a, b])[truth], psi, torch.zeros(n, 2))
    imgs = (clean + 0.3 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(4)))
    labels = truth.copy()
    wrong = rng.choice(n, 12, replace=False)
    labels[wrong] = 1 - labels[wrong]
    src = ParticleSource(lambda idx: imgs.numpy()[idx], n, BOX, torch.device("cpu"))
    params = ClassAlignParams(iterations=3, reassign=True, trial_size=60, align_box=32)
    al = ClassAligner(src, labels, np.ones(n), 2, params, log=lambda m: None).run()
    assert al.moved >= 10
    assert (al.labels.numpy() == truth).mean() > 0.97


def test_normalized_correlation_bounds():
    img = torch.fft.rfft2(asymmetric_image()[None])
    assert abs(float(normalized_correlation(img, img)[0]) - 1.0) < 1e-4
    assert abs(float(normalized_correlation(img, -img)[0]) + 1.0) < 1e-4


def test_crop_spectrum_matches_fourier_crop():
    from simcryo.image.fourier import fourier_crop
    img = asymmetric_image()[None]
    ours = torch.fft.irfft2(crop_spectrum(torch.fft.rfft2(img), 32), s=(32, 32))
    ref = fourier_crop(img, 32)
    assert ((ours - ref) ** 2).mean() < 1e-3 * (ref ** 2).mean()


def test_global_check_recovers_particles_far_from_their_pose():
    """Started 6 px from their centre, noisy particles are turned the wrong way by the ring
    peak alone (about 2 in 3 here); the coarse-grid candidates of the global check recover
    them all."""
    g = torch.Generator().manual_seed(5)
    ref = asymmetric_image()[None]
    psi = torch.rand(64, generator=g) * 360 - 180
    shift = torch.randn(64, 2, generator=g)
    parts = transform_images(ref.expand(64, BOX, BOX).contiguous(), psi, shift)
    parts = parts + 0.5 * parts.std() * torch.randn(parts.shape, generator=g)
    start = shift + torch.tensor([6.0, 0.0])
    errors = {}
    for name, params in (("plain", AlignParams(candidates=1)),
                         ("tested", AlignParams(candidates=1, global_step=10.0))):
        out = make_aligner(params)(parts, ref, torch.zeros(64, dtype=torch.long), shift0=start)
        errors[name] = np.abs(_angle_diff(out.psi, psi))
    assert np.mean(errors["tested"] > 10) <= 0.02 and np.median(errors["tested"]) < 1.5
    assert np.mean(errors["plain"] > 10) > 0.3


def test_candidate_angles_include_the_half_turn_of_the_best_peak():
    from simcryo.align.rings import _candidate_angles
    L = 360
    t = torch.arange(L, dtype=torch.float32)
    curve = (torch.cos(torch.deg2rad(t - 40.0)) + 0.5 * torch.cos(torch.deg2rad(2 * t)))[None]
    angles = _candidate_angles(curve, 2)[0].tolist()   # two peaks (near 23 and 193) + half turn
    best = float(t[curve[0].argmax()])
    assert len(angles) == 3 and abs(angles[0] - best) < 1e-3
    assert abs(angles[2] - (best + 180.0) % 360.0) < 1e-3


def test_grid_search_turns_references_as_the_warp_turns_particles():
    """The global check's grid search turns the references instead of the particles: on
    particles at exact grid angles it must find those angles and the shifts."""
    from simcryo.align.rings import References, _best_candidate
    g = torch.Generator().manual_seed(3)
    ref = asymmetric_image()[None]
    grid_psi = torch.arange(-180.0, 180.0, 15.0)
    psi = grid_psi[torch.randint(0, len(grid_psi), (48,), generator=g)]
    shift = torch.randn(48, 2, generator=g) * 2
    parts = transform_images(ref.expand(48, BOX, BOX).contiguous(), psi, shift)
    params = AlignParams(global_step=15.0, ring_radius=28.0)
    refs = References(ref, params)
    start = shift + torch.randn(48, 2, generator=g)   # the search is about a rough centre
    got_psi, got_shift = _best_candidate(parts, refs, torch.zeros(48, dtype=torch.long), start,
                                         refs.max_shift())
    assert np.abs(_angle_diff(got_psi, psi)).max() < 1e-3
    # half-box correlation: sub-pixel there is about a pixel here
    assert (got_shift - shift).norm(dim=1).max() < 1.0


def test_refinement_round_stays_on_the_chosen_peak():
    """After the candidate test picks a peak, the refinement reads the ring curve near that
    peak only, even where another peak (the rejected one) is higher."""
    from simcryo.align.rings import _local_peak
    L = 1024
    t = torch.arange(L, dtype=torch.float32) * 360.0 / L
    curve = (torch.exp(-((t - 50.3) / 4) ** 2) * 0.6 + torch.exp(-((t - 230.0) / 4) ** 2))[None]
    got = _local_peak(curve, torch.tensor([47.0]), 10.0)
    assert abs(float(got) - 50.3) < 0.1
    got = _local_peak(curve, torch.tensor([-133.0]), 10.0)   # 227 deg, the higher peak
    assert abs(float(got) - (230.0 - 360.0)) < 0.1


def test_local_refinement_reaches_off_grid_poses():
    """ExhaustiveAligner.refine from poses ~1 deg / ~0.7 px off: the true angles lie half
    way between the 1-degree grid angles, so a refinement that snapped to the grid (or kept
    the start) would be off by >= 0.5 deg. Noise-free, the vertex of the three exact peaks
    is within 0.01 deg (the interpolated map peaks, or one shift for the three angles,
    left 0.1-0.19 deg on some of these particles)."""
    from simcryo.align import ExhaustiveAligner, ExhaustiveParams
    g = torch.Generator().manual_seed(7)
    ref = asymmetric_image()[None]
    n = 24
    psi = torch.randint(-170, 170, (n,), generator=g).float() + 0.5
    shift = torch.randn(n, 2, generator=g)
    parts = transform_images(ref.expand(n, BOX, BOX).contiguous(), psi, shift)
    start_psi = psi + torch.where(torch.arange(n) % 2 == 0, 1.1, -0.9)
    start_shift = shift + torch.randn(n, 2, generator=g).clamp(-1, 1) * 0.7
    refiner = ExhaustiveAligner(ExhaustiveParams(n_angles=360, max_shift=2.0))
    prepared = refiner.prepare(ref)
    zero = torch.zeros(n, dtype=torch.long)
    out = refiner.refine(parts, prepared, zero, start_psi, start_shift)
    out = refiner.refine(parts, prepared, zero, out.psi, out.shift)
    assert np.abs(_angle_diff(out.psi, psi)).max() < 0.05
    assert (out.shift - shift).norm(dim=1).max() < 0.05
    assert out.score.min() > 0.99   # normalised: the references are the particles' own


def test_class_local_refinement_sharpens_poses():
    """ClassAligner.local_refinement (exact averages, then the local refinement) lowers the
    error of poses scattered about the truth, and records each cycle."""
    n = 200
    imgs, psi, shift, ctf, _ = _noisy_class_set(n, 0.5, True, seed=8)
    src = ParticleSource(lambda idx: imgs[idx], n, BOX, torch.device("cpu"), ctf=ctf, apix=2.0)
    rng = np.random.default_rng(8)
    start_psi = psi + rng.normal(0, 1.5, n)
    start_shift = shift + rng.normal(0, 0.4, (n, 2))
    al = ClassAligner(src, np.zeros(n, int), np.ones(n), 1,
                      ClassAlignParams(refine_cycles=2, batch_size=64), log=lambda m: None)
    al.psi = torch.tensor(start_psi, dtype=torch.float32)
    al.shift = torch.tensor(start_shift, dtype=torch.float32)
    al.local_refinement()
    before, sh_before, _ = pose_errors(np.zeros(n), start_psi, start_shift, psi, shift)
    after, sh_after, _ = pose_errors(np.zeros(n), *al.poses(), psi, shift)
    assert np.median(after) < 0.6 * np.median(before)
    assert np.median(sh_after) < 0.8 * np.median(sh_before)
    assert len(al.refine_history) == 2 and al.refine_history[0]["seconds"] > 0


@pytest.mark.parametrize("n,radius", [(64, 16.0), (32, 8.0), (64, 2.0), (64, 5.7), (32, 15.5)])
def test_windowed_peak_is_the_full_maps_peak(n, radius):
    """correlation_peak_of (only the map's window about the disc is transformed and
    searched) gives correlation_peak's shift and value on the full map, for broadcast
    operands too; 32 px at 15.5 px leaves no window (the full-map path)."""
    from simcryo.align.translate import correlation_peak_of
    g = torch.Generator().manual_seed(4)
    ref = torch.randn(6, n, n, generator=g)
    img = torch.roll(ref, (3, -2), (-2, -1)) + 0.7 * torch.randn(3, 6, n, n, generator=g)
    a, r = torch.fft.rfft2(img), torch.fft.rfft2(ref)
    want_shift, want_peak = correlation_peak(cross_correlate(a, r).reshape(-1, n, n), radius)
    shift, peak = correlation_peak_of(a, r, radius)
    assert torch.allclose(shift, want_shift, atol=1e-4)
    assert torch.allclose(peak, want_peak, rtol=1e-5, atol=1e-5 * float(want_peak.abs().max()))
    assert float(want_shift.norm(dim=1).max()) <= radius + 1.0


@pytest.mark.parametrize("max_shift", [2.0, 3.0, 5.0])
def test_windowed_subpixel_peak_is_the_full_maps(max_shift):
    """exhaustive._peaks from the maps' window (margin 2: a peak on the disc's edge with a
    half-pixel offset rounds to one pixel beyond it) equals _subpixel_peak on the full
    maps; the peaks on the edge of the disc are included (random maps)."""
    from simcryo.align.exhaustive import _peaks, _subpixel_peak
    g = torch.Generator().manual_seed(9)
    b, nf, n = 40, 3, 64
    xf = torch.fft.rfft2(torch.randn(b, n, n, generator=g))
    ref = torch.fft.rfft2(torch.randn(b, nf, n, n, generator=g))
    d, peak = _peaks(xf, ref, max_shift)
    cc = cross_correlate(xf[:, None], ref).view(b * nf, n, n)
    want_d, want_peak = _subpixel_peak(cc, max_shift)
    assert torch.allclose(d.view(-1, 2), want_d, atol=1e-4)
    assert torch.allclose(peak.view(-1), want_peak, rtol=1e-4,
                          atol=1e-5 * float(want_peak.abs().max()))
    assert float(want_d.norm(dim=1).max()) > max_shift - 0.5   # edge peaks were tested


def test_search_chunks_do_not_change_the_poses():
    """ClassAlignParams.search_chunk only sets how many particles are searched at once: a
    pass in chunks of 16 gives the poses and averages of the whole batch at once."""
    n = 96
    imgs, _, _, ctf, _ = _noisy_class_set(n, 0.5, True, seed=5)
    out = []
    for chunk in (0, 16):
        src = ParticleSource(lambda idx: imgs[idx], n, BOX, torch.device("cpu"), ctf=ctf,
                             apix=2.0)
        al = ClassAligner(src, np.zeros(n, int), np.ones(n), 1,
                          ClassAlignParams(batch_size=64, search_chunk=chunk),
                          log=lambda m: None)
        al.centre()
        al.small = rotational_average(al.small) + 0.1 * torch.as_tensor(imgs[:1])
        al.iterate()
        al.iterate()
        out.append((al.psi.clone(), al.shift.clone(), al.small.clone()))
    (psi0, sh0, avg0), (psi1, sh1, avg1) = out
    assert np.abs(_angle_diff(psi0, psi1)).max() < 1e-3
    assert (sh0 - sh1).abs().max() < 1e-4
    assert (avg0 - avg1).abs().max() < 1e-4 * avg0.abs().max()


def test_em_scores_are_the_same_in_any_chunking():
    """ExhaustiveAligner.scores in chunks of a few particles (the memory bound) gives the
    scores of one pass, with and without per-particle classes and CTF, and each particle's
    best cell is its true pose (a grid cell) against its own reference."""
    from simcryo.align import ExhaustiveAligner, ExhaustiveParams
    g = torch.Generator().manual_seed(3)
    refs = torch.stack([asymmetric_image(), asymmetric_image().flip(-1),
                        asymmetric_image().transpose(0, 1)])
    n = 10
    lab = torch.arange(n) % 3
    psi = (torch.randint(0, 36, (n,), generator=g) * 10.0 - 180.0)
    whole = ExhaustiveAligner(ExhaustiveParams(n_angles=36, max_shift=2.0))
    shift = whole.shifts()[torch.randint(0, len(whole.shifts()), (n,), generator=g)]
    parts = transform_images(refs[lab], psi, shift)
    du = np.linspace(10000, 20000, n)
    ctf = ctf_2d(CTFParams(du, du, np.zeros(n), np.full(n, 300.0), np.full(n, 2.7),
                           np.full(n, 0.1), np.zeros(n), np.zeros(n)), BOX, 2.0, rfft=True).abs()
    classes = torch.stack([lab, (lab + 1) % 3], 1)
    prepared = whole.prepare(refs)
    one = ExhaustiveParams(n_angles=36, max_shift=2.0, chunk_values=36 * BOX * BOX)
    for c, cls in ((None, None), (ctf, None), (ctf, classes)):
        cc, power = whole.scores(parts, prepared, ctf=c, classes=cls)
        cc1, power1 = ExhaustiveAligner(one).scores(parts, prepared, ctf=c, classes=cls)
        torch.testing.assert_close(cc1, cc, rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(power1, power)
    cc, power = whole.scores(parts, prepared, classes=classes)
    score = (cc - 0.5 * power[..., None])[:, 0].flatten(1)   # own class
    cell = score.argmax(1)
    s = len(whole.shifts())
    torch.testing.assert_close(whole.psi()[cell // s], wrap_angle(psi))
    torch.testing.assert_close(whole.shifts()[cell % s], shift)


def _ctf_class(n, snr, seed):
    """n noisy particles of a blob-like object at the identity pose, defocus 0.8-3.8 um
    (amplitude contrast 0.1, so the CTF damps the low frequencies), with the true
    per-particle spectral SNR per shell (CTF included)."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    obj = _gauss(0, 0, 8) + 0.5 * _gauss(8, 4, 4)
    du = rng.uniform(8000, 38000, n)
    ctf = CTFParams(du, du, np.zeros(n), np.full(n, 300.0), np.full(n, 2.7), np.full(n, 0.1),
                    np.zeros(n), np.zeros(n))
    c = ctf_2d(ctf, BOX, 2.0, rfft=True)
    clean = torch.fft.irfft2(torch.fft.rfft2(obj)[None] * c, s=(BOX, BOX))
    sigma = float(clean.std()) / np.sqrt(snr)
    parts = clean + sigma * torch.randn(clean.shape, generator=g)
    power = (torch.fft.rfft2(clean).abs() ** 2).mean(0).flatten()
    rad = radial_index(BOX, torch.device("cpu")).flatten().clamp(max=BOX // 2)
    shells = torch.zeros(BOX // 2 + 1).index_add_(0, rad, power) / torch.bincount(rad)
    acc = ClassAccumulator(1, BOX, torch.device("cpu"))
    acc.add(torch.fft.rfft2(parts) * c, torch.zeros(n, dtype=torch.long), torch.ones(n),
            torch.arange(n) % 2, c * c)
    return acc, obj, shells / (sigma ** 2 * BOX * BOX)


def test_prior_wiener_restores_a_small_ctf_class():
    """The data-wide prior filter (average_filter 'data') of 30 CTF-modulated particles at
    SNR 0.05: with the true spectral SNR it is closer to the object than the half-set
    filter, and than the same filter with the prior 30x too high or too low (so the
    regulariser has the Wiener scale, not just some smoothing); with an infinite SNR it is
    the plain CTF-corrected mean."""
    acc, obj, ssnr = _ctf_class(30, 0.05, seed=0)
    err = lambda x: float(((x - obj) ** 2).mean() / (obj ** 2).mean())  # noqa: E731
    prior = err(spectra_to_images(acc.prior_wiener(ssnr))[0])
    assert prior < err(spectra_to_images(acc.wiener())[0])
    assert prior < err(spectra_to_images(acc.prior_wiener(ssnr * 30))[0])
    assert prior < err(spectra_to_images(acc.prior_wiener(ssnr / 30))[0])
    plain = acc.num.sum(0) / acc.den.sum(0)
    huge = acc.prior_wiener(torch.full((BOX // 2 + 1,), 1e9))
    assert torch.allclose(huge, plain, rtol=1e-4, atol=1e-6 * float(plain.abs().max()))
