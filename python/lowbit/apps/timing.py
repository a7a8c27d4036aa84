"""lowbit's benchmark protocol in one place: contenders timed interleaved in one process.

Used by ``lowbit demo``, :func:`lowbit.qonnx.bench_qonnx` and the scripts in ``bench/``.
"""
from __future__ import annotations

import math
import statistics
import time
from contextlib import nullcontext


def time_interleaved(contenders, rounds: int = 9, warmup: int = 1, min_time: float = 0.02) -> dict:
    """Time named callables round-robin; {name: stats}.

    ``contenders``: {name: fn} or {name: (fn, ctx_factory)}; ``ctx_factory()`` is entered around
    each batch of calls (e.g. ``lowbit.use(kernel=...)``), so its cost is not per call.
    Each callable runs ``warmup`` times, then once more to size its batch so that a batch lasts
    >= ``min_time`` seconds (``min_time=0``: one call a batch). Every round then runs one batch
    of each callable, the start position rotating between rounds, and records seconds per call
    as wall time (``perf_counter``) and as the calling thread's CPU time (``thread_time``: at one
    thread every contender computes on the calling thread, so this is the figure that other
    work on a shared machine disturbs least).

    Stats: ``median_s``, ``min_s``, ``samples`` (wall), ``cpu_median_s``, ``cpu_samples``,
    ``reps`` (calls per batch). A callable that raises is dropped: ``{"error": message}``.
    """
    items = {n: (c if isinstance(c, tuple) else (c, nullcontext)) for n, c in contenders.items()}
    reps, out = {}, {}
    for name, (fn, ctx) in items.items():
        try:
            with ctx():
                for _ in range(warmup):
                    fn()
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
            reps[name] = max(1, math.ceil(min_time / max(dt, 1e-9)))
        except Exception as e:  # noqa: BLE001 - a failing contender is reported, not fatal
            out[name] = {"error": f"{type(e).__name__}: {e}"}
    names = list(reps)
    wall, cpu = {n: [] for n in names}, {n: [] for n in names}
    for r in range(rounds):
        for i in range(len(names)):
            name = names[(i + r) % len(names)]
            (fn, ctx), n = items[name], reps[name]
            with ctx():
                t0, c0 = time.perf_counter(), time.thread_time()
                for _ in range(n):
                    fn()
                c1, t1 = time.thread_time(), time.perf_counter()
            wall[name].append((t1 - t0) / n)
            cpu[name].append((c1 - c0) / n)
    for n in names:
        out[n] = {"median_s": statistics.median(wall[n]), "min_s": min(wall[n]), "samples": wall[n],
                  "cpu_median_s": statistics.median(cpu[n]), "cpu_samples": cpu[n], "reps": reps[n]}
    return out
