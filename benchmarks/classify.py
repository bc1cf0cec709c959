"""Benchmark of `simcryo classify` (issue 3) against RELION 3.1 2D classification.

For every data set (built-in phantom and /work/shared/data/hand-vol.mrc; SNR 0.1 and 0.03; CTF
on; 10 view classes x 200 particles of 64 px; several seeds) it simulates particles with
`simcryo simulate`, then runs on the same STAR:
- `simcryo classify` (default CPU configuration, --threads 2), timed with its peak memory;
- the paper's ablation "pretext features + k-means" on classify's features.npy;
- RELION 3.1 2D (`benchmarks/relion.py: run_relion_2d`, 25 iterations, same K, same threads,
  --ctf) when relion_refine is on PATH.
It prints ACC / NMI / ARI / FMI / top-10 neighbour purity / wall time / peak memory per data
set, method and seed, then the means per data set.

With --ablate (issue 13) it also runs, per data set and seed, the variants of classify
(`VARIANTS`: the default trained invariant encoder, --pretext-epochs 0, --encoder resnet,
--refine-init random, --refine-mask-scale 1.67) and prints one table per data set with
top-10 neighbour purity (pur10: of neighbors.npy, the neighbours SCAN used; fpur10: of the cosine kNN of features.npy), ACC
without the EM (run.json's before_refine_acc), full ACC and wall time, then the means over
seeds with the min-max spread of ACC. Rows without a run of their own: the invariant input
alone (cosine kNN on the default run's invariants.npy; its rotational_neighbors.npy), ASPIRE
RIRClass2D's neighbours (benchmarks/aspire_neighbors.py in ASPIRE's own venv,
$SIMCRYO_ASPIRE_PYTHON, default /work/aspire-venv/bin/python; skipped with a message when
absent), the oracle ceiling (simcryo.evaluation.oracle: Bayes classifier knowing the class
views, each CTF and the noise, pose marginalised) and RELION. Ablation bar (issue 13), each
line PASS/FAIL: pur10 >= ASPIRE's; training adds >= 0.05 fpur10 over --pretext-epochs 0 (the
features: the invariant encoder's SCAN neighbours are the rotational neighbours, trained or
not); ACC without the EM >= RELION's; mean ACC within 0.05 of the oracle; wall time <=
RELION's; and no method's mean ACC above the oracle's (else the oracle's model is wrong).

Bar (exit status 1 when missed): at SNR 0.1, ACC and NMI >= RELION + 0.05; at SNR 0.03 not
below RELION; wall time of classify <= RELION's. Without RELION the SNR 0.1 bar uses the
issue's reference figures (ACC 0.67, NMI 0.81, 8.5 min) and the SNR 0.03 bar is not checked.
Timings on a machine shared with other jobs are noisy; CPU seconds are printed beside them.

    python benchmarks/classify.py --quick            # one seed, SNR 0.1, 1000 particles
    python benchmarks/classify.py --quick --ablate   # the same with the ablation table
    python benchmarks/classify.py                    # full grid (hours on 2 cores)
    python benchmarks/classify.py --device cuda:0 --per-class 10000 --no-relion --seeds 0 \
        --snrs 0.1 --volumes phantom                 # GPU bar: 10^5 particles in < 15 min
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from simcryo.evaluation import metrics  # noqa: E402
from simcryo.evaluation.oracle import OracleParams, oracle_accuracy  # noqa: E402
from simcryo.io import load_particles, read_star, read_volume  # noqa: E402
from simcryo.runtime import set_threads  # noqa: E402

HAND = os.path.join(ROOT, "..", "shared", "data", "hand-vol.mrc")
REFERENCE_RELION = {"acc": 0.67, "nmi": 0.81, "wall_s": 8.5 * 60}  # issue 3, SNR 0.1, 1000 px
GPU_BAR = {"particles": 100_000, "wall_s": 15 * 60}  # issue 3: 10^5 particles of 64 px
# --ablate: (row name, output folder beside "data", extra classify flags, note)
VARIANTS = (("trained (default)", "simcryo", [], ""),
            ("untrained", "simcryo_untrained", ["--pretext-epochs", "0"], ""),
            ("resnet", "simcryo_resnet", ["--encoder", "resnet"], ""),
            ("random-init EM", "simcryo_random_init", ["--refine-init", "random"],
             "ACC noEM: the clustering the EM did not start from"),
            ("wide EM mask", "simcryo_wide_em", ["--refine-mask-scale", "1.67"],
             "opt-in: the EM on its own wider cache"))
ASPIRE_PYTHON = os.environ.get("SIMCRYO_ASPIRE_PYTHON", "/work/aspire-venv/bin/python")
ORACLE_ANGLES = 72      # oracle's in-plane grid (5 deg)
ORACLE_SHIFT_SIGMAS = 4  # oracle marginalises shifts up to this many simulated sigmas
BAR = dict(training_gain=0.05, oracle_gap=0.05)  # issue 13


def run_timed(cmd, log_path, env=None):
    """(returncode, wall_s, peak_mem_mb, cpu_s) of a child process."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    return (os.waitstatus_to_exitcode(status), time.perf_counter() - t0,
            usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime)


