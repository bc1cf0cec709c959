"""Reference-free iterative alignment of classified particles and their class averages.

Per class: centre the particles against the rotationally averaged class sum; seed oriented
references from the best-connected members of a small subset (members whose aligned
correlations with the others are highest, each averaged with the subset aligned onto it);
refine each candidate seed for a few iterations on a subsample and keep the one whose members
correlate best with it (a single seed can lock onto a pseudo-symmetric mixture of poses);
then iterate on all members: align against the class reference, re-average with weights
(class probability, optionally a per-particle SNR estimate; CTF-aware Wiener averages when
CTF parameters exist), re-centre each average on its centre of mass, until the poses
settle; then refine every pose locally against exact (Fourier-shifted, bicubic-turned)
Wiener averages (`local_refinement`). The search and the running averages use a
Fourier-cropped box; the final averages are built once at the full box. Particles are
streamed in batches from a `ParticleSource` (simcryo.align.source); memory grows with N only
through per-particle arrays. Seeding: simcryo.align.seeding.

Under torchrun (simcryo.distributed) each rank aligns its contiguous block of the particles
(of the trial subsample during seeding); the per-class sums are all-reduced after every pass
and the per-particle poses, correlations and labels shared, so every rank holds the same
references and statistics and takes the same branches. With one process it is the same code.
"""
import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from simcryo import distributed
from simcryo.align.aligner import make_aligner, rotate_shift, warp_to_reference, wrap_angle
from simcryo.align.average import (ClassAccumulator, centre_of_mass, normalize_weights,
                                   rotational_average, spectra_to_images)
from simcryo.align.exhaustive import ExhaustiveAligner, ExhaustiveParams
from simcryo.align.rings import AlignParams, centre_particles
from simcryo.align.scores import normalized_correlation, spectral_power
from simcryo.align.seeding import ReferenceSeeding
from simcryo.align.source import auto_mask_radius
from simcryo.image.fourier import crop_spectrum
from simcryo.image.mask import soft_mask


@dataclass
class ClassAlignParams:
    iterations: int = 8
    batch_size: int = 1024
    search_chunk: int = 128        # CPU: particles of a batch searched at once (speed only:
                                   # their maps stay in the cache; 0: the whole batch)
    workers: int = 1               # batches aligned in parallel threads (see iterate)
    seed_subset: int = 32          # members per class tried as the seed reference
    mask_radius: float = None      # soft mask of the references and outermost polar ring, px
                                   # (None: estimated from the particles, see auto_mask_radius)
    tol_angle: float = 0.5         # stop when the median angle change < this (deg) ...
    tol_shift: float = 0.1         # ... and the median shift change < this (px)
    snr_weights: bool = False      # multiply class probabilities by a per-particle SNR
    reassign: bool = False         # move particles to the best-matching class average
    ctf_mode: str = "multiply"     # "multiply" (matched filter) or "flip" (phase flip)
    align_box: int = 0             # Fourier-crop to this box for the search (0: full box)
    polish: bool = True            # final averages with exact shifts + bicubic rotation
    flatten_solvent: bool = True   # final averages times the soft mask (solvent 0, as RELION)
    signal_prior: tuple = None     # final averages: per-shell spectral SNR of one particle
                                   # measured on the data (input-box shells); given, their
                                   # Wiener filter uses it (ClassAccumulator.prior_wiener)
                                   # instead of each class's half-set FRC
    final_iterations: int = 2      # iterations at the full box after the search box ones
    reference_filter: str = "wiener"  # running references: "wiener" or "none" (CTF-corrected)
    starts: int = 4                # candidate seeds per class (best-connected members)
    global_step: float = 15.0      # after convergence, one pass over a coarse grid of every
                                   # global_step degrees (0: off; see global_check)
    refine_cycles: int = 2         # after the last pass, cycles of exact averages + local
                                   # refinement of every pose (0: off; see local_refinement)
    refine_step: float = 1.0       # angular grid of the local refinement (deg)
    refine_shift: float = 2.0      # largest shift change per refinement cycle (search-box px)
    trial_iterations: int = 3      # iterations on a subsample to pick among the seeds
    trial_size: int = 300          # members per class in that subsample
    seed: int = 0
    align: AlignParams = dataclasses.field(default_factory=AlignParams)


