"""The classification pipeline: preprocess -> SimCLR pretext -> kNN -> SCAN -> self-label ->
EM refinement against the class averages -> class averages.

Why the last stage: at SNR 0.1 two particles carry little common signal, so contrastive
features and their neighbours give only a rough partition (measured top-10 neighbour purity
0.15-0.3 on the simulated sets after a CPU-sized pretext); a class average of hundreds of
particles is nearly noise-free, and scoring every particle against every average over all
in-plane poses (simcryo/classify/refine.py) turns the rough partition into clean classes.

Every stage checkpoints each epoch/iteration in OUT/checkpoint.pt; `resume=True` continues from
it and gives the same result as an uninterrupted run (all randomness comes from generators
seeded by (seed, stage, epoch)).
"""
import dataclasses
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from simcryo.image import ctf as ctfmod
from simcryo.image.fourier import fourier_crop
from simcryo import runtime
from simcryo.classify import averages as avgmod
from simcryo.classify import pretext, scan, selflabel
from simcryo.classify.augment import Augmenter
from simcryo.image.mask import soft_mask
from simcryo.classify.neighbors import knn_cosine
from simcryo.classify.preprocess import (CACHE_NAME, Geometry, build_cache, prepare_batch,
                                        wiener_filter)
from simcryo.classify.refine import Refiner
from simcryo.errors import SimcryoError
from simcryo.models import ProjectionHead, resnet18

CHECKPOINT = "checkpoint.pt"
STAGES = ("pretext", "features", "scan", "selflabel", "refine", "done")


class Interrupted(Exception):
    """Raised by the test hook `stop_after_epochs` to simulate a killed run."""


def check_problem(n, k):
    if k < 2:
        raise SimcryoError(f"K must be at least 2 (got {k})")
    if n < 2:
        raise SimcryoError(f"need at least 2 particles (got {n})")
    if k > n:
        raise SimcryoError(f"K={k} is larger than the number of particles ({n})")


