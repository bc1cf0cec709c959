"""`simcryo select`: rank the classes of a 2D classification and keep the good ones.

Reads any tool's classification (RELION's included): --i particles.star with _rlnClassNumber
and --averages class_averages.mrcs (class k at index k; default: beside --i, or RELION's
run_it*_classes.mrcs given explicitly). Each class gets the quality score of
simcryo.selection (contrast, centring and radial-profile likeness of its average, size of
the class, and, when --i holds the particles' poses, the consistency of its members with the
average, CTF applied when --i has it); the classes whose score is >= --threshold are
selected.

Writes in --o: class_scores.star (data_classes, best first: _rlnClassNumber,
_rlnReferenceImage into class_averages_ranked.mrcs, _rlnClassDistribution, _simcryoClassScore,
_simcryoClassRank, _simcryoSelected 1/0 and the features _simcryoContrast, _simcryoCentring,
_simcryoProfile, _simcryoSize and, when measured, _simcryoConsistency),
class_averages_ranked.mrcs (the averages sorted by score),
particles.star (the particles of the selected classes, every input column kept), run.json.
"""
import os
from dataclasses import dataclass, field

import numpy as np

from simcryo.config import (add_config_arguments, config_from_args, config_to_dict,
                            force_field, mask_diameter_field, radius_px)
from simcryo.errors import SimcryoError
from simcryo.outputs import COMPLETE, OutputFolder, require_complete
from simcryo.runtime import RunLog, log, set_threads
from simcryo.selection import ScoreParams

RESULTS = ("particles.star", "class_scores.star", "class_averages_ranked.mrcs", COMPLETE)
AUTO_MASK_FRACTION = 0.8  # automatic mask diameter: this share of the box
DEFAULTS = ScoreParams()  # the score's references: one set of defaults


@dataclass
class SelectConfig:
    i: str = field(default="", metadata={
        "help": "classified particles (STAR with _rlnClassNumber, any tool's)",
        "metavar": "STAR"})
    averages: str = field(default="", metadata={
        "help": "class averages, class k at index k (empty: class_averages.mrcs beside --i)",
        "metavar": "MRCS"})
    o: str = field(default="", metadata={"help": "output folder (created)", "metavar": "DIR"})
    force: bool = force_field()
    threshold: float = field(default=0.5, metadata={
        "help": "select the classes whose score (0-1) is >= this; raise it to keep fewer"})
    mask_diameter: float = mask_diameter_field(f"{AUTO_MASK_FRACTION} x the box",
                                               "the disc in which the averages are judged")
    apix: float = field(default=0.0, metadata={
        "help": "pixel size in Å/px (0: from the STAR optics or the MRC header)"})
    lowpass_fraction: float = field(default=DEFAULTS.lowpass_fraction, metadata={
        "help": "features are measured on averages low-passed to box / this Fourier px"})
    contrast_full: float = field(default=DEFAULTS.contrast_full, metadata={
        "help": "contrast (x the classes' size-weighted median) that scores fully"})
    centring_full: float = field(default=DEFAULTS.centring_full, metadata={
        "help": "centring (1 - centroid offset / mask radius) that scores fully"})
    profile_full: float = field(default=DEFAULTS.profile_full, metadata={
        "help": "profile likeness (highest |correlation| of the class's radial profile with "
                "the profile of another trusted class) that scores fully; 0: term off"})
    profile_trust: float = field(default=DEFAULTS.profile_trust, metadata={
        "help": "a class whose other terms (contrast, centring, size, consistency) score at "
                "least this (0-1) is trusted: the profiles are judged against the trusted "
                "classes' profiles"})
    size_full: float = field(default=DEFAULTS.size_full, metadata={
        "help": "class size (x N / K) that scores fully"})
    consistency_full: float = field(default=DEFAULTS.consistency_full, metadata={
        "help": "member consistency (mean correlation of a class's particles with their "
                "average at their poses, x the classes' size-weighted median) that scores "
                "fully; needs _rlnAnglePsi and origins in --i (else the term is left out and "
                "the log says so); 0: term off"})
    threads: int = field(default=0, metadata={"help": "CPU threads for torch (0: default)"})

    def validate(self):
        if not self.i:
            raise SimcryoError("no input: give --i classified/particles.star")
        if not self.o:
            raise SimcryoError("no output folder: give --o DIR")
        if not 0 <= self.threshold <= 1:
            raise SimcryoError(f"--threshold must be in [0, 1] (got {self.threshold})")
        if self.mask_diameter < 0:
            raise SimcryoError("--mask-diameter must be >= 0")
        if self.apix < 0:
            raise SimcryoError("--apix must be >= 0")
        for name in ("lowpass_fraction", "contrast_full", "centring_full", "size_full"):
            if not getattr(self, name) > 0:
                raise SimcryoError(f"--{name.replace('_', '-')} must be > 0")
        for name in ("profile_full", "consistency_full"):
            if getattr(self, name) < 0:
                raise SimcryoError(f"--{name.replace('_', '-')} must be >= 0 (0: term off)")
        if not 0 <= self.profile_trust <= 1:
            raise SimcryoError(f"--profile-trust must be in [0, 1] (got {self.profile_trust})")

    def score_params(self):
        return ScoreParams(lowpass_fraction=self.lowpass_fraction,
                           contrast_full=self.contrast_full, centring_full=self.centring_full,
                           profile_full=self.profile_full, size_full=self.size_full,
                           consistency_full=self.consistency_full,
                           profile_trust=self.profile_trust)


