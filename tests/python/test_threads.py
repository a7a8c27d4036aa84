"""Threads: results are bit-identical for any thread count, several Python
threads may call gemm at once, and a forked child (after the parent used the
pool) computes correctly and exits instead of deadlocking."""
import multiprocessing
import re
import threading

import numpy as np
import pytest

import lowbit
from lowbit import reference

from conftest import available_kernels, skip_if_emulated

# (w_bits, a_bits, w codebook, a codebook): one per kernel family at least
CASES = [
    (8, 8, None, None),                                  # dotgemm
    (4, 4, list(range(-128, 128, 16)), list(range(-128, 128, 16))),  # dotgemm (wide products)
    (2, 2, [-2, -1, 0, 1], None),                        # grouplut
    (2, 2, [-128, 127, 0, 1], [-128, 127, 0, 1]),        # lutgemm16 / dotgemm
    (1, 8, [-1, 1], None),                               # dotgemm
]
_EXACT = "cannot compute this GEMM exactly: "
_NOT_INT8 = "needs product sums that fit int8 (max |cbA x cbW| <= 127)"
# For each case (same order as CASES): the planner's refusal, after "kernel '<name>' ", of every
# kernel family (or (family, table kind)) that cannot compute it; every other kernel must run it.
REFUSALS = [
    {"lutgemm": _EXACT + "lutgemm implements W2A2 only (got W8A8)", "grouplut": _EXACT + "grouplut " + _NOT_INT8,
     "grouplut6": _EXACT + "grouplut6 " + _NOT_INT8, "bitserial": _EXACT + "bitserial implements W1 x A1/A2 (got W8A8)",
     "dot8": _EXACT + "dot8 needs weight levels in [-128, 127], got [0, 255]"},
    {"lutgemm": _EXACT + "lutgemm implements W2A2 only (got W4A4)", "grouplut": _EXACT + "grouplut " + _NOT_INT8,
     "grouplut6": _EXACT + "grouplut6 " + _NOT_INT8, "bitserial": _EXACT + "bitserial implements W1 x A1/A2 (got W4A4)",
     "dot8": _EXACT + "dot8 needs activation levels in [0, 255] (or 8-bit levels in [-128, 127]), got [-128, 112]"},
    {"bitserial": _EXACT + "bitserial implements W1 x A1/A2 (got W2A2)"},
    {("lutgemm", "i8"): "uses i8 tables but these codebooks need split (products up to 16384 need int16: "
                        "lo/hi byte tables)",
     "grouplut": _EXACT + "grouplut " + _NOT_INT8, "grouplut6": _EXACT + "grouplut6 " + _NOT_INT8,
     "bitserial": _EXACT + "bitserial implements W1 x A1/A2 (got W2A2)",
     "dot8": _EXACT + "dot8 needs activation levels in [0, 255] (or 8-bit levels in [-128, 127]), got [-128, 127]"},
    {"lutgemm": _EXACT + "lutgemm implements W2A2 only (got W1A8)", "grouplut": _EXACT + "grouplut " + _NOT_INT8,
     "grouplut6": _EXACT + "grouplut6 " + _NOT_INT8, "bitserial": _EXACT + "bitserial implements W1 x A1/A2 (got W1A8)"},
]


def _refusal(case_index, kernel):
    """The exact refusal expected when ``kernel`` is forced on CASES[case_index], or None."""
    refused = REFUSALS[case_index]
    why = refused.get((kernel["family"], kernel["table_kind"]), refused.get(kernel["family"]))
    return None if why is None else f"kernel {kernel['name']!r} {why}"


def _problem(rng, bw, ba, m=150, n=200, k=301):
    a = rng.integers(0, 1 << ba, (m, k), dtype=np.uint8)
    w = rng.integers(0, 1 << bw, (n, k), dtype=np.uint8)
    return a, w


