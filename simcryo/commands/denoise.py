"""`simcryo denoise train|apply`: particle denoising before clustering.

train: --i particles.star [--volume map.mrc] --o MODEL_DIR
    MODEL_DIR/checkpoint.pt (full training state, written every epoch; --resume continues
    from it), then, when training ends, model.pt (the generator and what apply needs) and
    run.json (config, data statistics, loss curves, timings), the mark of a finished model:
    apply refuses a model folder of a simcryo run without it.
apply: --i particles.star --model MODEL_DIR --o OUT
    OUT/particles.mrcs (denoised images, input order, input pixel size) and OUT/particles.star
    (every input row and column, _rlnImageName pointing at the new stack), run.json last.
Files are written atomically; a lock refuses a second run into the same folder.

Under torchrun (simcryo.distributed) both are sharded by particle: train is data parallel
(simcryo.denoise.trainers), apply has each rank denoise its block of the particles into the
stack rank 0 created. Rank 0 alone logs, holds the output folder and writes the files;
run.json records `world_size`, and a checkpoint of any world size resumes with any other.
"""
import argparse
import dataclasses
import os
import time

import numpy as np
import torch

from simcryo import distributed
from simcryo.config import add_config_arguments, config_from_args, config_to_dict, radius_px
from simcryo.denoise import noise as noise_mod
from simcryo.denoise.apply import denoise_particles
from simcryo.denoise.config import DenoiseConfig
from simcryo.denoise.model_io import arch_of, load_generator, model_record
from simcryo.denoise.noise import measure_data
from simcryo.denoise.pairs import ReferencePairs
from simcryo.denoise.trainers import ReferenceTrainer, SelfTrainer
from simcryo.errors import SimcryoError
from simcryo.image.volume import resample_volume
from simcryo.io.mrc import StackRows, StackWriter, read_volume
from simcryo.io.particles import load_particles, write_particles
from simcryo.outputs import COMPLETE, OutputFolder, require_complete
from simcryo.runtime import (epoch_generator, load_checkpoint, Progress, resolve_device,
                             RunLog, save_checkpoint, seed_everything, set_threads)
from simcryo.runtime import log as _log_all_ranks

TRAIN_HELP = """Train a denoiser on the particles in --i.

Reference-guided mode (--volume given; the paper's method): a GAN (generator: convolution
block, residual blocks, sub-pixel convolution block; discriminator: five convolution layers
with batch norm and LeakyReLU) learns from pairs made on the fly: projections of the volume at
uniformly random orientations, CTFs drawn from the particles' own CTF parameters, random
shifts, scaled to the signal power measured on the particles, plus noise synthesised with the
power spectrum of the particles' background (outside --mask-diameter). The target is the
CTF-modulated clean projection: the output is denoised, not CTF-corrected.

Self-supervised mode (no volume), --self-method:
  sure (default)  Monte-Carlo SURE: an unbiased estimate of the MSE to the clean image,
                  computed from the particles alone with the background noise model above
                  (Gaussian noise of the measured spectrum). Trains at full resolution and at
                  the data's own noise level; the printed val loss is the estimated MSE.
  n2n             Neighbor2Neighbor: half-resolution images from adjacent pixels of each
                  2x2 cell predict each other (Noise2Noise without a second exposure). Needs
                  only noise independent between neighbouring pixels, but learns at half
                  resolution; on simulated particles it stayed below a tuned Gaussian low-pass where
                  SURE beat it by ~2 dB. Blind-spot nets (Noise2Self/Noise2Void) were not
                  chosen: only the masked pixels feed their loss, too slow on a CPU budget."""

APPLY_HELP = """Denoise the particles in --i with a model from `simcryo denoise train`.
Writes OUT/particles.mrcs and OUT/particles.star (all rows in input order, all columns kept,
same pixel size, _rlnImageName pointing at the new stack)."""

