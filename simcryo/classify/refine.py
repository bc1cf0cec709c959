"""Stage 5: multi-reference refinement of the clustering against its class averages.

Deep features compare two noisy particles; at SNR 0.1 that pairwise signal is weak, while a
class average of hundreds of particles is nearly noise-free. Starting from the SCAN partition,
each iteration scores every particle against every class average at every in-plane angle and
every small shift (simcryo.align.exhaustive), turns the scores into class posteriors with a
Gaussian noise model (expectation-maximisation, as RELION's 2D classification does), and
rebuilds the averages from the particles weighted by their posteriors over all poses
(simcryo.align.average.ClassAccumulator).

Poses are RELION's (simcryo.image.geometry): particle ~= transform_images(average, psi, shift).

Under torchrun (simcryo.distributed) each rank scores its block of the particles; the M-step
sums are all-reduced, and the posteriors, best poses and residuals shared every iteration, as
RELION's MPI ranks do: every rank holds the same averages, sigma2 and per-particle arrays.
"""
import math
import time

import numpy as np
import torch

from simcryo import distributed
from simcryo.align import (ClassAccumulator, ExhaustiveAligner, ExhaustiveParams,
                           density_centroid, spectra_to_images, warp_to_reference)
from simcryo.image.fourier import crop_spectrum, fourier_crop
from simcryo.image.mask import soft_mask


def _load(images, idx, device):
    return torch.from_numpy(np.ascontiguousarray(images[idx], dtype=np.float32)).to(device)


def _blocks(indices, size):
    for s in range(0, len(indices), size):
        yield indices[s:s + size]