def simulate(out, volume, snr, seed, per_class, classes, threads):
    star = os.path.join(out, "particles.star")
    if os.path.exists(star):
        return star
    cmd = [sys.executable, "-m", "simcryo", "simulate", "--o", out, "--classes", str(classes),
           "--per-class", str(per_class), "--snr", str(snr), "--seed", str(seed), "--ctf",
           "--threads", str(threads)]
    if volume:
        # hand-vol.mrc says 1 Å/px: a 64 Å box cannot sample the CTF at 1-2.5 µm defocus,
        # so use it as a 192 Å particle (the other benchmarks and RELION references do too)
        cmd += ["--volume", volume, "--apix", "3.0"]
    os.makedirs(out, exist_ok=True)
    rc, *_ = run_timed(cmd, os.path.join(out, "simulate.log"))
    if rc != 0:
        raise RuntimeError(f"simulate failed, see {out}/simulate.log")
    return star


def truth_of(star):
    return read_star(star)["particles"].as_int("simcryoTrueClass")


def purity10(neighbors, truth):
    return metrics.neighbor_purity(None, truth, k=10, neighbours=neighbors)


def scores(labels, truth, neighbors=None):
    s = metrics.clustering_scores(labels, truth)
    out = {k: float(s[k]) for k in ("acc", "nmi", "ari", "fmi")}
    if neighbors is not None:
        out["purity10"] = purity10(neighbors, truth)
    return out


def _timing_path(out):
    return os.path.join(out, "bench_timing.json")


def _saved_timing(out, args):
    """Timings of a finished earlier run in `out` when --reuse is given, else None."""
    path = _timing_path(out)
    if args.reuse and os.path.exists(path):
        return json.load(open(path))
    return None


def run_classify(star, out, k, args, extra=()):
    """A finished `simcryo classify` run in `out` (run now unless --reuse finds one), with
    its labels, neighbours, features and run.json (`info`). `extra`: more classify flags."""
    timing = _saved_timing(out, args)
    if timing is None:
        timing = _run_classify(star, out, k, args, extra)
    info = json.load(open(os.path.join(out, "run.json")))
    table = read_star(os.path.join(out, "particles.star"))["particles"]
    return dict(timing, labels=table.as_int("rlnClassNumber"),
                neighbors=np.load(os.path.join(out, "neighbors.npy")),
                features=np.load(os.path.join(out, "features.npy")),
                img_per_s=info.get("pretext_images_per_s"), info=info, out=out)


def _run_classify(star, out, k, args, extra=()):
    cmd = [sys.executable, "-m", "simcryo", "classify", "--i", star, "--K", str(k), "--o", out,
           "--threads", str(args.threads), "--device", args.device, "--seed", str(args.seed_run),
           "--force", *extra]  # --force: a rerun replaces an earlier (or broken) output
    if args.config:
        cmd += ["--config", args.config]
    os.makedirs(out, exist_ok=True)
    if os.path.exists(_timing_path(out)):  # --reuse must never take a rerun that failed
        os.remove(_timing_path(out))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    rc, wall, peak, cpu = run_timed(cmd, os.path.join(out, "classify.log"), env)
    if rc != 0:
        raise RuntimeError(f"classify failed, see {out}/classify.log")
    timing = dict(wall_s=wall, peak_mem_mb=peak, cpu_s=cpu)
    json.dump(timing, open(_timing_path(out), "w"))
    return timing


def kmeans_ablation(features, k, seed):
    from sklearn.cluster import KMeans
    t = time.perf_counter()
    labels = KMeans(k, n_init=10, random_state=seed).fit(features).labels_
    return labels, time.perf_counter() - t


