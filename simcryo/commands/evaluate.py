"""`simcryo evaluate`: score a classification against true labels (or another classification).

Predicted labels: `_rlnClassNumber` of --i. True labels: `_simcryoTrueClass` of --truth (or of
--i when --truth is absent); with --truth-label class (or auto when the truth file has no
`_simcryoTrueClass`) the truth is --truth's own `_rlnClassNumber`, which scores two
classifications against each other. Particles are matched by _rlnImageName (image index and
stack file, whatever the row order); by row order only when a file has no image names.

Reported: ACC (Hungarian matching), NMI, ARI, FMI, per-class precision/recall, the confusion
matrix; top-k kNN accuracy and neighbour purity when --features are given; FRC of each class
average against its matched true reference after a brute-force rotation (--angle-step) and
cross-correlation shift search (an average with inverted contrast, as from CTF-modulated
particles, is sign-flipped first), with the resolutions at FRC 0.5 and 0.143 in Å; in-plane angle
and shift errors modulo each class's frame (see simcryo.evaluation.metrics.pose_errors), over the
particles whose predicted class is matched to their true class.

Junk and continuous views (truth with _simcryoTrueKind, from `simcryo simulate --junk-fraction`
/ `--views uniform`; any tool's classes, RELION's included, matched by image name): the oracle
selection (classes with a junk share < --oracle-max-junk) and, with --selection, simcryo
select's classes: good-particle recall, contamination, junk rejected, the view spread of the
kept good particles and its spherical k-means floor (simcryo.evaluation.cleaning); with
--averages and --volume the class-average fidelity of each class and size-weighted over the
kept ones (simcryo.evaluation.fidelity: 0 = white noise, 1 = a clean projection).
"""
import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from simcryo.evaluation import metrics
from simcryo.config import add_config_arguments, config_from_args, config_to_dict
from simcryo.errors import SimcryoError
from simcryo.io.particles import star_poses
from simcryo.io.star import read_star
from simcryo.runtime import atomic_write_text, json_default, log, set_threads


@dataclass
class EvaluateConfig:
    i: str = field(default="", metadata={
        "help": "classified particles (STAR with _rlnClassNumber)", "metavar": "STAR"})
    truth: str = field(default="", metadata={
        "help": "STAR with the true labels of the same particles, matched by _rlnImageName "
                "(empty: --i)",
        "metavar": "STAR"})
    truth_label: str = field(default="auto", metadata={
        "help": "true labels from _simcryoTrueClass (true), _rlnClassNumber of --truth (class), "
                "or auto: true when present, else class", "choices": ["auto", "true", "class"]})
    references: str = field(default="", metadata={
        "help": "true references, class k at index k (e.g. simulate's references.mrcs)",
        "metavar": "MRCS"})
    averages: str = field(default="", metadata={
        "help": "class averages, class k at index k (e.g. class_averages.mrcs)",
        "metavar": "MRCS"})
    features: str = field(default="", metadata={
        "help": "per-particle features (N, d) .npy in --i order, for kNN scores",
        "metavar": "NPY"})
    knn: int = field(default=5, metadata={"help": "k of the kNN accuracy / purity"})
    apix: float = field(default=0.0, metadata={
        "help": "pixel size in Å/px (0: from the STAR optics or the MRC header)"})
    angle_step: float = field(default=1.0, metadata={
        "help": "rotation step of the average-to-reference search (degrees)"})
    volume: str = field(default="", metadata={
        "help": "true map (MRC) for the class-average fidelity of --averages (needs "
                "_simcryoTrueKind truth for the kept classes)", "metavar": "MAP.mrc"})
    volume_apix: float = field(default=0.0, metadata={
        "help": "pixel size of --volume in Å/px (0: from its header); it is resampled to the "
                "averages' pixel size and box"})
    selection: str = field(default="", metadata={
        "help": "class selection to score beside the oracle: simcryo select's class_scores.star "
                "(_rlnClassNumber, _simcryoSelected)", "metavar": "STAR"})
    oracle_max_junk: float = field(default=0.5, metadata={
        "help": "oracle selection keeps the classes whose junk share is below this (fraction)"})
    fidelity_view_step: float = field(default=10.0, metadata={
        "help": "fidelity search: spacing of the viewing directions over the sphere (degrees)"})
    fidelity_angle_step: float = field(default=10.0, metadata={
        "help": "fidelity search: coarse in-plane rotation step (degrees; refined at the best "
                "view)"})
    fidelity_max_shift: float = field(default=0.0, metadata={
        "help": "fidelity search: largest shift (px; 0: box / 8)"})
    o: str = field(default="", metadata={"help": "JSON report path (optional)",
                                         "metavar": "JSON"})
    threads: int = field(default=0, metadata={"help": "CPU threads for torch (0: default)"})

    def validate(self):
        if not self.i:
            raise SimcryoError("no input: give --i classified/particles.star")
        if self.knn < 1:
            raise SimcryoError("--knn must be >= 1")
        if not 0 < self.angle_step <= 30:
            raise SimcryoError("--angle-step must be in (0, 30] degrees")
        if self.averages and not (self.references or self.volume):
            raise SimcryoError("--averages needs --references (the true projections) or "
                               "--volume (the true map)")
        if (self.references or self.volume) and not self.averages:
            raise SimcryoError("--references and --volume need --averages")
        if not 0 < self.oracle_max_junk <= 1:
            raise SimcryoError("--oracle-max-junk must be in (0, 1]")
        if not (0 < self.fidelity_view_step <= 45 and 0 < self.fidelity_angle_step <= 45
                and self.fidelity_max_shift >= 0):
            raise SimcryoError("--fidelity-view-step and --fidelity-angle-step must be in "
                               "(0, 45] degrees, --fidelity-max-shift >= 0 px")


