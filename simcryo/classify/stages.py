"""The stages of `simcryo classify`, each a function of the running pipeline `pipe`
(simcryo.classify.pipeline.Classifier: cfg, pset, out, device, log, state, images, geom,
save(**models), curve(name, value)): preprocess (cache), pretext (SimCLR), features (+ kNN),
scan, selflabel, refine (EM against the class averages) and the final class averages.

A stage skips what the checkpointed `pipe.state["stage"]` says is done and continues a
stage at `pipe.state["epoch"]`, so a resumed run equals an uninterrupted one.

Under torchrun (simcryo.distributed) every rank runs every stage: rank 0 builds the cache
and writes the artefacts and checkpoints (the others open the same files after it); the
invariants, neighbours, features, the ResNet's training (data parallel), the EM and the
averages are sharded by particle; the invariant basis, SCAN's final evaluation and the
class sort run alike on every rank. The small networks (the invariant encoder's MLP, the
SCAN and self-labelling heads) train replicated: every rank trains the whole network on
every batch (`distributed.replicated`), because one of their steps computes less than the
collectives of a data-parallel step wait (10^4 particles, 2 CPU processes: these stages
took 41 s in one process and 68 s data parallel).
"""
import os
import time

import numpy as np
import torch

from simcryo import distributed, runtime
from simcryo.align import ClassAligner, ClassAlignParams, ParticleSource
from simcryo.classify import invariant, pretext, references, scan, selflabel
from simcryo.classify.augment import Augmenter
from simcryo.classify.checkpoint import file_identity
from simcryo.classify.neighbors import knn_cosine
from simcryo.classify.preprocess import (CACHE_NAME, REFINE_CACHE, Geometry, apply_filter,
                                        build_cache, open_cache, wiener_filter)
from simcryo.classify.refine import Refiner
from simcryo.image import ctf as ctfmod
from simcryo.image.fourier import fourier_crop
from simcryo.image.mask import soft_mask
from simcryo.image.preprocess import mask_radius_for
from simcryo.models import MLPEncoder, ProjectionHead, resnet18
from simcryo.outputs import atomic_path, check_free_space


def preprocess(pipe, saved):
    """The cached working images: reused when the checkpoint's cache is there unchanged
    (recorded size and modification time), else built (deterministic: a rebuilt cache
    equals the removed one). Returns True when it was built. Under torchrun rank 0 decides,
    and every rank fills its block (preprocess.build_cache)."""
    t = time.time()
    if distributed.broadcast_object(_cache_reusable(pipe, pipe.state.get("geometry")
                                                    if saved is not None else None)
                                    if distributed.is_main() else None):
        pipe.images, pipe.geom = _opened_cache(pipe, pipe.state["geometry"])
        return False
    pipe.images, pipe.geom = build_cache(pipe.pset, pipe.cfg, pipe.out, pipe.device,
                                         log=pipe.log)
    pipe.state["geometry"] = dict(vars(pipe.geom))
    pipe.checkpoint.record_artefact(pipe.state, CACHE_NAME)
    pipe.state["timings"]["preprocess"] = time.time() - t
    pipe.log(f"[classify] preprocessed {pipe.pset.n} particles: box {pipe.geom.box} -> "
             f"crop {pipe.geom.window} -> working box {pipe.geom.working_box} px, particle "
             f"radius {pipe.geom.radius_px:.1f} px ({time.time() - t:.1f} s)")
    return True


def _cache_reusable(pipe, geometry, name=CACHE_NAME):
    """True when the checkpoint holds the `geometry` of cache `name` and the file it
    recorded is there unchanged (size and modification time)."""
    cache_path = os.path.join(pipe.out, name)
    recorded = pipe.state.get("artefacts", {}).get(name)
    return bool(geometry and recorded and os.path.exists(cache_path)
                and file_identity(cache_path) == list(recorded))


def _opened_cache(pipe, geometry, name=CACHE_NAME):
    """(rows of cache `name` (preprocess.open_cache), its Geometry from the checkpoint's
    dict)."""
    g = Geometry.__new__(Geometry)
    g.__dict__.update(geometry)
    return open_cache(os.path.join(pipe.out, name), pipe.pset.n, g.working_box), g


