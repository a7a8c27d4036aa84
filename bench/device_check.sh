#!/usr/bin/env bash
# One-shot check on a lent machine with AVX-512 (the development machines
# here expose AVX2 only): build, run the bit-exactness tests with every tier
# the CPU has, and a 1-thread vs all-threads GEMM benchmark. Results in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/lowbit-device}
mkdir -p "$OUT"
{ grep -m1 "model name" /proc/cpuinfo; nproc; grep -o -w -E 'avx512[a-z_0-9]*|gfni' /proc/cpuinfo | sort -u | tr '\n' ' '; echo; } > "$OUT/cpu.txt"
cat "$OUT/cpu.txt"
export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
python3 -m pip install --no-build-isolation --no-deps -q . > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
(cd /tmp && python3 -c "import lowbit, json; print(json.dumps({'tiers': lowbit.supported_tiers(), 'kernels': [k['name'] for k in lowbit.kernels() if k['available']], 'rates': lowbit._core.lookup_rates(0.3)}))") | tee "$OUT/info.json"
timeout 300 python3 -m pytest tests/python/test_gemm.py tests/python/test_errors.py tests/python/test_dispatch.py \
  tests/python/test_bitwidths.py -q -x -p no:cacheprovider -m "not slow" > "$OUT/tests.txt" 2>&1
tail -15 "$OUT/tests.txt"
for t in 1 $(nproc); do
  timeout 150 python3 bench/bench_gemm.py --threads $t --shapes resnet18 --quick --out "$OUT/r18_t$t.json" > "$OUT/bench_t$t.log" 2>&1
  tail -4 "$OUT/bench_t$t.log"
done