def run_relion(star, out, k, args):
    try:
        from relion import load_relion_2d, relion_available, run_relion_2d
    except ImportError:
        return None
    if not relion_available() or args.no_relion:
        return None
    timing = _saved_timing(out, args)
    if timing is not None:
        res = load_relion_2d(star, out, args.relion_iterations)
    else:
        res = run_relion_2d(star, k, out, threads=args.threads,
                            iterations=args.relion_iterations, seed=args.seed_run)
        timing = dict(wall_s=res["wall_s"], peak_mem_mb=res["peak_mem_mb"], cpu_s=res["cpu_s"])
        json.dump(timing, open(_timing_path(out), "w"))
    return dict(timing, labels=np.asarray(res["labels"]))


# ---------------------------------------------------------------- --ablate (issue 13)

COLUMNS = (("pur10", "pur10", ".3f"), ("fpur10", "fpur10", ".3f"),
           ("acc_noem", "ACC noEM", ".3f"), ("acc", "ACC", ".3f"), ("wall", "wall_s", ".1f"))


def row(variant, seed, pur10=None, fpur10=None, acc_noem=None, acc=None, wall=None, note=""):
    """One ablation row: pur10 = top-10 purity of the neighbours the method gives (classify:
    neighbors.npy, SCAN's), fpur10 = of the cosine kNN of its features.npy (what the
    training changes), acc_noem = ACC before the EM, acc = final ACC, wall in s."""
    return dict(variant=variant, seed=seed, pur10=pur10, fpur10=fpur10, acc_noem=acc_noem,
                acc=acc, wall=wall, note=note)


def classify_row(variant, seed, run, truth, note=""):
    before = run["info"].get("metrics", {}).get("before_refine_acc")
    return row(variant, seed, purity10(run["neighbors"], truth),
               metrics.neighbor_purity(run["features"], truth, k=10), before,
               metrics.accuracy(run["labels"], truth), run["wall_s"], note)


def invariant_rows(run, seed, truth):
    """The invariant input alone, from the default run's files (no run of its own): cosine
    kNN on invariants.npy and its rotational_neighbors.npy. Wall: its invariants stage."""
    out = run["out"]
    wall = run["info"].get("timings_s", {}).get("invariants")
    rows = []
    inv = os.path.join(out, "invariants.npy")
    if os.path.exists(inv):
        pur = metrics.neighbor_purity(np.load(inv), truth, k=10)
        rows.append(row("invariants kNN", seed, pur, wall=wall, note="invariants stage"))
    rot = os.path.join(out, "rotational_neighbors.npy")
    if os.path.exists(rot):
        rows.append(row("rotational nbrs", seed, purity10(np.load(rot), truth), wall=wall,
                        note="invariants stage"))
    return rows


def run_aspire(star, out, args):
    """ASPIRE RIRClass2D's (N, 10) neighbours and the wall time, or None without ASPIRE."""
    if not os.path.exists(ASPIRE_PYTHON):
        return None
    path = os.path.join(out, "aspire_neighbors.npy")
    timing = _saved_timing(out, args)
    if timing is None or not os.path.exists(path):
        os.makedirs(out, exist_ok=True)
        cmd = [ASPIRE_PYTHON, os.path.join(HERE, "aspire_neighbors.py"), os.path.abspath(star),
               os.path.abspath(path), "--seed", str(args.seed_run)]
        threads = {v: str(args.threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                  "MKL_NUM_THREADS")}
        cwd = os.getcwd()
        os.chdir(out)  # ASPIRE writes its logs/ into the current folder
        try:
            rc, wall, peak, cpu = run_timed(cmd, "aspire.log", dict(os.environ, **threads))
        finally:
            os.chdir(cwd)
        if rc != 0:
            raise RuntimeError(f"ASPIRE failed, see {out}/aspire.log")
        timing = dict(wall_s=wall, peak_mem_mb=peak, cpu_s=cpu)
        json.dump(timing, open(_timing_path(out), "w"))
    return dict(timing, neighbors=np.load(path))


