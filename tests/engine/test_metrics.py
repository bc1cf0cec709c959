import math

import numpy as np
import pytest
import torch

from simcryo.evaluation import metrics
from simcryo.evaluation.frc import align_to_reference, aligned_frc, frc, resolution_at, ring_frequencies
from simcryo.image.geometry import transform_images

sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn is only used to cross-check")


def _cases():
    rng = np.random.default_rng(0)
    true = rng.integers(1, 8, 600)
    noisy = np.where(rng.random(600) < 0.3, rng.integers(1, 8, 600), true)
    yield true, noisy  # mostly right, same number of classes
    yield true, rng.integers(0, 12, 600)  # random, more predicted classes
    yield true, (true + 3) % 9  # a relabelling: perfect
    yield true, np.where(true > 4, 1, 2)  # fewer predicted classes
    yield np.array([1, 1, 2, 2]), np.array([5, 5, 5, 5])  # one predicted class
    yield np.array([3, 3, 3]), np.array([7, 7, 7])  # one class each


@pytest.mark.parametrize("case", list(range(6)))
def test_scores_agree_with_sklearn(case):
    true, pred = list(_cases())[case]
    assert metrics.nmi(pred, true) == pytest.approx(
        sk.normalized_mutual_info_score(true, pred), abs=1e-10)
    assert metrics.ari(pred, true) == pytest.approx(sk.adjusted_rand_score(true, pred), abs=1e-10)
    assert metrics.fmi(pred, true) == pytest.approx(
        sk.fowlkes_mallows_score(true, pred), abs=1e-10)
    # ACC: brute force over all one-to-one mappings is too slow; compare with sklearn's
    # confusion matrix + an independent assignment check on the matched counts
    pv, tv, counts = metrics.confusion_matrix(pred, true)
    labels = np.union1d(pv, tv)
    full = sk.confusion_matrix(pred, true, labels=labels)
    sub = full[np.searchsorted(labels, pv)][:, np.searchsorted(labels, tv)]
    assert np.array_equal(sub, counts)
    acc = metrics.accuracy(pred, true)
    mapping = metrics.hungarian_match(pred, true)
    assert len(set(mapping.values())) == len(mapping)  # one-to-one
    mapped = np.array([mapping.get(p, -999) for p in pred])
    assert acc == pytest.approx((mapped == true).mean())
    assert acc >= max(counts.max(axis=0).max(), counts.max()) / len(true) - 1e-12


def test_accuracy_small_known_case():
    true = np.array([1, 1, 1, 2, 2, 2, 3, 3])
    pred = np.array([2, 2, 1, 1, 1, 1, 3, 3])  # 2->1 (2 right), 1->2 (3 right), 3->3 (2 right)
    assert metrics.accuracy(pred, true) == pytest.approx(7 / 8)
    assert metrics.hungarian_match(pred, true) == {2: 1, 1: 2, 3: 3}
    pr = metrics.precision_recall(pred, true)
    assert pr[1]["precision"] == pytest.approx(1.0) and pr[1]["recall"] == pytest.approx(2 / 3)
    assert pr[2]["precision"] == pytest.approx(3 / 4) and pr[2]["recall"] == pytest.approx(1.0)
    # sklearn's per-class precision/recall on the relabelled predictions
    mapped = np.array([{2: 1, 1: 2, 3: 3}[p] for p in pred])
    p, r, _, s = sk.precision_recall_fscore_support(true, mapped)
    assert np.allclose(p, [pr[k]["precision"] for k in (1, 2, 3)])
    assert np.allclose(r, [pr[k]["recall"] for k in (1, 2, 3)])


def test_perfect_and_random_labelling():
    rng = np.random.default_rng(1)
    true = np.repeat(np.arange(1, 11), 200)
    perm = rng.permutation(10) + 1
    perfect = perm[true - 1]
    s = metrics.clustering_scores(perfect, true)
    for key in ("acc", "nmi", "ari", "fmi"):
        assert s[key] == pytest.approx(1.0, abs=1e-12)
    rand = rng.integers(1, 11, len(true))
    s = metrics.clustering_scores(rand, true)
    assert s["acc"] < 0.16  # chance is ~0.1 plus the matching's optimism
    assert s["nmi"] < 0.03 and abs(s["ari"]) < 0.01 and s["fmi"] < 0.13


def test_more_predicted_than_true_classes():
    true = np.repeat([1, 2], 50)
    pred = np.concatenate([np.full(25, 1), np.full(25, 2), np.full(50, 3)])  # class 1 split
    assert metrics.accuracy(pred, true) == pytest.approx(0.75)
    pr = metrics.precision_recall(pred, true)
    assert pr[2]["recall"] == pytest.approx(1.0)


def test_knn_scores():
    rng = np.random.default_rng(2)
    true = np.repeat(np.arange(5), 40)
    centres = rng.normal(size=(5, 16)) * 5
    feats = centres[true] + rng.normal(size=(200, 16))
    assert metrics.knn_accuracy(feats, true, 5) > 0.95
    assert metrics.neighbor_purity(feats, true, 5) > 0.9
    shuffled = rng.permutation(true)
    assert metrics.knn_accuracy(feats, shuffled, 5) < 0.4
    nb = metrics.knn_indices(feats, 5)
    assert nb.shape == (200, 5) and not (nb == np.arange(200)[:, None]).any()
    # neighbours agree with sklearn's cosine NearestNeighbors (minus the sample itself)
    from sklearn.neighbors import NearestNeighbors
    _, idx = NearestNeighbors(n_neighbors=6, metric="cosine").fit(feats).kneighbors(feats)
    assert np.array_equal(idx[:, 1:], nb)
    # majority vote, ties broken by the nearest of the tied labels
    expect = []
    for i in range(200):
        labels = shuffled[nb[i]]
        counts = {l: (labels == l).sum() for l in labels}
        best = max(counts.values())
        expect.append(next(l for l in labels if counts[l] == best) == shuffled[i])
    assert metrics.knn_accuracy(feats, shuffled, 5) == pytest.approx(np.mean(expect))