def add_arguments(parser):
    add_config_arguments(parser, SelectConfig)


def main(args):
    cfg = config_from_args(SelectConfig, args)
    run(cfg)
    return 0


def _averages(cfg):
    from simcryo.io.mrc import open_stack
    path = cfg.averages or os.path.join(os.path.dirname(os.path.abspath(cfg.i)),
                                        "class_averages.mrcs")
    if not os.path.exists(path):
        raise SimcryoError(f"class averages not found: {path}; give --averages")
    avgs = np.array(open_stack(path), dtype=np.float32)
    if avgs.shape[1] != avgs.shape[2] or not np.isfinite(avgs).all():
        raise SimcryoError(f"{path}: class averages must be square and finite")
    return avgs, path


def _subset(pset, rows):
    """The ParticleSet of the given rows (input order)."""
    from simcryo.io.particles import ParticleSet
    return ParticleSet(pset.source, pset.particles.take(rows), pset.optics, pset.stack_paths,
                       pset.stack_ids[rows], pset.slices[rows], pset.box, pset.apix,
                       pset.ctf.take(rows) if pset.ctf is not None else None)


def _consistency(cfg, pset, labels, avgs, radius):
    """(K,) member consistency of the classes, or why it is not measured (a str)."""
    from simcryo.io.particles import star_poses
    from simcryo.selection import member_consistency
    if cfg.consistency_full == 0:
        return "--consistency-full 0"
    poses = star_poses(pset.particles, "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
                       pset.apix)
    if poses is None:
        return f"{cfg.i} has no poses (_rlnAnglePsi, _rlnOriginXAngst/YAngst)"
    if avgs.shape[-1] != pset.box:
        return f"the averages are {avgs.shape[-1]} px, the particles {pset.box} px"
    return member_consistency(pset, labels - 1, poses[0], poses[1], avgs, radius)


