"""Scale of `simcryo classify` on one machine (issue 14, deliverable 4): wall time, peak memory
and the per-stage split at 10^4 and 10^5 particles of 64 px and at box 128, K = 100, default
settings; and the ablation of the EM's subset iterations (`--refine-subset 0`) at one size.

Data: benchmarks/realistic.py's simulation of the built-in phantom (views uniform over the
sphere, 15 % junk in equal parts empty / blob / off-centre, coloured noise, SNR 0.05, CTF with
defocus 0.8-3.8 µm, contrast sigma 0.2), --sizes particles, junk included, --seed.
Each run is `simcryo classify --K K --threads T --seed 0` (+ `--refine-subset S` in the
ablation), timed with the peak resident memory of its process; then `simcryo select` and
`simcryo evaluate` give the oracle selection's recall and contamination and the view spread
of the kept classes (median and 90th percentile) beside its spherical k-means floor. Printed per run: the stage seconds
from run.json (preprocess; pretext, the invariants included; scan; selflabel; refine, the EM;
averages), seconds per 1,000 particles, and the particles the EM scored per iteration.

Exit status 1 below the bar:
- the largest size, when >= 100,000: wall time < 3,600 s and peak RSS <= 4,096 MB;
- with 10,000 and 100,000 both run: peak RSS at 10^5 <= 1.5 x at 10^4, and seconds per
  particle at 10^5 <= 1.25 x at 10^4 (time linear in N);
- the ablation (--ablate N:S): the subset run's oracle recall >= the full run's - 0.02,
  contamination <= the full run's + 0.02, view spread <= the full run's + 2 degrees.

    python benchmarks/large.py --sizes 2000 --box128 0 --ablate 2000:1000 --K 20   # check
    python benchmarks/large.py                 # 10^4, 10^5, box 128 at 10^4, the ablation
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from realistic import report_bar, score, simcryo, simulate  # noqa: E402

STAGES = ("preprocess", "pretext", "scan", "selflabel", "refine", "averages")


def run(n, box, subset, args):
    """One classification of n particles of `box` px (subset None: the default
    --refine-subset): a dict of wall_s, peak_mem_mb, the stage seconds, the EM's particles
    per iteration and the cleaning figures."""
    name = f"n{n}_box{box}" + ("" if subset is None else f"_subset{subset}")
    out = os.path.join(args.o, name)
    sim_args = argparse.Namespace(n=n, junk=0.15, snr=0.05, threads=args.threads)
    sim = os.path.join(args.o, f"sim_n{n}_box{box}_s{args.seed}")
    star = simulate(sim, None, args.seed, sim_args, box=box)
    cls = os.path.join(out, "classify")
    timing = os.path.join(out, "timing.json")
    if not (args.reuse and os.path.exists(timing)):
        cmd = ["classify", "--i", star, "--o", cls, "--K", str(args.K), "--threads",
               str(args.threads), "--seed", "0", "--force"]
        if subset is not None:
            cmd += ["--refine-subset", str(subset)]
        wall, peak = simcryo(cmd, os.path.join(out, "classify.log"), args.threads)
        json.dump(dict(wall_s=wall, peak_mem_mb=peak), open(timing, "w"))
    result = dict(json.load(open(timing)), n=n, box=box, subset=subset)
    report = json.load(open(os.path.join(cls, "run.json")))
    result["stages"] = {k: report["timings_s"].get(k) for k in STAGES}
    refine = report.get("refine_history") or []
    result["em_particles"] = [h.get("particles") for h in refine]
    result.update(score(os.path.join(cls, "particles.star"),
                        os.path.join(cls, "class_averages.mrcs"), sim, out,
                        argparse.Namespace(threads=args.threads)))
    return result


def _row(r):
    stage = " ".join("-" if r["stages"][k] is None else f"{r['stages'][k]:7.0f}"
                     for k in STAGES)
    o = r["oracle"]
    subset = "default" if r["subset"] is None else str(r["subset"])
    em = ",".join(str(p) for p in r["em_particles"]) or "-"
    return (f"{r['n']:>7} {r['box']:>4} {subset:>8} | {r['wall_s']:7.0f} "
            f"{1000 * r['wall_s'] / r['n']:6.1f} {r['peak_mem_mb']:7.0f} | {stage} | "
            f"{o['recall']:.3f} {o['contamination']:.3f} {o['view_spread_deg']:6.1f} "
            f"{o['view_spread_p90_deg']:6.1f} {o['kmeans_floor_deg']:6.1f} | {em}")


def bar_failures(by_size, ablation):
    fails = []
    big = by_size.get(max(by_size)) if by_size else None
    if big and big["n"] >= 100000:
        if big["wall_s"] >= 3600:
            fails.append(f"{big['n']} particles: wall {big['wall_s']:.0f} s >= 3,600 s")
        if big["peak_mem_mb"] > 4096:
            fails.append(f"{big['n']} particles: peak RSS {big['peak_mem_mb']:.0f} MB > 4,096")
    small, large = by_size.get(10000), by_size.get(100000)
    if small and large:
        if large["peak_mem_mb"] > 1.5 * small["peak_mem_mb"]:
            fails.append(f"peak RSS at 10^5 {large['peak_mem_mb']:.0f} MB > 1.5 x at 10^4 "
                         f"({small['peak_mem_mb']:.0f} MB)")
        per = [r["wall_s"] / r["n"] for r in (small, large)]
        if per[1] > 1.25 * per[0]:
            fails.append(f"s per particle at 10^5 {per[1]:.4f} > 1.25 x at 10^4 {per[0]:.4f}")
    if ablation:
        sub, full = (r["oracle"] for r in ablation)
        if sub["recall"] < full["recall"] - 0.02:
            fails.append(f"subset iterations: recall {sub['recall']:.3f} < all {full['recall']:.3f}"
                         " - 0.02")
        if sub["contamination"] > full["contamination"] + 0.02:
            fails.append(f"subset iterations: contamination {sub['contamination']:.3f} > all "
                         f"{full['contamination']:.3f} + 0.02")
        if sub["view_spread_deg"] > full["view_spread_deg"] + 2:
            fails.append(f"subset iterations: view spread {sub['view_spread_deg']:.1f} > all "
                         f"{full['view_spread_deg']:.1f} + 2 deg")
    return fails


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000],
                    help="particles per run (junk included), box 64, default settings")
    ap.add_argument("--box128", type=int, default=10000,
                    help="particles of the box-128 run (0: none)")
    ap.add_argument("--ablate", default="10000:5000", metavar="N:S",
                    help="N particles classified with --refine-subset S and with 0 (all "
                         "particles in every EM iteration); empty: no ablation")
    ap.add_argument("--K", type=int, default=100, help="number of classes")
    ap.add_argument("--seed", type=int, default=0, help="simulation seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse", action="store_true",
                    help="reuse finished classify runs (select and evaluate rerun)")
    ap.add_argument("--o", default="bench_output/large", help="output folder")
    args = ap.parse_args(argv)
    print(f"{'n':>7} {'box':>4} {'subset':>8} | {'wall_s':>7} {'s/1k':>6} {'peak_MB':>7} | "
          + " ".join(f"{k[:7]:>7}" for k in STAGES)
          + " | recall contam. spread    p90  floor | EM particles per iteration", flush=True)
    by_size = {}
    for n in args.sizes:
        by_size[n] = run(n, 64, None, args)
        print(_row(by_size[n]), flush=True)
    if args.box128:
        print(_row(run(args.box128, 128, None, args)), flush=True)
    ablation = None
    if args.ablate:
        n, s = (int(v) for v in args.ablate.split(":"))
        ablation = [run(n, 64, s, args), run(n, 64, 0, args)]
        for r in ablation:
            print(_row(r), flush=True)
    return report_bar(bar_failures(by_size, ablation))


if __name__ == "__main__":
    sys.exit(main())
