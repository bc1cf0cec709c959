"""In-plane alignment and class averaging: the one alignment core every stage uses.

`aligner`: the `Aligner` interface (prepare references, align particles -> `Alignment` with
RELION-convention poses), `make_aligner`, and the pose primitives (`warp_to_reference`,
`rotate_shift`, `wrap_angle`); strategies: `rings` (polar rings with rotation candidates, and
the paper's Fourier magnitudes) and `exhaustive` (every angle x every shift, for the
classification EM and the evaluation); `polar`, `translate`: search primitives; `scores`:
normalised correlations; `average`: the one averager (CTF-aware Wiener class averages with
half sets); `classalign`: reference-free iterative alignment of classified particles.
Pose convention: particle ~= simcryo.image.geometry.transform_images(average, psi, shift).
"""
from simcryo.align.aligner import Aligner, Alignment, make_aligner  # noqa: F401
from simcryo.align.classalign import ClassAligner, ClassAlignParams, ParticleSource  # noqa: F401
from simcryo.align.rings import AlignParams, MagnitudeAligner, RingAligner  # noqa: F401
