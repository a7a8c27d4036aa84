import numpy as np
import pytest

import lowbit


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def available_kernels(family=None):
    """Registry kernels this CPU can run (optionally one family)."""
    return [k for k in lowbit.kernels() if k["available"] and (family is None or k["family"] == family)]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = lowbit.get_num_threads()
    yield
    lowbit.set_num_threads(n)
