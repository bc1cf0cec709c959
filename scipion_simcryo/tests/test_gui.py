"""The real Scipion GUI on a virtual display (Xvfb): the project window opens on a project with
one run of every simcryo protocol, and every protocol form and every viewer item opens without
an exception, an error dialog or a message instead of the result. Screenshots are saved under
the folder the test prints (SIMCRYO_GUI_SHOTS, default /tmp/simcryo-gui-screenshots).

Skipped with a message when Xvfb is not installed (.ci/run installs it)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

from pyworkflow.tests import BaseTest

from scipion_simcryo.headless import REPO_ROOT
from scipion_simcryo.tests.common import engineHas

PROJECT = 'simcryo_gui'
MISSING = [p for p in ('Xvfb', 'import') if shutil.which(p) is None]


def _freeDisplay():
    for n in range(91, 140):
        if not os.path.exists('/tmp/.X11-unix/X%d' % n) and \
                not os.path.exists('/tmp/.X%d-lock' % n):
            return ':%d' % n
    raise RuntimeError('no free X display number')


def _headlessEnv(root):
    """The environment setupHeadlessScipion(root) makes, built in a fresh process (pyworkflow
    reads its configuration once, at import)."""
    code = ('import json, os, sys; sys.path.insert(0, %r); '
            'from scipion_simcryo.headless import setupHeadlessScipion; '
            'setupHeadlessScipion(%r); print(json.dumps(dict(os.environ)))'
            % (REPO_ROOT, root))
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True, env={k: v for k, v in os.environ.items()
                                          if not k.startswith('SCIPION_')})
    return json.loads(out.stdout.strip().splitlines()[-1])


@unittest.skipIf(MISSING, 'GUI test needs %s (apt-get install xvfb imagemagick; .ci/run does)'
                 % ' and '.join(MISSING))
@unittest.skipIf(not all(engineHas(c) for c in ('simulate', 'classify', 'align', 'evaluate',
                                               'denoise', 'select')),
                 'GUI test needs every engine command')
class TestGui(BaseTest):
    """Forms and viewers of every simcryo protocol in the real Tk GUI."""

    @classmethod
    def setUpClass(cls):
        cls.shots = os.environ.get('SIMCRYO_GUI_SHOTS') or os.path.join(
            tempfile.gettempdir(), 'simcryo-gui-screenshots')
        shutil.rmtree(cls.shots, ignore_errors=True)
        os.makedirs(cls.shots)
        print('\nGUI test screenshots: %s' % cls.shots, flush=True)
        cls.root = tempfile.mkdtemp(prefix='simcryo-gui-')
        cls.display = _freeDisplay()
        cls.xvfb = subprocess.Popen(['Xvfb', cls.display, '-screen', '0', '1600x1000x24',
                                     '-nolisten', 'tcp'], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        time.sleep(1.5)
        env = _headlessEnv(cls.root)
        env.update(DISPLAY=cls.display, MPLBACKEND='TkAgg', OMP_NUM_THREADS='1',
                   QT_QPA_PLATFORM='xcb')
        cls.env = env
        build = cls.driver('build', PROJECT, timeout=600)
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]

    @classmethod
    def tearDownClass(cls):
        cls.xvfb.terminate()
        cls.xvfb.wait(10)
        shutil.rmtree(cls.root, ignore_errors=True)

    @classmethod
    def driver(cls, *args, timeout=300):
        return subprocess.run([sys.executable, '-m', 'scipion_simcryo.tests.gui_driver'] +
                              list(args), env=cls.env, capture_output=True, text=True,
                              timeout=timeout, cwd=REPO_ROOT)

    def screenshot(self, name):
        fn = os.path.join(self.shots, name)
        subprocess.run(['import', '-display', self.display, '-window', 'root', fn],
                       check=False)
        return fn

    def test_project_window_opens(self):
        log = os.path.join(self.shots, 'project_window.log')
        with open(log, 'w') as out:
            proc = subprocess.Popen([sys.executable, '-O', '-m', 'pyworkflow.apps.pw_project',
                                     PROJECT], env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=self.root)
            time.sleep(12)
            alive = proc.poll() is None
            fn = self.screenshot('00_project_window.png')
            proc.terminate()
            proc.wait(20)
        text = open(log).read()
        self.assertTrue(alive, 'the project window exited: %s' % text[-3000:])
        self.assertNotIn('Traceback', text)
        self.assertTrue(os.path.getsize(fn) > 10000, 'empty screenshot')

    def test_every_form_and_viewer_item_opens(self):
        out = self.driver('drive', PROJECT, self.shots)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith('RESULT ')]
        self.assertTrue(lines, out.stdout[-3000:] + out.stderr[-3000:])
        result = json.loads(lines[-1][len('RESULT '):])
        self.assertEqual(result['errors'], [], '\n'.join(result['errors']))
        self.assertEqual(result['messages'], [])
        opened = result['opened']
        # 6 protocol runs + 1 more evaluation + a junk simulation, its selection and its
        # evaluation; every viewer item of each
        self.assertEqual(len([o for o in opened if o.startswith('form ')]), 10)
        for run in ('select', 'simulate junk', 'select junk', 'evaluate junk'):
            self.assertIn('form ' + run, opened)
        for item in ('Class gallery', 'Classes in the Scipion viewer', 'Confusion matrix',
                     'FRC curves', 'True projection of each view class', 'Training curves',
                     'Every class ranked by score', 'Class scores against the threshold',
                     'Score and features of every class', 'Selected classes in the Scipion',
                     'A few particles of each kind', 'Junk cleaning: oracle and given',
                     'Junk share, selection and fidelity'):
            self.assertTrue(any(item in o for o in opened), (item, opened))
        self.assertGreater(len(result['screenshots']), len(opened) - 1)
        self.assertEqual(out.returncode, 0, out.stderr[-3000:])
