"""RELION 3.1 2D classification as the reference the engine must beat.

`run_relion_2d` drives `relion_refine` (non-MPI, `--j threads`) the way the RELION 3.1 GUI runs a
2D classification job (EM algorithm, tau2_fudge 2, 6-degree in-plane sampling, offset range 5 px,
step 1 px, oversampling 1) and reads the result back in the input's row order, matched by
`_rlnImageName`.

    python benchmarks/relion.py particles.star --K 10 --o bench_output/relion [--threads 2]
    python benchmarks/relion.py particles.star --K 10 --o bench_output/relion --reuse

prints wall time, CPU time, peak memory and, when the STAR has `_simcryoTrueClass`,
ACC / NMI / ARI / FMI and whether RELION's psi and origins follow the simulated poses with the
same or the opposite sign (the pose-convention check). Exit code 1 when RELION collapses to a
single class, 2 when it is not installed.
"""
import argparse
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

from simcryo.io import read_star  # noqa: E402

RELION_REFINE = "relion_refine"
ROOT_NAME = "run"


class RelionError(RuntimeError):
    """relion_refine is missing, failed, or wrote something we cannot read."""


def relion_available():
    return shutil.which(RELION_REFINE) is not None


def relion_version():
    if not relion_available():
        return None
    out = subprocess.run([RELION_REFINE, "--version"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "version" in line.lower():
            return line.split(":", 1)[-1].strip()
    return out.strip() or None


def _particles_block(star_path):
    blocks = read_star(star_path)
    if "particles" in blocks:
        return blocks, blocks["particles"]
    loops = [b for b in blocks.values() if b.loop and "rlnImageName" in b]
    if not loops:
        raise RelionError(f"{star_path}: no particle table with _rlnImageName")
    return blocks, loops[0]


def image_key(name, star_dir):
    """Canonical `index@absolute stack path` so input and output rows can be matched."""
    idx, _, path = name.partition("@")
    if not path:
        idx, path = "1", idx
    if not os.path.isabs(path):
        path = os.path.join(star_dir, path)
    return int(idx), os.path.normpath(path)


def _apix_and_box(blocks):
    optics = blocks.get("optics")
    if optics is not None and "rlnImagePixelSize" in optics:
        apix = float(optics.as_float("rlnImagePixelSize")[0])
        return apix, int(optics.as_float("rlnImageSize")[0])
    raise RelionError("STAR has no data_optics with _rlnImagePixelSize (RELION 3.1 format needed)")


def build_command(star_name, out_root, K, threads, iterations, seed, ctf, diameter_A,
                  extra_args=()):
    """The relion_refine arguments of a RELION 3.1 GUI 2D classification job."""
    cmd = [RELION_REFINE, "--i", star_name, "--o", out_root,
           "--K", str(K), "--iter", str(iterations), "--tau2_fudge", "2",
           "--particle_diameter", f"{diameter_A:.1f}",
           "--flatten_solvent", "--zero_mask", "--norm", "--scale",
           "--oversampling", "1", "--psi_step", "12",
           "--offset_range", "5", "--offset_step", "2",
           "--dont_combine_weights_via_disc", "--pool", "3", "--pad", "2",
           "--j", str(threads), "--random_seed", str(seed)]
    if ctf:
        cmd.append("--ctf")
    cmd.extend(extra_args)
    return cmd


def _run_with_rusage(cmd, cwd, log_path, env):
    """Run cmd, return (returncode, wall_s, peak RSS in MB, CPU seconds) of the child.

    CPU seconds (user + system) are reported next to wall time because wall time is inflated
    when other jobs share the cores."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    cpu = usage.ru_utime + usage.ru_stime
    return proc.returncode, wall, usage.ru_maxrss / 1024.0, cpu  # ru_maxrss: KiB on Linux


def _log_tail(path, n=15):
    try:
        with open(path) as fh:
            return "".join(fh.readlines()[-n:])
    except OSError:
        return ""


def read_relion_result(data_star, input_star):
    """(labels, psi, shifts_px) of `*_data.star`, in the row order of `input_star`."""
    _, in_parts = _particles_block(input_star)
    out_blocks, out_parts = _particles_block(data_star)
    apix, _ = _apix_and_box(out_blocks)
    in_dir = os.path.dirname(os.path.abspath(input_star))
    # relion_refine ran with cwd = in_dir, so its image names are relative to that folder too
    row_of = {image_key(n, in_dir): i for i, n in enumerate(out_parts["rlnImageName"])}
    try:
        order = np.array([row_of[image_key(n, in_dir)] for n in in_parts["rlnImageName"]])
    except KeyError as exc:
        raise RelionError(f"particle {exc} of the input is missing from {data_star}")
    labels = out_parts.as_int("rlnClassNumber")[order]
    psi = out_parts.as_float("rlnAnglePsi")[order]
    shifts = np.stack([out_parts.as_float("rlnOriginXAngst")[order],
                       out_parts.as_float("rlnOriginYAngst")[order]], axis=1) / apix
    return labels, psi, shifts


def run_relion_2d(star, K, outdir, threads=2, iterations=25, seed=0, ctf=True,
                  particle_diameter_A=None, extra_args=()):
    """RELION 3.1 2D classification of a RELION 3.1 STAR.

    Returns dict(labels (1..K, input order), psi (deg), shifts_px ((n, 2) originX/Y in px),
    class_averages (path of the last iteration's .mrcs), data_star, wall_s, cpu_s (user +
    system), peak_mem_mb, command, log). `particle_diameter_A` defaults to 90% of the box.
    """
    if not relion_available():
        raise RelionError("relion_refine not found on PATH (see .ci/install_relion.sh)")
    star = os.path.abspath(star)
    blocks, parts = _particles_block(star)
    apix, box = _apix_and_box(blocks)
    n = len(parts)
    if not 2 <= K <= n:
        raise RelionError(f"K={K} must be between 2 and the number of particles ({n})")
    if ctf and "rlnDefocusU" not in parts:
        raise RelionError(f"{star}: --ctf needs _rlnDefocusU (pass ctf=False for CTF-free data)")
    diameter = particle_diameter_A or 0.9 * box * apix
    os.makedirs(outdir, exist_ok=True)
    outdir = os.path.abspath(outdir)
    cmd = build_command(os.path.basename(star), os.path.join(outdir, ROOT_NAME), K, threads,
                        iterations, seed, ctf, diameter, extra_args)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    log_path = os.path.join(outdir, "relion.log")
    rc, wall, peak, cpu = _run_with_rusage(cmd, os.path.dirname(star), log_path, env)
    if rc != 0:
        raise RelionError(f"relion_refine exited {rc}; log {log_path}:\n{_log_tail(log_path)}")
    res = load_relion_2d(star, outdir, iterations)
    res.update(wall_s=wall, cpu_s=cpu, peak_mem_mb=peak, command=cmd, log=log_path)
    return res


def load_relion_2d(star, outdir, iterations=25):
    """The result of a finished run_relion_2d in `outdir` (no timings)."""
    final = os.path.join(os.path.abspath(outdir), f"{ROOT_NAME}_it{iterations:03d}")
    data_star, averages = final + "_data.star", final + "_classes.mrcs"
    for path in (data_star, averages):
        if not os.path.exists(path):
            raise RelionError(f"no finished RELION run in {outdir}: {path} is missing")
    labels, psi, shifts = read_relion_result(data_star, os.path.abspath(star))
    return dict(labels=labels, psi=psi, shifts_px=shifts, class_averages=averages,
                data_star=data_star, wall_s=float("nan"), cpu_s=float("nan"),
                peak_mem_mb=float("nan"))


def true_labels(star):
    _, parts = _particles_block(star)
    if "simcryoTrueClass" not in parts:
        return None
    return parts.as_int("simcryoTrueClass")


def true_poses(star):
    """(psi deg, shift px (n, 2)) of the simulated truth, or None."""
    blocks, parts = _particles_block(star)
    labels = ("simcryoTruePsi", "simcryoTrueOriginXAngst", "simcryoTrueOriginYAngst")
    if not all(label in parts for label in labels):
        return None
    apix, _ = _apix_and_box(blocks)
    shift = np.stack([parts.as_float(labels[1]), parts.as_float(labels[2])], axis=1) / apix
    return parts.as_float(labels[0]), shift


def score(truth, labels):
    """ACC / NMI / ARI / FMI of predicted labels against the truth."""
    from simcryo.evaluation.metrics import clustering_scores
    scores = clustering_scores(labels, truth)
    return {name: float(scores[name.lower()]) for name in ("ACC", "NMI", "ARI", "FMI")}


def _circ_spread_deg(angles):
    """Circular standard deviation (degrees) of angles in degrees."""
    r = np.abs(np.mean(np.exp(1j * np.deg2rad(angles))))
    return float(np.rad2deg(np.sqrt(max(-2.0 * np.log(max(r, 1e-12)), 0.0))))


def _shift_residual(psi, shift, true_shift):
    """Median |origin - true shift - R(-psi) c| px, c fitted: the class average's centre c
    makes RELION's origin differ from the true shift by R(-psi) c within a class."""
    a = np.deg2rad(psi)
    d = shift - true_shift
    back = np.stack([np.cos(a) * d[:, 0] - np.sin(a) * d[:, 1],
                     np.sin(a) * d[:, 0] + np.cos(a) * d[:, 1]], axis=1)
    resid = back - back.mean(axis=0)
    return float(np.median(np.hypot(resid[:, 0], resid[:, 1])))


def pose_convention_check(truth_labels, truth_psi, truth_shift, labels, psi, shift_px):
    """How RELION's poses relate to the simulated ones, over clusters of >= 10 particles.

    With the same convention, RELION's psi minus the true psi is one constant per class (the
    class average's own orientation) and origin = true shift + R(-psi) c; with the opposite
    convention the same holds for -true psi and -true shift. Returns medians over clusters:
    dict(psi_spread_same, psi_spread_opposite (deg), shift_resid_same, shift_resid_opposite
    (px)), or None when no cluster is big enough.
    """
    out = {k: [] for k in ("psi_spread_same", "psi_spread_opposite", "shift_resid_same",
                           "shift_resid_opposite")}
    for k in np.unique(labels):
        members = labels == k
        if members.sum() < 10:
            continue
        major = np.bincount(truth_labels[members]).argmax()
        sel = members & (truth_labels == major)
        for name, sign in (("same", 1.0), ("opposite", -1.0)):
            out["psi_spread_" + name].append(_circ_spread_deg(psi[sel] - sign * truth_psi[sel]))
            out["shift_resid_" + name].append(
                _shift_residual(psi[sel], shift_px[sel], sign * truth_shift[sel]))
    if not out["psi_spread_same"]:
        return None
    return {k: float(np.median(v)) for k, v in out.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("star", help="RELION 3.1 particle STAR (e.g. from `simcryo simulate`)")
    ap.add_argument("--K", type=int, required=True, help="number of classes")
    ap.add_argument("--o", default="bench_output/relion", help="output folder")
    ap.add_argument("--threads", type=int, default=2, help="relion_refine --j")
    ap.add_argument("--iterations", type=int, default=25, help="relion_refine --iter")
    ap.add_argument("--seed", type=int, default=0, help="relion_refine --random_seed")
    ap.add_argument("--no-ctf", action="store_true", help="do not pass --ctf")
    ap.add_argument("--diameter", type=float, default=None,
                    help="particle diameter (Å); default 90%% of the box")
    ap.add_argument("--reuse", action="store_true",
                    help="score the finished run in --o instead of running RELION again")
    args = ap.parse_args(argv)
    if args.reuse:
        res = load_relion_2d(args.star, args.o, args.iterations)
    elif not relion_available():
        print("relion_refine not found: run .ci/install_relion.sh", file=sys.stderr)
        return 2
    else:
        res = run_relion_2d(args.star, args.K, args.o, threads=args.threads,
                            iterations=args.iterations, seed=args.seed, ctf=not args.no_ctf,
                            particle_diameter_A=args.diameter)
    n = len(res["labels"])
    print(f"RELION {relion_version()}  {n} particles  K={args.K}  iter={args.iterations}  "
          f"threads={args.threads}  seed={args.seed}")
    print(f"{'wall_s':>8} {'cpu_s':>8} {'peak_MB':>8} {'classes_used':>12}")
    print(f"{res['wall_s']:8.1f} {res['cpu_s']:8.1f} {res['peak_mem_mb']:8.0f} "
          f"{len(np.unique(res['labels'])):12d}")
    truth = true_labels(args.star)
    if truth is not None:
        scores = score(truth, res["labels"])
        print(" ".join(f"{k:>6}" for k in scores))
        print(" ".join(f"{v:6.3f}" for v in scores.values()))
        poses = true_poses(args.star)
        if poses is not None:
            check = pose_convention_check(truth, poses[0], poses[1], res["labels"],
                                          res["psi"], res["shifts_px"])
            if check:
                print("pose convention (median over classes; small = that convention holds):")
                print(f"  same sign as truth:     psi spread {check['psi_spread_same']:6.1f} deg, "
                      f"shift residual {check['shift_resid_same']:5.2f} px")
                print(f"  opposite sign of truth: psi spread {check['psi_spread_opposite']:6.1f} "
                      f"deg, shift residual {check['shift_resid_opposite']:5.2f} px")
    print(f"class averages: {res['class_averages']}")
    if len(np.unique(res["labels"])) < 2:
        print("RELION put every particle in one class", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
