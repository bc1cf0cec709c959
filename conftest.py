"""Headless Scipion for plain ``pytest``.

Every Scipion path is pointed at a temporary root *before* pyworkflow is imported, so protocol
tests run with nothing but ``pip install``: no ~/ScipionUserData, no display, no test-data
download. Engine tests (``tests/engine``) never import pyworkflow; for them this file only sets
environment variables and restores the working directory after each test.

``SIMCRYO_TEST_ROOT=/some/dir`` keeps the Scipion root (projects, logs) for inspection instead of a
throw-away temporary folder.
"""
import importlib.metadata
import os
import sys
import tempfile

import pytest

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
PLUGIN_ENTRY_GROUP = "pyworkflow.plugin"
PLUGIN_NAME = "scipion_simcryo"


def _write_hosts_conf(scipion_home):
    config_dir = os.path.join(scipion_home, "config")
    os.makedirs(config_dir, exist_ok=True)
    with open(os.path.join(config_dir, "hosts.conf"), "w") as f:
        f.write("[localhost]\n"
                "PARALLEL_COMMAND = mpirun -np %_(JOB_NODES)d --map-by node %_(COMMAND)s\n")


def _prepend_pythonpath(path):
    """Make ``path`` importable here and in the protocol subprocesses Scipion starts."""
    if path not in sys.path:
        sys.path.insert(0, path)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if path not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([path] + parts)


def _plugin_registered():
    eps = importlib.metadata.entry_points(group=PLUGIN_ENTRY_GROUP)
    return any(ep.name == PLUGIN_NAME for ep in eps)


def _register_plugin_entry_point(root):
    """Scipion discovers plugins only through the ``pyworkflow.plugin`` entry point. When the
    checkout is not pip-installed (plain clone), publish a minimal dist-info on the path so the
    test processes and Scipion's protocol subprocesses both find the plugin."""
    if _plugin_registered():
        return
    site = os.path.join(root, "site")
    info = os.path.join(site, "scipion_em_simcryo_testonly-0.0.dist-info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: scipion-em-simcryo-testonly\nVersion: 0.0\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write("[%s]\n%s = %s\n" % (PLUGIN_ENTRY_GROUP, PLUGIN_NAME, PLUGIN_NAME))
    _prepend_pythonpath(site)


def _setup_headless_scipion():
    root = os.environ.get("SIMCRYO_TEST_ROOT") or tempfile.mkdtemp(prefix="simcryo-scipion-")
    root = os.path.abspath(root)
    home = os.path.join(root, "scipion_home")
    _write_hosts_conf(home)
    env = {
        "SCIPION_HOME": home,
        "SCIPION_USER_DATA": os.path.join(root, "ScipionUserData"),
        "SCIPION_TESTS": os.path.join(root, "tests_data"),
        "SCIPION_HOSTS": os.path.join(home, "config", "hosts.conf"),
        "SCIPION_CONFIG": os.path.join(home, "config", "scipion.conf"),
        "SCIPION_DOMAIN": "pwem",
        "SCIPION_PYTHON": sys.executable,
        "SCIPION_TEST_NOSYNC": "1",
        "SCIPION_NOTIFY": "False",
        "MPLBACKEND": "Agg",
    }
    os.environ.update(env)
    os.environ.pop("DISPLAY", None)
    for name in ("SCIPION_USER_DATA", "SCIPION_TESTS"):
        os.makedirs(env[name], exist_ok=True)
    # The checkout itself must be importable by Scipion's protocol subprocesses (they run with
    # the project folder as working directory) and by the engine subprocess.
    _prepend_pythonpath(REPO_ROOT)
    _register_plugin_entry_point(root)
    return root


SCIPION_TEST_ROOT = _setup_headless_scipion()


@pytest.fixture(autouse=True, scope="module")
def _restore_cwd():
    """Scipion's ``setupTestProject`` chdirs into the project (relative paths of its items
    resolve from there for the whole test class); restore the folder after each module so
    other tests are unaffected."""
    cwd = os.getcwd()
    yield
    os.chdir(cwd)
