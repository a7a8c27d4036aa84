import contextlib
import os
import platform
import shlex
import signal
import sys
import tempfile

# Dispatch tests check the fixed family order; measured choice (lowbit.autotune)
# has its own tests (test_autotune.py), which turn it on explicitly. No test
# writes to the user's cache directory.
os.environ.setdefault("LOWBIT_AUTOTUNE", "0")
os.environ.setdefault("LOWBIT_CACHE_DIR", tempfile.mkdtemp(prefix="lowbit-test-cache-"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import lowbit  # noqa: E402
from lowbit import _dispatch  # noqa: E402


MACHINE = platform.machine().lower()
IS_X86 = MACHINE in ("x86_64", "amd64")
IS_ARM64 = MACHINE in ("aarch64", "arm64")
# Set by scripts/test-aarch64.sh: this suite runs under user-mode QEMU, where
# timing means nothing and a forked multi-threaded process can abort QEMU.
EMULATED = bool(os.environ.get("LOWBIT_EMULATED"))
skip_if_emulated = pytest.mark.skipif(
    EMULATED, reason="qemu-user aborts when a multi-threaded guest forks (assertion cpu == current_cpu)")


def optional_import(module: str):
    """Import an optional dependency or skip the calling test (module) without it. Truly
    environmental: lowbit's core needs only NumPy, and some runs have none of the extras
    (the Arm emulation sysroot: NumPy and pytest only). CI installs every extra and
    test_ci_environment.py fails there if one is missing, so these skips cannot hide a
    regression in CI."""
    return pytest.importorskip(module, reason=f"optional dependency {module!r} is not installed (lowbit's core needs "
                                              "only NumPy; CI requires it: test_ci_environment.py)")


def fashion_mnist_or_skip(split: str):
    """Fashion-MNIST ``split`` (images, labels), or skip: the data set is a system package
    (Debian's dataset-fashion-mnist), absent from some runs; CI installs it and
    test_ci_environment.py fails there without it."""
    from lowbit import datasets

    try:
        return datasets.load_fashion_mnist(split, allow_fallback=False)
    except RuntimeError as exc:
        pytest.skip(f"Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist; CI requires it): {exc}")


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
def _seed_global_generators():
    """Every test starts from the same global random state, whatever ran before it (a test
    that builds a torch module or draws from NumPy's or torch's global generator without a
    seed of its own is still deterministic). Tests draw from their own seeded generators;
    this covers what they do not seed (e.g. torch's default weight initialisation)."""
    np.random.seed(0)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _restore_threads():
    n = lowbit.get_num_threads()
    yield
    lowbit.set_num_threads(n)


def small_model(in_channels: int = 1, seed: int = 0):
    """A tiny converted W2A2 CNN (models.FmnistResNet of width 8, 28x28 input, 10 logits; 8-bit
    first and last layers): about 7 KB, a few ms per image. Needs torch."""
    import torch

    from lowbit import models, qat

    torch.manual_seed(seed)
    q = qat.prepare(models.FmnistResNet(8, 10, in_channels=in_channels), 2, 2, first_last_bits=8)
    q.train()
    q(torch.randn(16, in_channels, 28, 28))  # initialises the LSQ steps and BatchNorm statistics
    q.eval()
    return lowbit.convert(q, torch.zeros(1, in_channels, 28, 28))


@pytest.fixture(scope="session")
def small_model_path(tmp_path_factory):
    """Path of small_model() saved to a .lowbit file (one per test session)."""
    optional_import("torch")
    path = tmp_path_factory.mktemp("small_model") / "small.lowbit"
    small_model().save(path)
    return path


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise TimeoutError in the main thread if the block runs longer than ``seconds`` (SIGALRM):
    a test that could hang (a distributed job) fails instead."""
    def _expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