@pytest.mark.parametrize("case_index", range(len(CASES)), ids=lambda i: "W{}A{}-{}".format(*CASES[i][:2], i))
def test_deterministic_across_thread_counts(case_index, rng):
    bw, ba, cb_w, cb_a = CASES[case_index]
    a, w = _problem(rng, bw, ba)
    ref = reference.gemm(a, w, ba, bw, cb_a, cb_w)
    packed = lowbit.pack_weights(w, bw, cb_w)
    kernels = available_kernels()
    results = {}
    for n in (1, 2, 3, 7):
        lowbit.set_num_threads(n)
        assert lowbit.get_num_threads() == n
        results[n] = lowbit.gemm(a, packed, ba, cb_a)
        used = lowbit.last_kernel()
        assert used in [k["name"] for k in kernels]
        assert np.array_equal(results[n], ref), (n, used)
        ran = 0
        for kernel in kernels:  # every kernel that can compute it, at this thread count; the others refuse
            refusal = _refusal(case_index, kernel)
            with lowbit.use(kernel=kernel["name"]):
                if refusal is not None:
                    with pytest.raises(ValueError, match="^" + re.escape(refusal) + "$"):
                        lowbit.gemm(a, packed, ba, cb_a)
                    continue
                y = lowbit.gemm(a, packed, ba, cb_a)
            assert np.array_equal(y, ref), (n, kernel["name"])
            ran += 1
        # at least a scalar twin and a SIMD kernel (only the scalar one under LOWBIT_ISA=scalar)
        simd_allowed = any(k["tier"] != "scalar" for k in kernels)
        assert ran >= (2 if simd_allowed else 1), (n, ran)
    for n in (2, 3, 7):
        assert np.array_equal(results[n], results[1])


def test_concurrent_callers(rng):
    lowbit.set_num_threads(2)
    jobs = []
    for i in range(6):
        bw, ba, cb_w, cb_a = CASES[i % len(CASES)]
        a, w = _problem(rng, bw, ba, m=40 + 7 * i, n=70 + 5 * i, k=129 + i)
        jobs.append((lowbit.pack_weights(w, bw, cb_w), a, ba, cb_a, reference.gemm(a, w, ba, bw, cb_a, cb_w)))
    errors = []
    start = threading.Barrier(len(jobs))

    def worker(job):
        packed, a, ba, cb_a, ref = job
        try:
            start.wait(timeout=30)
            for _ in range(15):
                y = lowbit.gemm(a, packed, ba, cb_a)
                if not np.array_equal(y, ref):
                    errors.append(f"mismatch in {threading.current_thread().name} ({lowbit.last_kernel()})")
                    return
        except Exception as exc:  # reported below, never swallowed
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(job,), name=f"caller{i}") for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a caller thread hung"
    assert not errors, errors


def _child(packed, a, ba, cb_a, ref, threads, queue):
    lowbit.set_num_threads(threads)
    ok = all(np.array_equal(lowbit.gemm(a, packed, ba, cb_a), ref) for _ in range(3))
    queue.put(bool(ok))


@skip_if_emulated
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # forking one is the point
@pytest.mark.parametrize("child_threads", [1, 2])
def test_fork_after_pool_use(child_threads, rng):
    ctx = multiprocessing.get_context("fork")
    bw, ba, cb_w, cb_a = CASES[0]
    a, w = _problem(rng, bw, ba)
    ref = reference.gemm(a, w, ba, bw, cb_a, cb_w)
    packed = lowbit.pack_weights(w, bw, cb_w)
    lowbit.set_num_threads(2)
    assert np.array_equal(lowbit.gemm(a, packed, ba, cb_a), ref)  # the parent's pool exists and ran
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(packed, a, ba, cb_a, ref, child_threads, queue))
    proc.start()
    proc.join(timeout=60)
    if proc.is_alive():
        proc.kill()
        proc.join()
        pytest.fail("forked child deadlocked (did not finish in 60 s)")
    assert proc.exitcode == 0
    assert queue.get(timeout=5) is True
    assert np.array_equal(lowbit.gemm(a, packed, ba, cb_a), ref)  # the parent's pool still works
