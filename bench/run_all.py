"""Run bench_gemm.py once per thread count (1 and all cores in the affinity mask), each in its
own process (qnnpack fixes its thread count at first use), then write the report.

  python bench/run_all.py --shapes resnet18 --shapes vgg16 [any other bench_gemm.py flags]
  python bench/run_all.py --tag smoke --outdir /tmp/bench --quick --shapes resnet18
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outdir", type=Path, default=HERE / "results")
    ap.add_argument("--tag", default="gemm", help="result file prefix: <tag>_t<threads>.json")
    ap.add_argument("--thread-counts", help="comma list (default: 1 and len(os.sched_getaffinity(0)))")
    args, extra = ap.parse_known_args()
    counts = ([int(t) for t in args.thread_counts.split(",")] if args.thread_counts
              else sorted({1, len(os.sched_getaffinity(0))}))
    args.outdir.mkdir(parents=True, exist_ok=True)
    outs = []
    for t in counts:
        out = args.outdir / f"{args.tag}_t{t}.json"
        cmd = [sys.executable, str(HERE / "bench_gemm.py"), "--threads", str(t), "--out", str(out)] + extra
        print(f"== {t} thread(s): {' '.join(cmd)}", flush=True)
        # OMP_WAIT_POLICY=PASSIVE: idle OpenMP workers of one contender (torch) must not spin on
        # the cores the next contender in the round-robin is timed on
        env = dict(os.environ, OMP_NUM_THREADS=str(t), MKL_NUM_THREADS=str(t), OMP_WAIT_POLICY="PASSIVE")
        subprocess.run(cmd, check=True, env=env)
        outs.append(str(out))
    subprocess.run([sys.executable, str(HERE / "report.py"), *outs, "--outdir", str(args.outdir)], check=True)


if __name__ == "__main__":
    main()