def test_pose_errors_modulo_class_frame():
    rng = np.random.default_rng(3)
    n = 400
    cls = rng.integers(1, 4, n)
    true_psi = rng.uniform(-180, 180, n)
    true_shift = rng.normal(0, 2, (n, 2))
    # each class average is the reference rotated by delta_k and shifted by d_k
    delta = {1: 30.0, 2: -100.0, 3: 170.0}
    dshift = {1: (1.0, -2.0), 2: (0.0, 3.0), 3: (-1.5, 0.5)}
    pred_psi = np.empty(n)
    pred_shift = np.empty((n, 2))
    for i in range(n):
        pp = true_psi[i] - delta[cls[i]]
        a = math.radians(pp)
        d = dshift[cls[i]]
        rd = np.array([math.cos(a) * d[0] + math.sin(a) * d[1],   # R(-pp) d, see compose()
                       -math.sin(a) * d[0] + math.cos(a) * d[1]])
        pred_psi[i], pred_shift[i] = pp, true_shift[i] - rd
    noise = rng.normal(0, 1.0, n)
    ang, sh, off = metrics.pose_errors(cls, pred_psi + noise, pred_shift, true_psi, true_shift)
    assert np.median(ang) < 1.5 and np.median(sh) < 0.2
    for k in (1, 2, 3):
        assert abs(((off[k][0] - delta[k]) + 180) % 360 - 180) < 0.5
    # a wrong pose (here: psi off by 40 deg for half the particles) shows up
    bad = pred_psi.copy()
    bad[::2] += 40
    ang, _, _ = metrics.pose_errors(cls, bad, pred_shift, true_psi, true_shift)
    assert np.percentile(ang, 90) > 15
    # the convention check against geometry: a particle made by transform_images with the
    # true pose equals one made from the class average with the predicted pose
    ref = torch.zeros(1, 32, 32)
    ref[0, 10:14, 18:25] = 1.0
    avg = transform_images(ref, torch.tensor([delta[1]]), torch.tensor([dshift[1]]))
    i = int(np.nonzero(cls == 1)[0][0])
    p1 = transform_images(ref, torch.tensor([true_psi[i]]), torch.from_numpy(true_shift[i:i + 1]))
    p2 = transform_images(avg, torch.tensor([pred_psi[i]]), torch.from_numpy(pred_shift[i:i + 1]))
    assert float((p1 - p2).abs().max()) < 0.3


def _blob_image(box=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(box, box)
    c = torch.arange(box, dtype=torch.float32) - box // 2
    y, x = torch.meshgrid(c, c, indexing="ij")
    for _ in range(6):
        cx, cy = (torch.rand(2, generator=g) - 0.5) * box * 0.5
        s = 1.0 + 3.0 * float(torch.rand(1, generator=g))
        img += torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))
    return img


def test_frc_identical_noise_and_resolution():
    a = _blob_image()
    c = frc(a, a)
    assert c.shape == (32,) and torch.allclose(c, torch.ones(32), atol=1e-4)
    g = torch.Generator().manual_seed(0)
    n1, n2 = torch.randn(50, 64, 64, generator=g), torch.randn(50, 64, 64, generator=g)
    assert float(frc(n1, n2)[:, 2:].mean().abs()) < 0.02
    # synthetic curve: crossing between rings interpolated in 1/Å
    curve = np.linspace(1.0, 0.0, 32)
    f = ring_frequencies(64, 2.0)
    res = resolution_at(curve, 2.0, 0.5)
    t = (1.0 - 0.5) / (1.0 / 31)  # ring index where the line hits 0.5
    assert res == pytest.approx(1.0 / (t / (64 * 2.0)), rel=1e-6)
    assert f[1] == pytest.approx(1 / 128)
    assert resolution_at(np.ones(32), 2.0, 0.143) == pytest.approx(64 * 2.0 / 31)
    assert np.isinf(resolution_at(np.r_[1.0, np.zeros(31)], 2.0, 0.143))
    batch = resolution_at(np.stack([curve, curve]), 2.0, 0.5)
    assert batch.shape == (2,)


def test_frc_falls_with_noise():
    a = _blob_image()
    g = torch.Generator().manual_seed(1)
    low = frc(a, a + 0.02 * torch.randn(64, 64, generator=g))
    high = frc(a, a + 0.3 * torch.randn(64, 64, generator=g))
    assert resolution_at(low, 1.0, 0.143) < resolution_at(high, 1.0, 0.143)


def test_align_to_reference_recovers_pose():
    ref = _blob_image(seed=4)
    img = transform_images(ref[None], torch.tensor([-123.4]), torch.tensor([[3.3, -2.2]]))[0]
    psi, shift, score = align_to_reference(img, ref)
    assert abs(((psi + 123.4) + 180) % 360 - 180) < 0.5
    assert abs(shift[0] - 3.3) < 0.2 and abs(shift[1] + 2.2) < 0.2 and score > 0.95
    curve, psi2, _, _, sign = aligned_frc(img, ref)
    assert float(curve[:20].min()) > 0.9 and sign == 1.0
    # inverted contrast is recognised and flipped
    curve, psi3, _, _, sign = aligned_frc(-img, ref)
    assert sign == -1.0 and float(curve[:20].min()) > 0.9 and abs(psi3 - psi2) < 0.1
