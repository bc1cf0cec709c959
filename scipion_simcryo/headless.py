"""Headless Scipion in a throw-away root, for tests and the demo.

This module imports nothing from pyworkflow: ``setupHeadlessScipion`` must run before pyworkflow
is first imported (it reads its configuration once). The root ``conftest.py`` loads this file by
path, so that the plugin package (which imports pwem) is not imported first.
"""
import importlib.metadata
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_ENTRY_GROUP = 'pyworkflow.plugin'
PLUGIN_NAME = 'scipion_simcryo'


def setupHeadlessScipion(root):
    """Point every Scipion path under ``root``, unset DISPLAY, make this checkout importable by
    Scipion's protocol subprocesses and registered as a plugin. Returns the absolute root."""
    root = os.path.abspath(root)
    home = os.path.join(root, 'scipion_home')
    hosts = _writeHostsConf(home)
    env = {
        'SCIPION_HOME': home, 'SCIPION_USER_DATA': os.path.join(root, 'ScipionUserData'),
        'SCIPION_TESTS': os.path.join(root, 'tests_data'), 'SCIPION_HOSTS': hosts,
        'SCIPION_CONFIG': os.path.join(home, 'config', 'scipion.conf'),
        'SCIPION_DOMAIN': 'pwem', 'SCIPION_PYTHON': sys.executable,
        'SCIPION_TEST_NOSYNC': '1', 'SCIPION_NOTIFY': 'False', 'MPLBACKEND': 'Agg'}
    os.environ.update(env)
    os.environ.pop('DISPLAY', None)
    for name in ('SCIPION_USER_DATA', 'SCIPION_TESTS'):
        os.makedirs(env[name], exist_ok=True)
    # RELION 3.1 where .ci/install_relion.sh links it (scipion-em-relion reads it at import);
    # mpirun refuses to run as root without these.
    relionHome = os.path.join(os.environ.get('SIMCRYO_RELION_ROOT') or
                              os.path.expanduser('~/.simcryo-relion'), 'relion-3.1')
    if 'RELION_HOME' not in os.environ and os.path.isdir(relionHome):
        os.environ['RELION_HOME'] = relionHome
    os.environ.setdefault('OMPI_ALLOW_RUN_AS_ROOT', '1')
    os.environ.setdefault('OMPI_ALLOW_RUN_AS_ROOT_CONFIRM', '1')
    # Protocol subprocesses run in the project folder: the checkout must be on their path.
    prependPythonPath(REPO_ROOT)
    registerPluginEntryPoint(root)
    return root


def _writeHostsConf(home):
    config = os.path.join(home, 'config')
    os.makedirs(config, exist_ok=True)
    hosts = os.path.join(config, 'hosts.conf')
    with open(hosts, 'w') as f:
        f.write('[localhost]\nPARALLEL_COMMAND = mpirun -np %_(JOB_NODES)d --map-by node '
                '%_(COMMAND)s\n')
    return hosts


def prependPythonPath(path):
    """Make ``path`` importable here and in the subprocesses Scipion starts."""
    if path not in sys.path:
        sys.path.insert(0, path)
    parts = [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]
    if path not in parts:
        os.environ['PYTHONPATH'] = os.pathsep.join([path] + parts)


def registerPluginEntryPoint(root):
    """Scipion finds plugins only through the ``pyworkflow.plugin`` entry point; when this
    checkout is not pip-installed, publish a minimal dist-info under ``root``."""
    eps = importlib.metadata.entry_points(group=PLUGIN_ENTRY_GROUP)
    if any(ep.name == PLUGIN_NAME for ep in eps):
        return
    site = os.path.join(root, 'site')
    info = os.path.join(site, 'scipion_em_simcryo_local-0.0.dist-info')
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, 'METADATA'), 'w') as f:
        f.write('Metadata-Version: 2.1\nName: scipion-em-simcryo-local\nVersion: 0.0\n')
    with open(os.path.join(info, 'entry_points.txt'), 'w') as f:
        f.write('[%s]\n%s = %s\n' % (PLUGIN_ENTRY_GROUP, PLUGIN_NAME, PLUGIN_NAME))
    prependPythonPath(site)
