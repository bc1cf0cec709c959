"""Member consistency: how well a class's particles agree with their own class average.

A class of one view is a consistent set: each member is the average plus noise, seen through
its CTF at its pose, so members correlate with the average about as well as the noise allows.
A class of ice / aggregate blobs, or of off-centre picks, holds particles that are each
different: their average is a smear that no member resembles, whatever its contrast or
profile (the features of simcryo.selection.score, which see the average only). On the
simulated sets of benchmarks/realistic.py (4,000 picks, 15 % junk, SNR 0.05; seed 0, phantom
and hand, six classifications of 20 or 40 classes, select's default mask), the classes of
>= 50 % junk scored 0.28-0.80 and those of < 10 % junk 0.76-1.38; a hand class of 62 blobs
and 28 good particles, which the average-only terms passed (contrast 0.70, centring 0.89,
profile 0.91), scored 0.61. `ScoreParams.consistency_full` 0.8 was chosen on these six.

Per particle: the normalised correlation, inside the soft mask, of the particle with its class
average moved to the particle's pose (RELION's convention: particle ~= transform_images(
average, psi, shift)) and multiplied by its CTF when the CTF is known. Per class: the mean
over its members, divided by the size-weighted median over the classes (so it does not
depend on the SNR of the data set). Images are read in blocks: memory does not grow with N.
"""
import numpy as np
import torch

from simcryo.image import ctf as ctfmod
from simcryo.image.geometry import transform_images
from simcryo.image.mask import soft_mask
from simcryo.selection.score import background_removed, weighted_median


def member_correlations(pset, labels, psi, shift, averages, radius, batch=256, device="cpu"):
    """(N,) normalised correlation of each particle of `pset` with its class average:
    labels (N,) 0-based, psi (N,) deg, shift (N, 2) px (RELION), averages (K, D, D) at the
    particles' box, soft mask of `radius` px."""
    avg = background_removed(torch.as_tensor(np.asarray(averages), dtype=torch.float32,
                                             device=device), radius)
    box = avg.shape[-1]
    mask = soft_mask(box, radius, width=3.0, device=device)
    out = np.zeros(pset.n)
    for s in range(0, pset.n, batch):
        idx = np.arange(s, min(pset.n, s + batch))
        x = torch.as_tensor(np.asarray(pset.images(idx)), dtype=torch.float32, device=device)
        ref = transform_images(avg[torch.as_tensor(labels[idx], device=device)],
                               torch.as_tensor(psi[idx], dtype=torch.float32, device=device),
                               torch.as_tensor(shift[idx], dtype=torch.float32, device=device))
        if pset.ctf is not None:
            ref = ctfmod.apply_ctf(ref, ctfmod.ctf_2d(pset.ctf.take(idx), box, pset.apix,
                                                      device=device))
        x, ref = x * mask, ref * mask
        x = x - x.mean((-2, -1), keepdim=True)
        ref = ref - ref.mean((-2, -1), keepdim=True)
        cc = (x * ref).sum((-2, -1))
        norm = ((x ** 2).sum((-2, -1)) * (ref ** 2).sum((-2, -1))).sqrt()
        out[idx] = (cc / norm.clamp_min(1e-30)).cpu().numpy()
    return out


def class_consistency(correlations, labels, k):
    """(K,) mean member correlation per class / the size-weighted median of the classes'
    means (0 for an empty class)."""
    sizes = np.bincount(labels, minlength=k)
    sums = np.bincount(labels, weights=correlations, minlength=k)
    means = np.where(sizes > 0, sums / np.maximum(sizes, 1), 0.0)
    alive = sizes > 0
    if not alive.any():
        return np.zeros(k)
    ref = weighted_median(means[alive], sizes[alive])
    return np.where(alive, means / ref, 0.0) if ref > 0 else np.zeros(k)


def member_consistency(pset, labels, psi, shift, averages, radius):
    """(K,) class consistency (class_consistency) of the particles of `pset` with their
    averages at their poses (member_correlations; same arguments)."""
    corr = member_correlations(pset, labels, psi, shift, averages, radius)
    return class_consistency(corr, labels, len(averages))
