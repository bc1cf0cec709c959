"""simcryo classify: outputs, determinism, resume, learning on an easy set, bad inputs.

Tiny configurations (4-px-wide ResNet, 16 px working box, a few epochs) keep every run to a
few seconds; they test correctness, not accuracy (benchmarks/classify.py measures that)."""
import json
import os

import mrcfile
import numpy as np
import pytest
import torch

from simcryo.classify.augment import Augmenter
from simcryo.classify.checkpoint import Checkpoint
from simcryo.classify.config import ClassifyConfig
from simcryo.classify.neighbors import knn_cosine, neighbor_purity
from simcryo.classify.preprocess import CACHES, Geometry
from simcryo.classify.stages import em_mask_radius
from simcryo.classify.pretext import nt_xent
from simcryo.classify.scan import scan_loss
from simcryo.commands.classify import run
from simcryo.commands.simulate import run as simulate
from simcryo.errors import SimcryoError
from simcryo.image.geometry import rotate_images
from simcryo.io import read_star
from simcryo.io.mrc import write_stack
from simcryo.simulation.simulate import SimulateConfig

TINY = dict(K=3, width=4, working_box=16, batch_size=32, pretext_epochs=2, tta_rotations=2,
            knn=5, scan_heads=2, scan_epochs=3, selflabel_epochs=2, average_iterations=1,
            refine_iterations=2, refine_align_iterations=1, refine_angles=12, threads=1)


@pytest.fixture(scope="module")
def star(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    cfg = SimulateConfig(o=str(out), box=32, classes=3, per_class=16, snr=1.0, batch=64, seed=3)
    cfg.validate()
    simulate(cfg)
    return str(out / "particles.star")


def _cfg(inp, out, **kw):
    values = dict(TINY, i=str(inp), o=str(out))
    values.update(kw)
    return ClassifyConfig(**values).validate()


class Interrupted(Exception):
    """A killed run, simulated by `_interrupt_after`."""


def _interrupt_after(monkeypatch, saves):
    """Make the run die right after its `saves`-th checkpoint write."""
    real, count = Checkpoint.save, [0]

    def save(self, state, **models):
        real(self, state, **models)
        count[0] += 1
        if count[0] >= saves:
            raise Interrupted(f"stopped after {saves} checkpoints")
    monkeypatch.setattr(Checkpoint, "save", save)


def _stack(path, images, apix=2.0):
    write_stack(str(path), np.asarray(images, np.float32), apix)
    return str(path)


def test_outputs_follow_the_contract(star, tmp_path):
    res = run(_cfg(star, tmp_path / "o"))
    o = tmp_path / "o"
    n = 48
    probs = np.load(o / "probabilities.npy")
    assert probs.shape == (n, 3)
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5) and (probs >= 0).all()
    feats = np.load(o / "features.npy")
    nb = np.load(o / "neighbors.npy")
    assert feats.shape[0] == n and nb.shape == (n, 5)
    assert not (nb == np.arange(n)[:, None]).any()
    # most similar first, by the rotational similarity of the invariant encoder's inputs
    rot = np.load(o / "rotational_neighbors.npy")
    assert np.array_equal(nb, rot[:, :5])
    inp = read_star(star)["particles"]
    table = read_star(str(o / "particles.star"))["particles"]
    assert table.n_rows == n
    # every input row in input order, input columns kept
    assert list(table["simcryoTruePsi"]) == list(inp["simcryoTruePsi"])
    cls = table.as_int("rlnClassNumber")
    assert cls.min() >= 1 and cls.max() <= 3
    assert np.array_equal(cls - 1, probs.argmax(1))
    assert np.allclose(table.as_float("rlnMaxValueProbDistribution"), probs.max(1), atol=1e-5)
    for label in ("rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"):
        assert np.isfinite(table.as_float(label)).all()
    with mrcfile.open(o / "class_averages.mrcs", permissive=True) as m:
        assert m.data.shape == (3, 32, 32) and np.isfinite(m.data).all()
    info = json.loads((o / "run.json").read_text())
    assert info["config"]["K"] == 3 and info["seed"] == 0
    scores = np.array(info["class_scores"])  # classes numbered best first
    assert len(scores) == 3 and (np.diff(scores) <= 0).all()
    assert info["classes_from"].startswith("the EM refinement") and \
        "invariant encoder" in info["classes_from"]
    assert len(info["curves"]["pretext_loss"]) == 2
    assert info["pretext_images_per_s"] > 0
    assert "acc" in info["metrics"] and "neighbor_purity@10" in info["metrics"] or \
        "neighbor_purity@5" in info["metrics"]
    assert not os.path.exists(o / "preprocessed.f32")  # cache removed when done
    assert res["labels"].shape == (n,)


