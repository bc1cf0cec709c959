"""Fourier ring correlation between images and the resolution where it drops below a threshold.

Ring r (0 .. box//2 - 1) holds the Fourier pixels whose radius rounds to r; its spatial
frequency is r / (box * apix) 1/Å. `resolution_at` linearly interpolates the first crossing
below the threshold (searching from ring 1, the DC ring is skipped) and returns 1/frequency in Å.
"""
import numpy as np
import torch

from simcryo.image.fourier import radial_index


def frc(a, b, eps=1e-12):
    """FRC curves (n, box//2) between image batches a and b (n, box, box) (or single images)."""
    a = torch.as_tensor(a, dtype=torch.float32)
    b = torch.as_tensor(b, dtype=torch.float32, device=a.device)
    single = a.ndim == 2
    if single:
        a, b = a[None], b[None]
    if a.shape != b.shape or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"frc needs two batches of square images of one shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    box = a.shape[-1]
    n_rings = box // 2
    fa, fb = torch.fft.fft2(a), torch.fft.fft2(b)
    ring = radial_index(box, a.device, full=True).reshape(-1)
    keep = ring < n_rings
    idx = ring[keep]
    flat = lambda t: t.reshape(t.shape[0], -1)[:, keep]  # noqa: E731
    cross = flat((fa * fb.conj()).real.double())
    pa = flat((fa.abs() ** 2).double())
    pb = flat((fb.abs() ** 2).double())
    n = a.shape[0]

    def ring_sum(v):
        out = torch.zeros((n, n_rings), dtype=torch.float64, device=a.device)
        return out.index_add_(1, idx, v)

    curve = ring_sum(cross) / torch.sqrt(ring_sum(pa) * ring_sum(pb) + eps)
    curve = curve.float()
    return curve[0] if single else curve


def ring_frequencies(box, apix):
    """Spatial frequency (1/Å) of each FRC ring."""
    return np.arange(box // 2) / (box * float(apix))


def resolution_at(curve, apix, threshold=0.143):
    """Resolution (Å) where the FRC first drops below `threshold` (interpolated crossing).

    `curve` is (n_rings,) or (n, n_rings) with n_rings = box // 2 (even box). Returns a float
    (or an array for a batch). A curve that never drops below the threshold returns the
    resolution of the last ring (the best measurable); one already below it at ring 1 returns
    inf."""
    c = np.asarray(curve.cpu() if isinstance(curve, torch.Tensor) else curve, dtype=np.float64)
    single = c.ndim == 1
    c = np.atleast_2d(c)
    n_rings = c.shape[1]
    freq = np.arange(n_rings) / (2.0 * n_rings * float(apix))
    out = np.empty(len(c))
    for i, row in enumerate(c):
        below = np.nonzero(row[1:] < threshold)[0]
        if len(below) == 0:
            out[i] = 1.0 / freq[-1]
            continue
        j = below[0] + 1
        if j == 1:
            out[i] = np.inf
            continue
        c0, c1 = row[j - 1], row[j]
        t = (c0 - threshold) / (c0 - c1) if c0 != c1 else 0.0
        f = freq[j - 1] + t * (freq[j] - freq[j - 1])
        out[i] = 1.0 / f
    return float(out[0]) if single else out


def _pose_aligner(step_deg, max_shift):
    """Exhaustive search: a `step_deg` grid, then two rounds of a 10x finer grid around the
    peak (bicubic rotations: the FRC compares fine detail)."""
    from simcryo.align import ExhaustiveAligner, ExhaustiveParams
    return ExhaustiveAligner(ExhaustiveParams(
        n_angles=max(int(round(360.0 / step_deg)), 1), max_shift=max_shift, fine_rounds=2,
        fine_factor=10, interpolation="bicubic"))


def _align_batch(images, reference, step_deg, max_shift):
    """Poses (RELION) of mean-subtracted images (B, D, D) against one reference."""
    ref = torch.as_tensor(reference, dtype=torch.float32, device=images.device)
    images = images - images.mean((-2, -1), keepdim=True)
    labels = torch.zeros(len(images), dtype=torch.long, device=images.device)
    return _pose_aligner(step_deg, max_shift)(images, (ref - ref.mean())[None], labels)


def align_to_reference(image, reference, step_deg=1.0, max_shift=None):
    """In-plane pose of `image` against `reference` (both (D, D)) by the exhaustive search
    (simcryo.align.exhaustive: every angle in `step_deg` steps x every shift within
    `max_shift` px (None: all), refined to sub-step precision).
    Returns (psi, (sx, sy), score) such that image ~ transform_images(reference, psi,
    (sx, sy)) (RELION convention); score: normalised correlation."""
    img = torch.as_tensor(image, dtype=torch.float32)
    out = _align_batch(img[None], reference, step_deg, max_shift)
    return _pose(out, 0)


def _pose(out, i):
    return (float(out.psi[i]), (float(out.shift[i, 0]), float(out.shift[i, 1])),
            float(out.score[i]))


def aligned_frc(image, reference, step_deg=1.0, allow_invert=True):
    """FRC (box//2,) between `image` and `reference` brought into its frame.

    The clean reference is moved onto the image (not the image onto the reference) so that
    interpolation never smooths the noisy image. With `allow_invert`, an image with inverted
    contrast (e.g. an average of CTF-modulated particles, dark protein) is compared after a
    sign flip: the sign of a class average is a display convention, not a resolution.
    Returns (curve, psi, shift, score, sign)."""
    from simcryo.image.geometry import transform_images
    img = torch.as_tensor(image, dtype=torch.float32)
    signs = [1.0, -1.0] if allow_invert else [1.0]
    out = _align_batch(torch.stack([s * img for s in signs]), reference, step_deg, None)
    best = int(out.score.argmax())
    psi, shift, score = _pose(out, best)
    ref = torch.as_tensor(reference, dtype=torch.float32)
    moved = transform_images(ref[None], torch.tensor([psi]), torch.tensor([shift]))[0]
    return frc(signs[best] * img, moved), psi, shift, score, signs[best]