class ClassAligner(ReferenceSeeding):
    """Iterative reference-free alignment of K classes (see the module docstring).

    The search and the running averages live in the Fourier-cropped search box (`align_box`);
    the final averages (`polish`) are built once at the full box. After `run()`: `poses()` /
    the attributes psi, shift: RELION's convention (simcryo.image.geometry), full-box px;
    labels (N,) 0-based,
    averages (K, n, n), acc (the final ClassAccumulator: half sets, FRC), ncc (N,), history
    (per-iteration changes and speed)."""

    def __init__(self, source, labels, weights, n_classes, params, log=print):
        # a copy: the full-box stage rescales the search parameters
        self.src, self.p, self.log = source, dataclasses.replace(params), log
        self.dev = source.device
        self.n, self.box = source.n, source.box
        ab = int(params.align_box or self.box)
        self.abox = max(min(ab // 2 * 2, self.box), 16)
        self.scale = self.abox / self.box
        self.k = int(n_classes)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.prob = torch.as_tensor(np.asarray(weights), dtype=torch.float32)
        self.psi = torch.zeros(self.n)
        self.shift = torch.zeros(self.n, 2)
        self.ncc = torch.zeros(self.n)
        self.gen = torch.Generator().manual_seed(int(params.seed))
        self.halves = torch.randint(0, 2, (self.n,), generator=self.gen)
        radius = params.mask_radius or auto_mask_radius(source)
        self.mask_radius = float(radius)
        # the rotation search reads the particle out to the mask edge and no further
        self.p.align = dataclasses.replace(self.p.align,
                                           ring_radius=max(radius * self.scale, 2.0))
        self.mask = soft_mask(self.box, radius, device=self.dev)
        self.mask_small = soft_mask(self.abox, radius * self.scale, device=self.dev,
                                    width=max(4.0 * self.scale, 1.5))
        self.history = []
        self.refine_history = []   # local_refinement cycles, timed apart from the passes
        self.active = None         # restricts the passes to a subsample (seed trials)
        self.seed_scores = None
        self.small = None          # running averages in the search box (K, abox, abox)
        self.averages = None       # final averages, full box
        self.acc = None
        self.moved = None
        self.align_seconds = []

    @property
    def aligner(self):
        """The search strategy of the current parameters (the full-box stage rescales them)."""
        return make_aligner(self.p.align)

    # -- per-batch building blocks ------------------------------------------------------
    def _rows(self, indices=None):
        """The particles of a pass (all, or the active subsample), on every rank."""
        if indices is None:
            indices = self.active
        return np.arange(self.n) if indices is None else np.asarray(indices)

    def _own_rows(self, indices=None):
        """This rank's block of the pass's particles (all of them in one process)."""
        rows = self._rows(indices)
        return rows[distributed.shard(len(rows))]

    def _batches(self, indices=None, rows=None, size=None):
        """Batches of this rank's block of the pass's particles, or of `rows` when given, of
        `size` particles (default params.batch_size)."""
        idx = self._own_rows(indices) if rows is None else rows
        bs = max(int(size or self.p.batch_size), 1)
        for s in range(0, len(idx), bs):
            yield idx[s:s + bs]

    def _share(self, *names):
        """Every rank's per-particle results of the pass onto every rank."""
        rows = self._rows()
        for name in names:
            distributed.share_rows(getattr(self, name), rows)

    def _search_images(self, x, idx, with_power=False):
        """Fourier-cropped particles for the search, CTF-multiplied (matched filter) or
        phase-flipped; with_power also returns each cropped particle's own power."""
        spec = crop_spectrum(torch.fft.rfft2(x), self.abox)
        power = spectral_power(spec) if with_power else None
        if self.src.has_ctf:
            c = self.src.ctf_images(idx, self.abox)
            spec = spec * (c if self.p.ctf_mode == "multiply" else torch.sign(c))
        xs = torch.fft.irfft2(spec, s=(self.abox, self.abox))
        return (xs, power) if with_power else xs

    def _add_search(self, acc, spec, idx, psi, weights):
        """Add aligned search-box spectra (of `_search_images`) to a search-box accumulator:
        numerator CTF * F, denominator CTF^2, with the CTF seen in the class frame."""
        c2 = None
        if self.src.has_ctf:
            c = self.src.ctf_images(idx, self.abox, psi.to(self.dev))
            c2 = c * c
            if self.p.ctf_mode == "flip":
                spec = spec * c.abs()
        acc.add(spec, self.labels[idx].to(self.dev), weights[idx], self.halves[idx], c2)

    def _weights(self):
        w = self.prob.clone()
        if self.p.snr_weights and self.ncc.abs().sum() > 0:
            c = self.ncc.clamp(0, 0.99)
            w = w * (c ** 2 / (1 - c ** 2)).clamp_min(1e-6)
        return normalize_weights(w, self.labels, self.k)

    def _search_chunk(self, batch):
        """Particles searched at once: params.search_chunk on the CPU, where a chunk's
        64 px maps stay in the cache (at 1,024 they do not, and the memory traffic costs
        more than the extra Python calls); the whole batch on a GPU."""
        if self.dev.type != "cpu" or self.p.search_chunk <= 0:
            return batch
        return int(self.p.search_chunk)

    def _references(self):
        return self.aligner.prepare(self.small * self.mask_small)

    def _align(self, xs, refs, lab, shift_full):
        out = self.aligner.align(xs, refs, lab, shift0=(shift_full * self.scale).to(self.dev))
        return out.psi, out.shift / self.scale, out

    def _ncc(self, spec, refs, idx, lab, psi, power):
        """Normalised correlation of aligned search spectra with their references, seen
        through each particle's CTF (see core.normalized_correlation)."""
        c2 = self.src.ctf_images(idx, self.abox, psi) ** 2 if self.src.has_ctf else None
        if c2 is not None and self.p.ctf_mode == "flip":
            spec = spec * torch.sqrt(c2)
        return normalized_correlation(spec, refs.spectra[lab], ctf2=c2, part_pow=power)

    def _reference_spectra(self, acc):
        if self.p.reference_filter == "wiener":
            return acc.wiener()
        return acc.corrected()

    def _set_small(self, acc):
        self.acc = acc
        self.small = spectra_to_images(self._reference_spectra(acc))
        com = centre_of_mass(self.small * self.mask_small)
        self._apply_recentre(acc, com, com / self.scale)
        self.small = spectra_to_images(self._reference_spectra(acc))

    def _apply_recentre(self, acc, com_box, com_full):
        """Move each average's centre of mass to the box centre; the particles' shifts follow
        so that p ~= transform(A, psi, shift) still holds for the moved average."""
        acc.shift(-com_box)
        self.shift -= rotate_shift(-self.psi, com_full.cpu()[self.labels])

    # -- stages -------------------------------------------------------------------------
    def centre(self):
        """Centre every particle on its class's rotationally averaged, unaligned sum."""
        acc = ClassAccumulator(self.k, self.abox, self.dev)
        w = self._weights()
        for idx in self._batches():
            xs = self._search_images(self.src.load(idx), idx)
            self._add_search(acc, torch.fft.rfft2(xs), idx, torch.zeros(len(idx)), w)
        acc.all_reduce()
        self.small = rotational_average(spectra_to_images(acc.wiener()))
        refs = self._references()
        for idx in self._batches():
            xs = self._search_images(self.src.load(idx), idx)
            lab = self.labels[idx].to(self.dev)
            self.shift[idx] = (centre_particles(xs, refs, lab) / self.scale).cpu()
        self._share("shift")

    def iterate(self, track_ncc=False):
        """One pass: align every particle against its class average, re-average.

        With params.workers > 1 the batches run in that many Python threads, each with one
        torch thread: on a busy machine this scales better than torch's intra-op threads,
        whose barriers spin while another process holds a core."""
        refs = self._references()
        acc = ClassAccumulator(self.k, self.abox, self.dev)
        old_psi, old_shift = self.psi.clone(), self.shift.clone()
        w = self._weights()
        lock = threading.Lock()
        with_ncc = self.p.snr_weights or track_ncc

        def one_batch(idx):
            x = self.src.load(idx)
            step = self._search_chunk(len(idx))
            for s in range(0, len(idx), step):
                one_chunk(x[s:s + step], idx[s:s + step])

        def one_chunk(x, idx):
            # the particles' own power only enters their correlations
            xs, power = (self._search_images(x, idx, with_power=True) if with_ncc
                         else (self._search_images(x, idx), None))
            lab = self.labels[idx].to(self.dev)
            psi, shift, out = self._align(xs, refs, lab, self.shift[idx])
            ncc = None
            if with_ncc:
                ncc = self._ncc(out.spectrum, refs, idx, lab, psi, power).cpu()
            with lock:
                self.psi[idx], self.shift[idx] = psi.cpu(), shift.cpu()
                self._add_search(acc, out.spectrum, idx, psi, w)
                if ncc is not None:
                    self.ncc[idx] = ncc

        t0 = time.perf_counter()
        workers = max(int(self.p.workers), 1)
        if workers == 1:
            for idx in self._batches():
                one_batch(idx)
        else:
            old_threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(one_batch, self._batches()))
            finally:
                torch.set_num_threads(old_threads)
        acc.all_reduce()
        self._share("psi", "shift", *(("ncc",) if with_ncc else ()))
        self.align_seconds.append(time.perf_counter() - t0)
        self._set_small(acc)
        sel = slice(None) if self.active is None else torch.as_tensor(self.active)
        dpsi = wrap_angle(self.psi[sel] - old_psi[sel]).abs()
        dshift = (self.shift[sel] - old_shift[sel]).norm(dim=1)
        return float(dpsi.median()), float(dshift.median())

    def global_check(self, it):
        """One pass whose rotation candidates are a coarse grid of every `global_step`
        degrees (each with a translation search at half the box), then one ordinary pass:
        a particle that the ring candidates left at a wrong local peak finds the right one
        against the converged averages. Returns the iteration count."""
        search = self.p.align
        self.p.align = dataclasses.replace(search, global_step=self.p.global_step)
        try:
            dpsi, dshift = self.iterate()
        finally:
            self.p.align = search
        self._log_iteration(it + 1, dpsi, dshift, "global check")
        dpsi, dshift = self.iterate()
        self._log_iteration(it + 2, dpsi, dshift)
        return it + 2

    def local_refinement(self):
        """`refine_cycles` cycles of: exact averages from the current poses (as the final
        ones: Fourier shifts, bicubic rotation, Wiener), then every particle's pose refined
        against its class's average by ExhaustiveAligner.refine (three angles `refine_step`
        apart around its own, each at every shift within `refine_shift`, parabolic peaks).
        The passes' running averages are built with one bilinear warp and the ring search
        samples the particle bilinearly; here the particle is only shifted (Fourier) and the
        references are turned once per cycle to every grid angle. Done once after the passes,
        so their speed is untouched; each cycle is timed in `refine_history`."""
        n_angles = max(int(round(360.0 / self.p.refine_step)), 3)
        refiner = ExhaustiveAligner(ExhaustiveParams(n_angles=n_angles,
                                                     max_shift=self.p.refine_shift),
                                    mask=self.mask_small)
        for _ in range(max(int(self.p.refine_cycles), 0)):
            old_psi, old_shift = self.psi.clone(), self.shift.clone()
            t0 = time.perf_counter()
            acc = self.final_averages(exact=True)
            refs = spectra_to_images(crop_spectrum(self._reference_spectra(acc), self.abox))
            own = self._own_rows()
            lab = self.labels.numpy()[own]
            for c in range(self.k):
                members = own[lab == c]
                if len(members) == 0:
                    continue
                prepared = refiner.prepare(refs[c:c + 1])   # one class at a time: memory
                # search chunks on the CPU: each particle has three maps, kept in the cache
                for idx in self._batches(rows=members,
                                         size=self._search_chunk(self.p.batch_size)):
                    xs = self._search_images(self.src.load(idx), idx)
                    zero = torch.zeros(len(idx), dtype=torch.long)
                    shift = (self.shift[idx] * self.scale).to(self.dev)
                    out = refiner.refine(xs, prepared, zero, self.psi[idx], shift)
                    self.psi[idx] = out.psi.cpu()
                    self.shift[idx] = (out.shift / self.scale).cpu()
            self._share("psi", "shift")
            seconds = time.perf_counter() - t0
            dpsi = float(wrap_angle(self.psi - old_psi).abs().median())
            dshift = float((self.shift - old_shift).norm(dim=1).median())
            self.refine_history.append({"median_angle_change_deg": dpsi,
                                        "median_shift_change_px": dshift, "seconds": seconds,
                                        "particles_per_s": self.n / max(seconds, 1e-9)})
            self.log(f"[align] local refinement (box {self.abox}): median change {dpsi:.3f} "
                     f"deg, {dshift:.3f} px, {self.n / max(seconds, 1e-9):.0f} particles/s")

    def reassign(self):
        """Align each particle to every class average and move it to the one with the highest
        normalised correlation (references seen through the particle's CTF). Returns the
        number of particles that changed class."""
        refs = self._references()
        populated = torch.bincount(self.labels, minlength=self.k).nonzero()[:, 0].tolist()
        moved = 0
        for idx in self._batches():
            xs, power = self._search_images(self.src.load(idx), idx, with_power=True)
            b = len(idx)
            best_val = torch.full((b,), float("-inf"), device=self.dev)
            best = {"lab": self.labels[idx].to(self.dev).clone(),
                    "psi": self.psi[idx].to(self.dev).clone(),
                    "shift": self.shift[idx].to(self.dev).clone()}
            for c in populated:  # an empty class has no average to move to
                lab = torch.full((b,), c, device=self.dev, dtype=torch.long)
                psi, shift, out = self._align(xs, refs, lab, self.shift[idx])
                val = self._ncc(out.spectrum, refs, idx, lab, psi, power)
                better = val > best_val
                best_val = torch.where(better, val, best_val)
                best["lab"] = torch.where(better, lab, best["lab"])
                best["psi"] = torch.where(better, psi, best["psi"])
                best["shift"] = torch.where(better[:, None], shift, best["shift"])
            new = best["lab"].cpu()
            moved += int((new != self.labels[idx]).sum())
            self.labels[idx] = new
            self.psi[idx], self.shift[idx] = best["psi"].cpu(), best["shift"].cpu()
            self.ncc[idx] = best_val.cpu()
        self._share("labels", "psi", "shift", "ncc")
        self.moved = int(distributed.all_reduce_sum(torch.tensor(moved)))
        return self.moved

    def poses(self):
        """(psi (N,) deg, shift (N, 2) px) in RELION's convention, as numpy arrays."""
        return self.psi.numpy(), self.shift.numpy()

    def final_averages(self, psi=None, shift=None, exact=None):
        """Full-box Wiener averages from poses (RELION convention; default: the current ones),
        exact Fourier shifts + bicubic rotation when `exact` (default: params.polish).
        Returns the accumulator (half sets for the FRC)."""
        from simcryo.image.geometry import align_images
        if psi is None:
            psi, shift = self.psi, self.shift
        else:
            psi = torch.as_tensor(np.asarray(psi), dtype=torch.float32)
            shift = torch.as_tensor(np.asarray(shift), dtype=torch.float32)
        exact = self.p.polish if exact is None else exact
        acc = ClassAccumulator(self.k, self.box, self.dev)
        w = self._weights()
        for idx in self._batches():
            x = self.src.load(idx)
            ps, sh = psi[idx].to(self.dev), shift[idx].to(self.dev)
            if exact:
                a = align_images(x, ps, sh)
            else:
                a = warp_to_reference(x, ps, sh)
            spec = torch.fft.rfft2(a)
            c2 = None
            if self.src.has_ctf:
                c = self.src.ctf_images(idx, self.box, ps)
                spec, c2 = spec * c, c * c
            acc.add(spec, self.labels[idx].to(self.dev), w[idx], self.halves[idx], c2)
        return acc.all_reduce()

    def output_averages(self, acc):
        """Full-box Wiener averages of a `final_averages` accumulator. With a signal_prior,
        the Wiener filter of that data-wide spectral SNR, then the soft mask when
        flatten_solvent. Without one, the half-set filter; with flatten_solvent the solvent
        outside the soft mask is removed before the shell filter (its noise would only lower
        the averages' FRC against the particle's projection)."""
        if self.p.signal_prior is not None:
            avg = spectra_to_images(acc.prior_wiener(
                torch.as_tensor(self.p.signal_prior, dtype=torch.float32)))
            return avg * self.mask if self.p.flatten_solvent else avg
        if self.p.flatten_solvent:
            return spectra_to_images(acc.masked_wiener(self.mask))
        return spectra_to_images(acc.wiener())

    def polish(self):
        """Final full-box averages (re-centred), and each particle's normalised correlation
        with its final average (search box)."""
        acc = self.final_averages()
        avg = spectra_to_images(acc.wiener())
        com = centre_of_mass(avg * self.mask)
        self._apply_recentre(acc, com, com)
        self.acc = acc
        self.averages = self.output_averages(acc)
        spec = crop_spectrum(torch.fft.rfft2(self.averages), self.abox)
        self.small = torch.fft.irfft2(spec, s=(self.abox, self.abox))
        refs = self._references()
        for idx in self._batches():
            xs, power = self._search_images(self.src.load(idx), idx, with_power=True)
            lab = self.labels[idx].to(self.dev)
            psi = self.psi[idx].to(self.dev)
            a = warp_to_reference(xs, psi, (self.shift[idx] * self.scale).to(self.dev))
            self.ncc[idx] = self._ncc(torch.fft.rfft2(a), refs, idx, lab, psi, power).cpu()
        self._share("ncc")

    def _log_iteration(self, it, dpsi, dshift, kind="search"):
        rate = self.n / max(self.align_seconds[-1], 1e-9)
        self.history.append({"iteration": it, "kind": kind, "search_box": self.abox,
                             "median_angle_change_deg": dpsi,
                             "median_shift_change_px": dshift,
                             "seconds": self.align_seconds[-1], "particles_per_s": rate})
        self.log(f"[align] iteration {it} ({kind}, box {self.abox}): median change {dpsi:.3f} deg, "
                 f"{dshift:.3f} px, {rate:.0f} particles/s")

    def to_full_box(self):
        """Continue at the full box: running averages from the current poses at full size,
        search parameters scaled back from the search box."""
        if self.abox == self.box:
            return
        acc = self.final_averages(exact=False)
        a = self.p.align
        self.p.align = dataclasses.replace(
            a, ring_radius=a.ring_radius / self.scale,
            max_shift=None if a.max_shift is None else a.max_shift / self.scale)
        self.abox, self.scale, self.mask_small = self.box, 1.0, self.mask
        self._set_small(acc)

    def run(self):
        self.log(f"[align] {self.n} particles, {self.k} classes, box {self.box} "
                 f"(search box {self.abox}), mask radius {self.mask_radius:.1f} px, "
                 f"method {self.p.align.method}, "
                 f"CTF {'on (' + self.p.ctf_mode + ')' if self.src.has_ctf else 'off'}")
        self.centre()
        self.seed_references()
        it = 0
        for it in range(1, self.p.iterations + 1):
            dpsi, dshift = self.iterate()
            self._log_iteration(it, dpsi, dshift)
            if it >= 3 and dpsi < self.p.tol_angle and dshift < self.p.tol_shift:
                break
        if self.p.global_step > 0:
            it = self.global_check(it)
        if self.p.reassign and self.k > 1:
            moved = self.reassign()
            self.log(f"[align] reassign: {moved} of {self.n} particles moved to another class")
            self.iterate()
        if self.p.final_iterations > 0 and self.abox < self.box:
            # the search box drops the finest frequencies; a few local passes at the full
            # box recover their precision
            self.to_full_box()
            for _ in range(self.p.final_iterations):
                it += 1
                dpsi, dshift = self.iterate()
                self._log_iteration(it, dpsi, dshift)
        self.local_refinement()
        self.polish()
        return self
