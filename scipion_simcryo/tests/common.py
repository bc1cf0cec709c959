"""Helpers shared by the plugin tests: tiny generated data, fast engine settings."""
import os
import shutil
import subprocess
import sys

import mrcfile
import numpy as np

from pyworkflow.tests import BaseTest, setupTestProject
from pwem.protocols import ProtImportParticles, ProtImportVolumes

from scipion_simcryo import constants as cts

# Tiny problem used everywhere: K view classes x M particles of BOX px.
K = 3
PER_CLASS = 12
BOX = 32
N = K * PER_CLASS

# Fastest engine settings for each command (test speed, not quality).
FAST = {
    'classify': '--pretext-epochs 2 --batch-size 16 --width 8 --scan-epochs 3 --scan-heads 2 '
                '--selflabel-epochs 1 --tta-rotations 2 --average-iterations 1',
    'align': '--iterations 1',
    'denoise': '--epochs 1 --images-per-epoch 32 --batch-size 8 --val-images 8 '
               '--stats-images 32 --channels 8 --res-blocks 1',
}


def engineHas(command):
    """True when `simcryo <command>` exists in this checkout (commands land one by one)."""
    import importlib.util
    return importlib.util.find_spec('simcryo.commands.%s' % command.split()[0]) is not None


def engineHelp(command):
    """`simcryo <command> --help` text ('' when the command is missing)."""
    if not engineHas(command):
        return ''
    out = subprocess.run([sys.executable, '-m', 'simcryo'] + command.split() + ['--help'],
                         capture_output=True, text=True)
    return out.stdout


def fastArgs(command):
    """The FAST overrides restricted to flags the engine command really has."""
    helpText = engineHelp('denoise train' if command == 'denoise' else command)
    tokens = FAST.get(command, '').split()
    kept = []
    i = 0
    while i < len(tokens):
        flag = tokens[i]
        value = tokens[i + 1] if i + 1 < len(tokens) and not tokens[i + 1].startswith('--') \
            else None
        if flag + ' ' in helpText or flag + '\n' in helpText:
            kept += [flag] + ([value] if value is not None else [])
        i += 2 if value is not None else 1
    return ' '.join(kept)


def writeStack(path, data, apix):
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.asarray(data, dtype=np.float32))
        m.voxel_size = apix


class SimcryoUnitTest(BaseTest):
    """Plain unit tests (no project), visible to ``scipion3 tests scipion_simcryo`` and to
    pytest."""

    def tmpPath(self):
        """A fresh folder removed after the test (pytest's tmp_path)."""
        import tempfile
        from pathlib import Path
        path = tempfile.mkdtemp(prefix='simcryo-test-')
        self.addCleanup(shutil.rmtree, path, True)
        return Path(path)


class SimcryoTestBase(BaseTest):
    """A headless project per test class, with helpers to make inputs."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)

    @classmethod
    def runSimulate(cls, **kwargs):
        from scipion_simcryo.protocols import ProtSimcryoSimulate
        values = dict(numberOfClasses=K, particlesPerClass=PER_CLASS, boxSize=BOX, snr=1.0,
                      seed=1, numberOfThreads=2)
        values.update(kwargs)
        prot = cls.newProtocol(ProtSimcryoSimulate, **values)
        return cls.launchProtocol(prot)

    @classmethod
    def importParticlesFromSimulation(cls, simProt):
        """Import the simulated stack through ProtImportParticles (plain files: no CTF, no
        truth), as a user with a stack from elsewhere would."""
        stack = os.path.join(simProt._getExtraPath('output'), cts.OUT_STACK)
        folder = cls.getOutputPath('imported')
        os.makedirs(folder, exist_ok=True)
        shutil.copy(stack, os.path.join(folder, 'sim.mrcs'))
        prot = cls.newProtocol(ProtImportParticles,
                               importFrom=ProtImportParticles.IMPORT_FROM_FILES,
                               filesPath=folder, filesPattern='sim.mrcs',
                               samplingRate=simProt.outputParticles.getSamplingRate(),
                               voltage=300, sphericalAberration=2.7, amplitudeContrast=0.1)
        return cls.launchProtocol(prot)

    @classmethod
    def importVolume(cls, path, apix):
        prot = cls.newProtocol(ProtImportVolumes, filesPath=path, samplingRate=apix)
        return cls.launchProtocol(prot)


def addClassesOutput(prot, particles, labelOf, name, representatives=None):
    """Register a SetOfClasses2D built from ``labelOf(particle) -> class id`` as an output of
    an existing protocol, so that protocols taking classes can be tested without another
    classifier. ``representatives``: optional stack whose image k is class k's average."""
    classes = prot._createSetOfClasses2D(particles, suffix=name)

    def update(item, row):
        item.setClassId(int(labelOf(item)))

    def updateClass(cls):
        if representatives:
            cls.getRepresentative().setLocation(cls.getObjId(), representatives)

    classes.classifyItems(updateItemCallback=update, updateClassCallback=updateClass)
    prot._defineOutputs(**{name: classes})
    prot._store()
    return getattr(prot, name)
