"""Plugin registration, engine launch command, environment, installer, menu, references,
and the one-way dependency engine -> plugin."""
import ast
import configparser
import json
import os
import sys
from unittest import mock


from scipion_simcryo.tests.common import SimcryoUnitTest

import scipion_simcryo
from scipion_simcryo import Plugin, constants as cts

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTOCOLS = ['ProtSimcryoSimulate', 'ProtSimcryoEvaluate', 'ProtSimcryoDenoise',
             'ProtSimcryoClassify2D', 'ProtSimcryoAlignAverage', 'ProtSimcryoSelectClasses']


class _FakeEnv:
    def __init__(self):
        self.packages = []

    def addPackage(self, name, **kwargs):
        self.packages.append((name, kwargs))


class TestPlugin(SimcryoUnitTest):

    def test_plugin_is_discovered_by_scipion(self):
        from pwem import Domain
        assert 'scipion_simcryo' in Domain.getPlugins()
        protocols = Domain.getProtocols()
        for name in PROTOCOLS:
            assert name in protocols
            cls = protocols[name]
            assert cls.__doc__ and len(cls.__doc__.strip()) > 80   # help text
            assert not cls.isBase()
        assert protocols['ProtSimcryoBase'].isBase()
        viewers = Domain.getViewers()
        assert {'SimcryoClassesViewer', 'SimcryoEvaluateViewer', 'SimcryoSimulateViewer',
                'SimcryoDenoiseViewer', 'SimcryoSelectViewer'} <= set(viewers)
        from pyworkflow.constants import BETA
        for name in PROTOCOLS:   # not production-proven yet
            assert protocols[name]._devStatus == BETA, name
        assert 'SimcryoMaskDiameterWizard' in Domain.getWizards()

    def test_every_protocol_once_in_the_menu(self):
        cp = configparser.ConfigParser()
        cp.optionxform = str
        cp.read(os.path.join(os.path.dirname(scipion_simcryo.__file__), 'protocols.conf'))
        tree = json.loads(cp.get('PROTOCOLS', 'Protocols SPA'))

        def find(nodes, path=()):
            for node in nodes:
                here = path + (node.get('text'),)
                if node.get('tag') == 'protocol':
                    yield node['value'], here
                yield from find(node.get('children', []), here)

        places = {}
        for value, path in find(tree):
            places.setdefault(value, []).append(path)
        for name in PROTOCOLS:
            assert len(places[name]) == 1, (name, places[name])
        assert places['ProtSimcryoClassify2D'][0][:2] == ('2D', 'Classify')
        assert places['ProtSimcryoEvaluate'][0][:2] == ('2D', 'Classify')
        assert places['ProtSimcryoSelectClasses'][0][:2] == ('2D', 'Classify')
        # the selection right after the classifier whose classes it ranks
        classify = [value for value, path in find(tree) if path[:2] == ('2D', 'Classify')]
        assert classify.index('ProtSimcryoSelectClasses') == \
            classify.index('ProtSimcryoClassify2D') + 1
        assert places['ProtSimcryoAlignAverage'][0][:2] == ('2D', 'Align')
        assert places['ProtSimcryoDenoise'][0][:2] == ('Particles', 'Filter')
        assert places['ProtSimcryoSimulate'][0][0] == 'Imports'

    def test_references_parse(self):
        from pyworkflow.utils import parseBibTex
        from scipion_simcryo import bibtex
        entries = parseBibTex(bibtex.__doc__)
        from scipion_simcryo.protocols import ProtSimcryoClassify2D
        for key in scipion_simcryo._references + ProtSimcryoClassify2D()._citations():
            assert key in entries
            assert entries[key].get('title')
        assert 'Scheres2012Relion' not in entries   # no protocol runs RELION

    def test_program_uses_the_engine_interpreter(self):
        assert Plugin.getVar(cts.SIMCRYO_PYTHON)
        program = Plugin.getProgram('classify')
        assert program.endswith('-m simcryo classify')
        assert program.split()[0] == Plugin.getEnginePython()
        gpu = Plugin.getProgram('classify', useGpu=True)
        assert gpu.startswith('CUDA_VISIBLE_DEVICES=%(GPU)s ')

    def test_environ_keeps_pythonpath_only_for_the_same_interpreter(self):
        with mock.patch.dict(os.environ, {'PYTHONPATH': '/scipion/site'}):
            with mock.patch.dict(Plugin._vars, {cts.SIMCRYO_PYTHON: sys.executable,
                                                cts.SIMCRYO_ENV_ACTIVATION: ''}):
                assert Plugin.getEnviron().get('PYTHONPATH') == '/scipion/site'
            with mock.patch.dict(Plugin._vars, {cts.SIMCRYO_PYTHON: '/opt/simcryo/bin/python',
                                                cts.SIMCRYO_ENV_ACTIVATION: ''}):
                env = Plugin.getEnviron()
                assert 'PYTHONPATH' not in env
                assert Plugin.getProgram('align').startswith('/opt/simcryo/bin/python -m simcryo')
            with mock.patch.dict(Plugin._vars, {cts.SIMCRYO_PYTHON: sys.executable,
                                                cts.SIMCRYO_ENV_ACTIVATION:
                                                    'source /opt/env/bin/activate'}):
                assert 'PYTHONPATH' not in Plugin.getEnviron()
                assert Plugin.getProgram('align') == \
                    'source /opt/env/bin/activate && python -m simcryo align'

    def test_validate_installation_reports_a_missing_interpreter(self):
        assert Plugin.validateInstallation() == []
        with mock.patch.dict(Plugin._vars, {cts.SIMCRYO_PYTHON: '/no/such/python',
                                            cts.SIMCRYO_ENV_ACTIVATION: ''}):
            errors = Plugin.validateInstallation()
        assert len(errors) == 1 and '/no/such/python' in errors[0]

    def test_define_binaries_picks_torch_build_from_cuda(self):
        for cuda, index in [('12.6', 'cu126'), ('12.9', 'cu128'), ('11.8', 'cu118'), ('', 'cpu'),
                            ('10.2', 'cpu')]:
            env = _FakeEnv()
            with mock.patch.dict(Plugin._vars, {cts.SIMCRYO_CUDA_VERSION: cuda,
                                                'CUDA_LIB': '/nonexistent/cuda'}):
                Plugin.defineBinaries(env)
            assert len(env.packages) == 1
            name, kw = env.packages[0]
            assert name == 'simcryo' and kw['version'] == cts.ENGINE_VERSION
            (command, target), = kw['commands']
            assert target == cts.ENGINE_INSTALLED_FLAG
            assert command.endswith('touch %s' % cts.ENGINE_INSTALLED_FLAG)
            assert 'torch==%s' % cts.TORCH_VERSION in command
            assert command.count('download.pytorch.org/whl/%s' % index) == 1, (cuda, index)
            assert '-m venv env' in command and '--no-deps' in command
            # The engine environment gets no Scipion package.
            assert 'scipion-em ' not in command and 'pyworkflow' not in command

    def test_engine_never_imports_the_plugin_or_scipion(self):
        """simcryo/ is usable without Scipion: no import of pyworkflow, pwem or scipion_simcryo."""
        forbidden = {'pyworkflow', 'pwem', 'scipion_simcryo', 'scipion'}
        engine = os.path.join(REPO, 'simcryo')
        offenders = []
        for root, _, files in os.walk(engine):
            for fn in files:
                if not fn.endswith('.py'):
                    continue
                path = os.path.join(root, fn)
                with open(path) as f:
                    tree = ast.parse(f.read(), path)
                for node in ast.walk(tree):
                    names = []
                    if isinstance(node, ast.Import):
                        names = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                        names = [node.module]
                    offenders += ['%s: %s' % (os.path.relpath(path, REPO), n) for n in names
                                  if n.split('.')[0] in forbidden]
        assert offenders == []

    def test_engine_runs_without_scipion_on_the_path(self):
        tmp_path = self.tmpPath()
        """The engine CLI starts in a process that cannot import pyworkflow/pwem."""
        import subprocess
        blocker = tmp_path / 'block'
        blocker.mkdir()
        for name in ('pyworkflow', 'pwem', 'scipion_simcryo'):
            (blocker / name).mkdir()
            (blocker / name / '__init__.py').write_text('raise ImportError("blocked %s")\n' % name)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker), REPO]))
        out = subprocess.run([sys.executable, '-c',
                              'import sys, simcryo.cli, simcryo.io.star; '
                              'sys.argv=["simcryo", "--version"]; simcryo.cli.main()'],
                             env=env, capture_output=True, text=True, cwd=str(tmp_path))
        assert 'simcryo' in out.stdout + out.stderr
        assert 'blocked' not in out.stderr
