"""2D poses: Scipion `Transform` matrix <-> RELION psi / origin.

One converter pair, `matrixFromPose` / `poseFromMatrix`: Scipion keeps 2D alignment in a 4x4
`Transform` matrix whose upper-left 2x2 block is the in-plane rotation
``[[cos psi, -sin psi], [sin psi, cos psi]]`` and whose [0,3], [1,3] entries are the shifts in
pixels. This is the mapping scipion-em-relion uses between a 2D `Transform` and
``_rlnAnglePsi`` / ``_rlnOriginXAngst`` / ``_rlnOriginYAngst`` (shift in pixels times the pixel
size), so particles aligned by RELION, CL2D or this plugin read the same way. A mirror is a
negative determinant, ``M[:2,:2] = diag(-1, 1) @ R(psi)`` (Xmipp's flip convention); the engine
and RELION have no mirror column, so mirrored particles are written with their rotation only and
the flag is reported by `poseFromMatrix`.
"""
import math

import numpy as np

import pwem.objects as emobj


def matrixFromPose(psi, shiftX, shiftY, mirror=False):
    """4x4 Scipion 2D transform from psi (degrees) and shifts (pixels)."""
    a = math.radians(psi)
    c, s = math.cos(a), math.sin(a)
    M = np.eye(4)
    M[:2, :2] = [[c, -s], [s, c]]
    if mirror:
        M[0, :2] *= -1.0
    M[0, 3] = shiftX
    M[1, 3] = shiftY
    return M


def poseFromMatrix(M):
    """(psi degrees in (-180, 180], shiftX px, shiftY px, mirror) from a 4x4 2D transform."""
    M = np.asarray(M, dtype=float)
    R = M[:2, :2].copy()
    mirror = bool(np.linalg.det(R) < 0)
    if mirror:
        R[0, :] *= -1.0
    psi = math.degrees(math.atan2(R[1, 0], R[0, 0]))
    if psi <= -180.0:
        psi += 360.0
    return psi, float(M[0, 3]), float(M[1, 3]), mirror


def transformFromPose(psi, shiftX, shiftY, mirror=False):
    return emobj.Transform(matrixFromPose(psi, shiftX, shiftY, mirror))