APPLY_FIELDS = ("apply_batch", "device", "threads", "seed")


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    fmt = argparse.RawDescriptionHelpFormatter
    train = sub.add_parser("train", help="train a denoiser (reference-guided or self-supervised)",
                           description=TRAIN_HELP, formatter_class=fmt)
    train.add_argument("--i", required=True, metavar="PARTICLES",
                       help="particles: RELION STAR (3.0/3.1) or an MRC stack")
    train.add_argument("--volume", default=None, metavar="MAP.mrc",
                       help="reference map for the reference-guided mode")
    train.add_argument("--volume-apix", type=float, default=None,
                       help="pixel size of --volume in Å/px (default: its MRC header)")
    train.add_argument("--o", required=True, metavar="MODEL_DIR", help="output model folder")
    train.add_argument("--apix", type=float, default=None,
                       help="pixel size of the particles in Å/px (default: STAR / header)")
    train.add_argument("--resume", action="store_true",
                       help="continue from MODEL_DIR/checkpoint.pt: the same input (STAR rows, "
                            "stack sizes and modification times), volume and parameters "
                            "(else an error names what differs; --epochs may grow, --device "
                            "and --threads never count)")
    train.add_argument("--force", action="store_true",
                       help="replace a model already in MODEL_DIR")
    add_config_arguments(train, DenoiseConfig)
    apply = sub.add_parser("apply", help="denoise particles with a trained model",
                           description=APPLY_HELP, formatter_class=fmt)
    apply.add_argument("--i", required=True, metavar="PARTICLES",
                       help="particles: RELION STAR (3.0/3.1) or an MRC stack")
    apply.add_argument("--model", required=True, metavar="MODEL_DIR",
                       help="folder written by `simcryo denoise train`")
    apply.add_argument("--o", required=True, metavar="OUT", help="output folder")
    apply.add_argument("--force", action="store_true",
                       help="replace the results already in OUT")
    apply.add_argument("--apix", type=float, default=None,
                       help="pixel size of the particles in Å/px (default: STAR / header)")
    skip = [f.name for f in dataclasses.fields(DenoiseConfig) if f.name not in APPLY_FIELDS]
    add_config_arguments(apply, DenoiseConfig, skip=skip)


def log(msg):
    """A progress line, from rank 0 only under torchrun."""
    if distributed.is_main():
        _log_all_ranks(msg)


def main(args):
    cfg = config_from_args(DenoiseConfig, args)
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = distributed.local_device(resolve_device(cfg.device))
    if args.action == "train":
        train(cfg, args, device)
    else:
        apply(cfg, args, device)
    return 0


# ----------------------------------------------------------------------------- mask
AUTO_MASK_FRACTION = 0.8  # --mask-diameter 0: 0.8 x the box (the former default)


def mask_radius_px(cfg, box, apix):
    """--mask-diameter (Å; 0: 0.8 x the box) as a radius in px of the input box."""
    if not cfg.mask_diameter:
        return AUTO_MASK_FRACTION * box / 2
    return radius_px(cfg.mask_diameter, apix)


def background_mask(box, radius, device, apix=None):
    """True outside `radius` px; one-line error naming --mask-diameter when too few
    background pixels remain (the library takes the radius as a fraction of box / 2)."""
    try:
        return noise_mod.background_mask(box, radius / (box / 2), device)
    except SimcryoError:
        what = f"{2 * radius * apix:g} Å" if apix else f"{2 * radius:g} px"
        raise SimcryoError(f"a mask diameter of {what} leaves fewer than 5% of the {box} px "
                           "box as background; give a smaller --mask-diameter") from None


def model_mask_radius_px(record, model_dir):
    """Mask radius (px) stored in a model file. Files from before --mask-diameter store
    'mask_radius' as a fraction of half the box: converted."""
    if "mask_radius_px" in record:
        return float(record["mask_radius_px"])
    fraction = record.get("mask_radius")
    if isinstance(fraction, (int, float)) and 0 < fraction < 1.42:
        return float(fraction) * record["box"] / 2
    raise SimcryoError(f"model in {model_dir} stores no usable mask radius; retrain it with "
                       "`simcryo denoise train --mask-diameter ...`")


# ----------------------------------------------------------------------------- train
def _resolve_mode(cfg, args):
    if cfg.mode == "reference" and not args.volume:
        raise SimcryoError("--mode reference needs --volume MAP.mrc")
    if cfg.mode == "auto":
        return "reference" if args.volume else "self"
    if cfg.mode == "self" and args.volume:
        log("note: --mode self ignores --volume")
    return cfg.mode


