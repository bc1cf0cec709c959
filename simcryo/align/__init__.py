"""In-plane alignment inside classes and class averaging (issue 4).

`core`: rotation + translation alignment against references (real-space polar rings or polar
Fourier magnitudes, FFT along the angle, cross-/phase-correlation with sub-pixel peaks);
`polar`, `translate`: the primitives; `average`: weights, rotational averages, CTF-aware
(Wiener) class averages with half sets; `classalign`: reference-free iterative alignment of
classified particles streamed in batches (pose errors: `simcryo.evaluation.metrics.pose_errors`).
Pose convention: particle ~= simcryo.image.geometry.transform_images(average, psi, shift).
"""
from simcryo.align.classalign import ClassAligner, ClassAlignParams, ParticleSource  # noqa: F401
from simcryo.align.core import AlignParams, References, align_to_references  # noqa: F401
