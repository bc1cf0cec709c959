"""Fourier ring correlation between images and the resolution where it drops below a threshold.

Ring r (0 .. box//2 - 1) holds the Fourier pixels whose radius rounds to r; its spatial
frequency is r / (box * apix) 1/Å. `resolution_at` linearly interpolates the first crossing
below the threshold (searching from ring 1, the DC ring is skipped) and returns 1/frequency in Å.
"""
import numpy as np
import torch


def _ring_index(box, device):
    fy = torch.fft.fftfreq(box, d=1.0 / box, device=device)
    fx = torch.fft.fftfreq(box, d=1.0 / box, device=device)
    r = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    return torch.round(r).long()


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
    ring = _ring_index(box, a.device).reshape(-1)
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


def _parabolic_offset(m1, m0, p1):
    """Sub-sample peak offset in [-0.5, 0.5] from three samples around a maximum."""
    den = m1 - 2.0 * m0 + p1
    return 0.0 if den >= 0 else float(np.clip(0.5 * (m1 - p1) / den, -0.5, 0.5))


def align_to_reference(image, reference, step_deg=1.0, max_shift=None):
    """Brute-force in-plane alignment of `image` onto `reference` (both (D, D) tensors).

    Every rotation of the reference in `step_deg` steps is cross-correlated with the image
    (FFT, all shifts at once); the best angle is searched again on a 10x finer grid around it,
    and (angle, shift) are refined to sub-step precision by parabolic fits.
    Returns (psi, (sx, sy), score) such that
    image ~ transform_images(reference, psi, (sx, sy)) (project convention)."""
    from simcryo.image.geometry import shift_images
    img = torch.as_tensor(image, dtype=torch.float32)
    ref = torch.as_tensor(reference, dtype=torch.float32, device=img.device)
    D = img.shape[-1]
    img, ref = img - img.mean(), ref - ref.mean()
    coarse = torch.arange(0.0, 360.0, step_deg, device=img.device)
    psi, shift, score = _best_pose(img, ref, coarse, step_deg, max_shift, circular=True)
    # refine: undo the current shift exactly (Fourier) so that the angle is no longer biased by
    # the sub-pixel part of the shift, then search a 10x finer angular grid around psi
    fine_step = step_deg / 10.0
    offsets = torch.arange(-10, 11, device=img.device, dtype=torch.float32) * fine_step
    for _ in range(2):
        centred = shift_images(img[None], torch.tensor([[-shift[0], -shift[1]]]))[0]
        psi, residual, score = _best_pose(centred, ref, psi + offsets, fine_step, None,
                                          circular=False)
        shift = (shift[0] + residual[0], shift[1] + residual[1])
    # the search above finds image ~ shift(rotate(reference, psi), shift); in the project's
    # (RELION) convention that pose is (-psi, -shift)
    return (-psi + 180.0) % 360.0 - 180.0, (-shift[0], -shift[1]), score


def _best_pose(img, ref, angles, step, max_shift, circular):
    """Cross-correlate img with ref rotated by each angle; parabolic sub-step peak."""
    from simcryo.image.geometry import rotate_images
    D = img.shape[-1]
    rots = rotate_images(ref.expand(len(angles), D, D).contiguous(), angles)
    cc = torch.fft.irfft2(torch.fft.rfft2(img)[None] * torch.fft.rfft2(rots).conj(), s=(D, D))
    if max_shift is not None:
        f = torch.fft.fftfreq(D, d=1.0 / D, device=img.device).abs()
        cc[:, (f[:, None] > max_shift) | (f[None, :] > max_shift)] = -float("inf")
    a, y, x = np.unravel_index(int(torch.argmax(cc)), cc.shape)
    na = len(angles)
    peak = float(cc[a, y, x])
    if circular or 0 < a < na - 1:
        da = _parabolic_offset(float(cc[(a - 1) % na, y, x]), peak,
                               float(cc[(a + 1) % na, y, x]))
    else:
        da = 0.0
    dy = _parabolic_offset(float(cc[a, (y - 1) % D, x]), peak, float(cc[a, (y + 1) % D, x]))
    dx = _parabolic_offset(float(cc[a, y, (x - 1) % D]), peak, float(cc[a, y, (x + 1) % D]))
    psi = (float(angles[a]) + da * step + 180.0) % 360.0 - 180.0
    sy = (y + D // 2) % D - D // 2 + dy
    sx = (x + D // 2) % D - D // 2 + dx
    norm = float(torch.sqrt((img ** 2).sum() * (rots[a] ** 2).sum()))
    return psi, (float(sx), float(sy)), peak / max(norm, 1e-12)


def aligned_frc(image, reference, step_deg=1.0, allow_invert=True):
    """FRC (box//2,) between `image` and `reference` brought into its frame.

    The clean reference is moved onto the image (not the image onto the reference) so that
    interpolation never smooths the noisy image. With `allow_invert`, an image with inverted
    contrast (e.g. an average of CTF-modulated particles, dark protein) is compared after a
    sign flip: the sign of a class average is a display convention, not a resolution.
    Returns (curve, psi, shift, score, sign)."""
    from simcryo.image.geometry import transform_images
    img = torch.as_tensor(image, dtype=torch.float32)
    psi, shift, score = align_to_reference(img, reference, step_deg)
    sign = 1.0
    if allow_invert:
        psi_n, shift_n, score_n = align_to_reference(-img, reference, step_deg)
        if score_n > score:
            psi, shift, score, sign = psi_n, shift_n, score_n, -1.0
    ref = torch.as_tensor(reference, dtype=torch.float32)
    moved = transform_images(ref[None], torch.tensor([psi]), torch.tensor([shift]))[0]
    return frc(sign * img, moved), psi, shift, score, sign
