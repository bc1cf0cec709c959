"""Starting references of the class alignment (a mixin of ClassAligner).

Per class: pairwise-align a small subset of members; the best-connected members (highest
mean correlation with their best-matching half of the others) each give a candidate seed, the
subset aligned onto that member. Each candidate is refined for a few iterations on a
subsample, and per class the one whose members correlate best with it wins: a single seed
can lock onto a pseudo-symmetric mixture of poses.

Under torchrun each rank computes the candidate seeds of every world_size-th class and the
ranks exchange them (sums with zeros: exact), so every rank starts from the same references;
the trials are sharded like every pass of ClassAligner.
"""
import torch

from simcryo import distributed
from simcryo.align.average import ClassAccumulator, centre_of_mass, spectra_to_images
from simcryo.align.aligner import warp_to_reference
from simcryo.align.scores import normalized_correlation
from simcryo.image.fourier import fourier_shift


class ReferenceSeeding:
    """seed_candidates / seed_references for ClassAligner (uses its attributes and passes)."""

    def seed_candidates(self):
        """Per class: pairwise-align a subset of members; the `starts` best-connected members
        (highest mean correlation with their best-matching half of the others) each give a
        candidate seed: the subset aligned onto that member. Returns (starts, K, abox, abox)."""
        p = self.p
        n_starts = max(int(p.starts), 1)
        seeds = torch.zeros(n_starts, self.k, self.abox, self.abox, device=self.dev)
        order = torch.randperm(self.n, generator=self.gen)  # on every rank: same generator
        for c in range(distributed.rank(), self.k, distributed.world_size()):
            members = order[self.labels[order] == c]
            if len(members) == 0:
                continue
            members = members[torch.argsort(-self.prob[members], stable=True)][:p.seed_subset]
            idx = members.numpy()
            xs = self._search_images(self.src.load(idx), idx)
            sh = (self.shift[idx] * self.scale).to(self.dev)
            centred = torch.fft.irfft2(fourier_shift(torch.fft.rfft2(xs), sh),
                                       s=xs.shape[-2:])
            m = len(idx)
            refs = self.aligner.prepare(centred * self.mask_small)
            parts = centred.repeat(m, 1, 1)                       # particle j in row i*m + j
            labs = torch.arange(m, device=self.dev).repeat_interleave(m)
            out = self.aligner.align(parts, refs, labs, shift0=torch.zeros(m * m, 2))
            ncc = normalized_correlation(out.spectrum, refs.spectra[labs]).view(m, m)
            if m > 1:
                ncc.fill_diagonal_(float("-inf"))
                connect = ncc.topk(max(1, (m - 1) // 2), dim=1).values.mean(1)
            else:
                connect = torch.zeros(1, device=self.dev)
            ranked = torch.argsort(connect, descending=True).tolist()
            for s_i in range(n_starts):
                best = ranked[s_i % m]
                rows = slice(best * m, (best + 1) * m)
                psi = out.psi[rows].clone()
                shift = out.shift[rows].clone()
                psi[best], shift[best] = 0.0, 0.0
                acc = ClassAccumulator(1, self.abox, self.dev)
                spec = torch.fft.rfft2(warp_to_reference(centred, psi, shift))
                c2 = None
                if self.src.has_ctf:
                    ct = self.src.ctf_images(idx, self.abox, psi)
                    c2 = ct * ct
                    if p.ctf_mode == "flip":
                        spec = spec * ct.abs()
                acc.add(spec, torch.zeros(m, dtype=torch.long, device=self.dev),
                        torch.ones(m), torch.arange(m) % 2, c2)
                seeds[s_i, c] = spectra_to_images(acc.wiener())[0]
        return distributed.all_reduce_sum(seeds)

    def _trial_indices(self):
        """A random subsample (at most `trial_size` per class) for choosing between seeds."""
        order = torch.randperm(self.n, generator=self.gen)
        keep = []
        for c in range(self.k):
            keep.append(order[self.labels[order] == c][: self.p.trial_size])
        return torch.sort(torch.cat(keep)).values.numpy()

    def seed_references(self):
        """Starting references: each candidate seed is refined by `trial_iterations` on a
        subsample; per class the candidate whose members correlate best with its refined
        average wins (a seed that locks onto a pseudo-symmetric mixture scores lower)."""
        seeds = self.seed_candidates()
        if len(seeds) == 1 or self.p.trial_iterations < 1:
            self.small = seeds[0]
            self._recentre_small()
            return
        saved = (self.psi.clone(), self.shift.clone())
        self.active = self._trial_indices()
        scores, refined = [], []
        for seed in seeds:
            self.psi, self.shift = saved[0].clone(), saved[1].clone()
            self.small = seed
            self._recentre_small()
            for _ in range(self.p.trial_iterations):
                self.iterate(track_ncc=True)
            lab = self.labels[self.active]
            ncc = self.ncc[self.active]
            sums = torch.zeros(self.k).index_add_(0, lab, ncc)
            counts = torch.bincount(lab, minlength=self.k).clamp_min(1)
            scores.append(sums / counts)
            refined.append(self.small.clone())
        self.active = None
        self.align_seconds.clear()
        self.psi, self.shift = saved
        scores = torch.stack(scores)                      # (starts, K)
        choice = scores.argmax(0)
        self.seed_scores = scores
        self.small = torch.stack([refined[int(choice[c])][c] for c in range(self.k)])

    def _recentre_small(self):
        com = centre_of_mass(self.small * self.mask_small)
        self.small = spectra_to_images(fourier_shift(torch.fft.rfft2(self.small), -com))
