"""`simcryo simulate`: labelled particle stacks from a volume (or the built-in phantom).

Writes in --o: particles.mrcs, particles.star (RELION 3.1: optics block, CTF columns and the
truth columns _simcryoTrueClass, _simcryoTruePsi, _simcryoTrueOriginXAngst/YAngst,
_simcryoTrueAngleRot/Tilt, _simcryoTrueKind (good, empty, blob, offcentre, other),
_simcryoTrueContrast), references.mrcs (class k at index k: clean centred projection at
the class's central direction, no CTF), volume.mrc (the map projected, at the output box
and pixel size: evaluate's --volume), clean.mrcs with --save-clean, run.json.
The forward model and the realistic-noise cutting are described in simcryo/simulation/simulate.py,
continuous views, junk, coloured noise and contrast in simcryo/simulation/realistic.py.
"""
import os

import numpy as np
import torch

from simcryo.config import add_config_arguments, config_from_args, config_to_dict
from simcryo.errors import SimcryoError
from simcryo.io.mrc import StackWriter, write_stack, write_volume
from simcryo.io.star import StarBlock, write_star
from simcryo.runtime import (Progress, RunLog, ensure_output_dir, log, resolve_device,
                             seed_everything, set_threads)
from simcryo.simulation.realistic import KINDS
from simcryo.simulation.simulate import (SimulateConfig, WhiteNoise, class_views, ctf_alias_resolution,
                              load_volume, load_junk_volume, ColouredNoise,
                              real_noise_source, reference_images, sample_ctf, sample_poses,
                              sample_realistic_poses, simulate_batches)


def add_arguments(parser):
    add_config_arguments(parser, SimulateConfig)


def main(args):
    cfg = config_from_args(SimulateConfig, args)
    run(cfg)
    return 0


def _star_blocks(cfg, poses, ctf, apix, box, stack_name):
    n = len(poses.label)
    optics = StarBlock({
        "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnAmplitudeContrast": [cfg.amp_contrast], "rlnSphericalAberration": [cfg.cs],
        "rlnVoltage": [cfg.voltage], "rlnImagePixelSize": [apix], "rlnImageSize": [box],
        "rlnImageDimensionality": [2]})
    cols = {"rlnImageName": [f"{i + 1:06d}@{stack_name}" for i in range(n)],
            "rlnOpticsGroup": [1] * n}
    if ctf is not None:
        cols.update(rlnDefocusU=ctf.defocus_u, rlnDefocusV=ctf.defocus_v,
                    rlnDefocusAngle=ctf.defocus_angle, rlnCtfBfactor=ctf.bfactor,
                    rlnPhaseShift=ctf.phase_shift)
    psi = (poses.psi + 180.0) % 360.0 - 180.0
    cols.update(simcryoTrueClass=poses.label, simcryoTruePsi=psi,
                simcryoTrueOriginXAngst=poses.shift[:, 0] * apix,
                simcryoTrueOriginYAngst=poses.shift[:, 1] * apix,
                simcryoTrueAngleRot=poses.rot, simcryoTrueAngleTilt=poses.tilt,
                simcryoTrueKind=[KINDS[k] for k in poses.kinds()],
                simcryoTrueContrast=(poses.contrast if poses.contrast is not None
                                     else np.ones(n)))
    return {"optics": optics, "particles": StarBlock(cols)}