def test_resnet_encoder_neighbours_are_its_features_nearest(star, tmp_path):
    run(_cfg(star, tmp_path / "o", encoder="resnet"))
    feats = np.load(tmp_path / "o" / "features.npy")
    nb = np.load(tmp_path / "o" / "neighbors.npy")
    sims = np.einsum("nd,nkd->nk", feats, feats[nb])  # most similar first
    assert (np.diff(sims, axis=1) <= 1e-5).all()
    assert not (tmp_path / "o" / "invariants.npy").exists()


def test_same_seed_same_result_other_seed_differs(star, tmp_path):
    a = run(_cfg(star, tmp_path / "a"))
    b = run(_cfg(star, tmp_path / "b"))
    c = run(_cfg(star, tmp_path / "c", seed=5))
    assert np.array_equal(a["probabilities"], b["probabilities"])
    assert np.array_equal(a["features"], b["features"])
    assert not np.array_equal(a["features"], c["features"])


@pytest.mark.parametrize("stop", [1, 5, 7, 10])  # inside pretext, scan, self-label, refine
def test_resume_gives_the_uninterrupted_result(star, tmp_path, stop, monkeypatch):
    full = run(_cfg(star, tmp_path / "full"))
    _interrupt_after(monkeypatch, stop)
    with pytest.raises(Interrupted):
        run(_cfg(star, tmp_path / "part"))
    monkeypatch.undo()
    resumed = run(_cfg(star, tmp_path / "part", resume=True))
    assert np.array_equal(full["features"], resumed["features"])
    assert np.allclose(full["probabilities"], resumed["probabilities"], atol=1e-6)
    assert np.allclose(full["psi"], resumed["psi"]) and np.allclose(full["shift"], resumed["shift"])


def test_resume_with_a_new_K_reuses_the_network_and_equals_a_fresh_run(star, tmp_path,
                                                                         capsys):
    """The resume contract (simcryo.classify.checkpoint): a changed parameter recomputes from
    the first stage it affects; what comes before is reused, not retrained."""
    run(_cfg(star, tmp_path / "p"))
    feats = tmp_path / "p" / "features.npy"
    before = os.stat(feats).st_mtime_ns
    capsys.readouterr()
    resumed = run(_cfg(star, tmp_path / "p", resume=True, K=4))
    out = capsys.readouterr().out
    assert ("[classify] resume: reusing preprocess, pretext, features; recomputing from scan "
            "(changed: K 3 -> 4)") in out
    assert "[pretext]" not in out and os.stat(feats).st_mtime_ns == before
    fresh = run(_cfg(star, tmp_path / "fresh", K=4))
    assert resumed["probabilities"].shape == (48, 4)
    assert np.array_equal(fresh["features"], resumed["features"])
    assert np.array_equal(fresh["probabilities"], resumed["probabilities"])
    assert np.array_equal(fresh["averages"], resumed["averages"])
    a = json.loads((tmp_path / "p" / "run.json").read_text())
    b = json.loads((tmp_path / "fresh" / "run.json").read_text())
    assert a["metrics"] == b["metrics"] and a["config"]["K"] == 4
    assert a["curves"] == b["curves"]


def test_wider_em_cache_keeps_the_pixel_size_and_masks_wider():
    base = Geometry(128, 2.0, 20.0, 32)
    wide = base.widened(1.5)
    assert wide.window >= 2 * 20.0 * 1.5 and wide.window % 2 == 0 and wide.working_box % 2 == 0
    assert abs(wide.work_apix - base.work_apix) <= 0.05 * base.work_apix
    assert em_mask_radius(base) == pytest.approx(base.work_radius)
    assert em_mask_radius(wide) == pytest.approx(min(1.5 * wide.work_radius,
                                                     wide.working_box / 2 - 3))
    assert em_mask_radius(wide) > 1.4 * em_mask_radius(base) * wide.scale / base.scale
    with pytest.raises(SimcryoError, match="--refine-mask-scale"):
        _cfg("x", "y", refine_mask_scale=0.8)


