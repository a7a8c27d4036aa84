"""Batch-scoring throughput on one machine: lowbit in one process (1 and 2 threads) against a local
Ray cluster (lowbit.ray.predict: 1 actor x 1 thread, 2 actors x 1 thread, 1 actor x 2 threads).

Model: the shipped Fashion-MNIST W2A2 demo model (converted here; needs torch). Data: the
Fashion-MNIST test images (the Debian package dataset-fashion-mnist), normalised to float32
(N, 1, 28, 28), repeated up to --rows, in blocks of --batch rows. Each configuration scores all
rows; the table gives images/s over the whole job (Ray: from submitting the job, actor start-up
included, to the last row at the driver) and the seconds until the first result batch arrives
(start-up). Configurations are interleaved round-robin for --rounds rounds; the table keeps each
one's median, so a noisy shared host affects all alike.

    python bench/bench_ray.py --rows 40000 --rounds 3 --out bench/results/ray_throughput.md
"""
import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import lowbit  # noqa: E402


def fmnist_rows(n):
    from lowbit import datasets

    images, _ = datasets.load_fashion_mnist("test", allow_fallback=False)
    x = datasets.normalize(images)
    return np.concatenate([x] * (-(-n // len(x))))[:n]


def time_local(model, x, batch, threads):
    lowbit.set_num_threads(threads)
    t0 = time.perf_counter()
    t_first = None
    for i in range(0, len(x), batch):
        model(x[i:i + batch])
        if t_first is None:
            t_first = time.perf_counter()
    t1 = time.perf_counter()
    return len(x) / (t1 - t0), t_first - t0


def time_ray(ray, model, x, batch, actors, cpus):
    import lowbit.ray as lowbit_ray

    ds = ray.data.from_numpy([x[i:i + batch] for i in range(0, len(x), batch)])
    scored = lowbit_ray.predict(ds, model, column="data", batch_size=batch, concurrency=actors, num_cpus=cpus,
                                keep_image=False)
    t0 = time.perf_counter()
    t_first, rows = None, 0
    for b in scored.iter_batches(batch_size=None, batch_format="numpy"):
        rows += len(b["top1"])
        if t_first is None:
            t_first = time.perf_counter()
    t1 = time.perf_counter()
    assert rows == len(x), (rows, len(x))
    return len(x) / (t1 - t0), t_first - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", help="write the table to this .md file")
    args = p.parse_args(argv)

    import ray
    import torch

    from lowbit import models

    model = lowbit.convert(models.load_fmnist("w2a2_qat"), torch.zeros(1, 1, 28, 28))
    x = fmnist_rows(args.rows)
    cpus = len(os.sched_getaffinity(0))
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    configs = [("lowbit, one process", "1 thread", lambda: time_local(model, x, args.batch, 1)),
               ("lowbit, one process", "2 threads", lambda: time_local(model, x, args.batch, 2)),
               ("Ray, 1 actor", "1 thread", lambda: time_ray(ray, model, x, args.batch, 1, 1)),
               ("Ray, 2 actors", "1 thread each", lambda: time_ray(ray, model, x, args.batch, 2, 1)),
               ("Ray, 1 actor", "2 threads", lambda: time_ray(ray, model, x, args.batch, 1, 2))]
    results = {i: [] for i in range(len(configs))}
    for r in range(args.rounds):
        for i, (what, threads, fn) in enumerate(configs):
            rate, first = fn()
            results[i].append((rate, first))
            print(f"round {r}: {what:<22} {threads:<14} {rate:8.1f} images/s, first result after {first:.2f} s",
                  flush=True)
    ray.shutdown()
    load = os.getloadavg()
    fp = common.fingerprint()
    lines = ["# Batch scoring throughput: lowbit alone vs lowbit.ray on one machine", "",
             f"`python bench/bench_ray.py --rows {args.rows} --batch {args.batch} --rounds {args.rounds}`; "
             f"{fp['cpu_model']}, {cpus} CPUs in the affinity mask, commit {(fp['git_commit'] or '?')[:7]}, "
             f"ray {ray.__version__}, lowbit {lowbit.__version__}; load average after the run "
             f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}.",
             f"Fashion-MNIST W2A2 demo model, {args.rows} images of 1x28x28, batches of {args.batch}; median of "
             f"{args.rounds} interleaved rounds.", "",
             "| how | lowbit threads | images/s (whole job) | first result after |",
             "|---|---|---:|---:|"]
    for i, (what, threads, _) in enumerate(configs):
        rate = statistics.median(v[0] for v in results[i])
        first = statistics.median(v[1] for v in results[i])
        lines.append(f"| {what} | {threads} | {rate:.0f} | {first:.2f} s |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