def run(cfg):
    """Simulate into cfg.o; returns the run-log dict."""
    cfg.validate()
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    out = ensure_output_dir(cfg.o)
    runlog = RunLog("simulate", config_to_dict(cfg))
    runlog.start("total")
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed + 1)

    volume, apix, source = load_volume(cfg)
    box = volume.shape[0]
    class_rot, class_tilt, separation = class_views(cfg)
    if cfg.views == "discrete" and cfg.classes > 1 and 2 * cfg.spread >= separation:
        raise SimcryoError(f"--spread {cfg.spread:g} deg is not below half the class "
                           f"separation achieved ({separation:.1f} deg); lower --spread or "
                           "--classes")
    if cfg.realistic():
        poses = sample_realistic_poses(cfg, class_rot, class_tilt, box, rng)
    else:
        poses = sample_poses(class_rot, class_tilt, cfg.per_class, cfg.spread, cfg.shift_sigma,
                             cfg.rotate, rng)
    junk_volume = (load_junk_volume(cfg, box, apix)
                   if cfg.junk_fraction and "other" in cfg.junk_kind_list() else None)
    n = len(poses.label)
    ctf = sample_ctf(n, cfg, rng) if cfg.ctf else None
    if cfg.noise == "real":
        noise, noise_info = real_noise_source(cfg, box, apix, rng)
    elif cfg.noise == "coloured":
        noise = ColouredNoise(box, apix, cfg.noise_corner, cfg.noise_exponent, generator)
        noise_info = dict(corner_A=cfg.noise_corner, exponent=cfg.noise_exponent)
    else:
        noise, noise_info = WhiteNoise(box, generator), {}
    alias = ctf_alias_resolution(cfg.defocus_max, cfg.voltage, box, apix) if cfg.ctf else None
    if alias is not None:
        log(f"simulate: warning: at {cfg.defocus_max:g} µm defocus the CTF is undersampled "
            f"beyond {alias:.1f} Å (box {box} px at {apix:.3g} Å/px); use a larger box, a "
            "larger pixel size or less defocus for exact high-resolution CTF")
    log(f"simulate: {n} particles, {cfg.classes} classes x {cfg.per_class}, box {box} px, "
        f"{apix:.4g} Å/px, SNR {cfg.snr:g}, {cfg.noise} noise, volume: {source}")

    refs = reference_images(volume, class_rot, class_tilt, device)
    write_stack(os.path.join(out, "references.mrcs"), refs.numpy(), apix)
    write_volume(os.path.join(out, "volume.mrc"), volume.numpy(), apix)
    runlog.start("simulate")
    progress = Progress("simulate", n)
    clean_writer = (StackWriter(os.path.join(out, "clean.mrcs"), n, box, apix)
                    if cfg.save_clean else None)
    try:
        with StackWriter(os.path.join(out, "particles.mrcs"), n, box, apix) as writer:
            for start, particles, clean in simulate_batches(volume, apix, poses, ctf, noise,
                                                            cfg.snr, cfg.batch, device,
                                                            junk_volume, generator):
                writer.write(start, particles.numpy())
                if clean_writer is not None:
                    clean_writer.write(start, clean.numpy())
                progress.update(start + len(particles))
    except BaseException:
        if clean_writer is not None:
            clean_writer.abort()   # a partial clean.mrcs is never moved into place
        raise
    if clean_writer is not None:
        clean_writer.close()
    runlog.stop("simulate")
    write_star(os.path.join(out, "particles.star"),
               _star_blocks(cfg, poses, ctf, apix, box, "particles.mrcs"))
    runlog.stop("total")
    runlog["volume"] = source
    runlog["box"], runlog["apix"], runlog["n_particles"] = box, apix, n
    runlog["classes"] = [dict(class_number=k + 1, rot=float(class_rot[k]),
                              tilt=float(class_tilt[k])) for k in range(cfg.classes)]
    runlog["min_class_separation_deg"] = separation
    runlog["views"] = cfg.views
    runlog["kinds"] = {k: int((poses.kinds() == i).sum()) for i, k in enumerate(KINDS)}
    runlog["ctf_alias_resolution_A"] = alias
    runlog["noise"] = dict(model=cfg.noise, snr=cfg.snr, **noise_info)
    runlog["outputs"] = sorted(f for f in ("particles.mrcs", "particles.star",
                                           "references.mrcs", "clean.mrcs", "volume.mrc")
                               if os.path.exists(os.path.join(out, f)))
    runlog.write(os.path.join(out, "run.json"))
    log(f"simulate: wrote {os.path.join(out, 'particles.star')} "
        f"({runlog['timings_s']['total']:.1f} s)")
    return runlog.data

