"""The AVX-512 kernels, checked bit-exactly on CPUs without AVX-512.

Runs scripts/test-simde.sh: a second build of lowbit._core whose avx512 and
avx512icl translation units are compiled against SIMDe (portable AVX-512
intrinsics), then the kernel-level test files on it, where every AVX-512
kernel is available and iterated like on a real AVX-512 CPU. On an AVX-512
host the normal build already runs them natively, and this still checks the
emulated build's agreement. Needs the source tree, CMake, Ninja, pybind11 and
libsimde-dev (scripts/setup.sh installs them)."""
import os
import pathlib
import subprocess

import pytest

import lowbit

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.skipif(lowbit._core.avx512_emulated, reason="already running inside the SIMDe build")
@pytest.mark.skipif(not (ROOT / "CMakeLists.txt").is_file(), reason="needs the lowbit source tree")
@pytest.mark.skipif(not lowbit.cpu_features().get("avx2"), reason="the SIMDe build targets AVX2 hosts")
def test_avx512_kernels_exact_under_simde():
    env = {k: v for k, v in os.environ.items() if k not in ("LOWBIT_ISA", "PYTHONPATH")}
    r = subprocess.run(["bash", str(ROOT / "scripts/test-simde.sh")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1800)
    tail = (r.stdout + r.stderr)[-4000:]
    assert r.returncode == 0, tail
    assert "SIMDe build, tiers: ['scalar', 'avx2', 'avx512', 'avx512icl']" in r.stdout, tail
    assert " passed" in r.stdout and " failed" not in r.stdout, tail
