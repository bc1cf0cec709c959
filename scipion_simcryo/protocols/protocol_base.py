"""Shared plumbing of the simcryo protocols: file names, compute section, engine launch."""
import glob
import json
import os
import shlex
import shutil

import pyworkflow.protocol.params as params
from pyworkflow.constants import PROD
from pyworkflow.protocol.constants import LEVEL_ADVANCED
from pwem.protocols import EMProtocol

from .. import Plugin
from .. import constants as cts
from .. import convert


class ProtSimcryoBase(EMProtocol):
    """Base of the simcryo protocols (not shown in the menu)."""
    _devStatus = PROD
    _engineCommand = None       # simcryo sub-command run by runStep
    _usesGpu = True             # False: the command is CPU-only (no GPU section)
    _defaultThreads = 2
    _hasSeed = True             # False: the command takes no --seed (deterministic)
    _maskAutoText = 'estimated from the particles'  # what --mask-diameter 0 means

    # ------------------------------------------------------------------ files
    def _createFilenameTemplates(self):
        """One place for every file the protocol reads or writes."""
        self._updateFilenamesDict({
            'input_star': self._getExtraPath('input', 'particles.star'),
            'input_stack': self._getExtraPath('input', 'particles.mrcs'),
            'truth_star': self._getExtraPath('input', 'truth.star'),
            'input_averages': self._getExtraPath('input', 'averages.mrcs'),
            'input_references': self._getExtraPath('input', 'references.mrcs'),
            'output_dir': self._getExtraPath('output'),
            'out_particles': self._getExtraPath('output', cts.OUT_PARTICLES),
            'out_averages': self._getExtraPath('output', cts.OUT_AVERAGES),
            'out_references': self._getExtraPath('output', cts.OUT_REFERENCES),
            'out_runlog': self._getExtraPath('output', cts.OUT_RUNLOG),
            'report': self._getExtraPath('output', 'report.json'),
        })

    def _initialize(self):
        self._createFilenameTemplates()
        self._simcryoFilenamesDir = self.getWorkingDir()

    def _getFileName(self, key, **kwargs):
        # Summary, viewers and tests call this in processes where no step was inserted, and
        # possibly before the protocol has its working folder (then again once it has one).
        if getattr(self, '_simcryoFilenamesDir', None) != self.getWorkingDir():
            self._initialize()
        return EMProtocol._getFileName(self, key, **kwargs)

    def _insertAllSteps(self):
        self._initialize()
        self._insertFunctionStep(self.convertInputStep)
        # The engine arguments are a step argument: changing a parameter re-runs the engine
        # when the protocol is continued, an unchanged one reuses the finished step.
        self._insertFunctionStep(self.runStep, self._getEngineArgs())
        self._insertFunctionStep(self.createOutputStep)

    # ------------------------------------------------------------------ form helpers
    def _defineComputeParams(self, form):
        form.addSection(label='Compute')
        if self._usesGpu:
            # Default to the GPU only where a driver is installed, so that a CPU-only machine
            # does not start with a setting that fails.
            form.addHidden(params.USE_GPU, params.BooleanParam,
                           default=shutil.which('nvidia-smi') is not None,
                           label='Use GPU?',
                           help='Run the engine on a GPU (PyTorch CUDA). No: CPU only.')
            form.addHidden(params.GPU_LIST, params.StringParam, default='0',
                           label='GPU ID',
                           help='GPU to use (the engine uses one GPU; the first of the list).')
        if self._hasSeed:
            form.addParam('seed', params.IntParam, default=0, expertLevel=LEVEL_ADVANCED,
                          label='Random seed',
                          help='Seed of every random choice of the engine; same seed and '
                               'input give the same result on the same device.')
        form.addParam('extraParams', params.StringParam, default='',
                      expertLevel=LEVEL_ADVANCED, label='Additional engine arguments',
                      help='Appended verbatim to the engine command, e.g. "--epochs 5". '
                           'See `python -m simcryo %s --help` for every option.'
                           % (self._engineCommand or '<command>'))
        form.addParallelSection(threads=self._defaultThreads, mpi=0)

    def _defineMaskDiameterParam(self, form, use, auto, name='maskDiameterA',
                                 label='Mask diameter (Å)', **kwargs):
        """The one particle/mask size parameter of the plugin: a diameter in Å (as
        scipion-em-relion's maskDiameterA), passed to the engine as --mask-diameter."""
        form.addParam(name, params.IntParam, default=0, validators=[params.GE(0)],
                      label=label,
                      help='Diameter in Å (not px, not a radius) of the circular mask around '
                           'the particle: %s. Use the wizard to see it on your particles.\n'
                           '0 (default): %s.' % (use, auto), **kwargs)

    def _maskDiameterArgs(self, name='maskDiameterA'):
        diameter = getattr(self, name).get() or 0
        return ['--mask-diameter', diameter] if diameter > 0 else []

    def _validateMaskDiameter(self, imgSet, name='maskDiameterA', what='particles'):
        """Errors when the diameter (Å) is wider than the box of `imgSet` (in Å)."""
        diameter = getattr(self, name).get() or 0
        if imgSet is None or diameter <= 0:
            return []
        box, apix = imgSet.getXDim() or 0, imgSet.getSamplingRate() or 0
        if box and apix and diameter > box * apix:
            return ['Mask diameter %d Å is wider than the box of the %s (%d px x %.3f Å/px '
                    '= %.1f Å).' % (diameter, what, box, apix, box * apix)]
        return []

    def _maskUsed(self):
        """(diameter Å, radius px, automatic?) recorded by the engine in run.json, or None."""
        runLog = self._readRunLog()
        diameter = runLog.get('mask_diameter_A')
        if not isinstance(diameter, (int, float)):
            return None
        radius = runLog.get('mask_radius_px')
        auto = not (runLog.get('config') or {}).get('mask_diameter')
        return float(diameter), radius if isinstance(radius, (int, float)) else None, auto

    def _maskText(self):
        """'150 Å diameter (25.0 px radius, estimated from the particles)', None before a
        run."""
        used = self._maskUsed()
        if used is None:
            return None
        diameter, radius, auto = used
        details = (['%.1f px radius' % radius] if radius is not None else []) + \
            [self._maskAutoText if auto else 'as given']
        return '%.0f Å diameter (%s)' % (diameter, ', '.join(details))

    def _maskSummary(self):
        text = self._maskText()
        return ['Mask used: %s.' % text] if text else []

    # ------------------------------------------------------------------ engine
    def _getVolumeFile(self, vol):
        """Path of `vol` as an MRC map the engine can read (converted if needed)."""
        fn = convert.stripFormatSuffix(vol.getFileName())
        if os.path.splitext(fn)[1].lower() in ('.mrc', '.map'):
            return os.path.abspath(fn)
        from pwem.emlib.image import ImageHandler
        out = os.path.abspath(self._getExtraPath('input', 'volume.mrc'))
        ImageHandler().convert(vol, out)
        return out

    def _useGpu(self):
        return self._usesGpu and self.usesGpu() and bool(self.getGpuList())

    def _getComputeArgs(self):
        args = ['--threads', max(1, self.numberOfThreads.get() or 1)]
        if self._hasSeed:
            args += ['--seed', self.seed.get()]
        if self._usesGpu:
            args += ['--device', 'cuda:0' if self._useGpu() else 'cpu']
        return args

    def _getEngineArgs(self):
        """Full argument string of the engine call (subclasses add their own)."""
        raise NotImplementedError

    def _formatArgs(self, args):
        extra = (self.extraParams.get() or '').strip()
        text = ' '.join(shlex.quote(str(a)) for a in args)
        return text + (' ' + extra if extra else '')

    def runEngine(self, argsText, command=None):
        command = command or self._engineCommand
        self.runJob(Plugin.getProgram(command, useGpu=self._useGpu()), argsText,
                    env=Plugin.getEnviron(), numberOfMpi=1)

    def runStep(self, argsText):
        os.makedirs(self._getFileName('output_dir'), exist_ok=True)
        self.runEngine(argsText)

    # ------------------------------------------------------------------ results
    def _readRunLog(self):
        fn = self._getFileName('out_runlog')
        if not os.path.exists(fn):
            return {}
        with open(fn) as f:
            return json.load(f)

    def _hasCheckpoint(self):
        return bool(glob.glob(os.path.join(self._getFileName('output_dir'), '**', '*.pt'),
                              recursive=True))

    def _citations(self):
        return ['Simcryocluster']

    def _methodsIntro(self):
        return 'simcryo engine (scipion-em-simcryo %s)' % cts.ENGINE_VERSION
