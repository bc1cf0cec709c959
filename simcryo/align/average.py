"""Class averages: weights, rotational averages, CTF-aware (Wiener) accumulation, re-centring.

Averages are accumulated in Fourier space (rfft2 layout) per class and per half set:
numerator sum_i w_i * CTF_i * F_i and denominator sum_i w_i * CTF_i^2 (both in the class
frame), so one pass over the particles gives the full average, the two half-set averages
and their FRC. Without CTF the CTF factors are 1 and the Wiener average is the weighted mean.
"""
import torch

from simcryo import distributed
from simcryo.image.fourier import fourier_shift, radial_frequency, radial_index
from simcryo.image.geometry import rotate_images
from simcryo.image.mask import circular_mask, radius_grid


def normalize_weights(weights, labels, n_classes):
    """Per-class normalisation: weights of every class sum to 1 (all-zero or missing weights in
    a class fall back to uniform)."""
    w = torch.as_tensor(weights, dtype=torch.float64).clamp_min(0)
    lab = torch.as_tensor(labels, dtype=torch.long)
    sums = torch.zeros(n_classes, dtype=torch.float64).index_add_(0, lab, w)
    counts = torch.bincount(lab, minlength=n_classes).to(torch.float64)
    empty = sums[lab] <= 0
    w = torch.where(empty, torch.ones_like(w), w)
    sums = torch.where(sums > 0, sums, counts)
    return (w / sums[lab].clamp_min(1e-300)).to(torch.float32)


def radial_profile(images, n_bins=None):
    """Mean over rings of integer-rounded radius about the box centre: (B, n_bins)."""
    b, n, _ = images.shape
    r = radius_grid(n, images.device).round().long().reshape(-1)
    n_bins = n_bins or int(r.max()) + 1
    r = r.clamp(max=n_bins - 1)
    flat = images.reshape(b, -1)
    sums = torch.zeros(b, n_bins, device=images.device, dtype=flat.dtype)
    sums.index_add_(1, r, flat)
    counts = torch.bincount(r, minlength=n_bins).clamp_min(1).to(flat.dtype)
    return sums / counts


def rotational_average(images):
    """Rotationally symmetric version of each image about the box centre (linear
    interpolation of the radial profile)."""
    b, n, _ = images.shape
    prof = radial_profile(images)
    r = radius_grid(n, images.device).reshape(-1)
    lo = r.floor().long().clamp(max=prof.shape[1] - 1)
    hi = (lo + 1).clamp(max=prof.shape[1] - 1)
    f = (r - lo.float())
    out = prof[:, lo] * (1 - f) + prof[:, hi] * f
    return out.reshape(b, n, n)


def shell_mean(spectrum_like):
    """Mean over Fourier shells (integer |k|) of a real (K, n, m) array in rfft2 layout,
    broadcast back onto the grid."""
    k, n, m = spectrum_like.shape
    rad = radial_index(n, spectrum_like.device).reshape(-1)
    n_bins = int(rad.max()) + 1
    flat = spectrum_like.reshape(k, -1)
    sums = torch.zeros(k, n_bins, device=flat.device, dtype=flat.dtype).index_add_(1, rad, flat)
    counts = torch.bincount(rad, minlength=n_bins).clamp_min(1).to(flat.dtype)
    return (sums / counts)[:, rad].reshape(k, n, m)


