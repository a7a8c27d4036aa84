#!/usr/bin/env bash
# Cross-builds lowbit for aarch64 on an x86-64 Debian/Ubuntu machine and runs
# the test suite under user-mode QEMU, once per Arm tier's guest CPU:
#   cortex-a72   (Armv8.0 NEON only)        -> tier neon
#   neoverse-n1  (+ dotprod)                -> tier neondot
#   max,sme=off  (+ i8mm, SVE; SME off)     -> tier neoni8mm
# For each CPU it prints `lowbit info` and pytest's summary line; the exit
# status is non-zero if any run fails. Each tier's kernels are checked bit for
# bit against the scalar twins and the NumPy reference by the ordinary tests,
# which iterate the registry; test_dispatch checks that HWCAP detection finds
# exactly the expected tier on each CPU (LOWBIT_EXPECT_TIER).
#
# Needs root (apt-get) the first time: installs gcc/g++-aarch64-linux-gnu,
# qemu-user, cmake, ninja and pybind11 on the host, and builds an arm64
# sysroot (CPython 3.11 + headers, libstdc++, numpy, pytest from Debian's arm64
# packages, hypothesis from PyPI) under $ARM_ROOT, through a private apt
# configuration: the host's dpkg state is untouched. About 1 minute and 50 MB
# of downloads the first time. No binfmt_misc is needed.
#
# Usage: scripts/test-aarch64.sh [--subset] [extra pytest args]
#   --subset        only the kernel tests (every registry kernel on its edge
#                   shapes, long K and extreme codes; dot8; grouplut paths;
#                   dispatch): the part CI runs
#   ARM_ROOT        where the sysroot and wrapper live (default build/aarch64-root)
#   ARM_CPUS        guest CPUs to run (default "cortex-a72 neoverse-n1 max,sme=off")
#   BUILD_DIR       cross build folder (default build/aarch64)
# Emulated timings say nothing about Arm hardware: speed is estimated
# separately (bench/arm_mca.sh, docs/arm.md).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
ROOT=${ARM_ROOT:-$REPO/build/aarch64-root}
BUILD_DIR=${BUILD_DIR:-build/aarch64}
SYSROOT=$ROOT/sysroot
GUEST_PY=$ROOT/bin/python3-aarch64
CPUS=${ARM_CPUS:-"cortex-a72 neoverse-n1 max,sme=off"}
TESTS=(tests/python)
if [ "${1:-}" = "--subset" ]; then
  shift
  TESTS=(tests/python/test_gemm.py tests/python/test_dot8.py tests/python/test_grouplut_paths.py
         tests/python/test_dispatch.py)
fi
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
mkdir -p "$ROOT/bin"
start=$(date +%s)

# ---- 1. host tools
need=()
for p in gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user cmake ninja-build; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
  echo "installing host packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
python3 -c "import pybind11" 2>/dev/null || python3 -m pip install -q "pybind11>=2.12"