class Refiner:
    """EM over (class, angle, shift) on the working-box images (N, b, b)."""

    def __init__(self, images, k, radius, device, n_angles=36, max_shift=3.0, batch=64,
                 temperature=1.0, log=print, ctf=None, ctf_epsilon=0.1, min_posterior=1e-4):
        """`ctf(indices) -> (m, b, b//2+1)` |CTF| of the (phase-flipped) images in rfft2
        layout, or None: the references are then compared through each particle's CTF and
        the averages are CTF-corrected (regularised by `ctf_epsilon` x the mean CTF^2), as
        particle = |CTF| * T(average) + noise. `min_posterior`: (particle, class) pairs
        below it are left out of the averages."""
        self.ctf = ctf
        self.images, self.k, self.dev = images, k, device
        self.n, self.b = images.shape[0], images.shape[-1]
        self.mask = soft_mask(self.b, radius + 1.0, width=2.0, device=device)
        # bilinear as the EM has always rotated its low-resolution references
        self.aligner = ExhaustiveAligner(ExhaustiveParams(n_angles=n_angles, max_shift=max_shift,
                                                          interpolation="bilinear"),
                                         mask=self.mask)
        self.psi_grid = self.aligner.psi(device)
        self.shift_grid = self.aligner.shifts(device)
        self.batch = batch
        self.temperature = temperature
        self.ctf_epsilon = ctf_epsilon
        self.min_posterior = min_posterior
        self.log = log
        self.sigma2 = None

    def _particles(self, idx):
        return _load(self.images, idx, self.dev) * self.mask

    def _references(self, acc):
        """Masked, re-centred averages of an accumulator (K classes). Without CTF the
        denominator is the posterior mass: the plain weighted mean (the tiny regulariser
        only keeps an empty class at zero); with CTF the Wiener-style correction."""
        eps = self.ctf_epsilon if self.ctf is not None else 1e-6
        avg = spectra_to_images(acc.corrected(eps)) * self.mask
        # without re-centring the averages drift and particles run out of the searched shifts
        acc.shift(-density_centroid(avg))
        return spectra_to_images(acc.corrected(eps)) * self.mask

    def averages(self, labels, weights, psi, shift, rows=None):
        """Weighted averages (K, b, b) of particles aligned with their poses (RELION):
        labels (N,), weights (N,), psi (N,) deg, shift (N, 2) px; only `rows` (indices,
        the same on every rank; None: all) are read."""
        acc = ClassAccumulator(self.k, self.b, self.dev)
        lab = torch.as_tensor(labels, dtype=torch.long)
        w = torch.as_tensor(weights, dtype=torch.float32)
        rows = np.arange(self.n) if rows is None else np.asarray(rows)
        for idx in _blocks(rows[distributed.shard(len(rows))], 256):
            a = warp_to_reference(self._particles(idx), psi[idx].to(self.dev),
                                  shift[idx].to(self.dev))
            acc.add(torch.fft.rfft2(a), lab[idx], w[idx], torch.zeros(len(idx)))
        return self._references(acc.all_reduce())

    @torch.no_grad()
    def em_step(self, refs, log_prior, fixed=None, classes=None, groups=None, poses=None,
                weights=None, table=None):
        """One EM iteration with poses marginalised (as RELION's 2D classification).

        E: posterior of every (class, angle, shift) per particle under a Gaussian white noise
        model of variance sigma2 (times `temperature`). M: each average becomes the
        posterior-weighted sum of the scored particles over all their poses: per (class,
        angle), the particles averaged over their shift posteriors (the aligner's
        marginal_spectra), accumulated per (class, angle) frame and folded into the class
        frames (ClassAccumulator.fold_frames). `fixed` (N,) keeps particles in given classes
        (alignment-only iterations). `classes` (N, M) scores particle i only against
        classes[i] (the pruned search; the others get posterior 0). `groups`, a list of
        (rows, classes or None), scores only those particles, each group against its own
        classes (None: [(all, classes)]). Returns (new refs, class posteriors (N, K), best
        psi (N, K), best shift (N, K, 2) (RELION), mean log-likelihood of the scored rows);
        unscored particles have posterior 0 and the poses of unscored classes are NaN.
        `poses` (psi (N, K), shift (N, K, 2)), `weights` (N, K) and `table` (N, K), if
        given, are written in place and returned, so that no second (N, K) array exists:
        the poses and weights at the scored rows (the other rows kept), the best scores at
        the scored (particle, class) pairs (the others kept; without `table` they are
        -inf). `self.best_score` is the array of best scores."""
        K, A, S = self.k, len(self.psi_grid), len(self.shift_grid)
        groups = [(np.arange(self.n), classes)] if groups is None else groups
        scored = np.concatenate([np.asarray(rows) for rows, _ in groups])
        group_of = np.concatenate([np.full(len(rows), j) for j, (rows, _) in enumerate(groups)])
        mine = distributed.shard(len(scored))
        prepared = self.aligner.prepare(refs)
        frames = ClassAccumulator(K * A, self.b, self.dev)
        if weights is None:
            weights = torch.zeros(self.n, K)
        else:
            weights[torch.as_tensor(scored)] = 0.0
        if poses is None:
            best_psi = torch.full((self.n, K), float("nan"))
            best_shift = torch.full((self.n, K, 2), float("nan"))
        else:
            best_psi, best_shift = poses
            best_psi[torch.as_tensor(scored)] = float("nan")
            best_shift[torch.as_tensor(scored)] = float("nan")
        self.best_score = torch.full((self.n, K), -float("inf")) if table is None else table
        resid, lse_all = torch.zeros(self.n), torch.zeros(self.n)
        sigma2 = self.sigma2
        if sigma2 is None:  # the first iteration: from the first batch of the scored particles
            rows, cls = groups[0]
            sigma2 = float(self._score(np.asarray(rows)[:self.batch], prepared,
                                       cls)[-1].mean()) / float(self.mask.sum())
        for j, (_, group_classes) in enumerate(groups):
            for idx in _blocks(scored[mine][group_of[mine] == j], self.batch):
                x, c, cls, score, best, arg, resid[idx] = self._score(idx, prepared,
                                                                      group_classes)
                m = len(idx)
                logp = score / (sigma2 * self.temperature) - math.log(A * S)
                logp = logp + log_prior[cls][:, :, None]
                if fixed is not None:
                    own = torch.as_tensor(fixed[idx], device=self.dev)
                    keep = cls == own[:, None]
                    logp = torch.where(keep[:, :, None], logp,
                                       torch.full_like(logp, -float("inf")))
                lse = torch.logsumexp(logp.reshape(m, -1), -1)
                lse_all[idx] = lse.cpu()
                post = torch.exp(logp - lse[:, None, None]).view(m, -1, A, S)
                rows = torch.as_tensor(idx)[:, None]
                cls_cpu = cls.cpu()
                weights[rows, cls_cpu] = post.sum((-1, -2)).cpu()
                self._accumulate(frames, x, c, post, cls)
                self.best_score[rows, cls_cpu] = best.cpu()
                best_psi[rows, cls_cpu] = self.psi_grid[arg // S].cpu()
                best_shift[rows, cls_cpu] = self.shift_grid[arg % S].cpu()
        for t in (weights, best_psi, best_shift, self.best_score, resid, lse_all):
            distributed.share_rows(t, scored)
        frames.all_reduce()
        # summed per batch of all the scored particles, as one process always has
        loglik = sum(float(lse_all[idx].sum()) for idx in _blocks(scored, self.batch))
        self.sigma2 = max(float(resid[scored].mean()) / float(self.mask.sum()), 1e-6)
        new_refs = self._references(frames.fold_frames(self.psi_grid))
        return new_refs, weights, best_psi, best_shift, loglik / len(scored)

    def _score(self, idx, prepared, classes):
        """E-step scores of the particles idx: (images, |CTF| or None, classes scored
        (m, M), score (m, M, A*S) = -||x - C T(A)||^2 / 2 up to the ||x||^2 term (it cancels
        in the posteriors), best score and its pose index (m, M), residual (m,): the least
        ||x - C T(A)||^2 over the classes, for sigma2)."""
        m = len(idx)
        x = self._particles(idx)
        cls = (torch.arange(self.k, device=self.dev).expand(m, self.k) if classes is None
               else torch.as_tensor(classes[idx], device=self.dev, dtype=torch.long))
        c = None if self.ctf is None else self.ctf(idx).to(self.dev)
        cc, power = self.aligner.scores(x, prepared, ctf=c,
                                        classes=None if classes is None else cls)
        score = (cc - 0.5 * power[..., None]).reshape(m, cls.shape[1], -1)
        best, arg = score.max(-1)
        x2 = (x ** 2).sum((-1, -2))
        return x, c, cls, score, best, arg, (x2[:, None] - 2 * best).min(1).values.cpu()

    def _accumulate(self, frames, x, c, post, cls):
        """M-step sums of one batch into the (class, angle) frames: only the (particle,
        class) pairs with a non-negligible posterior (usually ~1 per particle once the
        classes have formed, so this costs ~1/K of the dense sum). post (m, M, A, S) over
        the classes cls (m, M)."""
        A = post.shape[2]
        xf = torch.fft.rfft2(x)
        if c is not None:
            xf = xf * c  # numerator CTF * F, denominator CTF^2 (Wiener)
        pi, pj = torch.nonzero(post.sum((-1, -2)) > self.min_posterior, as_tuple=True)
        # pairs in chunks: each holds A shift-weight maps and spectra, and while posteriors
        # are spread a batch has up to (particles x classes searched) pairs
        chunk = max(1, self.aligner.p.chunk_values // (A * self.b * self.b))
        for s in range(0, len(pi), chunk):
            i, j = pi[s:s + chunk], pj[s:s + chunk]
            cell = post[i, j]                                 # (P, A, S)
            mass = cell.sum(-1)                               # (P, A)
            spectra = self.aligner.marginal_spectra(xf[i], cell)
            # ClassAccumulator weighs spectra: pass the shift-averaged particle, weight = mass
            spectra = spectra / mass.clamp_min(1e-30)[..., None, None]
            frame = (cls[i, j][:, None] * A + torch.arange(A, device=self.dev)[None]).reshape(-1)
            ctf2 = None if c is None else (c[i] ** 2)[:, None].expand(-1, A, -1, -1)
            b, m = spectra.shape[-2:]
            frames.add(spectra.reshape(-1, b, m), frame, mass.reshape(-1),
                       torch.zeros(len(frame), dtype=torch.long),
                       None if ctf2 is None else ctf2.reshape(-1, b, m))

    def search_classes(self, table, ranking, labels, m):
        """The pruned search's classes (N, m): each particle's own class, then the classes
        with the highest entries of `table` (N, K: the best score each class reached the
        last time it was scored against the particle, -inf if never), then, among classes
        never scored, those first in `ranking` (N, K). None (every class) when m >= K."""
        if m <= 0 or m >= self.k:
            return None
        out = torch.empty(self.n, m, dtype=torch.long)
        for s in range(0, self.n, 4096):   # row blocks: all rows' sort keys and orders
            rows = slice(s, s + 4096)
            order = torch.argsort(ranking[rows], dim=1, descending=True, stable=True)
            key = table[rows].gather(1, order)
            key = torch.where(order == labels[rows, None], float("inf"), key)
            pick = torch.argsort(key, dim=1, descending=True, stable=True)[:, :m]
            out[rows] = order.gather(1, pick)
        return out

    @torch.no_grad()
    def prescreen(self, refs, box, rows=None, out=None):
        """(N, K) coarse scores of every particle against every class: the best
        -||x - C T(A)||^2 / 2 over the poses, with the masked particles and references
        Fourier-cropped to `box` px, the shifts scaled with it and the angular step too (the
        same arc at the particle's edge in px): ~(box / b)^3 of one full iteration. Ranks the
        classes for the first EM iteration, as no fine score of the other classes exists.
        Only `rows` (None: all) are scored, into `out` (N, K) if given (else zeros)."""
        box = min(box, self.b)
        scale = box / self.b
        aligner = ExhaustiveAligner(ExhaustiveParams(
            n_angles=max(8, round(len(self.psi_grid) * scale)),
            max_shift=max(1.0, self.aligner.p.max_shift * scale), interpolation="bilinear"))
        prepared = aligner.prepare(fourier_crop(refs, box))
        out = torch.zeros(self.n, self.k) if out is None else out
        rows = np.arange(self.n) if rows is None else np.asarray(rows)
        for idx in _blocks(rows[distributed.shard(len(rows))], self.batch):
            x = fourier_crop(self._particles(idx), box)
            c = (None if self.ctf is None
                 else crop_spectrum(self.ctf(idx).to(self.dev), box) / scale ** 2)
            cc, power = aligner.scores(x, prepared, ctf=c)
            out[idx] = (cc - 0.5 * power[..., None]).flatten(2).max(-1).values.cpu()
        distributed.share_rows(out, rows)
        return out

    def revive_empty(self, refs, weights, psi, shift, rows=None, min_share=0.25):
        """A class holding less than `min_share` of an equal share of the scored `rows`
        (None: all) gets a new reference: the aligned average of the worse-fitting half of
        the largest class (EM cannot split a class by itself, and an empty class is
        wasted)."""
        rows = torch.arange(self.n) if rows is None else torch.as_tensor(rows)
        mass = weights[rows].sum(0)
        lab = torch.full((self.n,), -1, dtype=torch.long)
        lab[rows] = weights[rows].argmax(1)
        refs = refs.clone()
        self.revived, self.donors = [], []
        # the pruned search leaves the poses of unscored classes NaN; they get weight 0 here
        psi, shift = torch.nan_to_num(psi), torch.nan_to_num(shift)
        for c in torch.nonzero(mass < min_share * len(rows) / self.k).flatten().tolist():
            big = int(torch.bincount(lab[rows], minlength=self.k).argmax())
            members = torch.nonzero(lab == big).flatten()
            if len(members) < 4:
                break
            fit = self.best_score[members, big]
            worse = members[fit < fit.median()]
            w = torch.zeros(self.n)
            w[worse] = 1.0
            own = torch.full((self.n,), c, dtype=torch.long)
            refs[c] = self.averages(own, w, psi[:, big], shift[:, big], rows=worse.numpy())[c]
            lab[worse] = c
            self.revived.append(c)
            self.donors.append((big, members))
            self.log(f"[refine] class {c + 1} was empty: re-seeded from half of class {big + 1}")
        return refs

    def _flag_revived(self, table):
        """Mark each class re-seeded by revive_empty to be scored next, below only the own
        class, by the particles of the class it was split from (its donor's members at the
        split): the particles it can take. Every particle scoring every re-seeded class made
        the next iteration search up to M + K classes (58 re-seeded of K = 100 at box 128).
        Returns the most re-seeded classes one particle was given (the extra search width)."""
        count = torch.zeros(self.n, dtype=torch.long)
        for c, (_, members) in zip(self.revived, self.donors):
            table[members, c] = 1e30
            count[members] += 1
        return int(count.max()) if self.revived else 0

    @torch.no_grad()
    def best_correlation(self, idx, refs, ctf=None):
        """(len(idx), R) best normalised correlation of particles idx with each reference over
        all angles and shifts; with `ctf` (as the constructor's) each reference is seen
        through the particle's |CTF| (the matched filter of a phase-flipped particle)."""
        prepared = self.aligner.prepare(refs)
        out = []
        for s in range(0, len(idx), self.batch):
            block = idx[s:s + self.batch]
            c = None if ctf is None else ctf(block).to(self.dev)
            cc, power = self.aligner.scores(self._particles(block), prepared, ctf=c)
            ncc = cc / power.clamp_min(1e-12).sqrt()[..., None]
            out.append(ncc.flatten(2).max(-1).values.cpu())
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
            refs = self._particles(cand)
            score = self.best_correlation(sub, refs)  # (subset, m)
            # a candidate's correlation with itself is not evidence
            score[torch.as_tensor(sub)[:, None] == torch.as_tensor(cand)[None]] = float("nan")
            seeds.append(int(cand[int(torch.nanmean(score, 0).argmax())]))
        return seeds

    def subset_rows(self, subset, seed):
        """The particles of the subset iterations: `subset` of them drawn at random (fixed by
        `seed`), sorted; None (all) when `subset` is 0 or at least N."""
        if not 0 < subset < self.n:
            return None
        return np.sort(np.random.default_rng(seed).choice(self.n, subset, replace=False))

    def _groups(self, active, align_only, state, table, rank, before, widths):
        """em_step's groups: the particles `active` split into those having their first EM
        iteration (widths[0] classes each, M1) and the others (widths[1], M); the
        alignment-only iterations score the own class only (the other classes' scores would
        go unused with the labels fixed)."""
        if align_only:
            return [(active, self.search_classes(table, rank, before, 1))]
        seen = state["em_scored"][torch.as_tensor(active)].numpy()
        return [(rows, self.search_classes(table, rank, before, width))
                for rows, width in ((active[~seen], widths[0]), (active[seen], widths[1]))
                if len(rows)]

    def run(self, labels, iterations, seeds=None, align_iterations=3, progress=None,
            state=None, on_iteration=None, search_classes=0, ranking=None,
            first_search_classes=0, prescreen_box=0, subset=0, full_iterations=2,
            subset_seed=0):
        """Refine from hard labels; returns (weights (N, K), psi (N,), shift (N, 2), history).

        The first `align_iterations` keep the classes fixed and only align: each class starts
        from one seed particle (`seeds[k]`, e.g. the member nearest the class's feature
        centre), its members are aligned to it and averaged, and so on; the EM iterations that
        follow may move particles between classes. The alignment-only iterations score each
        particle against its own class only: with the labels fixed no other class gets a
        posterior. `search_classes` M (0: all K) prunes the search: each particle is scored
        against its own class and the M - 1 classes it scored best against when last scored;
        classes never scored follow in the order of `ranking` (N, K), e.g. the clustering
        probabilities. A particle's first EM iteration has no scores of other classes yet:
        it scores the own class and the `first_search_classes` - 1 first in `ranking` (0:
        all K), or, with `prescreen_box` > 0, first by the coarse scores of `prescreen` at
        that box; later iterations choose among the classes scored so far. A re-seeded
        class is scored in the next iteration by the particles of the class it was split
        from, on top of their M. `subset` > 0 (fewer
        than N) runs every iteration but the last `full_iterations` on that many particles
        drawn at random (`subset_seed`), as cryoSPARC's batches: the averages are then as
        well determined at a fraction of the cost, and the last iterations score everyone.
        `state` (from `on_iteration(state)`) resumes after a completed iteration."""
        lab0 = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        if state is None:
            if seeds is None:
                seeds = [int(torch.nonzero(lab0 == c)[0]) if (lab0 == c).any() else 0
                         for c in range(self.k)]
            one_hot = torch.nn.functional.one_hot(lab0, self.k).float()
            # its own copy: the prescreen rewrites rows of it in place
            rank = one_hot.clone() if ranking is None else torch.tensor(np.asarray(ranking),
                                                                        dtype=torch.float32)
            # the one-hot weights of the alignment-only iterations; the EM iterations then
            # write theirs into this array
            state = {"iteration": 0, "weights": one_hot, "history": [], "sigma2": None,
                     "refs": self._particles(np.asarray(seeds)).cpu(),
                     "psi": torch.zeros(self.n, self.k), "shift": torch.zeros(self.n, self.k, 2),
                     "table": torch.full((self.n, self.k), -float("inf")), "ranking": rank,
                     "em_scored": torch.zeros(self.n, dtype=torch.bool)}
        # a checkpoint of an older run: every particle had its EM iterations together
        state.setdefault("em_scored", torch.full((self.n,), state["iteration"] > align_iterations))
        self.sigma2 = state["sigma2"]
        refs = state["refs"].to(self.dev)
        weights = state["weights"]
        psi, shift = state["psi"], state["shift"]
        table, rank = state["table"], state["ranking"]
        total = align_iterations + iterations
        fixed_labels = lab0.numpy()
        pruned = 0 < search_classes < self.k
        first = first_search_classes if pruned and 0 < first_search_classes < self.k else self.k
        widths = (first, search_classes if pruned else self.k)
        if pruned:
            self.log(f"[refine] pruned search: each particle against {search_classes} of "
                     f"{self.k} classes ({first} in its first EM iteration)")
        sub = self.subset_rows(subset, subset_seed)
        last_subset = total - max(1, full_iterations)
        if sub is not None and last_subset > 0:
            self.log(f"[refine] iterations 1-{last_subset} on a random subset of {len(sub)} "
                     f"of {self.n} particles, the last {total - last_subset} on all")

        def rows_of(it):
            return None if sub is None or it >= last_subset else sub
        for it in range(state["iteration"], total):
            t0 = time.perf_counter()
            prev = rows_of(it - 1) if it > 0 else None
            prior = (weights if prev is None else weights[prev]).mean(0).clamp_min(1e-3)
            align_only = it < align_iterations
            before = weights.argmax(1)
            rows = rows_of(it)
            active = np.arange(self.n) if rows is None else rows
            fresh = ([] if align_only else
                     active[~state["em_scored"][torch.as_tensor(active)].numpy()])
            if len(fresh) and prescreen_box > 0 and pruned and first < self.k:
                t1 = time.perf_counter()
                rank = state["ranking"] = self.prescreen(refs, prescreen_box, rows=fresh,
                                                         out=rank)
                self.log(f"[refine] first EM iteration of {len(fresh)} particles: candidates "
                         f"from a coarse search of every class at {min(prescreen_box, self.b)} "
                         f"px ({time.perf_counter() - t1:.1f} s)")
            # the classes re-seeded last iteration are scored on top of the M by their
            # donors' particles (they would otherwise take every slot after the own class,
            # and no particle could reach a real class)
            extra = 0 if align_only else state.get("revived", 0)
            groups = self._groups(active, align_only, state, table, rank, before,
                                  [w + extra for w in widths])
            # the labels stay fixed while only aligning: the weights stay the one-hot ones
            refs, weights, psi, shift, ll = self.em_step(
                refs, torch.log(prior / prior.sum()).to(self.dev),
                fixed=fixed_labels if align_only else None, groups=groups, poses=(psi, shift),
                weights=None if align_only else weights, table=table)
            if align_only:
                weights = state["weights"]
            else:
                state["em_scored"][torch.as_tensor(active)] = True
            self.revived, self.donors = [], []
            if not align_only and it < total - 2:
                refs = self.revive_empty(refs, weights, psi, shift, rows=rows)
            extra = self._flag_revived(table)
            changed = int((weights.argmax(1) != before).sum())
            searched = max(self.k if c is None else c.shape[1] for _, c in groups)
            state["history"].append({"iteration": it + 1, "loglik": ll, "changed": changed,
                                     "sigma2": self.sigma2, "align_only": align_only,
                                     "classes_searched": searched, "particles": len(active),
                                     "revived": list(self.revived),
                                     "revived_from": [b for b, _ in self.donors],
                                     "seconds": round(time.perf_counter() - t0, 3)})
            state.update(iteration=it + 1, weights=weights, refs=refs.cpu(), psi=psi,
                         shift=shift, sigma2=self.sigma2, table=table,
                         revived=extra)
            if progress:
                progress(it + 1, total, ll, changed)
            if on_iteration:
                on_iteration(state)
        lab = weights.argmax(1)
        rows = torch.arange(self.n)
        return weights, psi[rows, lab], shift[rows, lab], state["history"]
