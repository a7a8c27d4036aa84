"""The thread pool under many tiny parallel calls: several Python threads at
once, the thread count changing underneath them, results bit-exact. (A
parallel_for returns as soon as every task it handed out has finished; a
worker waking after the work is gone must neither run nor corrupt a later
job: these are the calls that would show it.)"""
import os
import threading

import numpy as np
import pytest

import lowbit
from lowbit import reference


def _jobs(rng):
    """(call, expected) pairs: tiny problems that still take the parallel paths
    (GEMMs just above the inline threshold, activation packers, grouped and
    depthwise convolutions)."""
    jobs = []
    # W2A2 grouplut: 32 x 64 x 64 steps = 2**17 output-steps, the first size that runs parallel
    for m, n, k, bits, cb in [(32, 64, 256, 2, None), (48, 40, 300, 2, [-2, -1, 0, 1]), (17, 96, 512, 4, None),
                              (24, 64, 400, 8, None)]:
        a = rng.integers(0, 1 << bits, (m, k), dtype=np.uint8)
        w = rng.integers(0, 1 << bits, (n, k), dtype=np.uint8)
        packed = lowbit.pack_weights(w, bits, cb)
        ref = reference.gemm(a, w, bits, bits, None, cb)
        jobs.append((lambda a=a, p=packed, b=bits: lowbit.gemm(a, p, b), ref))
    for m, k, bits in [(600, 256, 2), (300, 700, 4)]:  # packers: parallel row blocks from 2 * 16 Ki codes
        a = rng.integers(0, 1 << bits, (m, k), dtype=np.uint8)
        w = rng.integers(0, 1 << bits, (8, k), dtype=np.uint8)
        packed = lowbit.pack_weights(w, bits)
        ref = reference.gemm(a, w, bits, bits)
        jobs.append((lambda a=a, p=packed, b=bits: lowbit.gemm(lowbit.pack_activations(a, b), p), ref))
    # depthwise and grouped: large enough for the pool (conv.cc runs smaller loops inline)
    for cin, cout, groups in [(32, 32, 32), (16, 32, 4)]:
        x = rng.integers(0, 4, (1, 40, 40, cin), dtype=np.uint8)
        cw = lowbit.ConvWeights(rng.integers(0, 4, (cout, cin // groups, 3, 3), dtype=np.uint8), 2, groups=groups)
        ref = lowbit.conv2d(x, cw, padding=1, a_bits=2)
        jobs.append((lambda x=x, cw=cw: lowbit.conv2d(x, cw, padding=1, a_bits=2), ref))
    return jobs


@pytest.mark.parametrize("callers", [1, 2, 3])
def test_many_tiny_parallel_calls(callers, rng):
    jobs = _jobs(rng)
    for fn, ref in jobs:  # every job is exact on one thread first
        lowbit.set_num_threads(1)
        assert np.array_equal(fn(), ref)
    calls = int(os.environ.get("LOWBIT_POOL_STRESS_CALLS", "150"))
    errors = []
    start = threading.Barrier(callers + 1)
    stop = threading.Event()

    def caller(seed):
        order = np.random.default_rng(seed)
        try:
            start.wait(timeout=30)
            for _ in range(calls):
                fn, ref = jobs[int(order.integers(len(jobs)))]
                y = fn()
                if not np.array_equal(y, ref):
                    errors.append(f"mismatch in {threading.current_thread().name} ({lowbit.last_kernel()})")
                    return
        except Exception as exc:  # reported below, never swallowed
            errors.append(repr(exc))

    def retune():  # the thread count changes while the callers run (pools of every size in use)
        counts = np.random.default_rng(99)
        start.wait(timeout=30)
        while not stop.is_set():
            lowbit.set_num_threads(int(counts.integers(1, 5)))
            stop.wait(0.001)

    threads = [threading.Thread(target=caller, args=(i,), name=f"caller{i}") for i in range(callers)]
    tuner = threading.Thread(target=retune, name="retune")
    for t in threads + [tuner]:
        t.start()
    for t in threads:
        t.join(timeout=300)
    stop.set()
    tuner.join(timeout=30)
    assert not any(t.is_alive() for t in threads + [tuner]), "a thread hung"
    assert not errors, errors


def test_thread_count_is_cached_and_reset():
    lowbit.set_num_threads(3)
    assert lowbit.get_num_threads() == 3
    lowbit.set_num_threads(0)  # the default: the affinity mask, read again now
    assert lowbit.get_num_threads() == lowbit._core.default_num_threads() == len(os.sched_getaffinity(0))