def pretext_box(pipe):
    return min(pipe.cfg.pretext_box or pipe.geom.working_box, pipe.geom.working_box)


def pretext_radius(pipe):
    return pipe.geom.work_radius * pretext_box(pipe) / pipe.geom.working_box


def prefilter(pipe):
    """Cached images -> network input: Wiener filter (spectral SNR of the data), then a
    Fourier crop to the pretext box (the filter removed what the crop drops)."""
    filt = None
    if getattr(pipe.geom, "ssnr", None) is not None:
        filt = wiener_filter(pipe.geom, pipe.device)
    box = pretext_box(pipe)

    def filtered(x):
        if filt is not None:
            x = apply_filter(x, filt)
        if box < x.shape[-1]:
            x = fourier_crop(x[:, 0], box)[:, None]
        return x

    # back to unit variance: the augmentations' noise and jitter are in units of the std
    sample = pretext.load_batch(pipe.images, np.arange(min(len(pipe.images), 512)),
                                pipe.device)
    scale = float(filtered(sample).square().mean().sqrt().clamp_min(1e-6))
    return lambda x: filtered(x) / scale


def wiener_prefilter(pipe):
    """Cached images -> the invariant encoder's input: the Wiener filter alone (no crop)."""
    if getattr(pipe.geom, "ssnr", None) is None:
        return None
    filt = wiener_filter(pipe.geom, pipe.device)
    return lambda x: apply_filter(x, filt)


def _load_artefacts(pipe, names):
    """The arrays of `names` in OUT when the checkpoint recorded them and they are unchanged
    (else None: the caller recomputes them)."""
    recorded = pipe.state.get("artefacts", {})
    paths = [os.path.join(pipe.out, name) for name in names]
    if all(name in recorded and os.path.exists(p) and file_identity(p) == list(recorded[name])
           for name, p in zip(names, paths)):
        return [np.load(p) for p in paths]
    return None


def _save_artefacts(pipe, arrays):
    """Rank 0 writes `arrays`; every rank records the files (the same state everywhere)."""
    if distributed.is_main():
        for name, array in arrays.items():
            with atomic_path(os.path.join(pipe.out, name)) as tmp:
                np.save(tmp, array)
    distributed.barrier()
    for name in arrays:
        pipe.checkpoint.record_artefact(pipe.state, name)


def stage_progress(stage, total):
    """Progress lines of a stage, from rank 0 only."""
    p = runtime.Progress(stage, total, min_interval=10.0)
    p.update = distributed.main_only(p.update)
    return p


def invariant_inputs(pipe):
    """The invariant encoder's inputs: whitened invariants z (N, invariant_dim) and each
    particle's rotational neighbours (N, knn), from invariants.npy and
    rotational_neighbors.npy when the checkpoint recorded them, else computed."""
    cfg = pipe.cfg
    names = ("invariants.npy", "rotational_neighbors.npy")
    loaded = _load_artefacts(pipe, names)
    if loaded is not None:
        return torch.from_numpy(loaded[0]), loaded[1]
    t = time.time()
    n = len(pipe.images)
    check_free_space(pipe.out, n * (4 * cfg.invariant_dim + 8 * cfg.knn) + 4096,
                     "invariants.npy and rotational_neighbors.npy")
    spectra = invariant.RingSpectra(pipe.images, pipe.geom.work_radius, cfg.invariant_angular,
                                    pipe.device, prefilter=wiener_prefilter(pipe))
    basis = invariant.InvariantBasis(spectra.coef, cfg.invariant_dim, cfg.seed)
    z = basis.project(spectra.coef)
    neighbors = invariant.rotational_knn(spectra.coef, cfg.knn, cfg.invariant_exact_limit,
                                         cfg.invariant_candidates, basis=basis,
                                         device=pipe.device)
    _save_artefacts(pipe, {names[0]: z.numpy(), names[1]: neighbors})
    pipe.state["timings"]["invariants"] = time.time() - t
    pipe.save()  # a run killed in the training resumes with them
    searched = ("all pairs" if n <= cfg.invariant_exact_limit
                else f"{cfg.invariant_candidates} candidates each")
    pipe.log(f"[classify] invariants of {n} centred particles and their {neighbors.shape[1]} "
             f"rotational neighbours ({searched}, {time.time() - t:.1f} s)")
    return z, neighbors


