"""ASPIRE RIRClass2D neighbours of a RELION STAR: the classical peer of classify's neighbours.

Run by ASPIRE's own interpreter (ASPIRE 0.14.3 pulls numpy 2, outside the engine's pins), so
this script imports nothing from simcryo:

    /work/aspire-venv/bin/python benchmarks/aspire_neighbors.py particles.star out.npy \
        [--fspca-components 400] [--bispectrum-components 300] [--k 10]

It reads the STAR with aspire.source.RelionSource, phase-flips the images with their CTF,
runs RIRClass2D (rotation-invariant bispectrum of the steerable-PCA coefficients, ASPIRE's
legacy implementations, as in its DefaultClassAvgSource) and writes an (N, k) int64 array:
row i holds the indices, in STAR row order, of particle i's k nearest neighbours, most similar
first, itself excluded (RIRClass2D lists each image first among its own neighbours).
Neighbours found through a mirror image count as neighbours, as in ASPIRE (an image and its
mirror can both be listed: 2k + 2 are requested and repeats folded). The STAR order is
checked: the source's _rlnImageName column must equal the file's, row by row.
"""
import argparse
import sys
import time

import numpy as np


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("star", help="RELION STAR with CTF columns")
    ap.add_argument("out", help="output .npy: (N, k) int64 neighbour indices")
    ap.add_argument("--k", type=int, default=10, help="neighbours per particle")
    ap.add_argument("--fspca-components", type=int, default=400,
                    help="steerable PCA components kept (ASPIRE's default; capped at N)")
    ap.add_argument("--bispectrum-components", type=int, default=300,
                    help="bispectrum features after the last PCA (ASPIRE's default; capped "
                         "below N)")
    ap.add_argument("--seed", type=int, default=0, help="RIRClass2D's random seed")
    return ap.parse_args(argv)


def star_image_names(path):
    """_rlnImageName of the particle table, in file order (ASPIRE's own STAR reader)."""
    from aspire.storage import StarFile
    for block in StarFile(path).blocks.values():
        if "_rlnImageName" in block:
            return list(block["_rlnImageName"])
    raise SystemExit(f"aspire_neighbors: {path}: no _rlnImageName column")


def check_order(src, star):
    """The neighbour indices mean STAR rows only if the source kept the file's order."""
    ours = list(src.get_metadata("_rlnImageName"))
    theirs = star_image_names(star)
    if ours != theirs:
        bad = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b) \
            if len(ours) == len(theirs) else min(len(ours), len(theirs))
        raise SystemExit(f"aspire_neighbors: RelionSource reordered the particles (first "
                         f"difference at row {bad}); indices would not be STAR rows")


def without_self(classes, k):
    """(N, k) neighbours of each row, order kept, the row itself and repeats removed: an
    image and its mirror are separate entries of RIRClass2D's list, folded to one index."""
    n = len(classes)
    out = np.empty((n, k), dtype=np.int64)
    for i, row in enumerate(classes):
        _, first = np.unique(row, return_index=True)
        rest = row[np.sort(first)]
        rest = rest[rest != i]
        if len(rest) < k:
            raise SystemExit(f"aspire_neighbors: particle {i} has only {len(rest)} distinct "
                             f"neighbours; raise the neighbours requested")
        out[i] = rest[:k]
    return out


def main(argv=None):
    args = parse_args(argv)
    from aspire.classification import RIRClass2D
    from aspire.source import RelionSource
    t0 = time.perf_counter()
    src = RelionSource(args.star)
    check_order(src, args.star)
    src = src.phase_flip()
    n = src.n
    bispec = min(args.bispectrum_components, n - 1)
    fspca = max(bispec, min(args.fspca_components, n))
    rir = RIRClass2D(src, fspca_components=fspca, bispectrum_components=bispec,
                     n_nbor=min(2 * args.k + 2, n - 1), large_pca_implementation="legacy",
                     nn_implementation="legacy", bispectrum_implementation="legacy",
                     seed=args.seed)
    classes, _, _ = rir.classify()
    nb = without_self(np.asarray(classes), args.k)
    np.save(args.out, nb)
    print(f"aspire_neighbors: {n} particles, {args.k} neighbours each, fspca {fspca}, "
          f"bispectrum {bispec}, {time.perf_counter() - t0:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
