"""The invariant encoder's input: rotation-invariant ring spectra of centred particles, and the
rotational neighbours that serve as its contrastive positives and as SCAN's neighbours.

Why: in-plane rotation and shift dominate particle images, and a network trained on images
to ignore them (SimCLR with rotation averaging) left its neighbours near chance on simulated
maps at SNR 0.1 (top-10 purity 0.14-0.35). Here both nuisances are removed before anything
is learned:
- shift: each particle is moved to the energy centroid of its low-passed image, which
  moves with the particle and does not depend on its angle;
- rotation: each centred particle is sampled on rings and Fourier transformed along the
  angle; a rotation by psi multiplies the coefficient of angular frequency k by exp(-i k psi).

Two particles' rotational similarity is the maximum over psi of the correlation of their
ring spectra: the normalised cross-correlation of the two images after the best in-plane
rotation. All pairs are compared up to `exact_limit` particles; above it, each particle's
candidates come from the cosine neighbours of the cross-ring invariants c_k(r1) c_k(r2)*
(rotation invariant, so comparable without a search), and only those are compared. Memory:
per-particle arrays only (ring spectra, invariants); similarities in row blocks.

Under torchrun (simcryo.distributed) each rank computes the spectra, projections and
neighbour queries of its block of the particles against all of them and the rows are
shared (exact: every value is computed by one rank); the basis is fit on every rank alike.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from simcryo import distributed
from simcryo.align import centre_of_mass, ring_radii, sample_rings
from simcryo.classify.neighbors import knn_cosine
from simcryo.image.fourier import shift_images
from simcryo.image.mask import soft_mask

N_THETA = 64        # samples per ring (angular frequencies up to 31 are representable)
N_ANGLES = 36       # rotations tried per pair (10 degrees; kept frequencies <= 12 vary slower)
CENTRE_LOWPASS = 2.0  # px: low-pass of the centroid (2.0 beat 4.0 and a correlation with the
#                      particles' rotational average on the hand and phantom sets, SNR 0.1)
SAMPLE = 4096       # particles that define the invariants' basis
CANDIDATE_DIMS = 64  # leading invariant components used to pick candidates


def _load(images, idx, prefilter, device):
    x = torch.from_numpy(np.ascontiguousarray(images[idx], dtype=np.float32)).to(device)
    return x if prefilter is None else prefilter(x[:, None])[:, 0]


class RingSpectra:
    """Centred, masked, ring-sampled particles: `coef` (N, R, n_angular + 1) complex64,
    normalised so that the rotational similarity of two particles is in [-1, 1]."""

    def __init__(self, images, radius, n_angular, device, prefilter=None, batch=1024):
        n, box = len(images), images.shape[-1]
        self.radius, self.n_angular = radius, n_angular
        self.mask = soft_mask(box, radius, width=2.0, device=device)
        self.radii = ring_radii(box, radius).to(device)
        coef = torch.empty(n, len(self.radii), n_angular + 1, dtype=torch.complex64)
        self.shifts = torch.empty(n, 2)
        for idx in distributed.shard_blocks(n, batch):
            c, s = self._spectra(_load(images, idx, prefilter, device))
            coef[idx], self.shifts[idx] = c.cpu(), s.cpu()
        distributed.share_all(coef, self.shifts)
        # the k = 0 term of every ring carries the common radial profile: remove it
        coef[:, :, 0] -= coef[:, :, 0].mean(0, keepdim=True)
        self.coef = coef.div_(self.norm(coef)[:, None, None].clamp_min(1e-12))  # no 2nd copy

    def _spectra(self, x):
        s = centre_of_mass(x, radius=self.radius, lowpass_sigma=CENTRE_LOWPASS)
        x = shift_images(x, -s) * self.mask
        rings = sample_rings(x, torch.zeros(len(x), 2, device=x.device), self.radii, N_THETA)
        c = torch.fft.rfft(rings, dim=-1)[:, :, :self.n_angular + 1] / N_THETA
        return c * self.radii.sqrt()[None, :, None], s  # sqrt(r): ring sums are area sums

    @staticmethod
    def norm(coef):
        """sqrt of sum_k w_k |c_k|^2 (`_pair_weights`): the image norm."""
        return ((coef.abs() ** 2).sum(1) * _pair_weights(coef.shape[-1])).sum(-1).sqrt()


def _pair_weights(n):
    """w_0 = 1, w_k = 2: a real ring's angular frequency k > 0 stands for the +-k pair."""
    w = torch.full((n,), 2.0)
    w[0] = 1.0
    return w


def _real(coef):
    return torch.cat([coef.real, coef.imag], -1).flatten(1)


def _rotated(coef, n_angles=N_ANGLES):
    """(B, A, D) real vectors whose dot with _real(b) is the correlation at each angle."""
    k = torch.arange(coef.shape[-1])
    theta = torch.arange(n_angles) * (2 * math.pi / n_angles)
    phase = torch.exp(1j * k[None, :] * theta[:, None]) * _pair_weights(coef.shape[-1])
    phase = phase.to(coef.dtype)  # (A, K)
    rot = coef[:, None] * phase[None, :, None, :]
    return torch.cat([rot.real, rot.imag], -1).flatten(2)


