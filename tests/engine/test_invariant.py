"""The invariant encoder's inputs (simcryo.classify.invariant): invariance to in-plane
rotation and shift, rotational neighbours, the candidate search, the encoder path of classify.

Tolerances: on noise-free shapes centred on their density, rotated by any angle and shifted
by up to 2 px (bilinear
resampling, a 16 px radius), the cosine of the cross-ring invariants of a copy and its
original is >= 0.9 and the rotational similarity >= 0.9."""
import numpy as np
import torch

from simcryo.align import density_centroid
from simcryo.classify import invariant
from simcryo.classify.neighbors import neighbor_purity
from simcryo.image.geometry import transform_images


def _shapes(copies=12, noise=0.0, seed=0, box=40):
    yy, xx = np.mgrid[:box, :box] - box // 2

    def blob(y, x, s):
        return np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / s)
    shapes = [blob(6, -3, 8) + 0.6 * blob(-4, 6, 4), blob(0, 7, 6) + blob(0, -7, 6),
              blob(0, 0, 18) + 0.8 * blob(-9, 0, 3), blob(7, 7, 4) + blob(-7, -7, 4) + blob(0, 0, 3),
              blob(-8, 2, 5) + 0.5 * blob(3, -6, 10)]
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(len(shapes)), copies)
    psi = torch.tensor(rng.uniform(0, 360, len(truth)), dtype=torch.float32)
    shift = torch.tensor(rng.uniform(-2, 2, (len(truth), 2)), dtype=torch.float32)
    refs = torch.tensor(np.stack(shapes), dtype=torch.float32)
    # picked around their centre of density, as pickers do; then shifted by up to 2 px
    refs = transform_images(refs, torch.zeros(len(refs)), density_centroid(refs))  # origin
    x = transform_images(refs[truth], psi, shift)
    x = x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return x.numpy(), truth


def test_invariants_ignore_rotation_and_shift():
    x, truth = _shapes()
    spectra = invariant.RingSpectra(x, 16.0, 12, "cpu")
    z = torch.nn.functional.normalize(invariant.cross_invariants(spectra.coef), dim=1)
    first = np.array([np.nonzero(truth == c)[0][0] for c in range(truth.max() + 1)])
    same = (z * z[first[truth]]).sum(1)
    assert same.min() >= 0.9
    # and they still tell the shapes apart: each copy is closer to its own original
    assert ((z @ z[first].T).argmax(1).numpy() == truth).all()
    # the centring undoes the shifts (to within a pixel: the reference is blurred by them)
    assert spectra.shifts.abs().max() < 4


def test_rotational_similarity_of_a_turned_copy_is_one():
    x, _ = _shapes(copies=2)
    a = invariant.RingSpectra(x, 16.0, 12, "cpu").coef
    best = torch.einsum("ad,d->a", invariant._rotated(a[:1])[0], invariant._real(a)[1])
    assert best.max() > 0.9  # copy 1 of shape 0 after the best turn


def test_rotational_neighbours_find_the_copies_and_candidates_agree():
    x, truth = _shapes(copies=12, noise=0.1)  # purity 0.97 (0.86 at noise 0.2)
    spectra = invariant.RingSpectra(x, 16.0, 12, "cpu")
    basis = invariant.InvariantBasis(spectra.coef, 64)
    exact = invariant.rotational_knn(spectra.coef, 5, exact_limit=10 ** 6, n_candidates=20)
    assert neighbor_purity(exact, truth, 5) >= 0.95
    pruned = invariant.rotational_knn(spectra.coef, 5, exact_limit=0, n_candidates=30,
                                      basis=basis)
    assert neighbor_purity(pruned, truth, 5) >= 0.95
    # every candidate list that holds the exact neighbours ranks them the same way
    full = invariant.rotational_knn(spectra.coef, 5, exact_limit=0, n_candidates=len(x) - 1,
                                    basis=basis)
    assert np.array_equal(full, exact)
