"""Stage 5: multi-reference refinement of the clustering against its class averages.

Deep features compare two noisy particles; at SNR 0.1 that pairwise signal is weak, while a
class average of hundreds of particles is nearly noise-free. Starting from the SCAN partition,
each iteration scores every particle against every class average at every in-plane angle and
every small shift (FFT cross-correlation), turns the scores into class posteriors with a
Gaussian noise model (expectation-maximisation, as RELION's 2D classification does), and
rebuilds the averages from the posterior-weighted, best-aligned particles.

Pose convention (simcryo.image.geometry): particle ~= shift(rotate(average, psi), shift).
"""
import math

import numpy as np
import torch

from simcryo.classify.augment import rotate
from simcryo.image.mask import soft_mask


def _load(images, idx, device):
    return torch.from_numpy(np.ascontiguousarray(images[idx], dtype=np.float32)).to(device)


def shift_offsets(max_shift, device):
    r = int(math.floor(max_shift))
    d = torch.arange(-r, r + 1, device=device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    keep = dx ** 2 + dy ** 2 <= max_shift ** 2 + 1e-6
    return dx[keep], dy[keep]


class Refiner:
    """EM over (class, angle, shift) on the working-box images (N, b, b)."""

    def __init__(self, images, k, radius, device, n_angles=36, max_shift=3.0, batch=64,
                 temperature=1.0, log=print, ctf=None):
        """`ctf(indices) -> (m, b, b//2+1)` |CTF| of the (phase-flipped) images in rfft2
        layout, or None: the references are then compared through each particle's CTF and
        the averages are CTF-corrected (Wiener), as particle = |CTF| * T(average) + noise."""
        self.ctf = ctf
        self.images, self.k, self.dev = images, k, device
        self.n, self.b = images.shape[0], images.shape[-1]
        self.mask = soft_mask(self.b, radius + 1.0, width=2.0, device=device)
        self.angles = torch.arange(n_angles, device=device, dtype=torch.float32) * (360.0 / n_angles)
        self.dx, self.dy = shift_offsets(max_shift, device)
        self.batch = batch
        self.temperature = temperature
        self.log = log
        self.sigma2 = None

    def averages(self, weights, psi, shift):
        """Posterior-weighted averages of particles aligned with their best pose per class.
        weights (N, K); psi (N, K) deg; shift (N, K, 2) px."""
        sums = torch.zeros(self.k, self.b, self.b, device=self.dev)
        for s in range(0, self.n, 256):
            idx = np.arange(s, min(s + 256, self.n))
            x = _load(self.images, idx, self.dev) * self.mask
            m = len(idx)
            w = weights[idx].to(self.dev)
            xr = x[:, None].expand(m, self.k, self.b, self.b).reshape(-1, self.b, self.b)
            sh = shift[idx].to(self.dev).reshape(-1, 2)
            ps = psi[idx].to(self.dev).reshape(-1)
            # undo: shift by -shift (integer roll in Fourier space), then rotate by -psi
            xs = _fourier_shift(xr, -sh)
            xa = rotate(xs[:, None], -ps)[:, 0].view(m, self.k, self.b, self.b)
            sums += (w[:, :, None, None] * xa).sum(0)
        tot = weights.sum(0).to(self.dev).clamp_min(1e-6)
        return sums / tot[:, None, None] * self.mask

    @torch.no_grad()
    def em_step(self, refs, log_prior, fixed=None):
        """One EM iteration with poses marginalised (as RELION's 2D classification).

        E: posterior of every (class, angle, shift) per particle under a Gaussian white noise
        model of variance sigma2 (times `temperature`). M: each average becomes the
        posterior-weighted sum of all particles over all their poses, computed per (class,
        angle) as a correlation of the particles with their posterior shift maps in Fourier
        space. `fixed` (N,) keeps particles in given classes (alignment-only iterations).
        Returns (new refs, class posteriors (N, K), best angle (N, K), best shift (N, K, 2),
        mean log-likelihood)."""
        A, K, b = len(self.angles), self.k, self.b
        S = len(self.dx)
        rot = rotate(refs.repeat_interleave(A, 0)[:, None], self.angles.repeat(K))[:, 0]
        rot = rot * self.mask
        rf = torch.fft.rfft2(rot)
        norms = (rot ** 2).sum((-1, -2)).view(K, A)
        # rfft2 Parseval weights (columns 1..b/2-1 stand for two) and reference power spectra
        colw = torch.full((b // 2 + 1,), 2.0, device=self.dev)
        colw[0] = 1.0
        colw[-1] = 1.0
        rpow = (rf.abs() ** 2).reshape(K * A, -1)
        den = torch.zeros(K, b, b // 2 + 1, device=self.dev)
        weights = torch.empty(self.n, K)
        best_psi = torch.empty(self.n, K)
        best_shift = torch.empty(self.n, K, 2)
        self.best_score = torch.empty(self.n, K)
        acc = torch.zeros(K * A, b, b // 2 + 1, dtype=torch.complex64, device=self.dev)
        wsum = torch.zeros(K, device=self.dev)
        py, px = self.dy % b, self.dx % b
        sigma2 = self.sigma2
        loglik, resid = 0.0, []
        for s in range(0, self.n, self.batch):
            idx = np.arange(s, min(s + self.batch, self.n))
            x = _load(self.images, idx, self.dev) * self.mask
            m = len(idx)
            xf = torch.fft.rfft2(x)
            if self.ctf is not None:
                c = self.ctf(idx).to(self.dev)
                xf = xf * c  # <x, C T(A)> = <C x, T(A)> for a real, even C
                nrm = torch.einsum("mf,rf->mr", (c ** 2 * colw).reshape(m, -1), rpow)
                nrm = nrm.view(m, K, A) / (b * b)
            else:
                nrm = norms[None].expand(m, K, A)
            cc = torch.fft.irfft2(xf[:, None] * rf.conj()[None], s=(b, b))  # (m, K*A, b, b)
            cc = cc[:, :, py, px].view(m, K, A, S)
            # -||x - C T(A)||^2 / 2 up to the ||x||^2 term, which cancels in the posteriors
            score = (cc - 0.5 * nrm[..., None]).reshape(m, K, A * S)
            best, arg = score.max(-1)
            x2 = (x ** 2).sum((-1, -2))
            resid.append((x2[:, None] - 2 * best).min(1).values.cpu())
            if sigma2 is None:
                sigma2 = float(resid[-1].mean()) / float(self.mask.sum())
            logp = score / (sigma2 * self.temperature) - math.log(A * S)
            logp = logp + log_prior[None, :, None]
            if fixed is not None:
                own = torch.as_tensor(fixed[idx], device=self.dev)
                keep = torch.nn.functional.one_hot(own, K).bool()
                logp = torch.where(keep[:, :, None], logp, torch.full_like(logp, -float("inf")))
            lse = torch.logsumexp(logp.reshape(m, -1), -1)
            loglik += float(lse.sum())
            post = torch.exp(logp - lse[:, None, None])  # (m, K, A*S)
            weights[idx] = post.sum(-1).cpu()
            wsum += post.sum((0, 2))
            # M-step accumulation: shift maps of the posteriors, correlated with the particles;
            # only (particle, class) pairs with a non-negligible posterior (usually ~1 per
            # particle once the classes have formed, so this costs ~1/K of the dense sum)
            cls_post = post.sum(-1)
            pi, pk = torch.nonzero(cls_post > 1e-4, as_tuple=True)
            wmap = torch.zeros(len(pi), A, b, b, device=self.dev)
            wmap[:, :, py, px] = post[pi, pk].view(len(pi), A, S)
            prod = xf[pi][:, None] * torch.fft.rfft2(wmap).conj()
            acc.view(K, A, b, b // 2 + 1).index_add_(0, pk, prod)
            if self.ctf is not None:
                den.index_add_(0, pk, cls_post[pi, pk][:, None, None] * c[pi] ** 2)
            self.best_score[idx] = best.cpu()
            a_i, s_i = arg // S, arg % S
            best_psi[idx] = self.angles[a_i].cpu()
            best_shift[idx] = torch.stack([self.dx[s_i], self.dy[s_i]], -1).float().cpu()
        self.sigma2 = max(float(torch.cat(resid).mean()) / float(self.mask.sum()), 1e-6)
        back = torch.fft.irfft2(acc, s=(b, b))  # rotated frames
        back = rotate(back[:, None], -self.angles.repeat(K))[:, 0].view(K, A, b, b).sum(1)
        if self.ctf is not None:
            # Wiener-style CTF correction (|CTF| is nearly radial, so the rotation-averaged
            # denominator is used for every angle)
            eps = 0.1 * den.mean((-1, -2), keepdim=True).clamp_min(1e-6)
            back = torch.fft.irfft2(torch.fft.rfft2(back) / (den + eps), s=(b, b))
        else:
            back = back / wsum.clamp_min(1e-6)[:, None, None]
        new_refs = recentre(back) * self.mask
        return new_refs, weights, best_psi, best_shift, loglik / self.n

    def revive_empty(self, refs, weights, psi, shift, min_share=0.25):
        """A class holding less than `min_share` of an equal share gets a new reference: the
        aligned average of the worse-fitting half of the largest class (EM cannot split a
        class by itself, and an empty class is wasted)."""
        mass = weights.sum(0)
        lab = weights.argmax(1)
        refs = refs.clone()
        for c in torch.nonzero(mass < min_share * self.n / self.k).flatten().tolist():
            big = int(torch.bincount(lab, minlength=self.k).argmax())
            members = torch.nonzero(lab == big).flatten()
            if len(members) < 4:
                break
            fit = self.best_score[members, big]
            worse = members[fit < fit.median()]
            w = torch.zeros(self.n, self.k)
            w[worse, c] = 1.0
            ps = psi.clone()
            sh = shift.clone()
            ps[:, c], sh[:, c] = psi[:, big], shift[:, big]
            refs[c] = self.averages(w, ps, sh)[c]
            lab[worse] = c
            self.log(f"[refine] class {c + 1} was empty: re-seeded from half of class {big + 1}")
        return refs

    @torch.no_grad()
    def best_correlation(self, idx, refs):
        """(len(idx), R) best normalised correlation of particles idx with each reference over
        all angles and shifts."""
        A, R, b = len(self.angles), refs.shape[0], self.b
        rot = rotate(refs.repeat_interleave(A, 0)[:, None], self.angles.repeat(R))[:, 0] * self.mask
        rf = torch.fft.rfft2(rot)
        norms = (rot ** 2).sum((-1, -2)).clamp_min(1e-12).sqrt().view(R, A)
        py, px = self.dy % b, self.dx % b
        out = []
        for s in range(0, len(idx), self.batch):
            x = _load(self.images, idx[s:s + self.batch], self.dev) * self.mask
            cc = torch.fft.irfft2(torch.fft.rfft2(x)[:, None] * rf.conj()[None], s=(b, b))
            cc = cc[:, :, py, px].view(len(x), R, A, -1) / norms[None, :, :, None]
            out.append(cc.flatten(2).max(-1).values.cpu())
        return torch.cat(out)

    def choose_seeds(self, labels, candidates, subset=48, gen=None):
        """Per class, the candidate member (rows of `candidates`, (K, m) indices) whose best
        correlations with a subset of the class's members are highest on average: a
        candidate of the majority view beats one of a contaminating view."""
        labels = np.asarray(labels)
        rng = np.random.default_rng(0 if gen is None else gen)
        seeds = []
        for c in range(self.k):
            members = np.nonzero(labels == c)[0]
            cand = np.asarray(candidates[c])
            if len(members) < 2 or len(cand) < 2:
                seeds.append(int(cand[0]) if len(cand) else 0)
                continue
            sub = np.sort(rng.choice(members, min(subset, len(members)), replace=False))
            refs = _load(self.images, cand, self.dev) * self.mask
            score = self.best_correlation(sub, refs)  # (subset, m)
            # a candidate's correlation with itself is not evidence
            score[torch.as_tensor(sub)[:, None] == torch.as_tensor(cand)[None]] = float("nan")
            seeds.append(int(cand[int(torch.nanmean(score, 0).argmax())]))
        return seeds

    def run(self, labels, iterations, seeds=None, align_iterations=3, progress=None,
            state=None, on_iteration=None):
        """Refine from hard labels; returns (weights (N, K), psi (N,), shift (N, 2), history).

        The first `align_iterations` keep the classes fixed and only align: each class starts
        from one seed particle (`seeds[k]`, e.g. the member nearest the class's feature
        centre), its members are aligned to it and averaged, and so on; the EM iterations that
        follow may move particles between classes. `state` (from `on_iteration(state)`)
        resumes after a completed iteration."""
        lab0 = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        fixed = torch.nn.functional.one_hot(lab0, self.k).float()
        if state is None:
            if seeds is None:
                seeds = [int(torch.nonzero(lab0 == c)[0]) if (lab0 == c).any() else 0
                         for c in range(self.k)]
            state = {"iteration": 0, "weights": fixed, "history": [], "sigma2": None,
                     "refs": (_load(self.images, np.asarray(seeds), self.dev) * self.mask).cpu(),
                     "psi": torch.zeros(self.n, self.k), "shift": torch.zeros(self.n, self.k, 2)}
        self.sigma2 = state["sigma2"]
        refs = state["refs"].to(self.dev)
        weights = state["weights"]
        psi, shift = state["psi"], state["shift"]
        total = align_iterations + iterations
        fixed_labels = lab0.numpy()
        for it in range(state["iteration"], total):
            prior = weights.mean(0).clamp_min(1e-3)
            align_only = it < align_iterations
            before = weights.argmax(1)
            refs, post, psi, shift, ll = self.em_step(
                refs, torch.log(prior / prior.sum()).to(self.dev),
                fixed=fixed_labels if align_only else None)
            weights = fixed if align_only else post
            if not align_only and it < total - 2:
                refs = self.revive_empty(refs, weights, psi, shift)
            changed = int((weights.argmax(1) != before).sum())
            state["history"].append({"iteration": it + 1, "loglik": ll, "changed": changed,
                                     "sigma2": self.sigma2, "align_only": align_only})
            state.update(iteration=it + 1, weights=weights, refs=refs.cpu(), psi=psi,
                         shift=shift, sigma2=self.sigma2)
            if progress:
                progress(it + 1, total, ll, changed)
            if on_iteration:
                on_iteration(state)
        lab = weights.argmax(1)
        rows = torch.arange(self.n)
        return weights, psi[rows, lab], shift[rows, lab], state["history"]


def recentre(refs):
    """Shift each reference so the centre of mass of its positive density sits at the box
    centre: without it the averages drift and particles run out of the searched shifts."""
    b = refs.shape[-1]
    c = torch.arange(b, device=refs.device, dtype=refs.dtype) - b // 2
    pos = refs.clamp_min(0)
    mass = pos.sum((-1, -2)).clamp_min(1e-12)
    cx = (pos.sum(-2) * c).sum(-1) / mass
    cy = (pos.sum(-1) * c).sum(-1) / mass
    return _fourier_shift(refs, -torch.stack([cx, cy], -1))


def _fourier_shift(x, shift):
    """Translate (n, b, b) images by (x, y) px (exact for integers, circular)."""
    b = x.shape[-1]
    k = torch.fft.fftfreq(b, device=x.device)
    ph = torch.exp(-2j * math.pi * (k[None, None, :] * shift[:, 0, None, None]
                                    + k[None, :, None] * shift[:, 1, None, None]))
    return torch.fft.ifft2(torch.fft.fft2(x) * ph).real
