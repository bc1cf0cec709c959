"""Shared plumbing of the simcryo protocols: file names, compute section, engine launch."""
import glob
import json
import os
import hashlib
import shlex
import shutil

import pyworkflow.protocol.params as params
from pyworkflow.constants import BETA
from pyworkflow.protocol.constants import LEVEL_ADVANCED
from pwem.protocols import EMProtocol

from .. import Plugin
from .. import constants as cts
from .. import convert
from ..engine_config import engineChoices, engineDefault, engineHelp


class ProtSimcryoBase(EMProtocol):
    """Base of the simcryo protocols (not shown in the menu)."""
    # Tested on simulated data and small real sets only, not yet in facility production.
    _devStatus = BETA
    _engineCommand = None       # simcryo sub-command run by runStep
    _usesGpu = True             # False: the command is CPU-only (no GPU section)
    _defaultThreads = 2
    _hasSeed = True             # False: the command takes no --seed (deterministic)
    _maskAutoText = 'estimated from the particles'  # what --mask-diameter 0 means
    _resumable = False          # the engine command takes --resume (classify, denoise train)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # pyworkflow 3.11's Step.__init__ drops objLabel, so Project.newProtocol(objLabel=...)
        # (the demo's, a script's) would fall back to the default run name.
        if kwargs.get('objLabel'):
            self.setObjLabel(kwargs['objLabel'])

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
        # Step arguments decide what Continue re-runs (as scipion-em-relion and -xmipp do):
        # the input ids re-convert a changed input; the engine arguments re-run the engine
        # when a parameter changed, an unchanged step is reused.
        # The output step takes both too: Continue re-runs only the steps whose arguments
        # changed, and the outputs must follow a re-run engine.
        inputIds, engineArgs = self._inputIds(), self._getEngineArgs()
        self._insertFunctionStep(self.convertInputStep, inputIds)
        self._insertFunctionStep(self.runStep, engineArgs)
        self._insertFunctionStep(self.outputStep, inputIds, engineArgs)

    def outputStep(self, inputIds, engineArgs):
        self.createOutputStep()

    def _inputIds(self):
        """'pointer=id' of every input pointer of the form (changes when an input does)."""
        ids = []
        for name, param in self._definition.iterAllParams():
            if isinstance(param, params.PointerParam):
                obj = getattr(self, name).get()
                if obj is not None:
                    ids.append('%s=%s' % (name, obj.strId()))
        return ' '.join(ids)

    # ------------------------------------------------------------------ engine parameters
    def _addEngineParam(self, form, name, paramClass, field, label, help='', **kwargs):
        """A form parameter that is the engine's ``--field`` of this protocol's command: its
        default and help text come from the engine's config dataclass (so the form shows
        what runs), ``help`` adds what a Scipion user needs on top."""
        command = self._engineCommand.split()[0]
        text = engineHelp(command, field)
        text = (text + ('.' if text and not text.endswith('.') else '') +
                ('\n' + help if help else '') +
                '\nEngine flag: --%s.' % field.replace('_', '-'))
        form.addParam(name, paramClass, default=engineDefault(command, field), label=label,
                      help=text.strip(), **kwargs)
        self._engineParamFields = getattr(self, '_engineParamFields', [])
        self._engineParamFields.append((name, field))

    def _addEngineChoiceParam(self, form, name, field, label, help='', **kwargs):
        """An EnumParam for an engine flag with fixed choices: the choices and the default
        come from the engine's config dataclass; the engine gets the chosen name."""
        command = self._engineCommand.split()[0]
        choices = list(engineChoices(command, field))
        self._engineChoices = getattr(self, '_engineChoices', {})
        self._engineChoices[name] = choices
        self._addEngineParam(form, name, params.EnumParam, field, label, help=help,
                             choices=choices, display=params.EnumParam.DISPLAY_HLIST,
                             **kwargs)
        form.getParam(name).default.set(choices.index(engineDefault(command, field)))

    def _engineParamArgs(self, skip=()):
        """``--flag value`` (``--flag``/``--no-flag`` for booleans) of every engine
        parameter of the form, always explicit, so run.json and the form agree."""
        args = []
        for name, field in getattr(self, '_engineParamFields', []):
            if name in skip:
                continue
            flag = '--' + field.replace('_', '-')
            value = getattr(self, name).get()
            if name in getattr(self, '_engineChoices', {}):
                value = self._engineChoices[name][value]
            if isinstance(value, bool):
                args.append(flag if value else '--no-' + flag[2:])
            else:
                args += [flag, value]
        return args

    # ------------------------------------------------------------------ form helpers
    def _defineComputeParams(self, form):
        form.addSection(label='Compute')
        if self._usesGpu:
            # Default Yes as in scipion-em-xmipp and -relion: the form is filled on the GUI
            # host, which says nothing about the node that runs the job.
            form.addHidden(params.USE_GPU, params.BooleanParam, default=True,
                           label='Use GPU?',
                           help='Run the engine on a GPU (PyTorch CUDA build needed on the '
                                'machine that runs the job). No: CPU only (slower; fine '
                                'for a few thousand small particles).')
            form.addHidden(params.GPU_LIST, params.StringParam, default='0',
                           label='GPU IDs',
                           help='GPUs to use, e.g. "0" or "0 1 2 3". Protocols that use '
                                'them all, one engine process per GPU (torchrun), the '
                                'particles shared among them: %s. The other protocols use '
                                'the first GPU only. Through a queue the job asks for as '
                                'many GPUs as the protocol uses and runs on the GPUs the '
                                'scheduler gives it.' % _distributedLabels())
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
        form.addParallelSection(threads=self._defaultThreads, mpi=0,
                                binThreadsHelp=self._threadsHelp())

    def _threadsHelp(self):
        text = ('CPU threads of the engine (--threads), also the cores a queue job asks '
                'for.')
        if self._isDistributed():
            text += (' With several GPUs they are shared among the engine processes: each '
                     'of the N processes gets threads / N (at least 1).')
        return text

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

    def _validateAcquisition(self, imgSet):
        """Error when particles with CTF lack a voltage, Cs or amplitude contrast (the engine's
        CTF needs them; no default fits every microscope)."""
        if imgSet is None or not imgSet.hasCTF():
            return []
        missing = convert.missingAcquisition(imgSet.getAcquisition())
        if missing:
            return ['The particles have CTF but their acquisition has no %s: re-import them '
                    'with it.' % ', '.join(missing)]
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
    def _getVolumeFile(self, vol, name='volume.mrc'):
        """Path of `vol` as an MRC map the engine can read: its own file, or a copy converted
        to extra/input/`name` (one name per volume a protocol passes)."""
        fn = convert.stripFormatSuffix(vol.getFileName())
        if os.path.splitext(fn)[1].lower() in ('.mrc', '.map'):
            return os.path.abspath(fn)
        from pwem.emlib.image import ImageHandler
        out = os.path.abspath(self._getExtraPath('input', name))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        ImageHandler().convert(vol, out)
        return out

    def _useGpu(self):
        return self._usesGpu and self.usesGpu() and bool(self.getGpuList())

    @classmethod
    def _isDistributed(cls, command=None):
        """True when the engine shards `command` over torchrun's processes (one per GPU)."""
        command = command or cls._engineCommand or ''
        return command.split()[0] in cts.DISTRIBUTED_COMMANDS if command else False

    def _engineGpus(self, command=None):
        """GPU ids the engine command uses: the whole list for a distributed command, the
        first GPU for the others, none on CPU."""
        if not self._useGpu():
            return []
        gpus = self.getGpuList()
        return gpus if self._isDistributed(command) else gpus[:1]

    def _engineProcesses(self, command=None):
        """Engine processes torchrun starts: one per GPU of a distributed command, else 1."""
        return max(1, len(self._engineGpus(command)))

    def _getComputeArgs(self):
        # the protocol's threads are the job's cores: shared among the engine processes
        threads = max(1, self.numberOfThreads.get() or 1) // self._engineProcesses()
        args = ['--threads', max(1, threads)]
        if self._hasSeed:
            args += ['--seed', self.seed.get()]
        if self._usesGpu:
            # under torchrun each process takes cuda:LOCAL_RANK (simcryo.distributed)
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
        processes = self._engineProcesses(command)
        if processes > 1:
            self.info('%s runs as %d processes (torchrun), one per GPU of the list %s.'
                      % (command, processes, ' '.join(map(str, self._engineGpus(command)))))
        # Under a queue the scheduler sets CUDA_VISIBLE_DEVICES to the job's GPUs (Scipion's
        # renumbered list 0..n-1 would name other GPUs on a node without device cgroups).
        program = Plugin.getProgram(command, useGpu=self._useGpu(), processes=processes,
                                    setDevices=not self.useQueue())
        self.runJob(program, argsText, env=Plugin.getEnviron(), numberOfMpi=1)

    def convertInputStep(self, inputIds):
        """Write the engine's input (``_convertInput``); when it differs from the one a
        previous run of this protocol used, that run's engine output is removed so that
        Continue starts the engine afresh instead of resuming on other particles."""
        os.makedirs(self._getExtraPath('input'), exist_ok=True)
        self._convertInput()
        digest = ' '.join(_fileDigest(fn) if os.path.exists(fn) else ''
                          for fn in self._convertedFiles())
        record = self._getExtraPath('input', 'input.sha1')
        previous = open(record).read().strip() if os.path.exists(record) else None
        if previous is not None and previous != digest:
            for folder in self._engineOutputDirs():
                if os.path.isdir(folder):
                    self.info('Input changed (%s): removing the previous engine output %s.'
                              % (inputIds, folder))
                    shutil.rmtree(folder)
        with open(record, 'w') as f:
            f.write(digest)

    def _convertInput(self):
        """Write the engine's input files (subclasses)."""

    def _convertedFiles(self):
        """The files ``_convertInput`` writes whose change makes the engine start afresh."""
        return [self._getFileName('input_star')]

    def _engineOutputDirs(self):
        return [self._getFileName('output_dir')]

    def _resumeArgs(self, folder=None):
        """' --resume' when the engine left a checkpoint in ``folder``: on Continue it reuses
        the stages whose parameters did not change and recomputes from the first that did."""
        folder = folder or self._getFileName('output_dir')
        if self._resumable and self._hasCheckpoint(folder):
            self.info('Checkpoint found in %s: the engine resumes, reusing the stages whose '
                      'parameters did not change.' % folder)
            return ' --resume'
        return ''

    def runStep(self, argsText):
        os.makedirs(self._getFileName('output_dir'), exist_ok=True)
        self.runEngine(argsText + self._resumeArgs())

    # ------------------------------------------------------------------ results
    def _readRunLog(self):
        fn = self._getFileName('out_runlog')
        if not os.path.exists(fn):
            return {}
        with open(fn) as f:
            return json.load(f)

    def _hasCheckpoint(self, folder=None):
        folder = folder or self._getFileName('output_dir')
        return bool(glob.glob(os.path.join(folder, '**', '*.pt'), recursive=True))

    def getObjectTag(self, objName):
        """Scipion's link to an object, its label without underscores: the summary and
        methods panels render ``_..._`` as italics, and every default run name starts with
        the package name ``scipion_simcryo``."""
        tag = EMProtocol.getObjectTag(self, objName)
        if '][' not in tag:
            return tag
        link, label = tag[:-2].split('][', 1)
        return '%s][%s]]' % (link, label.replace('_', '-'))

    # ------------------------------------------------------------------ GPUs, processes, queue
    # Every simcryo protocol, whatever its own _validate/_warnings/_summary/_methods: these
    # wrap Scipion's public entry points.
    def validate(self):
        return super().validate() + self._validateGpus()

    def warnings(self):
        return super().warnings() + self._gpuWarnings()

    def summary(self):
        lines = super().summary()
        placement = self._enginePlacement()
        return lines + (['Engine: %s.' % placement] if placement else [])

    def getParsedMethods(self):
        methods = super().getParsedMethods()
        placement = self._enginePlacement()
        if methods and placement and 'torchrun' in placement:
            methods.append('The engine ran as %s, the particles shared among them.'
                           % placement.replace('processes', 'PyTorch processes'))
        return methods

    def getSubmitDict(self):
        """Scipion's queue variables, GPU_COUNT being the GPUs the engine uses (0 on CPU, 1
        for a one-process command whatever the list), so that a template's
        ``--gres=gpu:%(GPU_COUNT)s`` asks for what runs; a GPU_COUNT queue parameter (the
        queue dialog) wins."""
        d = super().getSubmitDict()
        if 'GPU_COUNT' not in self.getQueueParams()[1]:
            d['GPU_COUNT'] = len(self._engineGpus())
        return d

    def _validateGpus(self):
        gpus = self._engineGpus()
        if len(set(gpus)) < len(gpus):
            return ['GPU IDs: %s lists a GPU twice; the engine runs one process per GPU, list '
                    'each GPU once.' % ' '.join(map(str, gpus))]
        return []

    def _gpuWarnings(self):
        warnings = []
        gpus = self._useGpu() and self.getGpuList() or []
        if len(gpus) > 1 and not self._isDistributed():
            warnings.append('GPU IDs: this protocol uses one GPU, the first of the list (%s); '
                            'several GPUs are used by: %s.' % (gpus[0], _distributedLabels()))
        asked = self.getQueueParams()[1].get('GPU_COUNT') if self.useQueue() else None
        if asked is not None and str(asked).isdigit() and \
                int(asked) < len(self._engineGpus()):
            warnings.append('The queue parameter GPU_COUNT (%s) is below the %d engine '
                            'processes (one per GPU of the list): the job would not have a '
                            'GPU for each.' % (asked, len(self._engineGpus())))
        return warnings

    def _enginePlacement(self):
        """'4 processes (torchrun), one GPU each', 'one process on the CPU', ... from the
        run.json of a command that records its world size (else None)."""
        runLog = self._readRunLog()
        world = runLog.get('world_size')
        if not isinstance(world, int):
            return None
        gpu = str((runLog.get('config') or {}).get('device', '')).startswith('cuda')
        if world > 1:
            return '%d processes (torchrun), %s' % (world, 'one GPU each' if gpu
                                                     else 'on the CPU')
        return 'one process on %s' % ('a GPU' if gpu else 'the CPU')

    def _citations(self):
        """Only the methods a run really used (subclasses); the package reference is
        SimCryoCluster."""
        return []

    def _methodsIntro(self):
        return 'simcryo engine (scipion-em-simcryo %s)' % cts.ENGINE_VERSION


def _distributedLabels():
    """'align and average classes': the protocols whose engine command runs one process
    per GPU (every protocol module is imported with the package)."""
    labels, todo = [], list(ProtSimcryoBase.__subclasses__())
    while todo:
        cls = todo.pop(0)
        todo += cls.__subclasses__()
        if not cls.isBase() and cls._isDistributed():
            labels.append(cls._label)
    return ', '.join(sorted(set(labels))) or 'none'


def _fileDigest(path):
    h = hashlib.sha1()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()