def run_oracle(data_dir, out, args):
    """The oracle ceiling on simulate's output folder: {'acc', 'wall_s'} (cached in out)."""
    path = os.path.join(out, "oracle.json")
    if args.reuse and os.path.exists(path):
        return json.load(open(path))
    sim = json.load(open(os.path.join(data_dir, "run.json")))
    cfg = sim["config"]
    if cfg.get("noise", "white") != "white" or sim.get("views", "discrete") != "discrete":
        return None  # the oracle's model: discrete views, white unit noise
    set_threads(args.threads)  # in this process: the same cores as the other methods
    t = time.perf_counter()
    volume, _ = read_volume(os.path.join(data_dir, "volume.mrc"))
    pset = load_particles(os.path.join(data_dir, "particles.star"))
    sigma = float(cfg["shift_sigma"])
    params = OracleParams(n_angles=ORACLE_ANGLES, shift_sigma=sigma,
                          max_shift=max(1.0, ORACLE_SHIFT_SIGMAS * sigma))
    rot = [c["rot"] for c in sim["classes"]]
    tilt = [c["tilt"] for c in sim["classes"]]
    # simulate standardises every noise image to unit variance: sigma = 1
    res = oracle_accuracy(pset, volume, rot, tilt, float(cfg["snr"]), noise_sigma=1.0,
                          params=params, device=args.device)
    result = dict(acc=res["acc"], wall_s=time.perf_counter() - t, n_angles=params.n_angles,
                  max_shift_px=params.max_shift, shift_sigma_px=sigma)
    os.makedirs(out, exist_ok=True)
    json.dump(result, open(path, "w"))
    return result


def run_ablation(d, star, truth, seed, ours, rel, args):
    """Rows of the ablation table for one data set and seed (module docstring). `ours`: the
    default run (already done by the main loop), `rel`: RELION's result or None."""
    rows = []
    for variant, sub, extra, note in VARIANTS:
        run = ours if not extra else run_classify(star, os.path.join(d, sub), args.classes,
                                                  args, extra)
        rows.append(classify_row(variant, seed, run, truth, note))
        if not extra:
            rows += invariant_rows(run, seed, truth)
    asp = run_aspire(star, os.path.join(d, "aspire"), args)
    if asp is None:
        print(f"ASPIRE not installed: skipped ({ASPIRE_PYTHON} not found; set "
              "SIMCRYO_ASPIRE_PYTHON)", flush=True)
    else:
        rows.append(row("ASPIRE RIRClass2D", seed, purity10(asp["neighbors"], truth),
                        wall=asp["wall_s"]))
    if rel is not None:
        rows.append(row("RELION 2D", seed, acc=metrics.accuracy(rel["labels"], truth),
                        wall=rel["wall_s"]))
    orc = run_oracle(os.path.dirname(star), os.path.join(d, "oracle"), args)
    if orc is not None:
        rows.append(row("oracle ceiling", seed, acc=orc["acc"], wall=orc["wall_s"],
                        note=f"{orc['n_angles']} angles, shifts <= {orc['max_shift_px']:g} px"))
    return rows


def _cells(values):
    return " ".join(f"{v:{max(len(h), 6)}{fmt}}" if v is not None else f"{'-':>{max(len(h), 6)}}"
                    for v, (_, h, fmt) in zip(values, COLUMNS))


def print_ablation(name, rows):
    """One table per data set: every row, then the means over seeds with ACC's spread."""
    heads = " ".join(f"{h:>{max(len(h), 6)}}" for _, h, _ in COLUMNS)
    print(f"\nablation: {name}")
    print(f"{'variant':<20} {'seed':>4} {heads}")
    for r in rows:
        print(f"{r['variant']:<20} {r['seed']:>4} {_cells(r[k] for k, _, _ in COLUMNS)} "
              f"{r['note']}")
    print(f"{'means over seeds':<20} {'n':>4} {heads} ACC min-max")
    for variant, m in ablation_means(rows).items():
        spread = (f"{m['acc_min']:.3f}-{m['acc_max']:.3f}" if m["acc"] is not None else "")
        print(f"{variant:<20} {m['n']:>4} {_cells(m[k] for k, _, _ in COLUMNS)} {spread}")


def ablation_means(rows):
    """{variant: means over seeds of each column (None where no row has it), acc min/max}."""
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        sel = [r for r in rows if r["variant"] == variant]
        m = {"n": len(sel)}
        for key, _, _ in COLUMNS:
            vals = [r[key] for r in sel if r[key] is not None]
            m[key] = float(np.mean(vals)) if vals else None
            if key == "acc" and vals:
                m["acc_min"], m["acc_max"] = float(min(vals)), float(max(vals))
        out[variant] = m
    return out


