import os
import platform
import shlex
import sys

import numpy as np
import pytest

import lowbit
from lowbit import _dispatch


MACHINE = platform.machine().lower()
IS_X86 = MACHINE in ("x86_64", "amd64")
IS_ARM64 = MACHINE in ("aarch64", "arm64")
# Set by scripts/test-aarch64.sh: this suite runs under user-mode QEMU, where
# timing means nothing and a forked multi-threaded process can abort QEMU.
EMULATED = bool(os.environ.get("LOWBIT_EMULATED"))
skip_if_emulated = pytest.mark.skipif(
    EMULATED, reason="qemu-user aborts when a multi-threaded guest forks (assertion cpu == current_cpu)")


def python_command():
    """The argv that starts this Python in a new process. Under user-mode
    emulation without binfmt_misc, sys.executable is a foreign binary the host
    cannot exec: LOWBIT_TEST_PYTHON then names the emulator wrapper."""
    wrapper = os.environ.get("LOWBIT_TEST_PYTHON")
    return shlex.split(wrapper) if wrapper else [sys.executable]


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def available_kernels(family=None):
    """Registry kernels this CPU can run (optionally one family)."""
    return [k for k in lowbit.kernels() if k["available"] and (family is None or k["family"] == family)]


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
