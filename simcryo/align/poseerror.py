"""In-plane pose errors measured modulo each class-average frame.

A reference-free class average is only defined up to an in-plane rotation alpha and shift c
(A = transform(V, alpha, c) for the true view V). With p = transform(V, psi_t, s_t) and
p ~= transform(A, psi_e, s_e): psi_t = psi_e + alpha and s_t = s_e + R(psi_e) c. So per class
alpha is the mode of psi_t - psi_e (the densest 5-degree window, refined by the circular mean
inside it, so a minority of badly aligned particles does not bias everyone's error) and c the
median of R(-psi_e) (s_t - s_e) over those inliers; the errors are what remains.
"""
import numpy as np


def _wrap(a):
    return (np.asarray(a) + 180.0) % 360.0 - 180.0


def _circular_mode(d, window=5.0):
    """Angle (deg) with the most values within +-window, refined by their circular mean."""
    grid = np.arange(-180.0, 180.0, 0.5)
    counts = (np.abs(_wrap(grid[:, None] - d[None, :])) <= window).sum(1)
    centre = grid[counts.argmax()]
    near = np.abs(_wrap(d - centre)) <= window
    return centre + np.degrees(np.angle(np.exp(1j * np.radians(_wrap(d[near] - centre))).mean()))


def pose_errors(true_psi, true_shift, est_psi, est_shift, labels):
    """Per-particle (angle error deg, shift error px) after removing each class's best
    constant rotation/shift offset. Poses in the simcryo.geometry / RELION convention, shifts
    (N, 2) in px; labels (N,) any class ids."""
    # geometry's forward model rotates by -psi and shifts by -shift: negate to get the
    # (psi, s) with p = T(s) R(psi) A used in the module docstring
    true_psi, est_psi = -np.asarray(true_psi, float), -np.asarray(est_psi, float)
    true_shift, est_shift = -np.asarray(true_shift, float), -np.asarray(est_shift, float)
    labels = np.asarray(labels)
    ang = np.zeros(len(labels))
    sh = np.zeros(len(labels))
    for k in np.unique(labels):
        m = labels == k
        d = _wrap(true_psi[m] - est_psi[m])
        alpha = _circular_mode(d)
        ang[m] = np.abs(_wrap(d - alpha))
        inl = ang[m] <= max(5.0, np.median(ang[m]))
        a = np.radians(est_psi[m])
        c, s = np.cos(a), np.sin(a)
        dv = true_shift[m] - est_shift[m]
        local = np.stack([c * dv[:, 0] + s * dv[:, 1], -s * dv[:, 0] + c * dv[:, 1]], 1)
        off = np.median(local[inl], axis=0)
        back = np.stack([c * off[0] - s * off[1], s * off[0] + c * off[1]], 1)
        sh[m] = np.hypot(*(dv - back).T)
    return ang, sh


def summarize(angle_err, shift_err):
    return {"angle_median_deg": float(np.median(angle_err)),
            "angle_p90_deg": float(np.percentile(angle_err, 90)),
            "shift_median_px": float(np.median(shift_err)),
            "shift_p90_px": float(np.percentile(shift_err, 90))}
