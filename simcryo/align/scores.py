"""Correlation scores of aligned particle spectra against references (rfft2 layout)."""
import torch

_HALF_PLANE_CACHE = {}


def half_plane_weights(n, m, device):
    """Weights that turn a sum over the rfft2 half plane into the full-plane sum (the mean
    term excluded)."""
    key = (n, m, str(device))
    if key not in _HALF_PLANE_CACHE:
        w = torch.full((n, m), 2.0, device=device)
        w[:, 0] = 1.0
        if n % 2 == 0:
            w[:, -1] = 1.0
        w[0, 0] = 0.0
        _HALF_PLANE_CACHE[key] = w
    return _HALF_PLANE_CACHE[key]


def spectral_power(spec):
    """Sum of |F|^2 over the full plane (mean excluded) from rfft2 spectra (B, n, m)."""
    w = half_plane_weights(spec.shape[-2], spec.shape[-1], spec.device)
    return ((spec.real ** 2 + spec.imag ** 2) * w).sum((-2, -1))


def normalized_correlation(spec, ref_spec, ctf2=None, part_pow=None):
    """Normalised cross-correlation of aligned particle spectra (B, n, m) with reference
    spectra (B, n, m) (mean excluded).

    With CTF: `spec` is CTF * F (the particle multiplied by its CTF, in the reference frame),
    ctf2 the CTF^2 there and part_pow the power of the particle itself (`spectral_power` of
    F): the result is the correlation of the particle with the reference seen through its
    CTF, so different classes are compared fairly."""
    w = half_plane_weights(spec.shape[-2], spec.shape[-1], spec.device)
    num = ((spec * ref_spec.conj()).real * w).sum((-2, -1))
    ref_pow = ref_spec.real ** 2 + ref_spec.imag ** 2
    if ctf2 is not None:
        ref_pow = ref_pow * ctf2
    if part_pow is None:
        part_pow = spectral_power(spec)
    den = torch.sqrt((ref_pow * w).sum((-2, -1)) * part_pow).clamp_min(1e-30)
    return num / den
