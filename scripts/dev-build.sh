#!/usr/bin/env bash
# Developer build: compile lowbit._core in place (build/dev, then copied into
# python/lowbit/) so that `PYTHONPATH=python python3 -m pytest ...` tests this
# checkout without a pip install. Extra arguments go to CMake, e.g.
#   scripts/dev-build.sh -DLOWBIT_SANITIZE=ON
# BUILD_DIR overrides the build folder (one per configuration).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build/dev}"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" "$@" >/dev/null
LOG="$BUILD_DIR/ninja.log"
if ! ninja -C "$BUILD_DIR" >"$LOG" 2>&1; then
  grep -E -A5 "error|Error" "$LOG" | head -60 >&2
  echo "dev-build: compile failed (full log: $LOG)" >&2
  exit 1
fi
# copy, then rename over the old module: a process that has the old one loaded keeps its file
for so in "$BUILD_DIR"/_core*.so; do
  cp "$so" "python/lowbit/.$(basename "$so").tmp"
  mv -f "python/lowbit/.$(basename "$so").tmp" "python/lowbit/$(basename "$so")"
done
echo "built $(ls "$BUILD_DIR"/_core*.so) -> python/lowbit/"
