"""simcryo: unsupervised 2D classification of cryo-EM particle images.

The engine behind scipion-em-simcryo. Pure torch / numpy / scipy / mrcfile:
it never imports Scipion, so it runs in any Python environment.
"""
__version__ = "0.1.0"
