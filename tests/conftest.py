import os
import sys

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
FAULT_DIR = os.path.join(TESTS_DIR, "fault")


def pytest_collection_modifyitems(config, items):
    """Every test under tests/fault/ carries the ``fault`` marker (``-m "not fault"`` leaves them out)."""
    for item in items:
        if str(item.path).startswith(FAULT_DIR + os.sep):
            item.add_marker(pytest.mark.fault)


@pytest.fixture
def subprocess_env():
    """Environment for child Python processes that import the tests' helper modules."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([TESTS_DIR, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture
def python():
    return sys.executable


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, spinning OpenMP threads slow tiny models 5-10x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