def add_arguments(parser):
    add_config_arguments(parser, EvaluateConfig)


def main(args):
    cfg = config_from_args(EvaluateConfig, args)
    report = evaluate(cfg)
    print(format_report(report))
    if cfg.o:
        d = os.path.dirname(os.path.abspath(cfg.o))
        os.makedirs(d, exist_ok=True)
        atomic_write_text(cfg.o, json.dumps(report, indent=2, default=json_default))
        log(f"evaluate: wrote {cfg.o}")
    return 0


# ---------------------------------------------------------------- reading

def _particle_table(path):
    """(particles block, optics block or None) of a STAR file."""
    if not os.path.exists(path):
        raise SimcryoError(f"STAR file not found: {path}")
    blocks = read_star(path)
    if "particles" in blocks:
        table = blocks["particles"]
    else:
        loops = [b for name, b in blocks.items() if name != "optics" and b.loop]
        if not loops:
            raise SimcryoError(f"{path}: no particle table (loop_) found")
        table = loops[0]
    if table.n_rows == 0:
        raise SimcryoError(f"{path}: the particle table is empty")
    return table, blocks.get("optics")


def _labels(table, label, path):
    if label not in table:
        raise SimcryoError(f"{path}: no _{label} column")
    values = table.as_float(label)
    if not np.isfinite(values).all() or (values != np.rint(values)).any():
        raise SimcryoError(f"{path}: _{label} must hold integer class numbers")
    return values.astype(np.int64)


def _apix(cfg, tables):
    if cfg.apix:
        return float(cfg.apix)
    for table, optics in tables:
        for block in (optics, table):
            if block is not None and "rlnImagePixelSize" in block:
                return float(block.as_float("rlnImagePixelSize")[0])
    for path in (cfg.references, cfg.averages):
        if path:
            from simcryo.io.mrc import read_apix
            a = read_apix(path)
            if a and a != 1.0:
                return a
    return None