class Classifier:
    """Runs the pipeline on a ParticleSet; results land in `out_dir`."""

    def __init__(self, pset, cfg, out_dir, device, resume=False, log=runtime.log,
                 stop_after_epochs=None):
        check_problem(pset.n, cfg.K)
        self.pset, self.cfg, self.out = pset, cfg, out_dir
        self.device = device
        self.log = log
        self.resume = resume
        self.ckpt_path = os.path.join(out_dir, CHECKPOINT)
        self.stop_after = stop_after_epochs
        self.epochs_run = 0
        self.state = {"stage": "pretext", "epoch": 0, "curves": {}, "timings": {},
                      "pretext_images": 0, "pretext_seconds": 0.0}

    # -- checkpoints -------------------------------------------------------------------
    def _save(self, **models):
        state = dict(self.state)
        state["config"] = dataclasses.asdict(self.cfg)
        for name, obj in models.items():
            state[name] = obj.state_dict()
        runtime.save_checkpoint(self.ckpt_path, state)
        self.epochs_run += 1
        if self.stop_after is not None and self.epochs_run >= self.stop_after:
            raise Interrupted(f"stopped after {self.epochs_run} epochs")

    def _load(self):
        if not (self.resume and os.path.exists(self.ckpt_path)):
            return None
        state = runtime.load_checkpoint(self.ckpt_path, "cpu")
        saved = dict(state.get("config", {}))
        now = dataclasses.asdict(self.cfg)
        ignore = {"device", "threads", "resume", "i", "o"}
        diff = sorted(k for k in now if k not in ignore and saved.get(k) != now[k])
        if diff:
            raise SimcryoError("--resume with different parameters than the checkpoint: "
                               + ", ".join(diff))
        models = {"backbone", "proj_head", "pretext_opt", "scan_heads", "scan_opt",
                  "label_head", "label_opt", "config"}
        self.state.update({k: v for k, v in state.items() if k not in models})
        self.log(f"[classify] resuming at stage {self.state['stage']} epoch {self.state['epoch']}")
        return state

    def _curve(self, name, value):
        self.state["curves"].setdefault(name, []).append(float(value))

    # -- stages --------------------------------------------------------------------------
    def preprocess(self, saved):
        t = time.time()
        cache_path = os.path.join(self.out, CACHE_NAME)
        geom_saved = saved.get("geometry") if saved else None
        if geom_saved and os.path.exists(cache_path):
            g = Geometry.__new__(Geometry)
            g.__dict__.update(geom_saved)
            wb = g.working_box
            if os.path.getsize(cache_path) == self.pset.n * wb * wb * 4:
                self.geom = g
                self.images = np.memmap(cache_path, dtype=np.float32, mode="r",
                                        shape=(self.pset.n, wb, wb))
                return
        self.images, self.geom = build_cache(self.pset, self.cfg, self.out, self.device,
                                             log=self.log)
        self.state["geometry"] = dict(vars(self.geom))
        self.state["timings"]["preprocess"] = time.time() - t
        self.log(f"[classify] preprocessed {self.pset.n} particles: box {self.geom.box} -> "
                 f"crop {self.geom.window} -> working box {self.geom.working_box} px, particle "
                 f"radius {self.geom.radius_px:.1f} px ({time.time() - t:.1f} s)")

    @property
    def pretext_box(self):
        return min(self.cfg.pretext_box or self.geom.working_box, self.geom.working_box)

    @property
    def pretext_radius(self):
        return self.geom.work_radius * self.pretext_box / self.geom.working_box

    def prefilter(self):
        """Cached images -> network input: Wiener filter (spectral SNR of the data), then a
        Fourier crop to the pretext box (the filter removed what the crop drops)."""
        filt = None
        if getattr(self.geom, "ssnr", None) is not None:
            filt = wiener_filter(self.geom, self.device)
        box = self.pretext_box

        def filtered(x):
            if filt is not None:
                x = torch.fft.ifft2(torch.fft.fft2(x) * filt).real
            if box < x.shape[-1]:
                x = fourier_crop(x[:, 0], box)[:, None]
            return x

        # back to unit variance: the augmentations' noise and jitter are in units of the std
        sample = pretext.load_batch(self.images, np.arange(min(len(self.images), 512)),
                                    self.device)
        scale = float(filtered(sample).square().mean().sqrt().clamp_min(1e-6))
        return lambda x: filtered(x) / scale

    def build_models(self):
        torch.manual_seed(self.cfg.seed)
        backbone = resnet18(self.cfg.width).to(self.device)
        head = ProjectionHead(backbone.out_dim, self.cfg.feature_dim).to(self.device)
        return backbone, head

    def run_pretext(self, saved):
        cfg = self.cfg
        backbone, head = self.build_models()
        params = list(backbone.parameters()) + list(head.parameters())
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if saved and "backbone" in saved:
            backbone.load_state_dict(saved["backbone"])
            head.load_state_dict(saved.get("proj_head", head.state_dict()))
            if "pretext_opt" in saved:
                opt.load_state_dict(saved["pretext_opt"])
        if self.state["stage"] != "pretext":
            return backbone
        n = len(self.images)
        per_epoch = max(n // min(cfg.batch_size, n), 1)
        total = cfg.pretext_epochs * per_epoch
        augment = Augmenter(cfg, self.pretext_box, self.pretext_radius, self.device)
        progress = runtime.Progress("pretext", cfg.pretext_epochs, min_interval=10.0)
        for epoch in range(self.state["epoch"], cfg.pretext_epochs):
            t = time.time()
            loss, seen = pretext.train_epoch(backbone, head, opt, self.images, augment, cfg,
                                             epoch, self.device, epoch * per_epoch, total,
                                             prefilter=self.prefilter())
            self.state["pretext_seconds"] += time.time() - t
            self.state["pretext_images"] += seen
            self._curve("pretext_loss", loss)
            rate = self.state["pretext_images"] / max(self.state["pretext_seconds"], 1e-9)
            progress.update(epoch + 1, force=epoch == 0, loss=loss, img_per_s=round(rate))
            self.state["epoch"] = epoch + 1
            self._save(backbone=backbone, proj_head=head, pretext_opt=opt)
        self.state.update(stage="features", epoch=0)
        return backbone

    def run_features(self, backbone):
        cfg = self.cfg
        feat_path = os.path.join(self.out, "features.npy")
        nb_path = os.path.join(self.out, "neighbors.npy")
        if self.state["stage"] != "features" and os.path.exists(feat_path):
            return np.load(feat_path), np.load(nb_path)
        t = time.time()
        mask = soft_mask(self.pretext_box, self.pretext_radius, width=2.0, device=self.device)
        feats = pretext.extract_features(backbone, self.images, cfg.tta_rotations, self.device,
                                         mask=mask, prefilter=self.prefilter())
        neighbors, _ = knn_cosine(feats, cfg.knn, self.device)
        np.save(feat_path, feats)
        np.save(nb_path, neighbors)
        self.state["timings"]["features"] = time.time() - t
        self.state.update(stage="scan", epoch=0)
        self._save(backbone=backbone)
        return feats, neighbors

    def run_scan(self, feats, neighbors, saved):
        cfg = self.cfg
        f = torch.as_tensor(feats, device=self.device)
        heads = scan.make_heads(f.shape[1], cfg.K, cfg.scan_heads, cfg.seed + 1, self.device)
        opt = torch.optim.Adam(heads.parameters(), lr=cfg.scan_lr)
        if saved and "scan_heads" in saved:
            heads.load_state_dict(saved["scan_heads"])
            opt.load_state_dict(saved["scan_opt"])
        if self.state["stage"] == "scan":
            progress = runtime.Progress("scan", cfg.scan_epochs, min_interval=10.0)
            for epoch in range(self.state["epoch"], cfg.scan_epochs):
                losses = scan.scan_epoch(heads, opt, f, neighbors, cfg, epoch, self.device)
                self._curve("scan_loss_best", float(losses.min()))
                progress.update(epoch + 1, loss=float(losses.min()))
                self.state["epoch"] = epoch + 1
                self._save(scan_heads=heads, scan_opt=opt)
            final = scan.evaluate_heads(heads, f, neighbors, cfg.entropy_weight)
            self.state["scan_head_losses"] = [float(v) for v in final]
            self.state["scan_best_head"] = int(np.argmin(final))
            self.state.update(stage="selflabel", epoch=0)
        best = self.state["scan_best_head"]
        return heads.heads[best]

    def run_selflabel(self, head, f, saved):
        cfg = self.cfg
        opt = torch.optim.Adam(head.parameters(), lr=cfg.scan_lr)
        if saved and "label_head" in saved:
            head.load_state_dict(saved["label_head"])
            opt.load_state_dict(saved["label_opt"])
        if self.state["stage"] == "selflabel":
            progress = runtime.Progress("selflabel", max(cfg.selflabel_epochs, 1), 10.0)
            for epoch in range(self.state["epoch"], cfg.selflabel_epochs):
                loss, n_conf = selflabel.selflabel_epoch(head, opt, f, cfg, epoch, self.device)
                if n_conf:
                    self._curve("selflabel_loss", loss)
                self._curve("selflabel_confident", n_conf)
                progress.update(epoch + 1, loss=loss, confident=n_conf)
                self.state["epoch"] = epoch + 1
                self._save(label_head=head, label_opt=opt)
            self.state.update(stage="refine", epoch=0)
        return head

    def working_ctf(self):
        """|CTF| of particles at the working box (rfft2 layout), or None without CTF."""
        if self.pset.ctf is None or not self.cfg.phase_flip:
            return None
        ctf, wb, apix = self.pset.ctf, self.geom.working_box, self.geom.work_apix

        def fn(idx):
            return ctfmod.ctf_2d(ctf.take(np.asarray(idx)), wb, apix, device=self.device,
                                 rfft=True).abs()
        return fn

    def run_refine(self, probs, feats, saved):
        """EM refinement against the class averages, seeded by the clustering."""
        cfg = self.cfg
        labels = probs.argmax(1)
        if cfg.refine_iterations < 1:
            self.state.update(stage="done")
            return probs, None, None
        if self.state["stage"] == "done" and "refine_result" in self.state:
            r = self.state["refine_result"]
            return r["weights"].numpy(), r["psi"].numpy(), r["shift"].numpy()
        max_shift = max(1.0, cfg.refine_shift * self.geom.working_box)
        refiner = Refiner(self.images, cfg.K, self.geom.work_radius, self.device,
                          n_angles=cfg.refine_angles, max_shift=max_shift,
                          temperature=cfg.refine_temperature, log=self.log,
                          ctf=self.working_ctf() if cfg.refine_ctf else None)
        seeds = None
        if not self.state.get("refine_state"):
            candidates = []
            for c in range(cfg.K):
                members = np.nonzero(labels == c)[0]
                if len(members) == 0:
                    members = np.arange(len(labels))
                centre = feats[members].mean(0)
                order = np.argsort(-(feats[members] @ centre), kind="stable")
                candidates.append(members[order[:cfg.refine_seed_candidates]])
            seeds = refiner.choose_seeds(labels, candidates, gen=cfg.seed)
        progress = runtime.Progress("refine", cfg.refine_align_iterations + cfg.refine_iterations,
                                    min_interval=10.0)

        def report(it, total, ll, changed):
            self._curve("refine_loglik", ll)
            self._curve("refine_changed", changed)
            progress.update(it, force=it == 1, loglik=ll, changed=changed)

        def save(state):
            self.state["refine_state"] = state
            self._save()

        start = self.state.get("refine_state") if saved else None
        weights, psi, shift, history = refiner.run(
            labels, cfg.refine_iterations, seeds=seeds,
            align_iterations=cfg.refine_align_iterations, progress=report, state=start,
            on_iteration=save)
        self.state.pop("refine_state", None)
        self.state["refine_result"] = {"weights": weights, "psi": psi, "shift": shift}
        self.state.update(stage="done", epoch=0)
        self._save()
        return weights.numpy(), psi.numpy(), shift.numpy()

    def run(self):
        saved = self._load()
        t0 = time.time()
        self.preprocess(saved)
        backbone = self.run_pretext(saved)
        feats, neighbors = self.run_features(backbone)
        f = torch.as_tensor(feats, device=self.device)
        head = self.run_scan(feats, neighbors, saved)
        head = self.run_selflabel(head, f, saved)
        with torch.no_grad():
            head.eval()
            probs = F.softmax(head(f), -1).cpu().numpy().astype(np.float64)
        self.scan_labels = probs.argmax(1)
        t = time.time()
        probs, psi, shift = self.run_refine(probs, feats, saved)
        self.state["timings"].setdefault("refine", time.time() - t)
        probs = np.asarray(probs, dtype=np.float64)
        probs /= probs.sum(1, keepdims=True)
        labels = probs.argmax(1)
        # The refinement models particle = shift(rotate(average, a), d) with rotate_images'
        # sign; RELION's pose (simcryo.image.geometry.transform_images) is its inverse: psi = -a,
        # origin = -d, in px of the input box (the refinement works in the working box).
        self.poses = None if psi is None else (-psi, -shift / self.geom.scale)
        rate = self.state["pretext_images"] / max(self.state["pretext_seconds"], 1e-9)
        return {"probabilities": probs.astype(np.float32), "labels": labels,
                "features": feats, "neighbors": neighbors, "geometry": self.geom,
                "pretext_images_per_s": rate, "curves": self.state["curves"],
                "timings": dict(self.state["timings"], classify_total=time.time() - t0),
                "scan_head_losses": self.state.get("scan_head_losses")}

    # -- poses and averages ---------------------------------------------------------------
    def full_box_images(self, idx):
        """Phase-flipped, background-normalised particles at the input box."""
        raw = torch.from_numpy(self.pset.images(idx)).to(self.device)
        geom = Geometry(self.geom.box, self.geom.apix, self.geom.radius_px, self.geom.box)
        geom.window = self.geom.box
        geom.working_box = self.geom.box
        ctf = self.pset.ctf.take(idx) if self.pset.ctf is not None else None
        return prepare_batch(raw, ctf, self.pset.apix, geom, self.cfg, idx)

    def averages(self, labels, probs):
        """(psi (N,), shift (N, 2) px, averages (K, box, box)) for the final classes."""
        k = self.cfg.K
        if self.poses is not None:
            psi, shift = self.poses
            return psi, shift, self.posed_averages(labels, probs, psi, shift)
        conf = probs[np.arange(len(labels)), labels]
        try:
            res = avgmod.aligned_averages(self.pset, labels, conf, k, self.geom.radius_px,
                                          self.cfg, self.device, self.log)
        except SimcryoError:
            raise
        except Exception as exc:  # the align package is young: never lose a classification
            self.log(f"[classify] class alignment failed ({exc!r}); using the simple average")
            res = None
        if res is None:
            res = avgmod.simple_averages(self.pset, self.images, labels, k,
                                         self.cfg.average_iterations, self.device,
                                         self.full_box_images)
        return res

    @torch.no_grad()
    def posed_averages(self, labels, probs, psi, shift):
        """Probability-weighted averages of the phase-flipped particles at the input box, each
        aligned with its refined pose (align_images undoes particle = T(average, psi, shift))."""
        from simcryo.image.geometry import align_images
        k, box = self.cfg.K, self.pset.box
        sums = torch.zeros(k, box, box, device=self.device)
        wsum = torch.zeros(k, device=self.device)
        lab = torch.as_tensor(labels, device=self.device)
        conf = torch.as_tensor(probs[np.arange(len(labels)), labels], dtype=torch.float32,
                               device=self.device)
        for s in range(0, self.pset.n, 256):
            idx = np.arange(s, min(s + 256, self.pset.n))
            x = self.full_box_images(idx).to(self.device)
            a = align_images(x, torch.as_tensor(psi[idx], dtype=torch.float32, device=self.device),
                             torch.as_tensor(shift[idx], dtype=torch.float32, device=self.device))
            sums.index_add_(0, lab[idx], a * conf[idx, None, None])
            wsum.index_add_(0, lab[idx], conf[idx])
        return (sums / wsum.clamp_min(1e-6)[:, None, None]).cpu().numpy()