def ablation_bar(name, rows):
    """Issue 13's bar on one data set's means: (passed, line) per check that has its
    inputs; a check whose peer did not run (ASPIRE, RELION) is reported as not checked."""
    m = ablation_means(rows)
    ours = m[VARIANTS[0][0]]
    untrained = m.get("untrained")
    aspire, relion = m.get("ASPIRE RIRClass2D"), m.get("RELION 2D")
    oracle = m.get("oracle ceiling")
    checks = []

    def check(ok, text):
        checks.append((ok, f"{name}: {text}"))

    if aspire:
        check(ours["pur10"] >= aspire["pur10"], f"purity {ours['pur10']:.3f} >= ASPIRE "
              f"{aspire['pur10']:.3f}")
    else:
        check(None, "purity vs ASPIRE not checked (ASPIRE not run)")
    if untrained:  # features.npy: SCAN's neighbours may come from the untrained invariants
        gain = ours["fpur10"] - untrained["fpur10"]
        check(gain >= BAR["training_gain"], f"training adds {gain:+.3f} purity over the "
              f"untrained encoder (features kNN, >= {BAR['training_gain']})")
    if relion and ours["acc_noem"] is not None:
        check(ours["acc_noem"] >= relion["acc"], f"ACC without the EM {ours['acc_noem']:.3f}"
              f" >= RELION {relion['acc']:.3f}")
        check(ours["wall"] <= relion["wall"], f"wall {ours['wall']:.0f} s <= RELION "
              f"{relion['wall']:.0f} s")
    else:
        check(None, "ACC without the EM and wall time vs RELION not checked (RELION not run)")
    if oracle:
        gap = oracle["acc"] - ours["acc"]
        check(gap <= BAR["oracle_gap"], f"mean ACC {ours['acc']:.3f} (seeds "
              f"{ours['acc_min']:.3f}-{ours['acc_max']:.3f}, n={ours['n']}) within "
              f"{BAR['oracle_gap']} of the oracle {oracle['acc']:.3f} (gap {gap:+.3f})")
        above = [v for v, x in m.items() if v != "oracle ceiling" and x["acc"] is not None
                 and x["acc"] > oracle["acc"]]
        if above:  # a blind method above the ceiling means the oracle's model is wrong
            check(False, f"oracle is not a ceiling: {', '.join(above)} above it")
    return checks


