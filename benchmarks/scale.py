"""Scaling of `simcryo align` and `simcryo classify` over torchrun ranks (issue 17): wall
time, particles/s and peak memory per rank for each world size.

It simulates --particles phantom particles (--classes view classes, --box px, SNR 0.1, CTF
on) and runs --command once per world size: world size 1 as a plain process, N > 1 as
`torchrun --standalone --nproc_per_node N -m simcryo <command>`, each process with
--threads threads (OMP_NUM_THREADS too). align: the particles labelled with their true
class. classify: --K classes (default: --classes), defaults otherwise. Printed per run: the
command's wall time (process start to exit, so it includes torch's import and torchrun's
rendezvous), particles/s = particles x passes / wall time (classify: one pass), for align
the median particles/s of one search-box iteration from run.json (rank 0's pass time,
all-reduce included), for classify the EM's and the other stages' seconds (run.json
timings) and the share of assignments equal to world size 1's (after matching the
labels), and the peak resident memory
of the largest process (getrusage of a wrapper that only runs the command: torchrun's
launcher counts too, but is smaller than a rank). The speed-up is against world size 1.
On GPUs give --device cuda and --world-sizes up to the number of GPUs.

Timings on a shared machine are noisy; this script asserts nothing.

    python benchmarks/scale.py                       # align, 1,000 particles, world sizes 1 and 2
    python benchmarks/scale.py --particles 10000     # the issue's bar size (minutes of CPU)
    python benchmarks/scale.py --command classify --particles 10000 --classes 10   # ~9 min
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from simcryo.evaluation.metrics import accuracy  # noqa: E402
from simcryo.io.star import read_star, write_star  # noqa: E402

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


def simulate(folder, particles, classes, box, seed):
    per_class = max(particles // classes, 1)
    subprocess.run([sys.executable, "-m", "simcryo", "simulate", "--o", folder,
                    "--classes", str(classes), "--per-class", str(per_class),
                    "--box", str(box), "--snr", "0.1", "--seed", str(seed),
                    "--threads", "1"], check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    blocks = read_star(os.path.join(folder, "particles.star"))
    blocks["particles"].set("rlnClassNumber", blocks["particles"]["simcryoTrueClass"])
    path = os.path.join(folder, "classified.star")
    write_star(path, blocks)
    return path, per_class * classes


def engine_command(world, star, out, args):
    flags = [args.command, "--i", star, "--o", out, "--threads", str(args.threads),
             "--device", args.device, "--seed", "0"]
    if args.command == "classify":
        flags += ["--K", str(args.K or args.classes)]
    if world == 1:
        return [sys.executable, "-m", "simcryo", *flags]
    return [TORCHRUN, "--standalone", "--nproc_per_node", str(world), "-m", "simcryo", *flags]


def measured(cmd, env):
    """(wall s, peak RSS MiB of the largest process) of `cmd`, run from a fresh wrapper so
    that getrusage(RUSAGE_CHILDREN) sees this command's processes only."""
    wrapper = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
               "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
               "print(json.dumps([rc, time.perf_counter() - t, "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], env=env, cwd=REPO,
                         capture_output=True, text=True, check=True)
    rc, wall, rss_kib = json.loads(out.stdout.strip().splitlines()[-1])
    if rc != 0:
        raise SystemExit(f"failed ({rc}): {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return wall, rss_kib / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--particles", type=int, default=1000)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--world-sizes", default="1,2", help="comma-separated, e.g. 1,2,4")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per rank)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--command", choices=("align", "classify"), default="align")
    ap.add_argument("--K", type=int, default=0, help="classify: classes (0: --classes)")
    args = ap.parse_args()
    worlds = [int(w) for w in args.world_sizes.split(",")]
    if any(w > 1 for w in worlds) and not os.access(TORCHRUN, os.X_OK):
        raise SystemExit(f"torchrun not found next to {sys.executable}")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory() as tmp:
        star, n = simulate(os.path.join(tmp, "sim"), args.particles, args.classes, args.box,
                           args.seed)
        print(f"simcryo {args.command}: {n} particles, {args.classes} classes, box "
              f"{args.box}, {args.threads} thread(s) per process, device {args.device}")
        print(f"{'world':>5} {'wall_s':>8} {'passes':>6} {'part/s':>9} {'iter_part/s':>11} "
              f"{'em_s':>7} {'other_s':>7} {'same':>6} {'peak_MiB':>9} {'speedup':>7}")
        base = labels0 = None
        for world in worlds:
            out = os.path.join(tmp, f"{args.command}{world}")
            wall, rss = measured(engine_command(world, star, out, args), env)
            run = json.load(open(os.path.join(out, "run.json")))
            assert run["world_size"] == world, run["world_size"]
            labels = read_star(os.path.join(out, "particles.star"))["particles"].as_int(
                "rlnClassNumber")
            labels0 = labels if labels0 is None else labels0
            base = base or wall
            passes, rate, em, other = _split(run, args.command)
            print(f"{world:>5} {wall:8.1f} {passes:>6} {n * passes / wall:9.0f} {rate:11.0f} "
                  f"{em:7.1f} {other:7.1f} {accuracy(labels, labels0):6.4f} {rss:9.0f} "
                  f"{base / wall:7.2f}", flush=True)


def _split(run, command):
    """(passes over the particles, median particles/s of an align search-box iteration,
    the EM's seconds, the other stages' seconds) of one run.json; nan where not defined."""
    nan = float("nan")
    if command == "align":
        search = [h["particles_per_s"] for h in run["iterations"]
                  if h["search_box"] == run["search_box"]]
        return len(run["iterations"]), float(np.median(search)) if search else nan, nan, nan
    t = run["timings_s"]
    return 1, nan, t["refine"], t["classify_total"] - t["refine"]



if __name__ == "__main__":
    main()
