"""`simcryo align`: in-plane alignment inside classes and weighted class averages.

Reads a classified STAR (`_rlnClassNumber` required; `_rlnMaxValueProbDistribution` used as
the particle's weight when present; CTF columns used when present), aligns every class
reference-free (see simcryo/align/classalign.py) and writes in --o (atomically; a STAR
from a simcryo run that did not finish, without its run.json, is refused):
particles.star (every input row and column, plus _rlnClassNumber, _rlnMaxValueProbDistribution,
_rlnAnglePsi, _rlnOriginXAngst/YAngst, _simcryoAlignCC), class_averages.mrcs (class k at index
k; classes without particles are blank) and, last, run.json (config, per-iteration changes, speed,
per-class half-set FRC and resolution, pose errors when _simcryoTrue* columns exist).
Under `torchrun --nproc_per_node N -m simcryo align ...` the particles are sharded over the
ranks (simcryo.distributed, simcryo/align/classalign.py); rank 0 alone logs and writes, and
run.json records world_size.
Pose convention (RELION's, simcryo.image.geometry): align_images(particle, psi, origin) ~= its class
average (shift by +origin, then rotate by +psi, as relion_stack_create --apply_transformation).
"""
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from simcryo import distributed
from simcryo.config import (add_config_arguments, config_from_args, config_to_dict,
                            force_field, mask_diameter_field, radius_px)
from simcryo.errors import SimcryoError
from simcryo.outputs import COMPLETE, OutputFolder, require_complete
from simcryo.runtime import (RunLog, log, resolve_device, seed_everything, set_threads,
                             warn_empty_classes)

RESULTS = ("particles.star", "class_averages.mrcs", COMPLETE)  # refused without --force

REASSIGN_HELP = (
    "after aligning, move each particle to the class average it matches best (normalised "
    "cross-correlation after alignment against every average; costs K alignments per "
    "particle) and re-average; the number moved is logged and written to run.json. Off by "
    "default for its cost: with 10%% wrong labels (5 views, SNR 0.1, CTF, benchmarks/align.py) "
    "it brought the correct fraction to 99.1-99.6%% on the phantom and 91.9-99.6%% on "
    "hand-vol.mrc; use it to clean up an imperfect classification")