def shell_frc(spec_a, spec_b):
    """FRC per integer shell between rfft2 spectra (K, n, m) -> (K, n//2+1) up to Nyquist.
    (Used inside the iterations; the reported curves come from simcryo.evaluation.frc.)"""
    k, n, m = spec_a.shape
    rad = radial_index(n, spec_a.device).reshape(-1)
    n_bins = int(rad.max()) + 1

    def shells(x):
        return torch.zeros(k, n_bins, device=x.device, dtype=x.dtype).index_add_(
            1, rad, x.reshape(k, -1))
    num = shells((spec_a * spec_b.conj()).real)
    den = torch.sqrt(shells(spec_a.abs() ** 2) * shells(spec_b.abs() ** 2)).clamp_min(1e-30)
    return (num / den)[:, : n // 2 + 1]


class ClassAccumulator:
    """Sums of aligned particle spectra per class and half set (see module docstring)."""

    def __init__(self, n_classes, box, device):
        m = box // 2 + 1
        self.box = box
        self.num = torch.zeros(2, n_classes, box, m, dtype=torch.complex64, device=device)
        self.den = torch.zeros(2, n_classes, box, m, dtype=torch.float32, device=device)
        self.wsum = torch.zeros(2, n_classes, dtype=torch.float64, device=device)
        self.w2sum = torch.zeros(2, n_classes, dtype=torch.float64, device=device)

    def add(self, spectra, labels, weights, halves, ctf2=None):
        """spectra: aligned (CTF-multiplied when ctf2 is given) rfft2 spectra (B, n, m);
        labels (B,) 0-based classes; weights (B,); halves (B,) 0/1; ctf2 (B, n, m) or None."""
        w = weights.to(spectra.device, torch.float32)
        idx = halves.to(spectra.device).long() * self.num.shape[1] + labels.to(spectra.device)
        num = self.num.view(-1, *self.num.shape[2:])
        den = self.den.view(-1, *self.den.shape[2:])
        num.index_add_(0, idx, spectra * w[:, None, None])
        if ctf2 is None:
            den.index_add_(0, idx, w[:, None, None].expand(-1, *den.shape[1:]).contiguous())
        else:
            den.index_add_(0, idx, ctf2 * w[:, None, None])
        self.wsum.view(-1).index_add_(0, idx, w.double())
        self.w2sum.view(-1).index_add_(0, idx, w.double() ** 2)

    def counts(self):
        return self.wsum.sum(0)

    def all_reduce(self):
        """Sum the ranks' partial sums (simcryo.distributed; a no-op in one process), so
        that every rank holds the sums over all particles. Returns self."""
        for t in (self.num, self.den, self.wsum, self.w2sum):
            distributed.all_reduce_sum(t)
        return self

    def half_averages(self):
        """Plain CTF-corrected half-set averages (regularised only where the CTF vanishes)."""
        den = self.den
        eps = 0.1 * den.mean(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
        return self.num / (den + eps)

    def frc_halves(self):
        h = self.half_averages()
        return shell_frc(h[0], h[1])

    def ssnr_grid(self):
        """Full-set SSNR = 2 FRC / (1 - FRC) of the half sets per shell, on the rfft2 grid
        (K, n, m)."""
        frc = self.frc_halves().clamp(1e-3, 0.999)
        ssnr = 2 * frc / (1 - frc)
        rad = radial_index(self.box, ssnr.device).clamp(max=self.box // 2)
        return ssnr[:, rad]

    def wiener(self):
        """Full-set Wiener average spectra (K, n, m): num / (den + mean_shell(den) / SSNR).
        A shell with no signal is suppressed, one with high SSNR is left as the weighted
        CTF-corrected mean."""
        den = self.den.sum(0)
        return self.num.sum(0) / (den + shell_mean(den) / self.ssnr_grid() + 1e-12)

    def prior_wiener(self, particle_ssnr):
        """Full-set Wiener average spectra (K, n, m) with a data-wide signal prior, as
        RELION's tau^2: num / (den + shell_mean(den) / (n_k * ssnr)), where `particle_ssnr`
        (shells,) is one particle's spectral SNR measured on the whole data set (its CTF
        included) and n_k the class's weight sum. shell_mean(den) / n_k is the particles'
        mean CTF^2, so the regulariser is the per-particle noise-to-signal ratio. The
        half-set FRC of a class of ~100 particles is too noisy at the lowest shells (a few
        Fourier pixels each) to restore the frequencies the CTF damps there; this prior is
        measured on up to 1,000 particles."""
        nb = self.box // 2 + 1
        ssnr = torch.zeros(nb, device=self.num.device)
        given = torch.as_tensor(particle_ssnr, dtype=torch.float32)[:nb].to(ssnr.device)
        ssnr[:len(given)] = given
        rad = radial_index(self.box, ssnr.device).clamp(max=self.box // 2)
        den = self.den.sum(0)
        n_k = self.wsum.sum(0).to(torch.float32).clamp_min(1e-12)[:, None, None]
        reg = shell_mean(den) / (n_k * ssnr[rad].clamp_min(1e-4))
        return self.num.sum(0) / (den + reg + 1e-12)

    def masked_wiener(self, mask):
        """Wiener-filtered average of the masked CTF-corrected average (spectra (K, n, m)):
        the real-space `mask` first, then the per-shell SSNR / (1 + SSNR) shrinkage.
        Masking after the shrinkage would mix the strong low shells into the shrunk high
        ones and distort the signal there (benchmarks/align.py: FRC=0.5 resolution against
        the true projections 9.9 -> 9.3 Å on a phantom 5-view set, same poses)."""
        masked = torch.fft.rfft2(spectra_to_images(self.corrected()) * mask)
        ssnr = self.ssnr_grid()
        return masked * (ssnr / (1 + ssnr))

    def corrected(self, eps_fraction=0.1):
        """Full-set CTF-corrected average without the SSNR shrinkage (regularised only where
        the CTF vanishes)."""
        num, den = self.num.sum(0), self.den.sum(0)
        eps = eps_fraction * den.mean(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
        return num / (den + eps)

    def shift(self, shifts):
        """Translate every class's sums by (K, 2) px (used to re-centre the averages)."""
        for h in range(2):
            self.num[h] = fourier_shift(self.num[h], shifts.to(self.num.device))

    def fold_frames(self, psi, mode="bilinear"):
        """An accumulator over K*A (class, angle) frames (class-major) -> one over the K class
        frames. Frame (k, a) holds particles in the frame of class k's average rotated by
        psi[a] (A,) deg, i.e. transform_images(average, psi[a], 0): its numerators are
        brought into the class frame (align_images(., psi[a], 0)) and summed over a. The
        marginal M-step of the EM (simcryo.classify.refine) sums its pose-weighted particles
        per frame, so that A rotations per class replace A per particle. Denominators are
        summed unrotated: uniform without CTF; with CTF, CTF^2 is taken as rotation
        invariant (its astigmatism is small)."""
        a = len(psi)
        k = self.num.shape[1] // a
        n, m = self.num.shape[-2:]
        out = ClassAccumulator(k, self.box, self.num.device)
        images = spectra_to_images(self.num.reshape(-1, n, m))
        turned = rotate_images(images, psi.to(images.device).repeat(2 * k), mode=mode)
        out.num = torch.fft.rfft2(turned).view(2, k, a, n, m).sum(2)
        out.den = self.den.view(2, k, a, n, m).sum(2)
        out.wsum = self.wsum.view(2, k, a).sum(2)
        out.w2sum = self.w2sum.view(2, k, a).sum(2)
        return out


def spectra_to_images(spectra):
    n = spectra.shape[-2]
    return torch.fft.irfft2(spectra, s=(n, n))


def centre_of_mass(images, radius=None, lowpass_sigma=2.0):
    """Energy centroid (x, y) px from the box centre of low-passed images inside a disc: it
    does not depend on the contrast sign (particles may be dark or bright)."""
    b, n, _ = images.shape
    ax = torch.arange(n, device=images.device, dtype=torch.float32) - n // 2
    rad = radial_frequency(n, images.device)
    g = torch.exp(-(rad ** 2) * (2 * (torch.pi * lowpass_sigma / n) ** 2))
    smooth = torch.fft.irfft2(torch.fft.rfft2(images) * g, s=(n, n))
    inside = circular_mask(n, n // 2 - 2 if radius is None else radius, images.device)
    background = smooth[:, ~inside].mean(-1) if (~inside).any() else smooth.mean((-2, -1))
    smooth = smooth - background[:, None, None]
    e = (smooth ** 2) * inside
    tot = e.sum((-2, -1)).clamp_min(1e-30)
    cx = (e * ax[None, None, :]).sum((-2, -1)) / tot
    cy = (e * ax[None, :, None]).sum((-2, -1)) / tot
    return torch.stack([cx, cy], -1)


def density_centroid(images):
    """Centroid (x, y) px from the box centre of each image's positive density (linear, no
    filter). The EM of simcryo.classify.refine re-centres its averages on it: with
    centre_of_mass (energy, contrast-independent) its two-shape test
    (tests/engine/test_classify.py, 3 seeds) recovered 87-93 % of the classes instead of
    98-100 %."""
    n = images.shape[-1]
    ax = torch.arange(n, device=images.device, dtype=images.dtype) - n // 2
    pos = images.clamp_min(0)
    mass = pos.sum((-2, -1)).clamp_min(1e-12)
    moments = torch.stack([(pos.sum(-2) * ax).sum(-1), (pos.sum(-1) * ax).sum(-1)], -1)
    return moments / mass[:, None]