def invariant_pretext_stage(pipe, saved):
    """The invariant encoder (MLP) trained with NT-Xent on (particle, rotational neighbour)
    pairs. Returns the encoder."""
    cfg = pipe.cfg
    z, neighbors = invariant_inputs(pipe)
    torch.manual_seed(cfg.seed)
    encoder = distributed.sync_batch_norms(
        MLPEncoder(z.shape[1], out_dim=cfg.feature_dim).to(pipe.device))
    opt = torch.optim.AdamW(encoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if saved and "backbone" in saved:
        encoder.load_state_dict(saved["backbone"])
        if "pretext_opt" in saved:
            opt.load_state_dict(saved["pretext_opt"])
    if pipe.state["stage"] != "pretext":
        return encoder
    n = len(z)
    per_epoch = max(n // min(cfg.batch_size, n), 1)
    total = cfg.pretext_epochs * per_epoch
    progress = stage_progress("pretext", cfg.pretext_epochs)
    with distributed.replicated(encoder):  # a small MLP: see the module docstring
        for epoch in range(pipe.state["epoch"], cfg.pretext_epochs):
            t = time.time()
            loss, seen = pretext.train_invariant_epoch(encoder, opt, z, neighbors, cfg, epoch,
                                                       pipe.device, epoch * per_epoch, total)
            pipe.state["pretext_seconds"] += time.time() - t
            pipe.state["pretext_images"] += seen
            pipe.curve("pretext_loss", loss)
            progress.update(epoch + 1, force=epoch == 0, loss=loss)
            pipe.state["epoch"] = epoch + 1
            pipe.save(backbone=encoder, pretext_opt=opt)
    pipe.state.update(stage="features", epoch=0)
    return encoder


def build_models(pipe):
    torch.manual_seed(pipe.cfg.seed)
    backbone = resnet18(pipe.cfg.width).to(pipe.device)
    head = ProjectionHead(backbone.out_dim, pipe.cfg.feature_dim).to(pipe.device)
    return distributed.sync_batch_norms(backbone), distributed.sync_batch_norms(head)


def pretext_stage(pipe, saved):
    """The contrastive stage of cfg.encoder; returns the trained network."""
    cfg = pipe.cfg
    if cfg.encoder == "invariant":
        return invariant_pretext_stage(pipe, saved)
    backbone, head = build_models(pipe)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if saved and "backbone" in saved:
        backbone.load_state_dict(saved["backbone"])
        head.load_state_dict(saved.get("proj_head", head.state_dict()))
        if "pretext_opt" in saved:
            opt.load_state_dict(saved["pretext_opt"])
    if pipe.state["stage"] != "pretext":
        return backbone
    n = len(pipe.images)
    per_epoch = max(n // min(cfg.batch_size, n), 1)
    total = cfg.pretext_epochs * per_epoch
    augment = Augmenter(cfg, pretext_box(pipe), pretext_radius(pipe), pipe.device)
    progress = stage_progress("pretext", cfg.pretext_epochs)
    network_input = prefilter(pipe)  # the same every epoch: built once
    for epoch in range(pipe.state["epoch"], cfg.pretext_epochs):
        t = time.time()
        loss, seen = pretext.train_epoch(backbone, head, opt, pipe.images, augment, cfg,
                                         epoch, pipe.device, epoch * per_epoch, total,
                                         prefilter=network_input)
        pipe.state["pretext_seconds"] += time.time() - t
        pipe.state["pretext_images"] += seen
        pipe.curve("pretext_loss", loss)
        rate = pipe.state["pretext_images"] / max(pipe.state["pretext_seconds"], 1e-9)
        progress.update(epoch + 1, force=epoch == 0, loss=loss, img_per_s=round(rate))
        pipe.state["epoch"] = epoch + 1
        pipe.save(backbone=backbone, proj_head=head, pretext_opt=opt)
    pipe.state.update(stage="features", epoch=0)
    return backbone


def features_stage(pipe, backbone):
    cfg = pipe.cfg
    feat_path = os.path.join(pipe.out, "features.npy")
    nb_path = os.path.join(pipe.out, "neighbors.npy")
    if pipe.state["stage"] != "features" and os.path.exists(feat_path):
        return np.load(feat_path), np.load(nb_path)
    t = time.time()
    n = len(pipe.images)
    check_free_space(pipe.out, n * (4 * backbone.out_dim + 8 * cfg.knn) + 4096,
                     "features.npy and neighbors.npy")
    if cfg.encoder == "invariant":
        # SCAN's neighbours are the rotational ones: the features only have to carry them
        z, rotational = invariant_inputs(pipe)
        feats = invariant.embed(backbone, z, pipe.device)
        neighbors = rotational[:, :cfg.knn]
    else:
        mask = soft_mask(pretext_box(pipe), pretext_radius(pipe), width=2.0, device=pipe.device)
        feats = pretext.extract_features(backbone, pipe.images, cfg.tta_rotations, pipe.device,
                                         mask=mask, prefilter=prefilter(pipe))
        neighbors, _ = knn_cosine(feats, cfg.knn, pipe.device)
    _save_artefacts(pipe, {os.path.basename(feat_path): feats,
                           os.path.basename(nb_path): neighbors})
    pipe.state["timings"]["features"] = time.time() - t
    pipe.state.update(stage="scan", epoch=0)
    pipe.save(backbone=backbone)
    return feats, neighbors


def scan_stage(pipe, feats, neighbors, saved):
    cfg = pipe.cfg
    f = torch.as_tensor(feats, device=pipe.device)
    heads = scan.make_heads(f.shape[1], cfg.K, cfg.scan_heads, cfg.seed + 1, pipe.device)
    opt = torch.optim.Adam(heads.parameters(), lr=cfg.scan_lr)
    if saved and "scan_heads" in saved:
        heads.load_state_dict(saved["scan_heads"])
        opt.load_state_dict(saved["scan_opt"])
    if pipe.state["stage"] == "scan":
        progress = stage_progress("scan", cfg.scan_epochs)
        with distributed.replicated(heads):
            for epoch in range(pipe.state["epoch"], cfg.scan_epochs):
                losses = scan.scan_epoch(heads, opt, f, neighbors, cfg, epoch, pipe.device)
                pipe.curve("scan_loss_best", float(losses.min()))
                progress.update(epoch + 1, loss=float(losses.min()))
                pipe.state["epoch"] = epoch + 1
                pipe.save(scan_heads=heads, scan_opt=opt)
        final = scan.evaluate_heads(heads, f, neighbors, cfg.entropy_weight)
        pipe.state["scan_head_losses"] = [float(v) for v in final]
        pipe.state["scan_best_head"] = int(np.argmin(final))
        pipe.state.update(stage="selflabel", epoch=0)
    best = pipe.state["scan_best_head"]
    return heads.heads[best]


def selflabel_stage(pipe, head, f, saved):
    cfg = pipe.cfg
    opt = torch.optim.Adam(head.parameters(), lr=cfg.scan_lr)
    if saved and "label_head" in saved:
        head.load_state_dict(saved["label_head"])
        opt.load_state_dict(saved["label_opt"])
    if pipe.state["stage"] == "selflabel":
        progress = stage_progress("selflabel", max(cfg.selflabel_epochs, 1))
        with distributed.replicated(head):
            for epoch in range(pipe.state["epoch"], cfg.selflabel_epochs):
                loss, n_conf = selflabel.selflabel_epoch(head, opt, f, cfg, epoch, pipe.device)
                if n_conf:
                    pipe.curve("selflabel_loss", loss)
                pipe.curve("selflabel_confident", n_conf)
                progress.update(epoch + 1, loss=loss, confident=n_conf)
                pipe.state["epoch"] = epoch + 1
                pipe.save(label_head=head, label_opt=opt)
        pipe.state.update(stage="refine", epoch=0)
    return head


def working_ctf(pipe, geom=None):
    """|CTF| of particles at the working box of `geom` (default: the cache's; rfft2
    layout), or None without CTF."""
    if pipe.pset.ctf is None or not pipe.cfg.phase_flip:
        return None
    geom = geom or pipe.geom
    ctf, wb, apix = pipe.pset.ctf, geom.working_box, geom.work_apix

    def fn(idx):
        return ctfmod.ctf_2d(ctf.take(np.asarray(idx)), wb, apix, device=pipe.device,
                             rfft=True).abs()
    return fn


def refine_stage(pipe, probs, feats, saved, candidates=None, ranking=None):
    """EM refinement against the class averages, seeded by the clustering (or by initial
    references: `candidates`, the members each class's seed is chosen among, and `ranking`
    (N, K), the order in which a particle's classes are scored first, stand in for what the
    features give). Returns (class probabilities (N, K), poses): poses = (psi (N,) deg,
    shift (N, 2) px of the input box), RELION's convention, or None when the stage is
    disabled."""
    cfg = pipe.cfg
    if pipe.state["stage"] == "done" and "refine_result" in pipe.state:
        r = pipe.state["refine_result"]
        return _refined(r["weights"], r["psi"], r["shift"],
                        pipe.state.get("refine_geometry", vars(pipe.geom))["scale"])
    ranking = probs if ranking is None else ranking
    labels = probs.argmax(1)
    if cfg.refine_init == "random":
        gen = np.random.default_rng(cfg.seed)
        labels = gen.permutation(np.arange(len(labels)) % cfg.K)
        probs = np.eye(cfg.K)[labels]
    if cfg.refine_iterations < 1:
        pipe.state.update(stage="done")
        return probs, None
    images, geom = refine_cache(pipe)
    max_shift = max(1.0, cfg.refine_shift * geom.working_box)
    refiner = Refiner(images, cfg.K, em_mask_radius(geom), pipe.device,
                      n_angles=cfg.refine_angles, max_shift=max_shift,
                      temperature=cfg.refine_temperature, log=pipe.log,
                      ctf=working_ctf(pipe, geom) if cfg.refine_ctf else None,
                      ctf_epsilon=cfg.refine_ctf_epsilon,
                      min_posterior=cfg.refine_min_posterior)
    seeds = None
    if not pipe.state.get("refine_state") and candidates is None:
        candidates = []
        for c in range(cfg.K):
            members = np.nonzero(labels == c)[0]
            if len(members) == 0:
                members = np.arange(len(labels))
            centre = feats[members].mean(0)
            order = np.argsort(-(feats[members] @ centre), kind="stable")
            candidates.append(members[order[:cfg.refine_seed_candidates]])
    if not pipe.state.get("refine_state"):
        seeds = refiner.choose_seeds(labels, candidates, gen=cfg.seed)
    progress = stage_progress("refine", cfg.refine_align_iterations + cfg.refine_iterations)

    def report(it, total, ll, changed):
        pipe.curve("refine_loglik", ll)
        pipe.curve("refine_changed", changed)
        progress.update(it, force=it == 1, loglik=ll, changed=changed)

    def save(state):
        pipe.state["refine_state"] = state
        pipe.save()

    start = pipe.state.get("refine_state") if saved else None
    weights, psi, shift, history = refiner.run(
        labels, cfg.refine_iterations, seeds=seeds,
        align_iterations=cfg.refine_align_iterations, progress=report, state=start,
        on_iteration=save, search_classes=cfg.refine_search_classes, ranking=ranking,
        first_search_classes=cfg.refine_first_search_classes,
        prescreen_box=cfg.refine_prescreen_box, subset=cfg.refine_subset,
        full_iterations=cfg.refine_full_iterations, subset_seed=cfg.seed)
    pipe.state.pop("refine_state", None)
    pipe.state["refine_result"] = {"weights": weights, "psi": psi, "shift": shift,
                                   "history": history}
    pipe.state.update(stage="done", epoch=0)
    pipe.save()
    return _refined(weights, psi, shift, geom.scale)


def em_mask_radius(geom):
    """The EM's mask radius in working px: the particle radius, or on the wider cache
    refine_mask_scale (its window_scale) x the radius, inside the box."""
    scale = getattr(geom, "window_scale", 1.0)
    if scale <= 1:
        return geom.work_radius
    return min(geom.work_radius * scale, geom.working_box / 2 - 3)


def refine_cache(pipe):
    """The EM's images and geometry: the cache, or with refine_mask_scale > 1 a wider one at
    the same pixel size (REFINE_CACHE), reused while the checkpoint records it unchanged."""
    scale = pipe.cfg.refine_mask_scale
    if scale <= 1:
        return pipe.images, pipe.geom
    saved = pipe.state.get("refine_geometry")
    if distributed.broadcast_object(_cache_reusable(pipe, saved, REFINE_CACHE)
                                    if distributed.is_main() else None):
        return _opened_cache(pipe, saved, REFINE_CACHE)
    t = time.time()
    images, geom = build_cache(pipe.pset, pipe.cfg, pipe.out, pipe.device, log=pipe.log,
                               geom=pipe.geom.widened(scale), name=REFINE_CACHE)
    pipe.state["refine_geometry"] = dict(vars(geom))
    pipe.checkpoint.record_artefact(pipe.state, REFINE_CACHE)
    pipe.log(f"[classify] the EM's cache: crop {geom.window} -> working box "
             f"{geom.working_box} px, mask radius {em_mask_radius(geom):.1f} px "
             f"({time.time() - t:.1f} s)")
    return images, geom


def reference_stage(pipe):
    """The partition from initial references (--references; simcryo.classify.references) in
    place of the contrastive stages: each particle in the class of the reference it
    correlates best with. Returns (one-hot probabilities (N, K), seed candidates per class,
    correlations (N, K): the ranking of the pruned first EM iteration); (None, None, None)
    once the refinement has finished (a resume that reuses it)."""
    cfg = pipe.cfg
    if pipe.state["stage"] == "done" and "refine_result" in pipe.state:
        return None, None, None
    t = time.time()
    refs = references.working_references(
        references.load_references(cfg.references, pipe.pset.box, pipe.pset.apix),
        pipe.geom, pipe.device)
    max_shift = max(1.0, cfg.refine_shift * pipe.geom.working_box)
    refiner = Refiner(pipe.images, cfg.K, pipe.geom.work_radius, pipe.device,
                      n_angles=cfg.refine_angles, max_shift=max_shift, log=pipe.log)
    labels, ncc = references.reference_partition(refiner, refs, ctf=working_ctf(pipe))
    candidates = references.seed_candidates(labels, ncc, cfg.K, cfg.refine_seed_candidates)
    pipe.state["timings"]["references"] = time.time() - t
    pipe.state.update(stage="refine", epoch=0)
    pipe.log(f"[classify] {cfg.K} initial references: class sizes "
             f"{np.bincount(labels, minlength=cfg.K).tolist()} ({time.time() - t:.1f} s)")
    return np.eye(cfg.K)[labels], candidates, ncc


def _refined(weights, psi, shift, scale):
    # the refinement works in its working box (scale: its px per input px): shifts back to
    # px of the input box
    return weights.numpy(), (psi.numpy(), shift.numpy() / scale)


def class_averages(pipe, labels, probs, poses=None):
    """The final class averages, by the one averager (simcryo.align): CTF-aware Wiener
    averages of the particles at the input box. With `poses` (the EM's, RELION convention,
    input-box px) they are built from those poses; without them (no refinement stage) the
    class aligner finds the poses first. Returns (psi (N,), shift (N, 2) px, averages
    (K, box, box)), float32 numpy."""
    pset, cfg = pipe.pset, pipe.cfg
    src = ParticleSource(pset.images, pset.n, pset.box, pipe.device, ctf=pset.ctf,
                         apix=pset.apix)
    prior = getattr(pipe.geom, "ssnr", None) if cfg.average_filter == "data" else None
    params = ClassAlignParams(iterations=cfg.average_iterations, seed=cfg.seed,
                              mask_radius=mask_radius_for(pipe.geom.radius_px, pset.box),
                              align_box=min(pset.box, cfg.average_box),
                              signal_prior=None if prior is None else tuple(prior))
    conf = probs[np.arange(len(labels)), labels]
    aligner = ClassAligner(src, labels, conf, cfg.K, params, log=pipe.log)
    if poses is None:
        psi, shift = aligner.run().poses()
        averages = aligner.averages
    else:
        psi, shift = poses
        averages = aligner.output_averages(aligner.final_averages(psi, shift, exact=True))
    return (np.asarray(psi, np.float32), np.asarray(shift, np.float32),
            averages.cpu().numpy().astype(np.float32))
