#!/usr/bin/env bash
# ThreadSanitizer run of the native core's threading (the thread pool and its
# callers). Builds lowbit._core with -fsanitize=thread into its own folder
# (build/tsan, never the in-place python/lowbit/_core*.so), lays out a package
# folder that uses it (as scripts/test-sanitize.sh does) and runs pytest with
# libtsan preloaded. Reports go to $TSAN_LOG.<pid> (pytest captures stderr of
# passing tests); the script prints the reports that name lowbit's code.
#
#   scripts/test-tsan.sh                                   # the threading tests
#   scripts/test-tsan.sh tests/python/test_dwconv.py       # other test files
#
# Forking tests are deselected (TSan refuses to start threads in a child of a
# multi-threaded process). Known reports that are not lowbit's races: torch's
# OpenMP runtime (libgomp is not instrumented; tests that use torch as a
# reference) and glibc's teardown of a finished Python thread's dynamic TLS
# (dl_deallocate_tls vs the thread_local scratch vectors' destructors).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
BUILD_DIR="${BUILD_DIR:-build/tsan}"
TSAN_LOG="${TSAN_LOG:-/tmp/lowbit-tsan}"
PY="$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS="-fsanitize=thread" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=thread" -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" >/dev/null || exit 1
ninja -C "$BUILD_DIR" >"$BUILD_DIR/ninja.log" 2>&1 || { tail -30 "$BUILD_DIR/ninja.log"; exit 1; }
. scripts/sanitized-package.sh
sanitized_package "$BUILD_DIR"
rm -f "$TSAN_LOG".*
TESTS=("$@")
[ ${#TESTS[@]} -eq 0 ] && TESTS=(tests/python/test_pool.py tests/python/test_threads.py tests/python/test_conv_prepared.py)
TSAN_OPTIONS="log_path=$TSAN_LOG:halt_on_error=0:report_signal_unsafe=0${TSAN_OPTIONS:+:$TSAN_OPTIONS}" \
  LD_PRELOAD="$(gcc -print-file-name=libtsan.so)" PYTHONPATH="$ROOT/$BUILD_DIR/python" LOWBIT_SANITIZED=1 \
  "$PY" -m pytest -q -p no:cacheprovider -p no:randomly -k "not fork" "${TESTS[@]}"
status=$?
reports=$(cat "$TSAN_LOG".* 2>/dev/null | grep -c "^WARNING: ThreadSanitizer" || true)
echo "ThreadSanitizer reports: $reports (in $TSAN_LOG.*); frames in lowbit's code:"
cat "$TSAN_LOG".* 2>/dev/null | grep "_core.cpython" | sort | uniq -c || true
exit $status
