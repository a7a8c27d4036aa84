"""Thread scaling of lowbit's W2A2 GEMM on the large ResNet-18 layers (and 1024^3).

In one process: shapes and thread counts are interleaved round-robin
(lowbit.set_num_threads between calls, which only switches pools), and each
(shape, count) keeps its fastest of --repeats timed batches, so a noisy shared host affects
every count alike. A batch is --batch consecutive calls after one untimed
call, i.e. steady-state throughput as when a model runs layer after layer
(the pool's workers are then awake; a cold call also pays the wake-up of a
sleeping worker, tens of microseconds on a VM). Activation packing is
included, as in bench_gemm.py.

    python bench/bench_threads.py --threads 1,2 --out bench/results/threads.json
"""
import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SHAPES = [("layer1_3x3", 3136, 64, 576), ("layer2_3x3", 784, 128, 1152), ("layer3_3x3", 196, 256, 2304),
          ("layer4_3x3", 49, 512, 4608), ("conv1_7x7s2", 12544, 64, 147), ("square_1024", 1024, 1024, 1024)]


def lookup_loop_scaling(lowbit, counts, rounds=5, seconds=0.3):
    """The machine's own ceiling: aggregate rate of the tight vpshufb + vpaddb
    loop (lowbit._core.lookup_rates, GIL released) run on t threads at once,
    relative to one thread; best of `rounds`, counts interleaved."""
    best = {t: 0.0 for t in counts}
    for _ in range(rounds):
        for t in counts:
            rates = [0.0] * t

            def one(i):
                rates[i] = lowbit._core.lookup_rates(seconds)["lookup_add_per_s"]

            threads = [threading.Thread(target=one, args=(i,)) for i in range(t)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            best[t] = max(best[t], sum(rates))
    return {t: best[t] / best[counts[0]] for t in counts}


class IndependentStreams:
    """The machine's own ceiling for the exact work of a call: t forked
    processes (no GIL, no shared pool) each run `batch` single-thread calls
    of the same GEMM, released together by a barrier. Returns seconds per call
    of the aggregate: t * batch calls over the slowest process's time."""

    def __init__(self, problems, t, batch):
        import multiprocessing as mp
        ctx = mp.get_context("fork")
        self.batch, self.barrier = batch, ctx.Barrier(t + 1)
        self.pipes, self.procs = [], []
        for _ in range(t):
            here, there = ctx.Pipe()
            proc = ctx.Process(target=self._worker, args=(problems, there, self.barrier, batch), daemon=True)
            proc.start()
            self.pipes.append(here)
            self.procs.append(proc)

    @staticmethod
    def _worker(problems, pipe, barrier, batch):
        import lowbit
        lowbit.set_num_threads(1)
        while (i := pipe.recv()) is not None:
            a, packed = problems[i][4], problems[i][5]
            lowbit.gemm(a, packed, 2)  # untimed, like the threaded batches
            barrier.wait()
            t0 = time.perf_counter()
            for _ in range(batch):
                lowbit.gemm(a, packed, 2)
            pipe.send(time.perf_counter() - t0)

    def seconds_per_call(self, index):
        for pipe in self.pipes:
            pipe.send(index)
        self.barrier.wait()
        return max(pipe.recv() for pipe in self.pipes) / (len(self.pipes) * self.batch)

    def close(self):
        for pipe in self.pipes:
            pipe.send(None)
        for proc in self.procs:
            proc.join()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--batch", type=int, default=3, help="consecutive calls per timed batch")
    ap.add_argument("--out", default=str(common.REPO / "bench" / "results" / "threads.json"))
    args = ap.parse_args()
    import lowbit

    counts = [int(t) for t in args.threads.split(",")]
    rng = np.random.default_rng(0)
    problems = []
    for name, m, n, k in SHAPES:
        a = rng.integers(0, 4, (m, k), dtype=np.uint8)
        packed = lowbit.pack_weights(rng.integers(0, 4, (n, k), dtype=np.uint8), 2, [-2, -1, 0, 1])
        problems.append((name, m, n, k, a, packed))
    best = {(p[0], t): float("inf") for p in problems for t in counts}
    streams = {(p[0], t): float("inf") for p in problems for t in counts if t > 1}
    kernel = {}
    controls = {t: IndependentStreams(problems, t, args.batch) for t in counts if t > 1}
    # rounds over all shapes, so that each shape is sampled across the whole
    # run (a slow phase of the shared host then hits every shape and count)
    for _ in range(args.repeats):
        for index, (name, m, n, k, a, packed) in enumerate(problems):
            for t in counts:
                lowbit.set_num_threads(t)
                lowbit.gemm(a, packed, 2)  # untimed: wakes the pool
                t0 = time.perf_counter()
                for _ in range(args.batch):
                    lowbit.gemm(a, packed, 2)
                best[name, t] = min(best[name, t], (time.perf_counter() - t0) / args.batch)
                if t > 1:
                    streams[name, t] = min(streams[name, t], controls[t].seconds_per_call(index))
            kernel[name] = lowbit.last_kernel()
    for control in controls.values():
        control.close()
    ceiling = lookup_loop_scaling(lowbit, counts)
    print("lookup loop (no memory traffic) on t threads at once: "
          + " ".join(f"{t}t x{ceiling[t]:.2f}" for t in counts), flush=True)
    rows = []
    for name, m, n, k, _, _ in problems:
        gops = {t: common.gops(m, n, k, best[name, t]) for t in counts}
        ceil = {t: best[name, counts[0]] / streams[name, t] for t in counts if t > 1}
        rows.append({"name": name, "M": m, "N": n, "K": k, "kernel": kernel[name], "gops": gops,
                     "scaling": {t: gops[t] / gops[counts[0]] for t in counts},
                     "independent_streams_scaling": ceil})
        print(name, " ".join(f"{t}t {gops[t]:.0f} GOPS (x{gops[t] / gops[counts[0]]:.2f})" for t in counts),
              "| independent 1-thread processes:", " ".join(f"{t}t x{ceil[t]:.2f}" for t in ceil), flush=True)
    result = {"fingerprint": common.fingerprint(),
              "statistic": f"fastest of {args.repeats} batches of {args.batch} consecutive calls (after one untimed "
                           "call), thread counts and shapes interleaved round-robin; independent streams: t forked processes "
                           "each running a batch of single-thread calls at once (barrier start; slowest process's "
                           "time), same statistic",
              "lookup_loop_scaling": ceiling, "shapes": rows}
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=1, default=str))
    md = ["# lowbit W2A2 thread scaling (`python bench/bench_threads.py`)", "",
          f"Machine: {result['fingerprint']['cpu_model']}, {result['fingerprint']['cpu_count']} CPUs; statistic: {result['statistic']}.", "",
          "The last column is the machine's own ceiling for the same work: "
          f"{counts[-1]} independent single-thread processes running that GEMM at once, relative to one thread.", "",
          "| layer | M | N | K | " + " | ".join(f"{t} thr GOPS" for t in counts)
          + f" | x at {counts[-1]} | x of {counts[-1]} independent streams |",
          "|---|---:|---:|---:|" + "---:|" * (len(counts) + 2)]
    md += ["| lookup loop, no memory traffic | | | | "
           + " | ".join("" for _ in counts) + f" | {ceiling[counts[-1]]:.2f} | |"]
    md += [f"| {r['name']} | {r['M']} | {r['N']} | {r['K']} | " + " | ".join(f"{r['gops'][t]:.0f}" for t in counts)
           + f" | {r['scaling'][counts[-1]]:.2f} | "
           + (f"{r['independent_streams_scaling'][counts[-1]]:.2f}" if counts[-1] > 1 else "") + " |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
