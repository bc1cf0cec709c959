"""`simcryo classify`: unsupervised 2D classification of particle images.

Writes in --o (each file atomically; run.json last, as the mark of a finished run; a lock
refuses a second run into the same folder): particles.star (every input row and column in
input order, plus _rlnClassNumber 1..K, _rlnMaxValueProbDistribution, _rlnAnglePsi,
_rlnOriginXAngst, _rlnOriginYAngst; classes numbered best first by --sort-classes),
class_averages.mrcs (class k at index k), run.json
(config, versions, seed, timings, loss curves, pretext images/s, metrics when
_simcryoTrueClass exists), features.npy (N x d), neighbors.npy (row i: particle i's
neighbours, most similar first: SCAN's neighbours), probabilities.npy (N x K) and, with the
invariant encoder, invariants.npy (N x --invariant-dim) and rotational_neighbors.npy
(N x --knn). Pose convention: particle ~= transform_images(average, psi, origin).

Under `torchrun --nproc_per_node N -m simcryo classify ...` every stage is shared out over
the ranks (simcryo.classify.pipeline); rank 0 alone takes the output folder, logs, writes
the checkpoints and the results, and run.json records world_size.
"""
import dataclasses
import os
import time

import numpy as np

from simcryo import distributed
from simcryo.classify.config import ClassifyConfig
from simcryo.classify.neighbors import neighbor_purity
from simcryo.classify.pipeline import CHECKPOINT, Classifier
from simcryo.classify.preprocess import CACHES
from simcryo.config import add_config_arguments, config_from_args, config_to_dict, radius_px
from simcryo.errors import SimcryoError
from simcryo.io.mrc import open_stack, write_stack
from simcryo.io.particles import load_particles, write_particles
from simcryo.outputs import COMPLETE, OutputFolder, atomic_path, discard, require_complete
from simcryo.runtime import log as _log_all_ranks
from simcryo.runtime import (RunLog, resolve_device, seed_everything, set_threads,
                             warn_empty_classes)

# the files of a run (a folder holding any of them is refused without --force or a
# checkpoint to --resume); not the cache nor the invariant encoder's inputs
# (invariants.npy, rotational_neighbors.npy): intermediates, reused only when the
# checkpoint recorded them, else rebuilt
RESULTS = ("particles.star", "class_averages.mrcs", COMPLETE, "probabilities.npy",
           "features.npy", "neighbors.npy", CHECKPOINT)


def log(msg):
    """A progress line, from rank 0 only under torchrun."""
    if distributed.is_main():
        _log_all_ranks(msg)


def add_arguments(parser):
    add_config_arguments(parser, ClassifyConfig)


def main(args):
    run(config_from_args(ClassifyConfig, args))
    return 0


def true_labels(pset):
    if "simcryoTrueClass" not in pset.particles:
        return None
    return pset.particles.as_float("simcryoTrueClass").astype(np.int64)


def score(result, truth):
    from simcryo.evaluation import metrics
    scores = {k: float(v) for k, v in metrics.clustering_scores(result["labels"], truth).items()}
    for k in (5, 10):
        if result["neighbors"] is not None:   # none with --references
            scores[f"neighbor_purity@{k}"] = neighbor_purity(result["neighbors"], truth, k)
    return scores


def result_stage(cfg):
    """Which stage gave the final classes, in words (run.json "classes_from")."""
    encoder = ("the invariant encoder's features and rotational neighbours"
               if cfg.encoder == "invariant" else "the SimCLR ResNet's features")
    clustering = f"SCAN + self-labelling on {encoder}"
    if cfg.references:
        clustering = ("the initial references (--references; each particle in the class of "
                      "the reference it correlates best with)")
    if cfg.refine_iterations < 1:
        return clustering + " (EM refinement off)"
    start = "a random partition" if cfg.refine_init == "random" else clustering
    return (f"the EM refinement against the class averages ({cfg.refine_iterations} "
            f"iterations), started from {start}")


def with_reference_count(cfg):
    """The config with K = the number of --references (a note when --K said otherwise)."""
    if not cfg.references:
        return cfg
    require_complete(cfg.references)
    k = len(open_stack(cfg.references))
    if k != cfg.K:
        log(f"note: {k} initial references (--references): K = {k}, not {cfg.K}")
    return dataclasses.replace(cfg, K=k)


def class_order(averages, labels, k, radius, pset=None, poses=None):
    """(order, scores): class indices best first by simcryo.selection's quality score (ties:
    the larger class first), and the scores in that order. With `pset` and `poses` (psi
    (N,), shift (N, 2) px, RELION) the score includes the members' consistency, as
    `simcryo select` computes it."""
    from simcryo.selection import class_features, member_consistency, score_classes
    sizes = np.bincount(labels, minlength=k)
    feats = class_features(averages, sizes, radius)
    if pset is not None and poses is not None:
        feats["consistency"] = member_consistency(pset, labels, poses[0], poses[1], averages,
                                                  radius)
    scores = score_classes(feats)
    order = np.lexsort((-sizes, -scores))
    return order, scores[order]


