#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run of the native core
# (docs/robustness.md). Builds lowbit._core with -DLOWBIT_SANITIZE=ON into its
# own folder (build/sanitize, never the in-place python/lowbit/_core*.so),
# lays out a package folder that uses it, and runs pytest under the sanitizer
# runtimes once per ISA tier this CPU supports (LOWBIT_ISA=scalar, avx2, ...).
# Any sanitizer report aborts the process, so pytest fails.
#
#   scripts/test-sanitize.sh                  # the kernel, op, conv and model test files
#   scripts/test-sanitize.sh -m "not slow"    # extra arguments go to pytest
#   SANITIZE_TESTS="tests/python" scripts/test-sanitize.sh   # the whole suite
#   SANITIZE_TIERS="avx2" scripts/test-sanitize.sh            # only some tiers
#
# Leak detection is on, scoped to lowbit: suppressions for the interpreter,
# NumPy and other extension modules are in tests/sanitize/lsan.supp, and
# allocation stacks are kept short (malloc_context_size) so a leak whose
# innermost frames are lowbit's still reports even when Python called it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
BUILD_DIR="${BUILD_DIR:-build/sanitize}"
# the interpreter itself, not a wrapper script (pyenv shims are bash, which must not run under ASan)
PY="$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')"

cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLOWBIT_SANITIZE=ON \
  -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" >/dev/null
ninja -C "$BUILD_DIR" >/dev/null

# A package folder whose modules are the checkout's (symlinks) but whose
# _core is the sanitized build.
. scripts/sanitized-package.sh
sanitized_package "$BUILD_DIR"

ASAN_RT="$(gcc -print-file-name=libasan.so)"
UBSAN_RT="$(gcc -print-file-name=libubsan.so)"
SANITIZER_PRELOAD="$ASAN_RT $UBSAN_RT${LD_PRELOAD:+ $LD_PRELOAD}"  # set for the Python process only
export ASAN_OPTIONS="detect_leaks=1:malloc_context_size=6:abort_on_error=1:detect_odr_violation=0:allocator_may_return_null=1:handle_segv=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
# use_tls=0: GCC 12's LeakSanitizer crashes ("Tracer caught signal 11") scanning
# the dynamic TLS of the pool's worker threads (thread_local in a dlopen'ed
# module) at exit; without TLS roots, glibc's thread_local destructor list
# looks leaked and is suppressed.
export LSAN_OPTIONS="suppressions=$ROOT/tests/sanitize/lsan.supp:print_suppressions=0:use_tls=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export PYTHONPATH="$ROOT/$BUILD_DIR/python"
export PYTHONMALLOC=malloc           # so ASan sees Python's allocations too
export LOWBIT_SANITIZED=1            # tests that cannot run under ASan skip themselves

TESTS="${SANITIZE_TESTS:-tests/python/test_gemm.py tests/python/test_bitwidths.py tests/python/test_dot8.py
  tests/python/test_grouplut_paths.py tests/python/test_epilogue.py tests/python/test_conv.py
  tests/python/test_model.py tests/python/test_errors.py tests/python/test_threads.py
  tests/python/test_robustness.py tests/python/test_stress.py tests/python/test_executor.py
  tests/python/test_pool.py tests/python/test_conv_prepared.py tests/python/test_call_path.py
  tests/python/test_graph_ops.py}"
TIERS="${SANITIZE_TIERS:-$(LD_PRELOAD="$SANITIZER_PRELOAD" "$PY" -c 'import lowbit; print(" ".join(lowbit.supported_tiers()))')}"
status=0
for tier in $TIERS; do
  echo "== sanitizer run, LOWBIT_ISA=$tier"
  # shellcheck disable=SC2086
  LD_PRELOAD="$SANITIZER_PRELOAD" LOWBIT_ISA="$tier" "$PY" -m pytest -q -p no:cacheprovider $TESTS "$@" || status=1
done
exit $status