def run(cfg):
    """Score, rank and select the classes of cfg.i into cfg.o; returns the run-log dict."""
    from simcryo.io.particles import load_particles
    set_threads(cfg.threads)
    require_complete(cfg.i, "classified particles")
    pset = load_particles(cfg.i, apix=cfg.apix or None)
    if "rlnClassNumber" not in pset.particles:
        raise SimcryoError(f"{cfg.i}: no _rlnClassNumber column (not a classification)")
    labels = pset.particles.as_float("rlnClassNumber")
    if (labels != np.rint(labels)).any() or labels.min() < 1:
        raise SimcryoError(f"{cfg.i}: _rlnClassNumber must hold class numbers >= 1")
    labels = labels.astype(np.int64)
    avgs, avg_path = _averages(cfg)
    if labels.max() > len(avgs):
        raise SimcryoError(f"{avg_path} holds {len(avgs)} averages but {cfg.i} uses class "
                           f"numbers up to {labels.max()}")
    with OutputFolder(cfg.o, RESULTS, inputs=[cfg.i], force=cfg.force) as folder:
        folder.begin()
        return _run(cfg, pset, labels, avgs, avg_path, folder.path)


def _run(cfg, pset, labels, avgs, avg_path, out):
    from simcryo.io.mrc import write_stack
    from simcryo.io.particles import write_particles
    from simcryo.io.star import StarBlock, write_star
    from simcryo.selection import auto_select, class_features, rank_classes, score_classes
    runlog = RunLog("select", config_to_dict(cfg))
    runlog.start("total")
    box = avgs.shape[-1]
    apix = pset.apix * pset.box / box  # averages may be at another box than the particles
    radius = (radius_px(cfg.mask_diameter, apix) if cfg.mask_diameter
              else AUTO_MASK_FRACTION * box / 2)
    K = len(avgs)
    sizes = np.bincount(labels - 1, minlength=K)
    params = cfg.score_params()
    feats = class_features(avgs, sizes, radius, params)
    consistency = _consistency(cfg, pset, labels, avgs, radius)
    if isinstance(consistency, str):
        log(f"[select] member consistency not used: {consistency}")
        runlog["consistency"] = consistency
    else:
        feats["consistency"] = consistency
        runlog["consistency"] = "used"
    scores = score_classes(feats, params)
    order = rank_classes(scores)
    chosen = auto_select(scores, cfg.threshold)
    selected = np.zeros(K, dtype=bool)
    selected[chosen] = True
    ranked = "class_averages_ranked.mrcs"
    write_stack(os.path.join(out, ranked), avgs[order], apix)
    rank = np.empty(K, dtype=np.int64)
    rank[order] = np.arange(1, K + 1)
    table = {"rlnClassNumber": order + 1,
             "rlnReferenceImage": [f"{r + 1}@{ranked}" for r in range(K)],
             "rlnClassDistribution": [round(float(v), 6) for v in sizes[order] / len(labels)],
             "simcryoClassScore": [round(float(v), 5) for v in scores[order]],
             "simcryoClassRank": rank[order], "simcryoSelected": selected[order].astype(int)}
    for name in ("contrast", "centring", "profile", "size", "consistency"):
        if name in feats:
            table["simcryo" + name.capitalize()] = [round(float(v), 5)
                                                    for v in feats[name][order]]
    write_star(os.path.join(out, "class_scores.star"), {"classes": StarBlock(table)})
    rows = np.flatnonzero(selected[labels - 1])
    write_particles(os.path.join(out, "particles.star"), _subset(pset, rows))
    runlog.stop("total")
    runlog["averages"] = avg_path
    runlog["mask_radius_px"] = radius
    runlog["mask_diameter_A"] = round(2 * radius * apix, 3)
    runlog["n_classes"] = K
    runlog["selected_classes"] = sorted(int(k) + 1 for k in chosen)
    runlog["particles_in"], runlog["particles_selected"] = int(len(labels)), int(len(rows))
    runlog.write(os.path.join(out, COMPLETE))  # last: the completion marker
    log(f"[select] {len(chosen)} of {K} classes selected (score >= {cfg.threshold:g}), "
        f"{len(rows)} of {len(labels)} particles; wrote {out}/class_scores.star, {ranked}, "
        "particles.star, run.json")
    return runlog.data