def run(cfg):
    """Run the whole command for a validated config; returns the pipeline's result dict."""
    t0 = time.time()
    set_threads(cfg.threads)
    device = distributed.local_device(resolve_device(cfg.device))
    seed_everything(cfg.seed)
    if cfg.mask_diameter < 0:
        raise SimcryoError("--mask-diameter must be >= 0 (Å; 0: estimated from the particles)")
    require_complete(cfg.i)
    pset = load_particles(cfg.i, apix=cfg.apix or None)
    cfg = with_reference_count(cfg)
    if cfg.mask_diameter and radius_px(cfg.mask_diameter, pset.apix) > 0.45 * pset.box:
        log(f"note: --mask-diameter {cfg.mask_diameter:g} Å is wider than 0.9 x the box "
            f"({0.9 * pset.box * pset.apix:g} Å); the mask is limited to that")
    resume = cfg.resume and os.path.exists(os.path.join(cfg.o, CHECKPOINT))
    if not distributed.is_main():  # the other ranks work on the folder rank 0 holds
        return _run(cfg, pset, device, None, t0)
    folder = OutputFolder(cfg.o, RESULTS, inputs=[cfg.i] + [cfg.references] * bool(cfg.references),
                          force=cfg.force, resume=resume)
    with folder:
        try:
            return _run(cfg, pset, device, folder, t0)
        except (SimcryoError, OSError):
            # a failed run (full disk, bad input) frees the cache's space; a resume rebuilds it
            for name in CACHES:
                discard(os.path.join(folder.path, name))
            raise


def _run(cfg, pset, device, folder, t0):
    """The run; `folder` None on the ranks other than 0 (they write nothing)."""
    out = folder.path if folder else cfg.o
    runlog = RunLog("classify", config_to_dict(cfg), seed=cfg.seed, n_particles=pset.n,
                    box=pset.box, apix=pset.apix, ctf=pset.ctf is not None,
                    world_size=distributed.world_size())
    clf = Classifier(pset, cfg, out, device, resume=cfg.resume, log=log)
    clf.load()  # a refused resume leaves the folder as it was
    if folder:
        folder.begin()
    result = clf.run()
    labels, probs = result["labels"], result["probabilities"]
    runlog.start("averages")
    psi, shift, averages = clf.averages(labels, probs)
    runlog.stop("averages")
    if folder is None:  # the last collective is behind: rank 0 writes the results
        return result
    if cfg.sort_classes:
        order, scores = class_order(averages, labels, cfg.K, result["geometry"].radius_px,
                                    pset, (psi, shift))
        rank = np.empty(cfg.K, np.int64)
        rank[order] = np.arange(cfg.K)
        labels, probs, averages = rank[labels], probs[:, order], averages[order]
        result["labels"], result["probabilities"] = labels, probs
        runlog["class_scores"] = [round(float(v), 4) for v in scores]
    with atomic_path(os.path.join(out, "probabilities.npy")) as tmp:
        np.save(tmp, probs)
    conf = probs[np.arange(pset.n), labels]
    columns = {
        "rlnClassNumber": (labels + 1).tolist(),
        "rlnMaxValueProbDistribution": [f"{v:.6f}" for v in conf],
        "rlnAnglePsi": [f"{v:.3f}" for v in psi],  # in [-180, 180) (simcryo.align)
        "rlnOriginXAngst": [f"{v:.3f}" for v in shift[:, 0] * pset.apix],
        "rlnOriginYAngst": [f"{v:.3f}" for v in shift[:, 1] * pset.apix],
    }
    write_particles(os.path.join(out, "particles.star"), pset, columns)
    write_stack(os.path.join(out, "class_averages.mrcs"), averages.astype(np.float32), pset.apix)
    runlog["geometry"] = result["geometry"].as_dict()
    runlog["mask_radius_px"] = round(float(result["geometry"].radius_px), 4)
    runlog["mask_diameter_A"] = round(2 * float(result["geometry"].radius_px) * pset.apix, 3)
    runlog["pretext_images_per_s"] = round(result["pretext_images_per_s"], 1)
    runlog["class_sizes"] = np.bincount(labels, minlength=cfg.K).tolist()
    warn_empty_classes(runlog["class_sizes"])
    runlog["scan_head_losses"] = result["scan_head_losses"]
    if result["refine_history"]:
        runlog["refine_history"] = result["refine_history"]
    runlog["classes_from"] = result_stage(cfg)
    for name, values in result["curves"].items():
        runlog.data["curves"][name] = values
    runlog.data["timings_s"].update({k: round(v, 3) for k, v in result["timings"].items()})
    truth = true_labels(pset)
    if truth is not None:
        runlog["metrics"] = score(result, truth)
        from simcryo.evaluation import metrics
        if clf.scan_labels is not None:   # None: a resume that reused the refinement
            before = metrics.clustering_scores(clf.scan_labels, truth)
            runlog["metrics"]["before_refine_acc"] = float(before["acc"])
            runlog["metrics"]["before_refine_nmi"] = float(before["nmi"])
        log("[classify] vs _simcryoTrueClass: " + " ".join(
            f"{k}={v:.3f}" for k, v in runlog["metrics"].items()))
    runlog.data["timings_s"]["total"] = round(time.time() - t0, 3)
    for name in CACHES:
        discard(os.path.join(out, name))
    runlog.write(os.path.join(out, COMPLETE))  # last: the completion marker
    log(f"[classify] wrote {out}/particles.star, class_averages.mrcs, run.json "
        f"({time.time() - t0:.1f} s; pretext {result['pretext_images_per_s']:.0f} img/s; "
        f"class sizes {runlog['class_sizes']})")
    result["psi"], result["shift"], result["averages"] = psi, shift, averages
    result["checkpoint"] = os.path.join(out, CHECKPOINT)
    return result
