"""In-plane alignment inside classes and class averaging (issue 4).

`core`: rotation + translation alignment against references (polar rings / Fourier
magnitudes, FFT along the angle, phase/cross-correlation), `polar` and `translate`: the
primitives, `average`: weighted and CTF-aware (Wiener) class averages, `classalign`: the
reference-free iterative alignment of classified particles.
"""
from simcryo.align.core import AlignParams, References, align_to_references  # noqa: F401