def _reference_pairs(cfg, args, pset, mask, device):
    stats = measure_data(pset.images, pset.n, mask, cfg.stats_images, cfg.seed, device)
    if not stats.signal_power > 3 * stats.signal_power_se:
        raise SimcryoError(f"no particle signal found inside the mask (signal power "
                           f"{stats.signal_power:.3g} +- {stats.signal_power_se:.2g}); check "
                           "--mask-diameter or that --i holds particles")
    vol, vol_apix = read_volume(args.volume)
    vol_apix = args.volume_apix or vol_apix
    if vol_apix is None:
        log(f"note: {args.volume} has no pixel size; assuming the particles' "
            f"{pset.apix:g} Å/px (give --volume-apix otherwise)")
        vol_apix = pset.apix
    if np.ptp(vol) == 0:
        raise SimcryoError(f"{args.volume}: the map is constant")
    volume = resample_volume(torch.from_numpy(vol).to(device), vol_apix, pset.apix, pset.box)
    if pset.ctf is None:
        log("note: no CTF columns in the input; training pairs are made without CTF")
    pairs = ReferencePairs(volume, stats.noise, mask, pset.apix, pset.ctf, stats.signal_power,
                           cfg.max_shift, cfg.empty_fraction, phase_flip=cfg.phase_flip)
    mean_image = stats.mean_image if cfg.polarity == "auto" else None
    pairs.calibrate(mean_image, generator=epoch_generator(cfg.seed, "denoise-calibrate", 0))
    if cfg.polarity == "flip":
        pairs.polarity = -1.0
    info = {"estimated_snr": stats.snr, "signal_power": stats.signal_power,
            "projection_scale": pairs.scale, "polarity": pairs.polarity,
            "volume": os.path.abspath(args.volume), "volume_apix": vol_apix}
    log(f"data: estimated SNR {stats.snr:.3g} (signal power {stats.signal_power:.3g} per "
        f"masked pixel, noise variance 1), contrast polarity {pairs.polarity:+.0f}")
    return pairs, info


# parameters that never change the model (where and how fast it runs, apply's batch) and
# the number of epochs, which a resumed training may raise
RESUME_UNCHECKED = {"device", "threads", "apply_batch", "epochs"}
TRAIN_RESULTS = ("model.pt", "checkpoint.pt", COMPLETE)
APPLY_RESULTS = ("particles.mrcs", "particles.star", COMPLETE)


def job_identity(cfg, args, pset, mode):
    """What a resumed training must share with the checkpoint: input, volume, parameters."""
    params = {k: v for k, v in config_to_dict(cfg).items() if k not in RESUME_UNCHECKED}
    volume = None
    if args.volume and mode == "reference":
        st = os.stat(args.volume)
        volume = [os.path.abspath(args.volume), int(st.st_size), int(st.st_mtime_ns),
                  args.volume_apix]
    return {"input": pset.fingerprint(), "volume": volume, "params": params, "mode": mode,
            "arch": arch_of(cfg)}


def _check_resume(state, job, path):
    """One line naming what differs between the checkpoint's job and this one."""
    if "job" not in state:
        raise SimcryoError(f"{path} is from another simcryo version; rerun without --resume "
                           "(with --force to replace it)")
    before, what = state["job"], []
    if before["input"] != job["input"]:
        what.append("the input particles (STAR rows, stack sizes or modification times)")
    if before["volume"] != job["volume"]:
        what.append("--volume")
    for key in ("mode", "arch"):
        if before[key] != job[key]:
            what.append(f"{key} {before[key]} -> {job[key]}")
    for k, v in job["params"].items():
        if before["params"].get(k) != v:
            what.append(f"{k} {before['params'].get(k)} -> {v}")
    if what:
        raise SimcryoError(f"--resume: this is not the training in {path}: "
                           + "; ".join(what))


