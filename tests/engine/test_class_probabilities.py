"""The per-particle class probability (`probabilities.npy`, `_rlnMaxValueProbDistribution`)
is the EM's class posterior with the pose marginalised: clean members of one class get ~1;
blends of two classes put their mass on those two, split. (Each blend's own posterior is
decided by its noise along the difference of the two classes, ||a - b|| / sigma ~ 15 nats
here, so only the split over the blends is near even.)"""
import numpy as np
import pytest
import torch

from simcryo.classify.refine import Refiner
from simcryo.image.geometry import transform_images


def _shapes(b=24):
    yy, xx = np.mgrid[:b, :b] - b // 2

    def blob(y, x, s):
        return np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / s)
    return torch.tensor(np.stack([blob(4, -2, 6) + 0.6 * blob(-3, 4, 3),
                                  blob(0, 5, 4) + blob(0, -5, 4),
                                  blob(5, 5, 3) + blob(-5, -5, 3) + blob(0, 0, 2)]),
                        dtype=torch.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_posterior_splits_a_blend_of_two_classes_and_is_sure_of_a_clean_member(seed):
    refs = _shapes()
    rng = np.random.default_rng(seed)
    n_clean, n_blend = 60, 30
    truth = np.arange(n_clean) % 3
    # poses on the search grid (10 deg, whole px), so that both classes of a blend fit it
    psi = torch.tensor(rng.integers(0, 36, n_clean + n_blend) * 10.0, dtype=torch.float32)
    shift = torch.tensor(rng.integers(-2, 3, (n_clean + n_blend, 2)), dtype=torch.float32)
    images = torch.cat([refs[truth], 0.5 * (refs[0] + refs[1]).expand(n_blend, -1, -1)])
    x = transform_images(images, psi, shift)
    x = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1))
    r = Refiner(x.numpy(), 3, 10.0, torch.device("cpu"), n_angles=36, max_shift=3.0)
    _, post, _, _, _ = r.em_step(refs, torch.log(torch.full((3,), 1 / 3)))
    clean, blend = post[:n_clean], post[n_clean:]
    assert np.allclose(post.sum(1).numpy(), 1.0, atol=1e-5)
    assert (clean.argmax(1).numpy() == truth).mean() >= 0.95
    assert clean.max(1).values.median() > 0.99
    # a blend of classes 0 and 1: its mass stays on them, split (interpolation makes the
    # two fits differ a little, so not exactly half each)
    assert blend[:, 2].mean() < 0.01
    assert blend[:, 1].mean() > 0.15 and blend[:, 0].mean() > 0.15


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_posterior_is_calibrated_where_the_noise_makes_classes_overlap(seed):
    """At a noise level where ~1 in 5 particles fits a wrong class best, the mean posterior
    of the chosen class matches the share chosen right (a saturated 'probability' would
    say 1 for all)."""
    refs = _shapes()
    rng = np.random.default_rng(seed)
    n = 240
    truth = np.arange(n) % 3
    psi = torch.tensor(rng.integers(0, 36, n) * 10.0, dtype=torch.float32)
    shift = torch.tensor(rng.integers(-2, 3, (n, 2)), dtype=torch.float32)
    x = transform_images(refs[truth], psi, shift)
    x = x + 0.8 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1))
    r = Refiner(x.numpy(), 3, 10.0, torch.device("cpu"), n_angles=36, max_shift=3.0)
    _, post, _, _, _ = r.em_step(refs, torch.log(torch.full((3,), 1 / 3)))
    right = (post.argmax(1).numpy() == truth).mean()
    confidence = float(post.max(1).values.mean())
    assert 0.6 < right < 0.95
    assert abs(confidence - right) < 0.06