def test_resume_with_a_wider_em_mask_recomputes_the_em_on_its_own_cache(star, tmp_path,
                                                                        capsys):
    """refine_mask_scale > 1: the EM alone runs on a second cache; a resume that changes it
    recomputes from the refinement and equals a fresh run; both caches are removed at the
    end."""
    run(_cfg(star, tmp_path / "p"))
    capsys.readouterr()
    resumed = run(_cfg(star, tmp_path / "p", resume=True, refine_mask_scale=1.4))
    out = capsys.readouterr().out
    assert "recomputing from refine (changed: refine_mask_scale 1 -> 1.4)" in out
    assert "[classify] the EM's cache: crop " in out
    fresh = run(_cfg(star, tmp_path / "fresh", refine_mask_scale=1.4))
    for key in ("features", "probabilities", "psi", "shift", "averages"):
        np.testing.assert_array_equal(fresh[key], resumed[key], err_msg=key)
    curves = [json.loads((tmp_path / d / "run.json").read_text())["curves"]["refine_loglik"]
              for d in ("p", "fresh")]
    assert curves[0] == curves[1]
    run(_cfg(star, tmp_path / "default"))
    default = json.loads((tmp_path / "default" / "run.json").read_text())["curves"]
    assert default["refine_loglik"] != curves[1]  # the EM saw other images
    assert not any((tmp_path / d / name).exists() for d in ("p", "fresh", "default")
                   for name in CACHES)


def test_resume_without_a_checkpoint_starts_fresh(star, tmp_path, capsys):
    res = run(_cfg(star, tmp_path / "new", resume=True))
    assert "no checkpoint.pt" in capsys.readouterr().out and res["labels"].shape == (48,)


def test_pretext_loss_decreases_on_an_easy_set(tmp_path):
    # two very different shapes, no noise: contrastive learning must make progress
    rng = np.random.default_rng(0)
    box = 32
    yy, xx = np.mgrid[:box, :box] - box // 2
    bar = ((np.abs(yy) < 2) & (np.abs(xx) < 9)).astype(np.float32)
    blob = np.exp(-((yy - 5) ** 2 + (xx + 4) ** 2) / 8.0).astype(np.float32)
    imgs = np.stack([bar if i % 2 else blob for i in range(64)])
    imgs += 0.05 * rng.standard_normal(imgs.shape).astype(np.float32)
    src = _stack(tmp_path / "easy.mrcs", imgs)
    res = run(_cfg(src, tmp_path / "o", K=2, pretext_epochs=8, width=8, mask_diameter=40))
    loss = res["curves"]["pretext_loss"]
    assert np.mean(loss[-2:]) < loss[0] - 0.1


def test_bad_inputs(star, tmp_path):
    with pytest.raises(SimcryoError, match="K must be at least 2"):
        _cfg(star, tmp_path / "o", K=1)
    with pytest.raises(SimcryoError, match="larger than the number of particles"):
        run(_cfg(star, tmp_path / "o", K=100))
    rng = np.random.default_rng(0)
    imgs = rng.standard_normal((10, 32, 32)).astype(np.float32)
    const = imgs.copy()
    const[4] = 0.0
    with pytest.raises(SimcryoError, match="particle 5 is empty or constant"):
        run(_cfg(_stack(tmp_path / "c.mrcs", const), tmp_path / "o2"))
    nan = imgs.copy()
    nan[2, 3, 3] = np.nan
    with pytest.raises(SimcryoError, match="NaN"):
        run(_cfg(_stack(tmp_path / "n.mrcs", nan), tmp_path / "o3"))
    with pytest.raises(SimcryoError, match="too small"):
        run(_cfg(_stack(tmp_path / "t.mrcs", imgs[:, :12, :12]), tmp_path / "o4"))
    with pytest.raises(SimcryoError, match="no output folder"):
        ClassifyConfig(i=star).validate()


