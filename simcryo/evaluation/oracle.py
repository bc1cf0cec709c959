"""Oracle ceiling of view classification: the Bayes classifier of simulated particles that
knows the truth's forward model (simcryo.simulation.simulate), so no blind method should beat
its accuracy.

It knows, per class k, the clean projection p_k of the volume at the class's central view;
per particle, its CTF C; the white noise level sigma and the SNR. The simulator scales each
particle's signal to variance SNR * sigma^2 over the box, so the model of particle x under
class k at in-plane pose (psi, shift) is

    x = a_k C T_{psi,shift}(p_k) + noise,   a_k = sigma sqrt(SNR) / std(C p_k),

and log p(x | k, psi, shift) = (a_k cc - a_k^2 power / 2) / sigma^2 + const, where cc and
power are simcryo.align.ExhaustiveAligner.scores' correlation and squared norm of each grid
cell. The pose is marginalised (log-sum-exp) over every grid angle (uniform prior) and every
integer shift within `max_shift` (Gaussian prior of the simulator's `shift_sigma`); the
decision is the arg max over classes with equal priors.

What it does not know, so the ceiling is slightly conservative: each particle's own view
within the class's angular spread, its sub-pixel shift and off-grid angle. The CTF of the
scores is circular on the box while the simulator applies it on a 2x padded box; a_k uses
the padded CTF, as the simulator does.
"""
from dataclasses import dataclass

import numpy as np
import torch

from simcryo.align import ExhaustiveAligner, ExhaustiveParams
from simcryo.errors import SimcryoError
from simcryo.evaluation.metrics import accuracy
from simcryo.image.ctf import CTFEvaluator, apply_ctf_padded
from simcryo.simulation import Projector, euler_to_matrix


@dataclass
class OracleParams:
    n_angles: int = 72          # in-plane grid: psi = j * 360 / n_angles deg (5 deg)
    max_shift: float = 8.0      # largest |shift| marginalised, px (4 simulated sigmas)
    shift_sigma: float = 2.0    # Gaussian shift prior per axis, px (simulate's --shift-sigma;
                                # 0: uniform over the disc of max_shift)
    batch: int = 8              # particles scored at once (memory ~ batch x K x n_angles maps)


def class_projections(volume, rot, tilt, device="cpu"):
    """Clean centred CTF-free projections (K, D, D) at the class views (rot, tilt) deg, as
    simulate's references.mrcs (simcryo.simulation's projector)."""
    vol = torch.as_tensor(np.asarray(volume, dtype=np.float32), device=device)
    rot, tilt = np.asarray(rot, np.float64), np.asarray(tilt, np.float64)
    return Projector(vol).project(euler_to_matrix(rot, tilt, np.zeros(len(rot))))


def signal_scales(projections, ctf, indices, apix, snr, noise_sigma):
    """a (B, K): the factor that gives C p_k the variance SNR * sigma^2 over the box, with the
    CTF applied on a padded box as the simulator does (ctf: CTFParams of all particles)."""
    k, n, _ = projections.shape
    b = len(indices)
    rows = np.repeat(np.asarray(indices), k)
    imgs = projections.repeat(b, 1, 1)
    signal = apply_ctf_padded(imgs, ctf.take(rows), apix) if ctf is not None else imgs
    var = signal.reshape(b, k, -1).var(-1, unbiased=False).clamp_min(1e-30)
    return noise_sigma * torch.sqrt(snr / var)


def shift_log_prior(aligner, sigma):
    """Log prior (S,) of the aligner's shift grid cells, normalised over the grid."""
    s = aligner.shifts()
    logp = (-(s ** 2).sum(-1) / (2 * sigma ** 2) if sigma > 0 else torch.zeros(len(s)))
    return logp - torch.logsumexp(logp, 0)


class OracleScorer:
    """log p(x_i | class k) up to a per-particle constant, pose marginalised (module
    docstring), for batches of one particle set: projections (K, D, D) of the class views,
    ctf a CTFParams of all particles or None, noise_sigma and snr as simulated."""

    def __init__(self, projections, ctf, apix, snr, noise_sigma=1.0, params=None):
        self.p = params or OracleParams()
        if not snr > 0 or not noise_sigma > 0:
            raise SimcryoError(f"oracle: SNR and noise sigma must be > 0 (got {snr}, "
                               f"{noise_sigma})")
        self.projections, self.ctf, self.apix = projections, ctf, apix
        self.snr, self.sigma = snr, noise_sigma
        self.aligner = ExhaustiveAligner(ExhaustiveParams(n_angles=self.p.n_angles,
                                                          max_shift=self.p.max_shift))
        self.prepared = self.aligner.prepare(projections)
        dev = projections.device
        self.log_prior = shift_log_prior(self.aligner, self.p.shift_sigma).to(dev).double()
        box = projections.shape[-1]
        self.ctf_of = CTFEvaluator(ctf, box, apix, dev, rfft=True) if ctf is not None else None

    def __call__(self, images, indices):
        """(B, K) float64 for images (B, D, D) = particles `indices` of the set."""
        c = self.ctf_of(indices) if self.ctf_of is not None else None
        cc, power = self.aligner.scores(images, self.prepared, c)      # (B,K,A,S), (B,K,A)
        a = signal_scales(self.projections, self.ctf, indices, self.apix, self.snr,
                          self.sigma)[:, :, None]
        loglik = (a[..., None] * cc - (a ** 2 * power / 2)[..., None]) / self.sigma ** 2
        loglik = loglik.double() + self.log_prior
        return torch.logsumexp(loglik.flatten(2), -1) - np.log(self.p.n_angles)


def oracle_accuracy(pset, volume, rot, tilt, snr, noise_sigma=1.0, truth=None, params=None,
                    device="cpu"):
    """The oracle's ACC on a simulated ParticleSet: {'acc', 'labels' (0-based), 'loglik'
    (N, K)}. volume: the map simulate projected (its volume.mrc), rot/tilt: the class views
    in class order 1..K (simulate's run.json 'classes'), truth: labels 1..K (default: the
    STAR's _simcryoTrueClass)."""
    if truth is None:
        truth = pset.particles.as_int("simcryoTrueClass")
    params = params or OracleParams()
    scorer = OracleScorer(class_projections(volume, rot, tilt, device), pset.ctf, pset.apix,
                          snr, noise_sigma, params)
    loglik = np.empty((pset.n, len(rot)))
    for idx, images in pset.iter_batches(params.batch):
        loglik[idx] = scorer(torch.from_numpy(images).to(device), idx).cpu().numpy()
    labels = loglik.argmax(1)
    return dict(acc=accuracy(labels + 1, truth), labels=labels, loglik=loglik)
