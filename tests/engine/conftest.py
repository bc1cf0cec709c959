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


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: one torch thread is faster, and far faster on a loaded machine. Modules
    use it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