def cross_invariants(coef):
    """Rotation-invariant (B, D) vectors: c_k(r1) c_k(r2)* for r1 <= r2 and every k (the
    relative phase of the rings at each angular frequency)."""
    r = coef.shape[1]
    iu = torch.triu_indices(r, r)
    parts = []
    for k in range(coef.shape[-1]):
        ck = coef[:, :, k]
        v = (ck[:, :, None] * ck[:, None, :].conj())[:, iu[0], iu[1]]
        parts += [v.real] if k == 0 else [v.real, v.imag]
    return torch.cat(parts, 1)


class InvariantBasis:
    """PCA of the cross-ring invariants, fit on a sample; `project` whitens each component
    to unit variance (so the encoder sees comparable inputs)."""

    def __init__(self, coef, dim, seed=0):
        g = torch.Generator().manual_seed(seed)
        n = len(coef)
        sample = torch.randperm(n, generator=g)[:min(n, SAMPLE)].sort().values
        x = cross_invariants(coef[sample])
        self.mean = x.mean(0)
        # eigenvectors of the covariance: a few times faster than the SVD of the sample
        xc = (x - self.mean).double()
        var, vec = torch.linalg.eigh(xc.T @ xc / max(len(x) - 1, 1))
        dim = min(dim, len(x), x.shape[1])
        self.components = vec.flip(1)[:, :dim].T.float()
        self.scale = var.flip(0)[:dim].clamp_min(0).sqrt().float().clamp_min(1e-12)

    def project(self, coef, dims=None, whiten=True, batch=4096):
        comp = self.components[:dims]
        out = torch.empty(len(coef), len(comp))
        for idx in distributed.shard_blocks(len(coef), batch):
            out[idx] = (cross_invariants(coef[idx]) - self.mean) @ comp.T
        distributed.share_all(out)
        return out.div_(self.scale[:len(comp)]) if whiten else out  # no 2nd (N, dims)


def rotational_knn(coef, k, exact_limit, n_candidates, basis=None, device="cpu", block=64):
    """Indices (N, k), best first, of each particle's k most similar others by rotational
    similarity. All pairs when N <= exact_limit; otherwise among the `n_candidates` cosine
    neighbours of the leading invariant components (InvariantBasis `basis`, not whitened:
    whitening would give the noise-dominated components the weight of the signal's)."""
    n = len(coef)
    k = int(min(k, n - 1))
    candidates = None
    if n > exact_limit:
        leading = basis.project(coef, dims=CANDIDATE_DIMS, whiten=False)
        candidates, _ = knn_cosine(leading.numpy(), min(max(k, n_candidates), n - 1), device,
                                   index_dtype=np.int32, similarities=False)  # (N, 200)
        candidates = torch.from_numpy(candidates)
        del leading
    # all pairs: every particle's real vector at once; candidates: only each block's (a
    # copy of all would be another (N, R, angular) array at 10^5 particles)
    base = _real(coef).to(device) if candidates is None else None
    out = np.empty((n, k), np.int64)
    for idx in distributed.shard_blocks(n, block):
        q = _rotated(coef[idx]).to(device)
        if candidates is None:
            score = torch.einsum("bad,nd->ban", q, base).amax(1)
            score[torch.arange(len(idx)), torch.as_tensor(idx)] = -float("inf")
            out[idx] = score.topk(k, dim=1).indices.cpu().numpy()
        else:
            cand = candidates[idx].long()
            others = _real(coef[cand.flatten()]).view(len(idx), cand.shape[1], -1).to(device)
            score = torch.einsum("bad,bcd->bac", q, others).amax(1)
            best = score.topk(k, dim=1).indices.cpu()
            out[idx] = torch.gather(cand, 1, best).numpy()
    return distributed.share_all(out)


def neighbour_batches(n, neighbors, batch_size, gen, use):
    """Contrastive pairs for one epoch: (anchors, positives), each positive drawn from the
    anchor's `use` nearest rotational neighbours."""
    nb = torch.as_tensor(neighbors[:, :use])
    perm = torch.randperm(n, generator=gen)
    stop = n - n % batch_size if n >= batch_size else n
    for s in range(0, stop, batch_size):
        i = perm[s:s + batch_size]
        j = nb[i, torch.randint(0, nb.shape[1], (len(i),), generator=gen)]
        yield i, j


def feature_noise(x, p, gen):
    """Input dropout: the encoder's augmentation (its inputs carry no rotation or shift)."""
    keep = (torch.rand(x.shape, generator=gen) >= p).to(x.device, x.dtype)  # CPU stream
    return x * keep / (1 - p)


@torch.no_grad()
def embed(encoder, z, device, batch=4096):
    encoder.eval()
    out = torch.zeros(len(z), encoder.out_dim)
    for idx in distributed.shard_blocks(len(z), batch):
        out[idx] = F.normalize(encoder(z[idx].to(device)), dim=1).cpu()
    return distributed.share_all(out).numpy().astype(np.float32)