@dataclass
class AlignConfig:
    i: str = field(default="", metadata={
        "help": "classified particles: STAR with _rlnClassNumber (RELION 3.0/3.1)",
        "metavar": "PARTICLES.star"})
    o: str = field(default="", metadata={"help": "output folder (created; not the input's "
                                                 "folder)", "metavar": "DIR"})
    force: bool = force_field()
    iterations: int = field(default=8, metadata={
        "help": "maximum alignment iterations (stops earlier when the median angle change "
                "< --tol-angle and the median shift change < --tol-shift, after >= 3)"})
    reassign: bool = field(default=False, metadata={"help": REASSIGN_HELP})
    method: str = field(default="rings", metadata={
        "help": "rotation search: rings (real-space polar rings around the current centre, "
                "FFT along the angle, keeps phases and power at low SNR) or magnitude (the "
                "paper's polar Fourier magnitudes, translation invariant, 180-degree ambiguity "
                "resolved in real space)", "choices": ["rings", "magnitude"]})
    align_box: int = field(default=0, metadata={
        "help": "box (px) the particles are Fourier-cropped to for the search and the running "
                "averages; the final averages use the full box (0: auto = the full box up to "
                "64 px, else box/2 within [64, 128])"})
    final_iterations: int = field(default=2, metadata={
        "help": "iterations at the full box after those in the search box (recovers the "
                "finest frequencies the search box drops; 0: none)"})
    lowpass: float = field(default=0.0, metadata={
        "help": "band limit of the correlations (Å; 0: none, the Wiener-filtered references "
                "already down-weight noisy frequencies)"})
    max_shift: float = field(default=0.0, metadata={
        "help": "largest shift searched per step (px of the input box; 0: box/4)"})
    mask_diameter: float = mask_diameter_field(
        used_for="soft circular mask of the references and the outermost polar ring, at most "
                 "the box",
        auto_help="1.1 x the particle diameter estimated from the particles' excess variance "
                  "over the noise, at most the box - 4 px")
    candidates: int = field(default=3, metadata={
        "help": "rotation candidates per particle given a translation search (at half the "
                "box) in the first round of every iteration: the highest peaks of the ring "
                "correlation and the half turn of the best; 1: the ring peak alone"})
    global_step: float = field(default=15.0, metadata={
        "help": "after convergence, one pass whose rotation candidates are every global-step "
                "degrees (each with a translation search at half the box), then one ordinary "
                "pass: particles left at a wrong local peak find the right one (0: off). On "
                "6 single-view 500-particle sets at SNR 0.03 (phantom, hand-vol.mrc at 3 Å/px) "
                "15 and 10 gave the same errors within 0.2 %% of the particles; 15 costs "
                "two thirds of 10"})
    refine_cycles: int = field(default=2, metadata={
        "help": "after the last iteration, cycles of: exact class averages from the current "
                "poses (Fourier shifts, bicubic rotation, Wiener), then every particle's pose "
                "refined locally against its average (three angles --refine-step apart around "
                "its own, every shift within 2 px, parabolic peaks; the particle is not "
                "resampled). 0: off. benchmarks/align.py, SNR 0.1, CTF, seeds 1-3: on the "
                "2,000-particle sets (phantom and hand-vol.mrc at 3 Å/px, 1 and 5 views) the "
                "median angle error fell on all 12 sets (hand 5 views 1.39-1.41 -> "
                "1.20-1.27 deg) and 10 instead of 8 passed the bars; on the 500-particle "
                "single-view sets it fell on 6 of 9 (hand-vol.mrc at 3 Å/px seed 3: 1.02 -> "
                "0.83) and rose on 3 (hand-vol.mrc at 2 Å/px seeds 1-2: 1.75, 1.55 -> 1.83, "
                "1.68; 3 Å/px seed 1: 1.65 -> 1.70). Cost: it runs once, after the iterations, at "
                "570-630 particles/s per cycle (8,000 particles of 64 px, one thread, "
                "benchmarks/align.py --speed-only on a loaded machine), so 2 cycles take about "
                "as long as all the iterations together; their own rate is unchanged"})
    refine_step: float = field(default=1.0, metadata={
        "help": "angular step of the local refinement (deg)"})
    n_theta: int = field(default=128, metadata={
        "help": "angular samples per polar ring (the peak is interpolated to ~0.1 degree)"})
    ctf: bool = field(default=True, metadata={
        "help": "use the CTF columns when present (--no-ctf ignores them)"})
    ctf_mode: str = field(default="multiply", metadata={
        "help": "CTF handling in the search: multiply (particles times their CTF: the matched "
                "filter for white noise) or flip (phase-flipped particles). Averages are "
                "Wiener-filtered either way. multiply is the default: with the rotation "
                "candidates and the global check, on 500-particle single-view sets (phantom, "
                "hand-vol.mrc at 3 and 2 Å/px, seeds 1-7, CTF) the median over seeds of the "
                "median angle error fell from 1.40-1.91 to 0.64-1.75 deg at SNR 0.1 and from "
                "1.15-3.49 to 1.08-3.25 deg at SNR 0.03, and the mean share off by > 10 deg "
                "at SNR 0.03 from 0.1-8.3 %% to 0.1-6.2 %%",
        "choices": ["flip", "multiply"]})
    flatten_solvent: bool = field(default=True, metadata={
        "help": "remove the solvent outside the soft mask from the class averages before "
                "their Wiener filter (only its small spill remains beyond the mask), as "
                "RELION's --flatten_solvent (--no-flatten-solvent keeps the full box)"})
    reference_filter: str = field(default="wiener", metadata={
        "help": "filter of the running references: wiener (CTF-corrected average shrunk by "
                "the half-set SSNR) or none (CTF-corrected only)", "choices": ["wiener", "none"]})
    starts: int = field(default=4, metadata={
        "help": "candidate seed references per class (best-connected members); each is "
                "refined on a subsample and the best-correlating one is kept"})
    snr_weights: bool = field(default=False, metadata={
        "help": "multiply each particle's class probability by its SNR estimated from its "
                "correlation with the class average, cc^2/(1-cc^2)"})
    tol_angle: float = field(default=0.5, metadata={
        "help": "convergence: median angle change (deg)"})
    tol_shift: float = field(default=0.1, metadata={
        "help": "convergence: median shift change (px)"})
    apix: float = field(default=0.0, metadata={
        "help": "pixel size in Å/px (0: from the STAR optics / MRC header)"})
    batch_size: int = field(default=1024, metadata={"help": "particles per batch"})
    device: str = field(default="cpu", metadata={"help": "torch device: cpu or cuda:N"})
    threads: int = field(default=0, metadata={
        "help": "CPU threads (0: torch's default); the alignment iterations run this many "
                "batches in parallel, one thread each"})
    seed: int = field(default=0, metadata={"help": "random seed (half sets, seed subsets)"})

    def validate(self):
        if not self.i:
            raise SimcryoError("no input: give --i PARTICLES.star")
        if not self.o:
            raise SimcryoError("no output folder: give --o DIR")
        if self.iterations < 1:
            raise SimcryoError("--iterations must be >= 1")
        if self.batch_size < 1:
            raise SimcryoError("--batch-size must be >= 1")
        if self.global_step < 0 or self.global_step > 90:
            raise SimcryoError("--global-step must be in [0, 90] degrees (0: off)")
        if self.candidates < 1:
            raise SimcryoError("--candidates must be >= 1")
        if self.refine_cycles < 0:
            raise SimcryoError("--refine-cycles must be >= 0 (0: off)")
        if not 0 < self.refine_step <= 10:
            raise SimcryoError("--refine-step must be in (0, 10] degrees")
        if self.n_theta < 16:
            raise SimcryoError("--n-theta must be >= 16")
        for name in ("lowpass", "max_shift", "mask_diameter", "apix", "align_box"):
            if getattr(self, name) < 0:
                raise SimcryoError(f"--{name.replace('_', '-')} must be >= 0")


