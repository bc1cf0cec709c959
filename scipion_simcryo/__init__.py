"""scipion-em-simcryo: Scipion plugin for SimCryoCluster-style unsupervised 2D classification.

The protocols are thin wrappers around the `simcryo` engine, launched as
``<python> -m simcryo <command>`` in a separate process (``runJob``). The engine can live in
Scipion's own Python (the default, e.g. after ``pip install -e``) or in a dedicated environment
created by ``scipion3 installb simcryo`` (``defineBinaries``); ``SIMCRYO_PYTHON`` /
``SIMCRYO_ENV_ACTIVATION`` select it.
"""
import os
import shutil
import sys

import pwem
import pyworkflow.utils as pwutils
from pyworkflow import VarTypes

from .constants import (SIMCRYO_PYTHON, SIMCRYO_ENV_ACTIVATION, SIMCRYO_CUDA_VERSION,
                        ENGINE_PACKAGE, ENGINE_VERSION, ENGINE_ENV_NAME, ENGINE_INSTALLED_FLAG,
                        TORCH_VERSION, TORCH_CUDA_BUILDS)

__version__ = '0.1.0'
_logo = None
# What the plugin's methods build on; RELION is not run by any of its protocols.
_references = ['Simcryocluster']


class Plugin(pwem.Plugin):
    _url = 'https://github.com/scipion-em/scipion-em-simcryo'
    _supportedVersions = [ENGINE_VERSION]
    _processingField = ['SPA']

    @classmethod
    def _defineVariables(cls):
        envPython = cls.getEngineEnvPython()
        default = envPython if os.path.exists(envPython) else sys.executable
        cls._defineVar(SIMCRYO_PYTHON, default,
                       description='Python interpreter that runs the simcryo engine '
                                   '(`python -m simcryo`). Default: the engine environment '
                                   'created by `scipion3 installb %s` if present, otherwise '
                                   'the Python running Scipion.' % ENGINE_ENV_NAME,
                       var_type=VarTypes.PATH)
        cls._defineVar(SIMCRYO_ENV_ACTIVATION, '',
                       description='Optional shell command run before the engine, e.g. '
                                   '"source /opt/simcryo/bin/activate" or '
                                   '"conda activate simcryo". Empty: none.')
        cls._defineVar(SIMCRYO_CUDA_VERSION, '',
                       description='CUDA version (e.g. 12.6) used by installb to pick the '
                                   'torch build. Empty: guessed from CUDA_LIB; none found: CPU.')

    # ---------------------------------------------------------------- engine launch
    @classmethod
    def getEngineEnvHome(cls, *paths):
        return os.path.join(pwem.Config.EM_ROOT, ENGINE_ENV_NAME, *paths)

    @classmethod
    def getEngineEnvPython(cls):
        return cls.getEngineEnvHome('env', 'bin', 'python')

    @classmethod
    def getEnginePython(cls):
        return cls.getVar(SIMCRYO_PYTHON) or sys.executable

    @classmethod
    def getActivationCmd(cls):
        return (cls.getVar(SIMCRYO_ENV_ACTIVATION) or '').strip()

    @classmethod
    def usesSeparateEnv(cls):
        """True when the engine runs in another interpreter than Scipion's."""
        python = cls.getEnginePython()
        same = os.path.realpath(python) == os.path.realpath(sys.executable)
        return bool(cls.getActivationCmd()) or not same

    @classmethod
    def getProgram(cls, command, useGpu=False, processes=1, setDevices=True):
        """Shell program string for ``runJob``: ``[activation &&] [CUDA_VISIBLE_DEVICES=%(GPU)s]
        <python> [-m torch.distributed.run --standalone --nproc_per_node N] -m simcryo
        <command>``. With a GPU, Scipion substitutes the protocol's GPU list into
        CUDA_VISIBLE_DEVICES (unless ``setDevices`` is False: under a queue the scheduler's
        value stands) and the engine is told ``--device cuda:0``; with ``processes`` > 1,
        torchrun starts that many engine processes and each takes the GPU of its LOCAL_RANK
        (simcryo.distributed)."""
        python = cls.getEnginePython()
        if cls.getActivationCmd():
            # After activation, `python` is the environment's interpreter.
            python = 'python' if python == sys.executable else python
        launcher = '-m %s' % ENGINE_PACKAGE
        if processes > 1:
            # torchrun as a module of the engine's python: nothing else to find on PATH
            launcher = ('-m torch.distributed.run --standalone --nproc_per_node %d %s'
                        % (processes, launcher))
        program = '%s %s %s' % (python, launcher, command)
        if useGpu and setDevices:
            program = 'CUDA_VISIBLE_DEVICES=%(GPU)s ' + program
        activation = cls.getActivationCmd()
        if activation:
            program = '%s && %s' % (activation, program)
        return program

    @classmethod
    def getEnviron(cls):
        """Environment for the engine process. Scipion's PYTHONPATH is dropped when the engine
        runs in its own interpreter, so that Scipion's site-packages (numpy pins, pyworkflow)
        cannot shadow the engine environment's packages."""
        environ = pwutils.Environ(os.environ)
        if cls.usesSeparateEnv():
            environ.pop('PYTHONPATH', None)
        environ.setdefault('PYTHONUNBUFFERED', '1')
        return environ

    @classmethod
    def validateInstallation(cls):
        """Cheap check run when a protocol is validated: the engine interpreter exists."""
        python = cls.getEnginePython()
        if cls.getActivationCmd() or os.path.exists(python) or shutil.which(python):
            return []
        return ['%s=%s does not exist. Create the engine environment with '
                '`scipion3 installb %s`, or set %s to a Python where `python -m simcryo` '
                'works.' % (SIMCRYO_PYTHON, python, ENGINE_ENV_NAME, SIMCRYO_PYTHON)]

    # ---------------------------------------------------------------- installation
    @classmethod
    def getCudaVersion(cls):
        """(major, minor) of the facility CUDA, or None for a CPU-only install."""
        forced = (cls.getVar(SIMCRYO_CUDA_VERSION) or '').strip()
        if forced:
            text = forced
        else:
            cudaLib = cls.getVar(pwem.CUDA_LIB_VAR) or pwem.Config.CUDA_LIB
            if not cudaLib or not os.path.exists(cudaLib):
                return None
            text = str(cls.getVersionFromPath(cudaLib, pattern='cuda', default='0.0'))
        parts = [int(p) for p in text.split('.')[:2] if p.isdigit()]
        if not parts or parts[0] == 0:
            return None
        return (parts[0], parts[1] if len(parts) > 1 else 0)

    @classmethod
    def getTorchIndex(cls, cudaVersion):
        """PyTorch wheel index for the highest CUDA build not above the facility's CUDA."""
        if cudaVersion is not None:
            for build in TORCH_CUDA_BUILDS:
                if build <= tuple(cudaVersion):
                    return 'https://download.pytorch.org/whl/cu%d%d' % build
        return 'https://download.pytorch.org/whl/cpu'

    @classmethod
    def getEngineSource(cls):
        """The engine to pip-install: this checkout when it is one (devel mode), else PyPI."""
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if os.path.exists(os.path.join(root, 'setup.py')) and \
                os.path.isdir(os.path.join(root, ENGINE_PACKAGE)):
            return root
        return 'scipion-em-simcryo==%s' % __version__

    @classmethod
    def defineBinaries(cls, env):
        """``scipion3 installb simcryo-<version>``: a dedicated venv with torch (CUDA build chosen
        from the facility CUDA) and the engine only; the engine needs no Scipion package."""
        index = cls.getTorchIndex(cls.getCudaVersion())
        pip = 'env/bin/python -m pip install --no-cache-dir'
        steps = [
            '%s -m venv env' % sys.executable,
            '%s --upgrade pip' % pip,
            '%s torch==%s --index-url %s' % (pip, TORCH_VERSION, index),
            # numpy/scipy/mrcfile as pinned by scipion-em; --no-deps keeps Scipion out.
            '%s "numpy==1.26.1" "scipy<=1.10.0" "mrcfile<=1.4.3"' % pip,
            '%s --no-deps "%s"' % (pip, cls.getEngineSource()),
            'env/bin/python -c "import simcryo, torch"',
            'touch %s' % ENGINE_INSTALLED_FLAG,
        ]
        env.addPackage(ENGINE_ENV_NAME.split('-')[0], version=ENGINE_VERSION,
                       tar='void.tgz',
                       commands=[(' && '.join(steps), ENGINE_INSTALLED_FLAG)],
                       neededProgs=[],
                       default=False)
