import os
import tempfile

# Dispatch tests check the fixed family order; measured choice (lowbit.autotune)
# has its own tests (test_autotune.py), which turn it on explicitly. No test
# writes to the user's cache directory.
os.environ.setdefault("LOWBIT_AUTOTUNE", "0")
os.environ.setdefault("LOWBIT_CACHE_DIR", tempfile.mkdtemp(prefix="lowbit-test-cache-"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import lowbit  # noqa: E402
from lowbit import _dispatch


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def available_kernels(family=None):
    """Registry kernels this CPU can run at or below the tier cap in force
    (LOWBIT_ISA, e.g. scripts/test-sanitize.sh's per-tier runs), optionally of
    one family. Tests force each of them with lowbit.use(kernel=...)."""
    cap = _dispatch.tier_rank(_dispatch.tier_cap())
    return [k for k in lowbit.kernels() if k["available"] and k["tier_rank"] <= cap
            and (family is None or k["family"] == family)]


def assert_best_of_its_family(kernel_name, cap):
    """Dispatch under a tier cap: the kernel that ran is at or below the cap,
    and no available kernel of its family (and table kind) has a higher tier
    at or below the cap. The family itself comes from the measured preference
    order (lowbit.families.PREFERENCE), so it need not be the cap's own tier:
    grouplut's AVX2 kernel outruns grouplut6's AVX-512 one."""
    ks = {k["name"]: k for k in lowbit.kernels()}
    ran, cap_rank = ks[kernel_name], _dispatch.tier_rank(cap)
    assert ran["tier_rank"] <= cap_rank, (kernel_name, cap)
    best = max(k["tier_rank"] for k in ks.values() if k["available"] and k["family"] == ran["family"]
               and k["table_kind"] == ran["table_kind"] and k["tier_rank"] <= cap_rank)
    assert ran["tier_rank"] == best, (kernel_name, cap)


@pytest.fixture(autouse=True)
def _restore_threads():
    n = lowbit.get_num_threads()
    yield
    lowbit.set_num_threads(n)
