#!/usr/bin/env bash
# Exactness check of the AVX-512 kernels on any x86-64 CPU with AVX2.
#
# Builds lowbit._core with -DLOWBIT_SIMDE_AVX512=ON (the avx512 and avx512icl
# translation units compiled against SIMDe's portable AVX-512 intrinsics,
# Debian package libsimde-dev; see csrc/core/simd_avx512.h) into build/simde,
# stages a copy of the package there, and runs the kernel-level tests on it.
# In that build every AVX-512 kernel is "available", so the tests that iterate
# the registry and every tier check each of them bit-exactly against its
# scalar twin and the NumPy reference. Timings from this build mean nothing.
#
#   scripts/test-simde.sh                 # the kernel-level test files
#   scripts/test-simde.sh tests/python    # any pytest arguments instead
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=build/simde
if [ ! -f /usr/include/simde/x86/avx512.h ]; then
  echo "test-simde: SIMDe headers not found; install Debian's libsimde-dev (scripts/setup.sh does)" >&2
  exit 2
fi
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLOWBIT_SIMDE_AVX512=ON \
  -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" >/dev/null
ninja -C "$BUILD_DIR" >/dev/null
PKG="$BUILD_DIR/pkg"
rm -rf "$PKG" && mkdir -p "$PKG"
cp -r python/lowbit "$PKG/"
rm -f "$PKG"/lowbit/_core*.so
cp "$BUILD_DIR"/_core*.so "$PKG/lowbit/"
if [ $# -eq 0 ]; then
  set -- -m "not slow" tests/python/test_gemm.py tests/python/test_bitwidths.py tests/python/test_dot8.py \
    tests/python/test_grouplut_paths.py tests/python/test_conv.py tests/python/test_epilogue.py \
    tests/python/test_dispatch.py tests/python/test_errors.py
fi
PYTHONPATH="$PWD/$PKG" python3 -c \
  "import lowbit; assert lowbit._core.avx512_emulated, 'not the SIMDe build'; print('SIMDe build, tiers:', lowbit.supported_tiers())"
PYTHONPATH="$PWD/$PKG" python3 -m pytest -q -p no:cacheprovider "$@"
