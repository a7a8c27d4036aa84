#!/usr/bin/env bash
# One-shot check on a lent many-core machine (the development machines here
# are 2 shared vCPUs with AVX2 only): build, run the test suite with every
# tier the CPU has, then thread scaling on two *distinct physical cores*
# (pinned with taskset) at the best tier and forced to avx2, scaling up to
# all CPUs, and a 1-thread W2A2/W1A1 GEMM benchmark against the int8 engines.
# Every result lands in /tmp/lowbit-results and is re-archived into
# $OUT/results.tgz after each step, so a step cut off by a time limit keeps
# the ones before it.
set -uo pipefail
OUT=${OUT:-/tmp/lowbit-device}
RES=/tmp/lowbit-results
mkdir -p "$OUT" "$RES"
export PYTHONUNBUFFERED=1
save() { tar czf "$OUT/results.tgz" -C "$RES" . ; echo "[$SECONDS s] $1"; }

# CPU model, flags and topology (which CPUs share a physical core)
{ grep -m1 "model name" /proc/cpuinfo; nproc
  grep -o -w -E 'avx512[a-z_0-9]*|gfni|amx[a-z_0-9]*|avx_vnni' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
  for c in /sys/devices/system/cpu/cpu[0-9]*; do
    echo "$(basename "$c") core=$(cat "$c/topology/core_id" 2>/dev/null) pkg=$(cat "$c/topology/physical_package_id" 2>/dev/null) siblings=$(cat "$c/topology/thread_siblings_list" 2>/dev/null)"
  done; } > "$RES/cpu.txt"
head -3 "$RES/cpu.txt"
# two CPUs of the affinity set that are not hyperthread siblings
read -r CPU_A CPU_B < <(python3 - <<'EOF'
import os
cpus = sorted(os.sched_getaffinity(0))
def sib(c):
    try:
        return open(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list").read().strip()
    except OSError:
        return str(c)
a = cpus[0]
b = next((c for c in cpus[1:] if sib(c) != sib(a)), cpus[1] if len(cpus) > 1 else a)
print(a, b)
EOF
)
echo "pinned pair: cpu$CPU_A cpu$CPU_B" | tee -a "$RES/cpu.txt"
save "topology"

export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
python3 -m pip install --no-build-isolation --no-deps -q . > "$RES/build.log" 2>&1 || { tail -30 "$RES/build.log"; save "build FAILED"; exit 1; }
(cd /tmp && python3 -c "import lowbit, json; print(json.dumps({'tiers': lowbit.supported_tiers(), 'kernels': [k['name'] for k in lowbit.kernels() if k['available']], 'rates': lowbit._core.lookup_rates(0.3)}))") | tee "$RES/info.json"
save "built"

# THREADS_ONLY=1: skip the test suite and the GEMM benchmark (a re-measurement)
ONLY=${THREADS_ONLY:-0}

# the whole default test suite; the tests themselves force every tier present
[ "$ONLY" = 1 ] || {
XDIST=""; python3 -c "import xdist" 2>/dev/null && XDIST="-n $(( $(nproc) > 12 ? 12 : $(nproc) ))"
timeout 240 python3 -m pytest -q -p no:cacheprovider -m "not slow" $XDIST > "$RES/tests.txt" 2>&1
tail -5 "$RES/tests.txt"
save "tests"
}

R=${REPEATS:-30}
taskset -c "$CPU_A,$CPU_B" python3 bench/bench_threads.py --threads 1,2 --repeats "$R" --out "$RES/threads_2cores.json"
save "threads, best tier, 2 physical cores"
LOWBIT_ISA=avx2 taskset -c "$CPU_A,$CPU_B" python3 bench/bench_threads.py --threads 1,2 --repeats "$R" --out "$RES/threads_2cores_avx2.json"
save "threads, avx2, 2 physical cores"
N=$(nproc); COUNTS=$(python3 -c "print(','.join(str(t) for t in sorted({1, 2, 4, 8, $N}) if t <= $N))")
python3 bench/bench_threads.py --threads "$COUNTS" --repeats $(( R / 3 + 1 )) --out "$RES/threads_all.json"
save "threads up to $N"
[ "$ONLY" = 1 ] && exit 0
timeout 200 taskset -c "$CPU_A" python3 bench/bench_gemm.py --threads 1 --shapes resnet18 --bits 2x2 --bits 1x1 \
  --lowbit-kernels auto --quick --out "$RES/r18_t1.json" > "$RES/bench_r18_t1.log" 2>&1
tail -8 "$RES/bench_r18_t1.log"
save "gemm bench, 1 thread"
