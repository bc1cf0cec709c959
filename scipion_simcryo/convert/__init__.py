"""Conversion between Scipion objects and the engine's files (RELION 3.1 STAR + MRC stacks).

One module per concern; this package exports their public names, so protocols, viewers and
tests write ``from scipion_simcryo import convert`` / ``convert.EngineResult(...)`` as in
other Scipion plugins:

- `poses`: Scipion 2D `Transform` <-> RELION psi / origin (the pose convention).
- `locations`: ``N@file`` names and project-relative paths.
- `stacks`: whether a set needs copying to MRC, and the stack copies.
- `star_writer`: Scipion particle / class sets -> the engine's input STAR.
- `truth`: the truth columns of simulated data (or a reference partition).
- `engine_results`: the engine's output STAR read back (classes, poses, new particle sets,
  class scores of `simcryo select`).

The engine imports nothing from here; this package may import the engine's pure-Python
`simcryo.io` (STAR reader/writer).
"""
from .poses import matrixFromPose, poseFromMatrix, transformFromPose
from .locations import locationToRelion, projectRelative, relionToLocation, stripFormatSuffix
from .stacks import (MRC_EXTENSIONS, StackCopier, needsStackConversion, referenceImages,
                     writeClassAverages, writeImagesStack, writeReferenceStack)
from .star_writer import (OpticsGroups, ParticleStarWriter, acquisitionRow, classNumbering,
                          missingAcquisition,
                          classesHave2DAlignment, ctfToRow, iterClassMembers, iterEnabled,
                          writeClassesStar)
from .truth import (TRUTH_ATTRS, setTruthAttributes,
                    truthFromClasses, truthFromParticles, writeTruthStar)
from .engine_results import (CLASS_SCORE_LABELS, ClassScores, EngineResult, opticsToAcquisition,
                             readSetOfParticles, rowToCtf)

__all__ = [
    'matrixFromPose', 'poseFromMatrix', 'transformFromPose',
    'locationToRelion', 'projectRelative', 'relionToLocation', 'stripFormatSuffix',
    'MRC_EXTENSIONS', 'StackCopier', 'needsStackConversion', 'writeClassAverages',
    'writeImagesStack', 'referenceImages', 'writeReferenceStack',
    'OpticsGroups', 'ParticleStarWriter', 'acquisitionRow', 'missingAcquisition', 'classNumbering', 'classesHave2DAlignment',
    'ctfToRow', 'iterClassMembers', 'iterEnabled', 'writeClassesStar',
    'TRUTH_ATTRS', 'setTruthAttributes', 'truthFromClasses',
    'truthFromParticles', 'writeTruthStar',
    'CLASS_SCORE_LABELS', 'ClassScores', 'EngineResult', 'opticsToAcquisition',
    'readSetOfParticles', 'rowToCtf',
]