def add_arguments(parser):
    add_config_arguments(parser, AlignConfig)


def main(args):
    run(config_from_args(AlignConfig, args))
    return 0


def auto_align_box(box, requested):
    if requested:
        return min(int(requested) // 2 * 2, box)
    if box <= 64:
        return box
    return min(128, max(64, box // 2 // 2 * 2))


def read_classes(pset, path):
    """(labels 0-based, K = largest class number, weights) from _rlnClassNumber and
    _rlnMaxValueProbDistribution (all 1 when absent)."""
    if "rlnClassNumber" not in pset.particles:
        raise SimcryoError(f"{path}: no _rlnClassNumber column; align needs classified "
                           "particles (run simcryo classify or a 2D classification first)")
    cls = pset.particles.as_float("rlnClassNumber")
    if not np.all(np.isfinite(cls)) or np.any(cls != np.rint(cls)) or cls.min() < 1:
        raise SimcryoError(f"{path}: _rlnClassNumber must hold integers >= 1")
    cls = cls.astype(np.int64)
    k = int(cls.max())
    weights = np.ones(pset.n)
    if "rlnMaxValueProbDistribution" in pset.particles:
        weights = pset.particles.as_float("rlnMaxValueProbDistribution")
        if not np.all(np.isfinite(weights)) or weights.min() < 0:
            raise SimcryoError(f"{path}: _rlnMaxValueProbDistribution must be finite and >= 0")
    return cls - 1, k, weights


def mask_radius_of(cfg, box, apix):
    """--mask-diameter (Å) as the library's mask radius in px of the input box (None: 0,
    estimated from the particles)."""
    if not cfg.mask_diameter:
        return None
    radius = radius_px(cfg.mask_diameter, apix)
    if radius > box / 2:
        raise SimcryoError(f"--mask-diameter {cfg.mask_diameter:g} Å is wider than the box "
                           f"({box} px x {apix:g} Å/px = {box * apix:g} Å)")
    return radius


def align_params(cfg, box, apix, device=None):
    from simcryo.align import ClassAlignParams
    from simcryo.align.rings import AlignParams
    abox = auto_align_box(box, cfg.align_box)
    scale = abox / box
    # Fourier pixels: the same index in the full and the cropped box
    lowpass_px = box * apix / cfg.lowpass if cfg.lowpass > 0 else 0.0
    # the aligner sets the outermost ring from its (given or estimated) mask radius
    ap = AlignParams(method=cfg.method, n_theta=cfg.n_theta, lowpass=lowpass_px,
                     candidates=cfg.candidates,
                     max_shift=cfg.max_shift * scale if cfg.max_shift > 0 else None)
    # CPU: one batch per thread, each single-threaded (robust on a shared machine)
    on_cpu = device is None or device.type == "cpu"
    workers = (cfg.threads or torch.get_num_threads()) if on_cpu else 1
    return ClassAlignParams(iterations=cfg.iterations, batch_size=cfg.batch_size,
                            workers=workers, final_iterations=cfg.final_iterations,
                            mask_radius=mask_radius_of(cfg, box, apix),
                            tol_angle=cfg.tol_angle,
                            tol_shift=cfg.tol_shift, snr_weights=cfg.snr_weights,
                            reassign=cfg.reassign, ctf_mode=cfg.ctf_mode, align_box=abox,
                            reference_filter=cfg.reference_filter, starts=cfg.starts,
                            global_step=cfg.global_step,
                            refine_cycles=cfg.refine_cycles, refine_step=cfg.refine_step,
                            flatten_solvent=cfg.flatten_solvent,
                            seed=cfg.seed, align=ap)


def class_report(aligner, apix):
    """Per-class counts, weights, half-set FRC curve and resolutions (simcryo.evaluation.frc)."""
    from simcryo.align.average import spectra_to_images
    from simcryo.evaluation.frc import frc, resolution_at
    half = aligner.acc.half_averages()
    halves = spectra_to_images(half.reshape(-1, *half.shape[2:]))
    halves = halves.reshape(2, aligner.k, aligner.box, aligner.box).cpu()
    counts = torch.bincount(aligner.labels, minlength=aligner.k)
    out = []
    for c in range(aligner.k):
        item = {"class": c + 1, "particles": int(counts[c]),
                "mean_cc": float(aligner.ncc[aligner.labels == c].mean()) if counts[c] else None}
        if counts[c] >= 2 and halves[0, c].abs().sum() > 0 and halves[1, c].abs().sum() > 0:
            curve = frc(halves[0, c], halves[1, c])
            item.update(frc_half_sets=[round(float(v), 4) for v in curve],
                        resolution_frc0143_A=float(resolution_at(curve, apix, 0.143)),
                        resolution_frc05_A=float(resolution_at(curve, apix, 0.5)))
        out.append(item)
    return out


def truth_report(pset, aligner):
    """Pose errors vs _simcryoTrue* columns (simulated data), modulo each class frame."""
    from simcryo.evaluation.metrics import pose_errors, summarize_pose_errors
    need = ("simcryoTruePsi", "simcryoTrueOriginXAngst", "simcryoTrueOriginYAngst")
    if not all(label in pset.particles for label in need):
        return None
    tpsi = pset.particles.as_float("simcryoTruePsi")
    tsh = np.stack([pset.particles.as_float("simcryoTrueOriginXAngst"),
                    pset.particles.as_float("simcryoTrueOriginYAngst")], 1) / pset.apix
    psi, shift = aligner.poses()
    ang, sh, _ = pose_errors(aligner.labels.numpy(), psi, shift, tpsi, tsh)
    return summarize_pose_errors(ang, sh)


def run(cfg):
    """Align cfg.i into cfg.o; returns the run-log dict."""
    from simcryo.io.particles import load_particles
    set_threads(cfg.threads)
    device = distributed.local_device(resolve_device(cfg.device))
    seed_everything(cfg.seed)
    require_complete(cfg.i, "classified particles")
    pset = load_particles(cfg.i, apix=cfg.apix or None)
    labels, k, weights = read_classes(pset, cfg.i)
    if not distributed.is_main():  # the other ranks align their shards and write nothing
        _align(cfg, pset, labels, k, weights, device)
        return None
    with OutputFolder(cfg.o, RESULTS, inputs=[cfg.i], force=cfg.force) as folder:
        folder.begin()
        return _run(cfg, pset, labels, k, weights, device, folder.path)


def _align(cfg, pset, labels, k, weights, device):
    """The aligned ClassAligner (every rank takes part; progress lines from rank 0)."""
    from simcryo.align import ClassAligner, ParticleSource
    params = align_params(cfg, pset.box, pset.apix, device)
    ctf = pset.ctf if cfg.ctf else None
    source = ParticleSource(pset.images, pset.n, pset.box, device, ctf=ctf, apix=pset.apix)
    return ClassAligner(source, labels, weights, k, params,
                        log=distributed.main_only(log)).run()


def _run(cfg, pset, labels, k, weights, device, out):
    from simcryo.io.mrc import write_stack
    from simcryo.io.particles import write_particles
    runlog = RunLog("align", config_to_dict(cfg), seed=cfg.seed,
                    world_size=distributed.world_size())
    runlog.start("total")
    aligner = _align(cfg, pset, labels, k, weights, device)
    params = aligner.p
    ctf = pset.ctf if cfg.ctf else None

    apix = pset.apix
    psi, shift = aligner.poses()
    columns = {
        "rlnClassNumber": (aligner.labels.numpy() + 1).tolist(),
        "rlnMaxValueProbDistribution": [float(f"{w:.6g}") for w in weights],
        "rlnAnglePsi": [round(float(v), 4) for v in psi],
        "rlnOriginXAngst": [round(float(v) * apix, 4) for v in shift[:, 0]],
        "rlnOriginYAngst": [round(float(v) * apix, 4) for v in shift[:, 1]],
        "simcryoAlignCC": [round(float(v), 5) for v in aligner.ncc],
    }
    write_particles(os.path.join(out, "particles.star"), pset, columns)
    write_stack(os.path.join(out, "class_averages.mrcs"),
                aligner.averages.cpu().numpy().astype(np.float32), apix)
    runlog.stop("total")
    runlog["n_particles"] = pset.n
    runlog["n_classes"] = k
    runlog["box"] = pset.box
    runlog["apix"] = apix
    runlog["search_box"] = aligner.abox
    runlog["mask_radius_px"] = aligner.mask_radius
    runlog["mask_diameter_A"] = round(2 * aligner.mask_radius * apix, 3)
    runlog["ctf_used"] = ctf is not None
    runlog["iterations"] = aligner.history
    for h in aligner.history:
        runlog.curve("median_angle_change_deg", h["median_angle_change_deg"])
        runlog.curve("median_shift_change_px", h["median_shift_change_px"])
    if aligner.seed_scores is not None:
        runlog["seed_trial_mean_cc"] = aligner.seed_scores.tolist()
    search = [h["particles_per_s"] for h in aligner.history
              if h["search_box"] == params.align_box]
    runlog["particles_per_s_search_box"] = float(np.median(search)) if search else None
    runlog["particles_per_s_last_iteration"] = (aligner.history[-1]["particles_per_s"]
                                                if aligner.history else None)
    runlog["local_refinement"] = aligner.refine_history
    runlog["reassigned"] = aligner.moved
    runlog["classes"] = class_report(aligner, apix)
    warn_empty_classes([c["particles"] for c in runlog["classes"]])
    truth = truth_report(pset, aligner)
    if truth is not None:
        runlog["pose_errors_vs_truth"] = truth
        log(f"[align] pose errors vs truth (modulo class frame): median "
            f"{truth['angle_median_deg']:.2f} deg, {truth['shift_median_px']:.2f} px")
    runlog.write(os.path.join(out, COMPLETE))  # last: the completion marker
    log(f"[align] wrote {out}/particles.star, class_averages.mrcs, run.json")
    return runlog.data