def train(cfg, args, device):
    pset = load_particles(args.i, apix=args.apix)
    ckpt_path = os.path.join(args.o, "checkpoint.pt")
    resume = args.resume and os.path.exists(ckpt_path)
    if args.resume and not resume:
        raise SimcryoError(f"--resume: no checkpoint in {args.o}")
    world = distributed.world_size()
    if cfg.batch_size < world:  # every rank runs a block of each batch
        raise SimcryoError(f"--batch-size {cfg.batch_size} is below the {world} processes of "
                           "torchrun: give at least one image per process")
    if not distributed.is_main():  # the other ranks train on the folder rank 0 holds
        return _train(cfg, args, device, pset, None)
    with OutputFolder(args.o, TRAIN_RESULTS, inputs=[args.i, args.volume], force=args.force,
                      resume=resume) as folder:
        _train(cfg, args, device, pset, folder)


def _train(cfg, args, device, pset, folder):
    """The training; `folder` None on the ranks other than 0 (they write nothing)."""
    out = folder.path if folder else args.o
    mode = _resolve_mode(cfg, args)
    radius = mask_radius_px(cfg, pset.box, pset.apix)
    mask = background_mask(pset.box, radius, device)
    runlog = RunLog("denoise train", config_to_dict(cfg), mode=mode, input=args.i,
                    n_particles=pset.n, box=pset.box, apix=pset.apix,
                    mask_diameter_A=round(2 * radius * pset.apix, 3),
                    mask_radius_px=round(radius, 4), world_size=distributed.world_size())
    log(f"denoise train: {pset.n} particles, box {pset.box} px, {pset.apix:g} Å/px, "
        f"mode {mode}, device {device}")
    extra = {"mask_radius_px": radius, "mask_diameter_A": 2 * radius * pset.apix}
    if mode == "reference":
        pairs, info = _reference_pairs(cfg, args, pset, mask, device)
        extra.update(info)
        trainer = ReferenceTrainer(cfg, pairs, device)
    else:
        stats = measure_data(pset.images, pset.n, mask, cfg.stats_images, cfg.seed, device)
        extra.update(estimated_snr=stats.snr, signal_power=stats.signal_power,
                     self_method=cfg.self_method)
        log(f"data: estimated SNR {stats.snr:.3g}; self-supervised method {cfg.self_method}")
        trainer = SelfTrainer(cfg, pset.images, pset.n, mask, device, stats.noise, pset.ctf,
                              pset.apix)
    extra["phase_flip"] = bool(cfg.phase_flip and pset.ctf is not None)
    runlog["data"] = extra
    ckpt_path = os.path.join(out, "checkpoint.pt")
    job = job_identity(cfg, args, pset, mode)
    start, history = 0, []
    if args.resume:
        state = load_checkpoint(ckpt_path, device)
        _check_resume(state, job, ckpt_path)
        trainer.load_state_dict(state["trainer"])
        start, history = state["epoch"], state["history"]
        log(f"resumed after epoch {start}")
    if folder:
        folder.begin()  # a refused resume leaves the folder as it was
    steps = max(1, cfg.images_per_epoch // cfg.batch_size)
    progress = Progress(f"denoise {mode}", (cfg.epochs - start) * steps)
    progress.update = distributed.main_only(progress.update)
    runlog.start("train")
    for epoch in range(start, cfg.epochs):
        base = (epoch - start) * steps

        def on_step(step, total, loss, epoch=epoch, base=base):
            progress.update(base + step, epoch=f"{epoch + 1}/{cfg.epochs}", loss=loss)

        stats = trainer.train_epoch(epoch, on_step)
        history.append(stats)
        log(f"epoch {epoch + 1}/{cfg.epochs} " + " ".join(f"{k}={v:.4g}"
                                                         for k, v in stats.items()))
        if folder:  # every rank holds the same state: rank 0 writes it
            save_checkpoint(ckpt_path, {"epoch": epoch + 1, "history": history, "job": job,
                                        "trainer": trainer.state_dict()})
    runlog.stop("train")
    if folder is None:
        return
    for stats in history:
        for k, v in stats.items():
            runlog.curve(k, v)
    # the model once, when trained (atomically), then run.json: `apply` needs both
    save_checkpoint(os.path.join(out, "model.pt"),
                    model_record(trainer.G, cfg, mode, pset.box, pset.apix, extra))
    runlog.write(os.path.join(out, COMPLETE))
    log(f"model written to {os.path.join(out, 'model.pt')}")


# ----------------------------------------------------------------------------- apply
def _check_compatible(record, pset, model_dir):
    if record["box"] != pset.box:
        raise SimcryoError(f"model in {model_dir} was trained on {record['box']} px boxes; "
                           f"these particles are {pset.box} px")
    if abs(record["apix"] / pset.apix - 1.0) > 0.02:
        raise SimcryoError(f"model in {model_dir} was trained at {record['apix']:g} Å/px; "
                           f"these particles are {pset.apix:g} Å/px")


def apply(cfg, args, device):
    model_path = os.path.join(args.model, "model.pt")
    if not os.path.isfile(model_path):
        raise SimcryoError(f"no model.pt in {args.model} (run `simcryo denoise train` first)")
    require_complete(model_path, "model")
    record = load_checkpoint(model_path, device)
    G = load_generator(record, device)
    pset = load_particles(args.i, apix=args.apix)
    _check_compatible(record, pset, args.model)
    stack_path = os.path.join(args.o, "particles.mrcs")
    if os.path.realpath(stack_path) in {os.path.realpath(p) for p in pset.stack_paths}:
        raise SimcryoError(f"{stack_path} is an input stack; choose another --o")
    flip = bool(record.get("phase_flip", False))
    if flip and pset.ctf is None:
        raise SimcryoError(f"model in {args.model} works on phase-flipped particles, but "
                           f"{args.i} has no CTF columns")
    radius = model_mask_radius_px(record, args.model)
    background_mask(pset.box, radius, device, pset.apix)  # fails clearly before any work
    if not distributed.is_main():  # the other ranks denoise their blocks into rank 0's stack
        _denoise_rows(cfg, device, pset, G, flip, radius, None)
        return
    with OutputFolder(args.o, APPLY_RESULTS, inputs=[args.i], input_dirs=[args.model],
                      force=args.force) as folder:
        folder.begin()
        _apply(cfg, args, device, pset, record, G, flip, radius, folder.path)


def _denoise_rows(cfg, device, pset, G, flip, radius, stack):
    """This rank's block of the particles into the stack (rank 0's StackWriter temporary,
    whose name `stack` rank 0 shares), then a barrier: every row is written."""
    path = distributed.broadcast_object(stack.tmp if stack else None)
    progress = Progress("denoise apply", pset.n)
    world = distributed.world_size()
    with StackRows(path, pset.n, pset.box) as rows:
        denoise_particles(G, pset, radius / (pset.box / 2), rows, cfg.apply_batch, device,
                          on_batch=distributed.main_only(
                              lambda done: progress.update(min(pset.n, done * world))),
                          flip=flip)
    distributed.barrier()


def _apply(cfg, args, device, pset, record, G, flip, radius, out):
    stack_path = os.path.join(out, "particles.mrcs")
    runlog = RunLog("denoise apply", config_to_dict(cfg), input=args.i,
                    model=os.path.abspath(args.model), mode=record["mode"], n_particles=pset.n,
                    world_size=distributed.world_size())
    t0 = time.time()
    runlog["mask_radius_px"] = round(radius, 4)
    runlog["mask_diameter_A"] = round(2 * radius * pset.apix, 3)
    # a rank that fails leaves the stack a temporary, removed by the StackWriter
    with StackWriter(stack_path, pset.n, pset.box, pset.apix) as writer:
        _denoise_rows(cfg, device, pset, G, flip, radius, writer)
    elapsed = time.time() - t0
    names = [f"{i + 1}@particles.mrcs" for i in range(pset.n)]
    write_particles(os.path.join(out, "particles.star"), pset, image_names=names)
    runlog["timings_s"]["apply"] = round(elapsed, 3)
    runlog["images_per_s"] = pset.n / max(elapsed, 1e-9)
    runlog.write(os.path.join(out, COMPLETE))
    log(f"denoised {pset.n} particles in {elapsed:.1f} s ({pset.n / max(elapsed, 1e-9):.0f} "
        f"images/s) -> {out}")
