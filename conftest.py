"""Headless Scipion for plain ``pytest``.

Every Scipion path is pointed at a temporary root *before* pyworkflow is imported, so protocol
tests run with nothing but ``pip install``: no ~/ScipionUserData, no display, no test-data
download. Engine tests (``tests/engine``) never import pyworkflow; for them this file only sets
environment variables and restores the working directory after each test.

``SIMCRYO_TEST_ROOT=/some/dir`` keeps the Scipion root (projects, logs) for inspection instead of a
throw-away temporary folder.
"""
import importlib.util
import os
import tempfile

import pytest

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))


def _load_headless():
    """scipion_simcryo/headless.py by path: importing the package would import pwem first."""
    path = os.path.join(REPO_ROOT, "scipion_simcryo", "headless.py")
    spec = importlib.util.spec_from_file_location("_simcryo_headless", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCIPION_TEST_ROOT = _load_headless().setupHeadlessScipion(
    os.environ.get("SIMCRYO_TEST_ROOT") or tempfile.mkdtemp(prefix="simcryo-scipion-"))


@pytest.fixture(autouse=True, scope="module")
def _restore_cwd():
    """Scipion's ``setupTestProject`` chdirs into the project (relative paths of its items
    resolve from there for the whole test class); restore the folder after each module so
    other tests are unaffected."""
    cwd = os.getcwd()
    yield
    os.chdir(cwd)