def fmt_row(name, method, seed, s, wall, mem, extra=""):
    pur = f"{s['purity10']:.3f}" if "purity10" in s else "  -  "
    wall_s = f"{wall:7.0f}" if wall is not None else "      -"
    mem_s = f"{mem:7.0f}" if mem is not None else "      -"
    return (f"{name:<22} {method:<16} {seed:>4} {s['acc']:.3f} {s['nmi']:.3f} {s['ari']:.3f} "
            f"{s['fmi']:.3f} {pur:>6} {wall_s} {mem_s} {extra}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, SNR 0.1, 100 per class")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--snrs", type=float, nargs="+", default=[0.1, 0.03])
    ap.add_argument("--volumes", nargs="+", default=["phantom", "hand"])
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", default="", help="JSON config for classify (default: defaults)")
    ap.add_argument("--relion-iterations", type=int, default=25)
    ap.add_argument("--no-relion", action="store_true")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse finished runs in --out (their saved timings) instead of rerunning")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench_output", "classify"))
    ap.add_argument("--ablate", action="store_true",
                    help="also run the ablation variants, ASPIRE and the oracle ceiling and "
                         "print one ablation table per data set (issue 13)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.snrs, args.per_class = args.seeds[:1], [0.1], 100
    results = {}
    ablation = {}  # data set -> rows of its ablation table
    header = (f"{'data set':<22} {'method':<16} {'seed':>4} {'ACC':>5} {'NMI':>5} {'ARI':>5} "
              f"{'FMI':>5} {'pur10':>6} {'wall_s':>7} {'mem_mb':>7}")
    print(header, flush=True)
    for vol in args.volumes:
        volume = None if vol == "phantom" else os.path.abspath(HAND)
        if volume and not os.path.exists(volume):
            print(f"skipping {vol}: {volume} not found")
            continue
        for snr in args.snrs:
            name = f"{vol}_snr{snr:g}"
            for seed in args.seeds:
                args.seed_run = seed
                d = os.path.join(args.out, f"{name}_n{args.per_class}_s{seed}")
                star = simulate(os.path.join(d, "data"), volume, snr, seed, args.per_class,
                                args.classes, args.threads)
                truth = truth_of(star)
                ours = run_classify(star, os.path.join(d, "simcryo"), args.classes, args)
                s = scores(ours["labels"], truth, ours["neighbors"])
                results.setdefault((name, "simcryo"), []).append(dict(s, wall=ours["wall_s"]))
                print(fmt_row(name, "simcryo", seed, s, ours["wall_s"], ours["peak_mem_mb"],
                              f"cpu {ours['cpu_s']:.0f}s, {ours['img_per_s']} img/s"), flush=True)
                km, km_t = kmeans_ablation(ours["features"], args.classes, seed)
                s = scores(km, truth)
                results.setdefault((name, "features+kmeans"), []).append(dict(s, wall=None))
                print(fmt_row(name, "features+kmeans", seed, s, None, None,
                              f"k-means {km_t:.1f}s"), flush=True)
                rel = run_relion(star, os.path.join(d, "relion"), args.classes, args)
                if rel is not None:
                    s = scores(rel["labels"], truth)
                    results.setdefault((name, "relion"), []).append(dict(s, wall=rel["wall_s"]))
                    print(fmt_row(name, "relion", seed, s, rel["wall_s"], rel["peak_mem_mb"],
                                  f"cpu {rel['cpu_s'] or 0:.0f}s"), flush=True)
                if args.ablate:
                    ablation.setdefault(name, []).extend(
                        run_ablation(d, star, truth, seed, ours, rel, args))
            if name in ablation:
                print_ablation(name, ablation[name])
    print("\nmeans per data set")
    failures = []
    for (name, method), vals in sorted(results.items()):
        m = {k: float(np.mean([v[k] for v in vals])) for k in ("acc", "nmi", "ari", "fmi")}
        walls = [v["wall"] for v in vals if v["wall"] is not None]
        print(f"{name:<22} {method:<16} ACC {m['acc']:.3f} NMI {m['nmi']:.3f} ARI {m['ari']:.3f}"
              f" FMI {m['fmi']:.3f} wall {np.mean(walls) if walls else float('nan'):.0f}s "
              f"(n={len(vals)})")
    if args.device.startswith("cuda") and args.classes * args.per_class >= GPU_BAR["particles"]:
        for (name, method), vals in sorted(results.items()):
            slow = [v["wall"] for v in vals
                    if method == "simcryo" and v["wall"] > GPU_BAR["wall_s"]]
            if slow:
                failures.append(f"{name}: {max(slow):.0f} s on {args.device} > "
                                f"{GPU_BAR['wall_s']} s for {args.classes * args.per_class} "
                                "particles")
    for name in sorted({n for n, _ in results}):
        ours = results.get((name, "simcryo"))
        rel = results.get((name, "relion"))
        acc = np.mean([v["acc"] for v in ours])
        nmi = np.mean([v["nmi"] for v in ours])
        wall = np.mean([v["wall"] for v in ours])
        if rel:
            r_acc = np.mean([v["acc"] for v in rel])
            r_nmi = np.mean([v["nmi"] for v in rel])
            r_wall = np.mean([v["wall"] for v in rel])
            margin = 0.05 if "snr0.1" in name else 0.0
            if acc < r_acc + margin or nmi < r_nmi + margin:
                failures.append(f"{name}: ACC {acc:.3f} / NMI {nmi:.3f} vs RELION "
                                f"{r_acc:.3f} / {r_nmi:.3f} (+{margin})")
            if wall > r_wall:
                failures.append(f"{name}: wall {wall:.0f}s > RELION {r_wall:.0f}s")
        elif "snr0.1" in name:
            ref = REFERENCE_RELION
            if acc < ref["acc"] + 0.05 or nmi < ref["nmi"] + 0.05:
                failures.append(f"{name}: ACC {acc:.3f} / NMI {nmi:.3f} vs reference RELION "
                                f"{ref['acc']} / {ref['nmi']} (+0.05; RELION not run)")
    if ablation:
        print("\nablation bar (issue 13)")
        n_vol, n_snr = len({n.rsplit("_snr", 1)[0] for n in ablation}), len(args.snrs)
        if n_vol < 2 or n_snr < 2 or len(args.seeds) < 3:
            print(f"  NOT CHECKED  coverage: {n_vol} volume(s), {n_snr} SNR(s), "
                  f"{len(args.seeds)} seed(s); the issue's bar needs >= 2, 2 and 3")
    for name, rows in ablation.items():
        for ok, line in ablation_bar(name, rows):
            print(f"  {'NOT CHECKED' if ok is None else 'PASS' if ok else 'FAIL'}  {line}")
            if ok is False:
                failures.append(line)
    if failures:
        print("\nBELOW THE BAR:\n  " + "\n  ".join(failures))
        return 1
    print("\nbar met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
