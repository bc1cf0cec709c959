"""In-plane alignment and class averaging: the one alignment core every stage uses.

`aligner`: the `Aligner` interface (prepare references, align particles -> `Alignment` with
RELION-convention poses), `make_aligner`, and the pose primitives (`warp_to_reference`,
`rotate_shift`, `wrap_angle`); strategies: `rings` (polar rings with rotation candidates, and
the paper's Fourier magnitudes) and `exhaustive` (every angle x every shift, for the
classification EM and the evaluation); `polar`, `translate`: search primitives; `scores`:
normalised correlations; `average`: the one averager (CTF-aware Wiener class averages with
half sets); `source`: particles streamed in batches; `seeding` + `classalign`: reference-free
iterative alignment of classified particles. Other stages import only the names below.
Pose convention: particle ~= simcryo.image.geometry.transform_images(average, psi, shift).
"""
from simcryo.align.aligner import (Aligner, Alignment, make_aligner, rotate_shift,
                                   warp_to_reference, wrap_angle)
from simcryo.align.average import (ClassAccumulator, centre_of_mass, density_centroid,
                                   normalize_weights, spectra_to_images)
from simcryo.align.classalign import ClassAligner, ClassAlignParams
from simcryo.align.exhaustive import ExhaustiveAligner, ExhaustiveParams
from simcryo.align.rings import AlignParams, MagnitudeAligner, RingAligner
from simcryo.align.polar import ring_radii, sample_rings
from simcryo.align.scores import normalized_correlation
from simcryo.align.source import ParticleSource, auto_mask_radius

__all__ = ["Aligner", "Alignment", "make_aligner", "rotate_shift", "warp_to_reference",
           "wrap_angle", "ClassAccumulator", "centre_of_mass", "density_centroid",
           "normalize_weights", "spectra_to_images", "ClassAligner", "ClassAlignParams",
           "ExhaustiveAligner", "ExhaustiveParams", "AlignParams", "MagnitudeAligner",
           "RingAligner", "normalized_correlation", "ParticleSource", "auto_mask_radius",
           "ring_radii", "sample_rings"]
