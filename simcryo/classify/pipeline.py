"""The classification pipeline: preprocess -> contrastive encoder -> neighbours -> SCAN ->
self-label -> EM refinement against the class averages -> class averages.

The default encoder ("invariant", simcryo.classify.invariant) removes in-plane rotation and
shift before anything is learned: rotation-invariant ring spectra of centred particles, each
particle's neighbours by the correlation after the best in-plane rotation, an MLP trained with
those neighbours as contrastive positives, and SCAN with the same neighbours. The paper's
SimCLR ResNet ("resnet") found neighbours of about half that purity on our simulated maps
(benchmarks/classify.py --ablate; README).
The EM refinement (simcryo/classify/refine.py) scores every particle against every class
average over all in-plane poses: a class average of hundreds of particles is nearly
noise-free, so it corrects the borderline assignments of the clustering. The class averages
are then built by the one averager of simcryo.align from the refined poses (or, without the
refinement, from the class aligner's).

This module only orchestrates: the stages live in simcryo.classify.stages, the checkpoint in
simcryo.classify.checkpoint. Every stage checkpoints each epoch/iteration in
OUT/checkpoint.pt; `resume=True` continues from it and gives the same result as an
uninterrupted run (all randomness comes from generators seeded by (seed, stage, epoch)); with
changed parameters it reuses the stages before the first one they affect and recomputes the
rest (the resume contract is in simcryo.classify.checkpoint).

Under `torchrun --nproc_per_node N -m simcryo classify` every rank runs this pipeline on
the same inputs, each stage sharded by particle where it pays (simcryo.classify.stages);
rank 0 alone logs and writes.
"""
import time

import numpy as np
import torch
import torch.nn.functional as F

from simcryo import distributed, runtime
from simcryo.classify import stages
from simcryo.classify.checkpoint import CHECKPOINT, Checkpoint
from simcryo.errors import SimcryoError, warn

__all__ = ["CHECKPOINT", "Classifier", "check_problem"]
MIN_PER_CLASS = 5  # fewer particles per class on average: classes come out empty or noise


def check_problem(n, k):
    if k < 2:
        raise SimcryoError(f"K must be at least 2 (got {k})")
    if n < 2:
        raise SimcryoError(f"need at least 2 particles (got {n})")
    if k > n:
        raise SimcryoError(f"K={k} is larger than the number of particles ({n})")
    if n < MIN_PER_CLASS * k and distributed.is_main():  # one line under torchrun
        warn(f"K={k} classes for {n} particles (fewer than {MIN_PER_CLASS} per class): "
             "expect empty classes and noisy averages; lower --K")


class Classifier:
    """Runs the pipeline on a ParticleSet; results land in `out_dir`."""

    def __init__(self, pset, cfg, out_dir, device, resume=False, log=runtime.log):
        check_problem(pset.n, cfg.K)
        self.pset, self.cfg, self.out = pset, cfg, out_dir
        self.device = device
        self.log = log
        self.checkpoint = Checkpoint(out_dir, cfg, resume, pset.fingerprint(), log)
        self.state = {"stage": "pretext", "epoch": 0, "curves": {}, "timings": {},
                      "pretext_images": 0, "pretext_seconds": 0.0}
        self.poses = None
        self.saved = None
        self._loaded = False

    def load(self):
        """Verify and load the checkpoint when resuming (before anything is written)."""
        if not self._loaded:
            self.saved = self.checkpoint.load(self.state)
            self._loaded = True
        return self.saved

    def save(self, **models):
        self.checkpoint.save(self.state, **models)

    def curve(self, name, value):
        self.state["curves"].setdefault(name, []).append(float(value))

    def run(self):
        saved = self.load()
        t0 = time.time()
        geometry = self.state.get("geometry")
        if stages.preprocess(self, saved) and saved is not None and geometry is not None \
                and geometry != self.state["geometry"]:
            # a rebuilt cache unlike the checkpoint's (other device or library): later
            # stages cannot be reused
            self.log("[classify] resume: the rebuilt cache differs from the checkpoint's; "
                     "recomputing from pretext")
            self.checkpoint.reset(self.state, "pretext")
            saved = {}
        if self.cfg.references:
            feats = neighbors = None
            probs, candidates, ranking = stages.reference_stage(self)
        else:
            probs, feats, neighbors = self._cluster(saved)
            candidates = ranking = None
        self.scan_labels = None if probs is None else probs.argmax(1)
        t = time.time()
        probs, self.poses = stages.refine_stage(self, probs, feats, saved,
                                                candidates=candidates, ranking=ranking)
        self.state["timings"].setdefault("refine", time.time() - t)
        probs = np.asarray(probs, dtype=np.float64)
        probs /= probs.sum(1, keepdims=True)
        rate = self.state["pretext_images"] / max(self.state["pretext_seconds"], 1e-9)
        return {"probabilities": probs.astype(np.float32), "labels": probs.argmax(1),
                "features": feats, "neighbors": neighbors, "geometry": self.geom,
                "pretext_images_per_s": rate, "curves": self.state["curves"],
                "timings": dict(self.state["timings"], classify_total=time.time() - t0),
                "scan_head_losses": self.state.get("scan_head_losses"),
                "refine_history": self.state.get("refine_result", {}).get("history")}

    def _cluster(self, saved):
        """The contrastive stages: (clustering probabilities (N, K), features, neighbours)."""
        backbone = self._timed("pretext", stages.pretext_stage, self, saved)
        feats, neighbors = stages.features_stage(self, backbone)
        f = torch.as_tensor(feats, device=self.device)
        head = self._timed("scan", stages.scan_stage, self, feats, neighbors, saved)
        head = self._timed("selflabel", stages.selflabel_stage, self, head, f, saved)
        with torch.no_grad():
            head.eval()
            probs = F.softmax(head(f), -1).cpu()  # float32: (N, K) lives through the EM
        # every rank holds the same head (summed gradients); rank 0's partition for all, so
        # that no device's nondeterministic kernel can make the ranks' EM start apart
        return distributed.broadcast(probs).numpy(), feats, neighbors

    def _timed(self, name, stage, *args):
        """stage(*args), its seconds kept as timings[name] (the first run's on a resume that
        reuses the stage; with the invariant encoder "pretext" includes "invariants")."""
        t = time.time()
        out = stage(*args)
        self.state["timings"].setdefault(name, time.time() - t)
        return out

    def averages(self, labels, probs):
        """(psi (N,), shift (N, 2) px, averages (K, box, box)) for the final classes, in
        RELION's convention (stages.class_averages)."""
        return stages.class_averages(self, labels, probs, self.poses)
