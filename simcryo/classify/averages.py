"""Class averages and in-plane poses after classification.

Uses the alignment package (`simcryo.align.classalign.ClassAligner`) when it is available;
otherwise a plain fallback: brute-force rotational alignment of the working-box images to the
running class mean (no shifts), then an average of the members at the full box.
"""

import numpy as np
import torch

from simcryo.classify.augment import rotate
from simcryo.image.preprocess import mask_radius_for


def _load(images, idx, device):
    return torch.from_numpy(np.ascontiguousarray(images[idx], dtype=np.float32)).to(device)


@torch.no_grad()
def rotational_search(images, labels, k, iterations, device, n_angles=72, batch=512):
    """psi (N,) in degrees such that rotating particle i by -psi matches its class mean."""
    n = len(images)
    angles = torch.arange(n_angles, dtype=torch.float32, device=device) * (360.0 / n_angles)
    psi = torch.zeros(n, device=device)
    labels_t = torch.as_tensor(labels, device=device)
    for _ in range(iterations):
        means = torch.zeros((k,) + images.shape[1:], device=device)
        for s in range(0, n, batch):
            idx = np.arange(s, min(s + batch, n))
            x = rotate(_load(images, idx, device)[:, None], -psi[idx])[:, 0]
            means.index_add_(0, labels_t[idx], x)
        counts = torch.bincount(labels_t, minlength=k).clamp_min(1).float()
        means /= counts[:, None, None]
        for s in range(0, n, batch):
            idx = np.arange(s, min(s + batch, n))
            x = _load(images, idx, device)[:, None]
            m = len(idx)
            xr = rotate(x.repeat(n_angles, 1, 1, 1), -angles.repeat_interleave(m))
            xr = xr.view(n_angles, m, -1)
            ref = means[labels_t[idx]].reshape(m, -1)
            score = (xr * ref[None]).sum(-1)
            psi[idx] = angles[score.argmax(0)]
    return psi.cpu().numpy()


def simple_averages(pset, cache, labels, k, iterations, device, prepare_full):
    """Fallback poses and averages; `prepare_full(idx)` gives full-box normalised images."""
    psi = rotational_search(cache, labels, k, max(iterations, 1), device)
    box = pset.box
    sums = torch.zeros(k, box, box, device=device)
    labels_t = torch.as_tensor(labels, device=device)
    for s in range(0, pset.n, 512):
        idx = np.arange(s, min(s + 512, pset.n))
        x = prepare_full(idx).to(device)[:, None]
        x = rotate(x, -torch.as_tensor(psi[idx], device=device))[:, 0]
        sums.index_add_(0, labels_t[idx], x)
    counts = torch.bincount(labels_t, minlength=k).clamp_min(1).float()
    return psi, np.zeros((pset.n, 2), np.float32), (sums / counts[:, None, None]).cpu().numpy()


def aligned_averages(pset, labels, probs, k, radius_px, cfg, device, log):
    """(psi, shift_px, averages) from the alignment package, or None when it is missing."""
    try:
        from simcryo.align.classalign import ClassAligner, ClassAlignParams, ParticleSource
    except ImportError:
        return None
    src = ParticleSource(pset.images, pset.n, pset.box, device, ctf=pset.ctf, apix=pset.apix)
    params = ClassAlignParams(iterations=cfg.average_iterations, seed=cfg.seed,
                              mask_radius=mask_radius_for(radius_px, pset.box),
                              align_box=min(pset.box, 64))
    aligner = ClassAligner(src, labels, probs, k, params, log=log)
    psi, shift = aligner.run().poses()  # the RELION convention, not the internal one
    psi, shift = psi.astype(np.float32), shift.astype(np.float32)
    avg = aligner.averages
    avg = avg.cpu().numpy() if torch.is_tensor(avg) else np.asarray(avg)
    return psi, shift, avg.astype(np.float32)


def wrap_psi(psi):
    return (np.asarray(psi) + 180.0) % 360.0 - 180.0