def _stack(path, what):
    from simcryo.io.mrc import open_stack
    stack = open_stack(path)
    if stack.shape[1] != stack.shape[2]:
        raise SimcryoError(f"{path}: {what} are not square")
    arr = np.array(stack, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise SimcryoError(f"{path}: {what} contain NaN or Inf pixels")
    return arr


# ---------------------------------------------------------------- evaluation

def evaluate(cfg):
    set_threads(cfg.threads)
    table, optics = _particle_table(cfg.i)
    pred = _labels(table, "rlnClassNumber", cfg.i)
    truth_path = cfg.truth or cfg.i
    ttable, toptics = (table, optics) if not cfg.truth else _particle_table(cfg.truth)
    if cfg.truth:
        ttable = _match_rows(table, cfg.i, ttable, truth_path)
    mode = cfg.truth_label
    if mode == "auto":
        mode = "true" if "simcryoTrueClass" in ttable else "class"
    if mode == "class" and not cfg.truth:
        raise SimcryoError(f"{cfg.i} has no _simcryoTrueClass column; give --truth (a simulated "
                           "or another classified STAR)")
    true_label = "simcryoTrueClass" if mode == "true" else "rlnClassNumber"
    true = _labels(ttable, true_label, truth_path)
    apix = _apix(cfg, [(table, optics), (ttable, toptics)])

    report = dict(input=cfg.i, truth=truth_path, truth_label="_" + true_label,
                  n_particles=int(len(pred)), apix=apix, config=config_to_dict(cfg))
    report["scores"] = metrics.clustering_scores(pred, true)
    mapping = metrics.hungarian_match(pred, true)
    report["matching"] = {str(p): t for p, t in sorted(mapping.items())}
    pr = metrics.precision_recall(pred, true, mapping)
    report["per_class"] = [dict(true_class=t, **v) for t, v in sorted(pr.items())]
    pv, tv, counts = metrics.confusion_matrix(pred, true)
    report["confusion"] = dict(predicted_classes=pv.tolist(), true_classes=tv.tolist(),
                               counts=counts.tolist())
    if cfg.features:
        report["knn"] = _knn_report(cfg, true, len(pred))
    if cfg.averages and cfg.references:
        report["frc"] = _frc_report(cfg, mapping, apix, pred)
    matched = np.array([mapping.get(p) == t for p, t in zip(pred.tolist(), true.tolist())])
    report["pose"] = _pose_report(table, ttable, mode, pred, matched, apix)
    if "simcryoTrueKind" in ttable:
        report["cleaning"] = _cleaning_report(cfg, ttable, pred, apix)
    elif cfg.volume or cfg.selection:
        raise SimcryoError(f"{truth_path}: no _simcryoTrueKind column; --volume and --selection "
                           "score junk cleaning of simulated data (simcryo simulate)")
    return report


# ---------------------------------------------------------------- cleaning (junk, views)

def _cleaning_report(cfg, ttable, pred, apix):
    """Oracle (and --selection) figures, view spread and its floor, class-average fidelity."""
    from simcryo.evaluation.cleaning import cleaning_report
    from simcryo.simulation import angles_to_direction
    kinds = np.asarray(ttable["simcryoTrueKind"])
    dirs = angles_to_direction(ttable.as_float("simcryoTrueAngleRot"),
                               ttable.as_float("simcryoTrueAngleTilt"))
    selected = _selected_classes(cfg.selection) if cfg.selection else None
    out = cleaning_report(pred, kinds, dirs, selected, cfg.oracle_max_junk)
    if cfg.averages and cfg.volume:
        out["fidelity"] = _fidelity_report(cfg, pred, apix, out)
    return out


def _selected_classes(path):
    table, _ = _particle_table(path)
    for label in ("rlnClassNumber", "simcryoSelected"):
        if label not in table:
            raise SimcryoError(f"{path}: no _{label} column (simcryo select's class_scores.star)")
    return [int(k) for k, s in zip(table.as_int("rlnClassNumber"),
                                   table.as_int("simcryoSelected")) if s]


def _fidelity_report(cfg, pred, apix, cleaning):
    from simcryo.evaluation.fidelity import FidelityScorer, size_weighted
    from simcryo.image.volume import resample_volume
    from simcryo.io.mrc import read_volume
    if not os.path.exists(cfg.volume):
        raise SimcryoError(f"volume not found: {cfg.volume}")
    avgs = _stack(cfg.averages, "class averages")
    if apix is None:
        raise SimcryoError("pixel size unknown for the fidelity; give --apix")
    vol, header_apix = read_volume(cfg.volume)
    vol = resample_volume(torch.as_tensor(vol), cfg.volume_apix or header_apix, apix,
                          avgs.shape[-1])
    classes = np.unique(pred)
    classes = classes[(classes >= 1) & (classes <= len(avgs))]
    scorer = FidelityScorer(vol, cfg.fidelity_view_step, cfg.fidelity_angle_step,
                            cfg.fidelity_max_shift or None)
    fid, raw = scorer.fidelity(torch.from_numpy(avgs[classes - 1]))
    sizes = np.array([(pred == k).sum() for k in classes])
    out = dict(noise_level=scorer.noise_level, clean_level=scorer.clean_level,
               classes={str(int(k)): dict(fidelity=float(f), raw=float(r), size=int(n))
                        for k, f, r, n in zip(classes, fid, raw, sizes)})
    for name in ("oracle", "selected"):
        if name in cleaning:
            kept = np.isin(classes, cleaning[name]["kept_classes"])
            cleaning[name]["fidelity"] = size_weighted(fid[kept], sizes[kept])
    return out


def _match_rows(table, path, ttable, truth_path):
    """The rows of the truth table for the particles of `table`, matched by _rlnImageName
    (image index and stack file) whatever their order; by row order only when a table has
    no image names, and then the counts must agree."""
    from simcryo.io.particles import image_keys
    if "rlnImageName" not in table or "rlnImageName" not in ttable:
        if ttable.n_rows != table.n_rows:
            raise SimcryoError(f"{path} has {table.n_rows} particles but {truth_path} has "
                               f"{ttable.n_rows}; without _rlnImageName they must list the "
                               "same particles in order")
        log("evaluate: note: no _rlnImageName in both files; particles matched by row order")
        return ttable
    keys = image_keys(table["rlnImageName"], path)
    tkeys = image_keys(ttable["rlnImageName"], truth_path)
    row = {k: i for i, k in enumerate(tkeys)}
    for name, ks in ((path, keys), (truth_path, tkeys)):
        if len(set(ks)) != len(ks):
            raise SimcryoError(f"{name}: the same _rlnImageName appears twice")
    missing = [i for i, k in enumerate(keys) if k not in row]
    if missing:
        raise SimcryoError(f"{len(missing)} particles of {path} are not in {truth_path} "
                           f"(e.g. row {missing[0] + 1}: {table['rlnImageName'][missing[0]]}); "
                           "--truth must hold the same particles")
    return ttable.take([row[k] for k in keys])


def _expected_classes(cfg):
    """K of the classification: from the run.json beside --averages or --i (classify's K,
    align's n_classes), else at least the largest class number."""
    for path in (cfg.averages, cfg.i):
        info = os.path.join(os.path.dirname(os.path.abspath(path)), "run.json")
        try:
            with open(info) as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            continue
        k = data.get("config", {}).get("K") or data.get("n_classes")
        if isinstance(k, int):
            return k, info
    return None, None


def _check_averages(cfg, avgs, pred):
    k, source = _expected_classes(cfg)
    if k is not None and len(avgs) != k:
        raise SimcryoError(f"{cfg.averages} holds {len(avgs)} class averages but the run "
                           f"has K={k} classes ({source})")
    if len(avgs) < pred.max():
        raise SimcryoError(f"{cfg.averages} holds {len(avgs)} class averages but {cfg.i} "
                           f"uses class numbers up to {pred.max()}")


def _knn_report(cfg, true, n):
    try:
        feats = np.load(cfg.features, mmap_mode="r")
    except FileNotFoundError:
        raise SimcryoError(f"features file not found: {cfg.features}")
    except ValueError as exc:
        raise SimcryoError(f"cannot read {cfg.features} as .npy: {exc}")
    if feats.ndim != 2 or feats.shape[0] != n:
        raise SimcryoError(f"{cfg.features}: expected features of shape ({n}, d), got "
                           f"{feats.shape}")
    feats = np.asarray(feats, dtype=np.float32)
    if not np.isfinite(feats).all():
        raise SimcryoError(f"{cfg.features}: features contain NaN or Inf")
    nb = metrics.knn_indices(feats, cfg.knn)
    return dict(k=cfg.knn, accuracy=metrics.knn_accuracy(feats, true, cfg.knn, nb),
                purity=metrics.neighbor_purity(feats, true, cfg.knn, nb))


def _frc_report(cfg, mapping, apix, pred):
    from simcryo.evaluation.frc import aligned_frc, resolution_at
    refs = _stack(cfg.references, "references")
    avgs = _stack(cfg.averages, "class averages")
    _check_averages(cfg, avgs, pred)
    if refs.shape[1:] != avgs.shape[1:]:
        raise SimcryoError(f"class averages ({avgs.shape[1]} px) and references "
                           f"({refs.shape[1]} px) differ in box size")
    if apix is None:
        raise SimcryoError("pixel size unknown for the FRC; give --apix")
    rows = []
    for p, t in sorted(mapping.items()):
        if not (1 <= p <= len(avgs) and 1 <= t <= len(refs)):
            log(f"evaluate: no image for predicted class {p} / true class {t}; FRC skipped")
            continue
        avg = torch.from_numpy(avgs[p - 1])
        if float(avg.std()) == 0.0:
            rows.append(dict(predicted_class=p, true_class=t, empty=True))
            continue
        curve, psi, shift, score, sign = aligned_frc(avg, torch.from_numpy(refs[t - 1]),
                                                     cfg.angle_step)
        rows.append(dict(predicted_class=p, true_class=t,
                         res_frc05_A=_finite(resolution_at(curve, apix, 0.5)),
                         res_frc0143_A=_finite(resolution_at(curve, apix, 0.143)),
                         align_psi=psi, align_shift_px=list(shift), align_score=score,
                         contrast_inverted=sign < 0,
                         curve=[round(float(c), 4) for c in curve]))
    res05 = [r["res_frc05_A"] for r in rows if r.get("res_frc05_A") is not None]
    res0143 = [r["res_frc0143_A"] for r in rows if r.get("res_frc0143_A") is not None]
    return dict(classes=rows, nyquist_A=2 * apix,
                median_res_frc05_A=float(np.median(res05)) if res05 else None,
                median_res_frc0143_A=float(np.median(res0143)) if res0143 else None)


def _finite(x):
    return float(x) if np.isfinite(x) else None


def _pose_report(table, ttable, mode, pred, matched, apix):
    if apix is None:
        return dict(available=False, reason="pixel size unknown")
    predicted = star_poses(table, "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", apix)
    if mode == "true":
        truth = star_poses(ttable, "simcryoTruePsi", "simcryoTrueOriginXAngst",
                       "simcryoTrueOriginYAngst", apix)
    else:
        truth = star_poses(ttable, "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", apix)
    if predicted is None or truth is None:
        return dict(available=False, reason="predicted or true poses missing")
    ang, sh, offsets = metrics.pose_errors(pred, predicted[0], predicted[1], truth[0], truth[1],
                                           mask=matched)
    return dict(available=True, particles="predicted class matched to the true class",
                angle_error_deg=metrics.summarize_errors(ang),
                shift_error_px=metrics.summarize_errors(sh),
                shift_error_A=metrics.summarize_errors(sh * apix),
                within_5deg=float(np.mean(ang[matched] <= 5.0)) if matched.any() else None,
                class_offsets={str(k): dict(psi=v[0], x_px=v[1], y_px=v[2])
                               for k, v in offsets.items()})


# ---------------------------------------------------------------- table

def _fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def format_report(r):
    s = r["scores"]
    lines = [f"evaluate: {r['input']} vs {r['truth']} ({r['truth_label']}), "
             f"{r['n_particles']} particles, {s['n_pred_classes']} predicted / "
             f"{s['n_true_classes']} true classes",
             f"  ACC {s['acc']:.4f}   NMI {s['nmi']:.4f}   ARI {s['ari']:.4f}   "
             f"FMI {s['fmi']:.4f}"]
    if "knn" in r:
        k = r["knn"]
        lines.append(f"  kNN (k={k['k']}): accuracy {k['accuracy']:.4f}   "
                     f"neighbour purity {k['purity']:.4f}")
    frc_rows = {c["predicted_class"]: c for c in r.get("frc", {}).get("classes", [])}
    lines.append("  true  pred  support  precision  recall     f1" +
                 ("  FRC0.5(Å)  FRC0.143(Å)" if frc_rows else ""))
    for c in r["per_class"]:
        row = (f"  {c['true_class']:>4}  {str(c['predicted_class'] or '-'):>4}  "
               f"{c['support']:>7}  {c['precision']:>9.3f}  {c['recall']:>6.3f}  {c['f1']:>5.3f}")
        fr = frc_rows.get(c["predicted_class"])
        if fr is not None:
            row += (f"  {_fmt(fr.get('res_frc05_A'), '9.1f')}  "
                    f"{_fmt(fr.get('res_frc0143_A'), '11.1f')}")
        lines.append(row)
    if "frc" in r:
        f = r["frc"]
        lines.append(f"  FRC median resolution: {_fmt(f['median_res_frc05_A'], '.1f')} Å at 0.5, "
                     f"{_fmt(f['median_res_frc0143_A'], '.1f')} Å at 0.143 "
                     f"(Nyquist {f['nyquist_A']:.1f} Å)")
    p = r["pose"]
    if p.get("available"):
        a, sh = p["angle_error_deg"], p["shift_error_px"]
        lines.append(f"  pose errors ({a['n']} matched particles): angle median "
                     f"{_fmt(a['median'], '.2f')} deg, p90 {_fmt(a['p90'], '.2f')} deg; shift "
                     f"median {_fmt(sh['median'], '.2f')} px, p90 {_fmt(sh['p90'], '.2f')} px")
    lines += _cleaning_lines(r.get("cleaning"))
    return "\n".join(lines)


def _cleaning_lines(c):
    if not c:
        return []
    kinds = ", ".join(f"{k} {v}" for k, v in c["junk_kinds"].items())
    lines = [f"  cleaning ({kinds}); view spread and fidelity of the kept classes:",
             "    selection  classes  recall  contamination  junk rejected  view spread  "
             "k-means floor  fidelity"]
    for name in ("oracle", "selected"):
        if name in c:
            s = c[name]
            lines.append(f"    {name:>9}  {len(s['kept_classes']):>7}  {_fmt(s['recall']):>6}  "
                         f"{_fmt(s['contamination']):>13}  {_fmt(s['junk_rejected']):>13}  "
                         f"{_fmt(s['view_spread_deg'], '7.1f')} deg  "
                         f"{_fmt(s['kmeans_floor_deg'], '9.1f')} deg  "
                         f"{_fmt(s.get('fidelity')):>8}")
    return lines