def test_cli_reports_bad_input_in_one_line(star, tmp_path, capsys):
    from simcryo.cli import main
    rc = main(["classify", "--i", star, "--K", "1", "--o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("simcryo classify: error:")


def test_rotation_convention_and_augmenter_shapes():
    x = torch.zeros(1, 16, 16)
    x[0, 8, 12] = 1.0  # a point on +x
    y = rotate_images(x, torch.tensor([90.0]), mode="bilinear")[0]
    # rotating by +90 deg moves +x to +y (row index grows): counter-clockwise in (x, y)
    r, c = divmod(int(y.argmax()), 16)
    assert (r, c) == (12, 8)
    cfg = ClassifyConfig()
    aug = Augmenter(cfg, 16, 6.0, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    v = aug(torch.randn(5, 1, 16, 16), g)
    assert v.shape == (5, 1, 16, 16) and torch.isfinite(v).all()
    assert v[:, 0, 0, 0].abs().max() == 0  # outside the mask


def test_losses_and_neighbours():
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    assert nt_xent(z, z, 0.2) < nt_xent(z, z.roll(1, 0), 0.2)
    p = torch.softmax(torch.randn(1, 16, 4), -1)
    total, cons, ent = scan_loss(p, p, 1.0)
    assert total.shape == (1,) and ent > 0
    feats = np.repeat(np.eye(4, dtype=np.float32), 5, axis=0) + 0.01 * np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    nb, sim = knn_cosine(feats, 4, block=7)
    labels = np.repeat(np.arange(4), 5)
    assert neighbor_purity(nb, labels, 4) == 1.0
    assert (np.diff(sim, axis=1) <= 1e-6).all()


def test_neighbours_and_head_losses_are_the_same_in_any_batching(monkeypatch):
    """knn_cosine with its similarity budget down to one row per block, and the SCAN head
    losses over anchor batches of 3, equal the one-pass values (the memory bounds change
    no result)."""
    from simcryo.classify import neighbors
    from simcryo.classify.scan import evaluate_heads, make_heads
    rng = np.random.default_rng(4)
    feats = rng.standard_normal((40, 6)).astype(np.float32)
    nb, sim = knn_cosine(feats, 5)
    monkeypatch.setattr(neighbors, "BLOCK_VALUES", 40)
    nb1, sim1 = knn_cosine(feats, 5)
    np.testing.assert_array_equal(nb1, nb)
    np.testing.assert_allclose(sim1, sim, rtol=1e-6)
    nb2, none = knn_cosine(feats, 5, index_dtype=np.int32, similarities=False)
    assert none is None and nb2.dtype == np.int32
    np.testing.assert_array_equal(nb2, nb)
    heads = make_heads(6, 4, 3, 0, torch.device("cpu"))
    f = torch.as_tensor(feats)
    with torch.no_grad():
        p = torch.softmax(heads(f), -1)
    # the SCAN loss written out: -mean log <p_i, p_j> over (anchor, neighbour) - w H(mean p)
    dots = torch.einsum("hnk,hnjk->hnj", p, p[:, torch.as_tensor(nb)]).clamp_min(1e-8)
    mean = p.mean(1)
    want = -torch.log(dots).mean((1, 2)) + 2.0 * (mean * torch.log(mean)).sum(-1)
    for batch in (1024, 3):
        np.testing.assert_allclose(evaluate_heads(heads, f, nb, 2.0, batch=batch),
                                   want.numpy(), rtol=1e-5)


def test_refinement_recovers_classes_and_relion_poses():
    """Two distinct shapes under random poses: the EM refinement, started from a poor
    partition, separates them, and its poses follow simcryo.image.geometry's convention."""
    from simcryo.classify.refine import Refiner
    from simcryo.image.geometry import transform_images
    rng = np.random.default_rng(1)
    b = 24
    yy, xx = np.mgrid[:b, :b] - b // 2
    a = np.exp(-((yy - 4) ** 2 + (xx + 2) ** 2) / 6.0) + 0.6 * np.exp(-((yy + 3) ** 2 + (xx - 4) ** 2) / 3.0)
    c = np.exp(-((yy) ** 2 + (xx - 5) ** 2) / 4.0) + np.exp(-((yy) ** 2 + (xx + 5) ** 2) / 4.0)
    refs = torch.tensor(np.stack([a, c]), dtype=torch.float32)
    n = 60
    truth = np.arange(n) % 2
    psi = torch.tensor(rng.uniform(0, 360, n), dtype=torch.float32)
    shift = torch.tensor(rng.integers(-2, 3, (n, 2)), dtype=torch.float32)
    x = transform_images(refs[truth], psi, shift)
    x = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    start = truth.copy()
    flip = rng.choice(n, 12, replace=False)
    start[flip] = 1 - start[flip]  # 20% wrong
    r = Refiner(x.numpy(), 2, 10.0, torch.device("cpu"), n_angles=36, max_shift=5.0)
    candidates = [np.nonzero(start == c)[0][:8] for c in range(2)]
    seeds = r.choose_seeds(start, candidates)
    w, a_hat, d_hat, hist = r.run(start, 5, seeds=seeds, align_iterations=2)
    lab = w.argmax(1).numpy()
    assert (lab == truth).mean() >= 0.9 > (start == truth).mean()
    assert np.allclose(w.sum(1).numpy(), 1.0, atol=1e-5)
    # RELION's convention, no conversion: transform_images(average, psi, shift) ~ particle
    avg = r.averages(torch.as_tensor(lab), w.max(1).values, a_hat, d_hat)

    def corr(psi, shift):
        pred = transform_images(avg[lab], psi, shift) * r.mask
        return torch.nn.functional.cosine_similarity(pred.flatten(1), (x * r.mask).flatten(1),
                                                     dim=1).median()
    # noise limits the cosine to ~0.65 here; the opposite sign convention scores far lower
    assert corr(a_hat, d_hat) > 0.4
    assert corr(a_hat, d_hat) > corr(-a_hat, -d_hat) + 0.2


def _four_shapes(n=80, noise=0.3):
    from simcryo.image.geometry import transform_images
    rng = np.random.default_rng(2)
    b = 24
    yy, xx = np.mgrid[:b, :b] - b // 2

    def blob(y, x, s):
        return np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / s)
    shapes = [blob(4, -2, 6) + 0.6 * blob(-3, 4, 3), blob(0, 5, 4) + blob(0, -5, 4),
              blob(0, 0, 12) + 0.8 * blob(-6, 0, 2), blob(5, 5, 3) + blob(-5, -5, 3) + blob(0, 0, 2)]
    refs = torch.tensor(np.stack(shapes), dtype=torch.float32)
    truth = np.arange(n) % 4
    psi = torch.tensor(rng.uniform(0, 360, n), dtype=torch.float32)
    shift = torch.tensor(rng.integers(-2, 3, (n, 2)), dtype=torch.float32)
    x = transform_images(refs[truth], psi, shift)
    x = x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    return x.numpy(), truth, rng


def _four_shapes_wrong_start(wrong_count=12):
    """`_four_shapes` with a start partition where `wrong_count` particles (`wrong`) are in
    the next class: (x, truth, start, wrong, the generator for further draws)."""
    x, truth, rng = _four_shapes()
    start = truth.copy()
    wrong = rng.choice(len(x), wrong_count, replace=False)
    start[wrong] = (start[wrong] + 1) % 4
    return x, truth, start, wrong, rng


def test_pruned_em_step_with_every_class_equals_the_full_search():
    from simcryo.classify.refine import Refiner
    x, truth, _ = _four_shapes()
    r = Refiner(x, 4, 10.0, torch.device("cpu"), n_angles=12, max_shift=3.0)
    refs = r._particles(np.array([0, 1, 2, 3]))
    prior = torch.log(torch.full((4,), 0.25))
    full = r.em_step(refs, prior)
    r.sigma2 = None
    every = torch.arange(4).expand(len(x), 4).numpy()[:, ::-1].copy()  # any order of all K
    pruned = r.em_step(refs, prior, classes=every)
    for a, b in zip(full[:4], pruned[:4]):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert abs(full[4] - pruned[4]) < 1e-3 * abs(full[4])


def test_em_step_in_place_arrays_equal_fresh_ones_at_the_scored_rows():
    """em_step writing weights and best scores into the caller's (N, K) arrays (Refiner.run:
    no second array at 10^5 particles) gives the fresh arrays' values at the scored rows and
    pairs, and leaves the other rows as they were."""
    from simcryo.classify.refine import Refiner
    x, truth, _ = _four_shapes()
    r = Refiner(x, 4, 10.0, torch.device("cpu"), n_angles=12, max_shift=3.0)
    refs = r._particles(np.array([0, 1, 2, 3]))
    prior = torch.log(torch.full((4,), 0.25))
    rows = np.arange(0, len(x), 2)
    classes = np.stack([truth, (truth + 1) % 4], 1)   # 2 of the 4 classes per particle
    r.sigma2 = 0.1
    fresh = r.em_step(refs, prior, groups=[(rows, classes)])
    fresh_score = r.best_score.clone()
    weights, table = torch.full((len(x), 4), 7.0), torch.full((len(x), 4), 5.0)
    r.sigma2 = 0.1
    out = r.em_step(refs, prior, groups=[(rows, classes)], weights=weights, table=table)
    assert out[1] is weights and r.best_score is table
    assert torch.equal(weights[rows], fresh[1][rows])
    assert (weights[1::2] == 7.0).all()
    scored = torch.isfinite(fresh_score)
    assert scored.sum() == 2 * len(rows)
    assert torch.equal(table[scored], fresh_score[scored])
    assert (table[~scored] == 5.0).all()
    assert torch.allclose(out[0], fresh[0])


def test_alignment_only_step_scoring_the_own_class_equals_scoring_every_class():
    """With the labels fixed only the own class gets a posterior, so the alignment-only
    iterations score it alone (Refiner.run): same averages, weights and own-class poses."""
    from simcryo.classify.refine import Refiner
    x, truth, _ = _four_shapes()
    r = Refiner(x, 4, 10.0, torch.device("cpu"), n_angles=12, max_shift=3.0)
    refs = r._particles(np.array([0, 1, 2, 3]))
    prior = torch.log(torch.full((4,), 0.25))
    # the same noise model for both (the residual behind the next sigma2 is the own class's
    # when it is the only one scored: the fixed-label model's)
    r.sigma2 = 0.1
    full = r.em_step(refs, prior, fixed=truth)
    r.sigma2 = 0.1
    own = r.em_step(refs, prior, fixed=truth, classes=truth[:, None].copy())
    rows = np.arange(len(x))
    assert torch.allclose(full[0], own[0], atol=1e-4, rtol=1e-4)
    assert torch.allclose(full[1], own[1], atol=1e-6)
    assert torch.equal(full[2][rows, truth], own[2][rows, truth])
    assert torch.equal(full[3][rows, truth], own[3][rows, truth])
    assert torch.isnan(own[2][rows, (truth + 1) % 4]).all()  # the other classes unscored
    assert abs(full[4] - own[4]) < 1e-3 * abs(full[4])


def test_pruned_em_scores_own_and_best_ranked_classes_and_still_separates():
    from simcryo.classify.refine import Refiner
    x, truth, start, wrong, rng = _four_shapes_wrong_start()
    # the clustering's ranking: the true class second best where the start is wrong
    ranking = np.full((len(x), 4), 0.1, dtype=np.float32)
    ranking[np.arange(len(x)), start] = 0.6
    ranking[np.arange(len(x)), truth] += 0.2
    r = Refiner(x, 4, 10.0, torch.device("cpu"), n_angles=36, max_shift=3.0)
    table = torch.full((len(x), 4), -float("inf"))
    classes = r.search_classes(table, torch.as_tensor(ranking), torch.as_tensor(start), 2)
    assert (classes[:, 0].numpy() == start).all()
    assert (classes[wrong, 1].numpy() == truth[wrong]).all()
    seeds = r.choose_seeds(start, [np.nonzero(start == c)[0][:8] for c in range(4)])
    full = Refiner(x, 4, 10.0, torch.device("cpu"), n_angles=36, max_shift=3.0).run(
        start, 4, seeds=seeds, align_iterations=2)
    # the alignment-only iterations score the own class only, at any M
    assert [h["classes_searched"] for h in full[3]] == [1, 1, 4, 4, 4, 4]
    full_acc = (full[0].argmax(1).numpy() == truth).mean()
    # first_search_classes 0: the first EM iteration (after the 2 alignment-only ones)
    # scores every class; 3: the own class and the 2 first by the ranking
    for first, searched in ((0, [1, 1, 4, 2, 2, 2]), (3, [1, 1, 3, 2, 2, 2])):
        w, _, _, hist = r.run(start, 4, seeds=seeds, align_iterations=2, search_classes=2,
                              ranking=ranking, first_search_classes=first)
        assert [h["classes_searched"] for h in hist] == searched
        acc = (w.argmax(1).numpy() == truth).mean()
        assert acc >= full_acc - 0.02
        assert acc >= 0.9 > (start == truth).mean()
        # after the last (pruned) iteration a particle's weight lives on 2 classes at most
        assert ((w > 0).sum(1) <= 2).all()


def test_prescreen_ranks_by_the_data_where_the_clustering_ranking_misleads():
    """The coarse search of every class (Refiner.prescreen, at half the box) finds the true
    class; with a ranking that puts it last, a first EM iteration pruned to 2 classes
    recovers the wrong starts only when its candidates come from the prescreen (measured:
    ACC 0.94 against 0.80)."""
    from simcryo.classify.refine import Refiner
    x, truth, start, wrong, rng = _four_shapes_wrong_start()
    ranking = np.full((len(x), 4), 0.2, dtype=np.float32)
    ranking[np.arange(len(x)), start] = 0.6
    ranking[np.arange(len(x)), truth] = 0.0       # the true class last where start is wrong
    r = Refiner(x, 4, 10.0, torch.device("cpu"), n_angles=36, max_shift=3.0)
    seeds = r.choose_seeds(start, [np.nonzero(start == c)[0][:8] for c in range(4)])
    states = []
    r.run(truth, 0, seeds=seeds, align_iterations=2, on_iteration=states.append)
    coarse = r.prescreen(states[-1]["refs"], 12)
    assert coarse.shape == (len(x), 4)
    assert (coarse.argmax(1).numpy() == truth).mean() >= 0.95
    acc = {}
    for box in (0, 12):
        w, _, _, hist = r.run(start, 4, seeds=seeds, align_iterations=2, search_classes=2,
                              ranking=ranking, first_search_classes=2, prescreen_box=box)
        assert [h["classes_searched"] for h in hist] == [1, 1, 2, 2, 2, 2]
        acc[box] = (w.argmax(1).numpy() == truth).mean()
    assert acc[12] >= 0.9 > acc[0]


def test_pruned_run_with_every_class_equals_the_full_run():
    """M = K in every iteration (and in the first EM iteration) is the full search."""
    from simcryo.classify.refine import Refiner
    x, truth, start, wrong, rng = _four_shapes_wrong_start()
    seeds = [int(np.nonzero(start == c)[0][0]) for c in range(4)]
    ranking = rng.random((len(x), 4)).astype(np.float32)

    def run(**kw):
        r = Refiner(x, 4, 10.0, torch.device("cpu"), n_angles=12, max_shift=3.0)
        return r.run(start, 3, seeds=seeds, align_iterations=1, ranking=ranking, **kw)
    full = run()
    # M >= K leaves the first EM iteration's M1 without effect: every class everywhere
    for kw in (dict(search_classes=4, first_search_classes=4),
               dict(search_classes=4, first_search_classes=2)):
        pruned = run(**kw)
        for a, b in zip(full[:3], pruned[:3]):
            assert torch.equal(a, b)
        assert [h["classes_searched"] for h in pruned[3]] == [1, 4, 4, 4]
    assert [h["classes_searched"] for h in run(search_classes=3,
                                               first_search_classes=2)[3]] == [1, 2, 3, 3]


class _ReadRecorder:
    """An image stack that records which rows each read asked for."""

    def __init__(self, x):
        self.x, self.shape, self.reads = x, x.shape, []

    def __getitem__(self, idx):
        self.reads.append(np.atleast_1d(np.asarray(idx)).copy())
        return self.x[idx]


def test_subset_iterations_read_only_the_subset_then_score_every_particle():
    """refine_subset: the iterations before the last `full_iterations` read only the random
    subset's images; the last ones score every particle, so most of those outside the
    subset that start in a wrong class end in the right one, as in the full run. A subset
    of at least N is the full run."""
    from simcryo.classify.refine import Refiner
    x, truth, rng = _four_shapes(n=160, noise=0.2)
    start = truth.copy()
    wrong = rng.choice(len(x), 32, replace=False)
    start[wrong] = (start[wrong] + 1) % 4
    images = _ReadRecorder(x)
    r = Refiner(images, 4, 10.0, torch.device("cpu"), n_angles=36, max_shift=3.0)
    sub = r.subset_rows(80, seed=0)
    outside = np.setdiff1d(np.arange(len(x)), sub)
    wrong_outside = np.intersect1d(wrong, outside)
    assert len(wrong_outside) >= 10
    seeds = [int(np.intersect1d(np.nonzero(start == c)[0], sub)[0]) for c in range(4)]
    marks = []
    w, psi, _, hist = r.run(start, 4, seeds=seeds, align_iterations=2, subset=80,
                            full_iterations=2, subset_seed=0,
                            on_iteration=lambda state: marks.append(len(images.reads)))
    assert [h["particles"] for h in hist] == [80, 80, 80, 80, 160, 160]
    assert np.isin(np.concatenate(images.reads[:marks[3]]), sub).all()
    assert np.isin(outside, np.concatenate(images.reads[marks[3]:])).all()
    assert torch.isfinite(psi).all()
    lab = w.argmax(1).numpy()
    # measured: 11 of the 12 wrong starts outside the subset corrected, as in the full run
    assert (lab[wrong_outside] == truth[wrong_outside]).mean() >= 0.8

    def plain(**kw):
        return Refiner(x, 4, 10.0, torch.device("cpu"), n_angles=36, max_shift=3.0).run(
            start, 4, seeds=seeds, align_iterations=2, **kw)
    full, everyone = plain(), plain(subset=len(x), full_iterations=1)
    for a, b in zip(full[:3], everyone[:3]):
        assert torch.equal(a, b)
    full_lab = full[0].argmax(1).numpy()
    assert (lab[outside] == truth[outside]).mean() >= (
        full_lab[outside] == truth[outside]).mean() - 0.02


def test_re_seeded_classes_are_scored_on_top_of_the_pruned_search():
    """Classes re-seeded after an EM iteration are scored in the next one by the particles
    of the class each was split from, in addition to their M classes: with as many
    re-seeded classes as free slots, no particle could otherwise reach a real class. The
    other particles do not score them (the search stays M wide for them)."""
    from simcryo.classify.refine import Refiner
    x, truth, _ = _four_shapes()
    r = Refiner(x, 6, 10.0, torch.device("cpu"), n_angles=12, max_shift=3.0)
    seeds = [int(np.nonzero(truth == c)[0][0]) for c in range(4)] + [0, 1]
    w, _, _, hist = r.run(truth, 4, seeds=seeds, align_iterations=1, search_classes=2)
    em = [h for h in hist if not h["align_only"]]
    assert em[0]["revived"], "classes 5 and 6 start empty and must be re-seeded"
    for prev, cur in zip(em, em[1:]):
        donors = prev["revived_from"]
        assert len(donors) == len(prev["revived"])
        most = max((donors.count(b) for b in donors), default=0)
        assert cur["classes_searched"] == min(6, 2 + most)
    assert (w.argmax(1).numpy()[:, None] == np.arange(6)).any(0).sum() >= 4


def test_re_seeded_class_is_flagged_for_its_donor_only():
    """_flag_revived marks a re-seeded class for the donor's members alone, so that the
    next pruned search gives it to them and not to particles of other classes."""
    from simcryo.classify.refine import Refiner
    x, truth, _ = _four_shapes()
    r = Refiner(x, 6, 10.0, torch.device("cpu"), n_angles=12, max_shift=3.0)
    table = torch.full((len(x), 6), -float("inf"))
    donor = torch.nonzero(torch.as_tensor(truth) == 2).flatten()
    r.revived, r.donors = [5], [(2, donor)]
    assert r._flag_revived(table) == 1
    picked = r.search_classes(table, torch.zeros(len(x), 6), torch.as_tensor(truth), 2)
    has5 = (picked == 5).any(1)
    assert has5[donor].all()
    assert not has5[torch.as_tensor(truth) != 2].any()