# ---- 2. arm64 sysroot: Debian's arm64 packages, resolved and downloaded by
# apt with a private state directory, unpacked with dpkg-deb -x
if [ ! -x "$SYSROOT/usr/bin/python3.11" ]; then
  echo "building the arm64 sysroot in $SYSROOT"
  A=$ROOT/apt
  rm -rf "$A" "$SYSROOT"
  mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/etc/sources.list.d" "$A/etc/preferences.d" "$SYSROOT"
  : > "$A/status"
  chown -R _apt "$A/lists/partial" "$A/cache/archives/partial" 2>/dev/null || true
  # the host's own Debian sources serve arm64 packages once apt's architecture is arm64
  cp /etc/apt/sources.list.d/*.sources "$A/etc/sources.list.d/" 2>/dev/null || true
  cp /etc/apt/sources.list.d/*.list "$A/etc/sources.list.d/" 2>/dev/null || true
  if [ -s /etc/apt/sources.list ]; then cp /etc/apt/sources.list "$A/etc/sources.list"; else : > "$A/etc/sources.list"; fi
  cat > "$A/apt.conf" <<EOF
APT::Architecture "arm64"; APT::Architectures { "arm64"; }; APT::Install-Recommends "false";
Dir::State "$A"; Dir::State::Lists "$A/lists"; Dir::State::status "$A/status"; Dir::Cache "$A/cache";
Dir::Etc::SourceList "$A/etc/sources.list"; Dir::Etc::SourceParts "$A/etc/sources.list.d";
Dir::Etc::Preferences "$A/etc/preferences"; Dir::Etc::PreferencesParts "$A/etc/preferences.d";
Debug::NoLocking "true";
EOF
  # an empty dpkg status: apt downloads the whole dependency closure (libc6, libblas3, ...)
  APT_CONFIG=$A/apt.conf apt-get -qq update
  APT_CONFIG=$A/apt.conf apt-get -qq -y install --download-only \
    python3.11 libpython3.11-dev libstdc++6 python3-numpy python3-pytest > "$ROOT/apt-arm64.log"
  for deb in "$A"/cache/archives/*.deb; do dpkg-deb -x "$deb" "$SYSROOT"; done
  # what the packages' maintainer scripts would have done: BLAS/LAPACK alternatives
  L=$SYSROOT/usr/lib/aarch64-linux-gnu
  [ -e "$L/blas/libblas.so.3" ] && ln -sfn blas/libblas.so.3 "$L/libblas.so.3"
  [ -e "$L/lapack/liblapack.so.3" ] && ln -sfn lapack/liblapack.so.3 "$L/liblapack.so.3"
  # absolute symlinks would resolve on the host (the linker would pick the host's libraries)
  find "$SYSROOT" -type l -lname '/*' -print0 | while IFS= read -r -d '' l; do
    ln -sfn "$(realpath -m --relative-to="$(dirname "$l")" "$SYSROOT$(readlink "$l")")" "$l"
  done
  # hypothesis (pure Python, with its one dependency) for the guest
  python3 -m pip install -q --no-compile --no-warn-script-location --no-deps \
    --target "$SYSROOT/usr/local/lib/python3.11/dist-packages" --only-binary=:all: \
    --platform manylinux2014_aarch64 --python-version 3.11 --implementation cp \
    "hypothesis>=6,<7" "sortedcontainers>=2.1,<3" "attrs>=22.2"
fi

# The guest interpreter. Host Python and loader variables would point the
# guest at x86-64 files, so they are dropped; the guest's extra path is
# ARM_PYTHONPATH, its CPU QEMU_CPU. A guest that starts a subprocess runs this
# wrapper again (the tests use LOWBIT_TEST_PYTHON for that).
cat > "$GUEST_PY" <<EOF
#!/bin/sh
exec env -u PYTHONPATH -u PYTHONHOME -u PYTHONSTARTUP -u PYTHONDONTWRITEBYTECODE -u VIRTUAL_ENV \\
  -u LD_LIBRARY_PATH -u LD_PRELOAD \${ARM_PYTHONPATH:+PYTHONPATH=\$ARM_PYTHONPATH} \\
  qemu-aarch64 -cpu "\${QEMU_CPU:-max,sme=off}" -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" "\$@"
EOF
chmod +x "$GUEST_PY"

# ---- 3. cross build (cmake/aarch64-linux-gnu.cmake), staged as a package
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$REPO/cmake/aarch64-linux-gnu.cmake" -DLOWBIT_ARM_SYSROOT="$SYSROOT" \
  -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" >/dev/null
ninja -C "$BUILD_DIR" >/dev/null
STAGE=$BUILD_DIR/stage
rm -rf "$STAGE"
mkdir -p "$STAGE"
cp -r python/lowbit "$STAGE/lowbit"
rm -f "$STAGE"/lowbit/_core*.so
cp "$BUILD_DIR"/_core*aarch64*.so "$STAGE/lowbit/"
echo "cross build: $(ls "$BUILD_DIR"/_core*aarch64*.so) ($(($(date +%s) - start)) s so far)"

# ---- 4. the suite on each guest CPU
expected_tier() {
  case "$1" in
    cortex-a72*|cortex-a53*|cortex-a57*) echo neon ;;
    neoverse-n1*|cortex-a76*|cortex-a710*) echo neondot ;;
    max*) echo neoni8mm ;;
    *) echo "" ;;
  esac
}
status=0
summaries=()
for cpu in $CPUS; do
  echo
  echo "================ guest CPU $cpu (expected tier: $(expected_tier "$cpu")) ================"
  export QEMU_CPU=$cpu ARM_PYTHONPATH=$REPO/$STAGE LOWBIT_EMULATED=1 LOWBIT_TEST_PYTHON=$GUEST_PY
  export LOWBIT_EXPECT_TIER; LOWBIT_EXPECT_TIER=$(expected_tier "$cpu")
  t0=$(date +%s)
  "$GUEST_PY" -P -m lowbit info || status=1
  log=$BUILD_DIR/pytest-${cpu%%,*}.log
  # -P: the current directory must not shadow the staged package
  if "$GUEST_PY" -P -m pytest "${TESTS[@]}" -q -p no:cacheprovider -rs "$@" > "$log" 2>&1; then rc=0; else rc=$?; status=1; fi
  grep -E "^(SKIPPED|FAILED|ERROR)" "$log" || true
  line=$(tail -n 1 "$log")
  summaries+=("$cpu: $line ($(($(date +%s) - t0)) s, exit $rc)")
  echo "pytest on $cpu: $line"
done
unset QEMU_CPU ARM_PYTHONPATH LOWBIT_EMULATED LOWBIT_TEST_PYTHON LOWBIT_EXPECT_TIER

echo
echo "================ summary ($(($(date +%s) - start)) s in all) ================"
printf '%s\n' "${summaries[@]}"
exit $status
