import os

import numpy as np
import pytest

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..",
                                           "shared", "data"))


def shared_file(name):
    """Path of a reference file in ../shared/data, or skip the test with a clear message."""
    path = os.path.join(SHARED_DATA, name)
    if not os.path.exists(path):
        pytest.skip(f"reference file {name} not found in {SHARED_DATA}")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)
