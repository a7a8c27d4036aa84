#!/usr/bin/env bash
# One-time set-up on a fresh Debian/Ubuntu machine (run as root, or with sudo
# available): the Fashion-MNIST data set and qemu-user (for the no-AVX-512
# emulation test), SIMDe, CMake and Ninja (for the emulated AVX-512 test
# build, scripts/test-simde.sh) from Debian, the CPU build of PyTorch (a local wheel here),
# then lowbit itself with its test, Brevitas/QONNX and Ray extras. torch stays
# pinned through a constraints file, so nothing can pull a CUDA build.
# Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
if command -v apt-get >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist qemu-user \
    libsimde-dev cmake ninja-build >/dev/null
fi

PY="${PYTHON:-python3}"
CONSTRAINTS="$(mktemp)"
echo "torch==2.13.0" > "$CONSTRAINTS"
"$PY" -m pip install -q "torch==2.13.0"
"$PY" -m pip install -q -c "$CONSTRAINTS" ".[test,qonnx,ray]"
rm -f "$CONSTRAINTS"
