"""Concurrency and process stress, bounded in time (docs/robustness.md).

* many Python threads run several models while other threads change
  lowbit.set_num_threads (process-wide) and lowbit.use (per thread): every
  result equals the single-threaded one;
* fork while the thread pool is busy: the child computes correctly;
* a KeyboardInterrupt during a long call leaves the library usable;
* repeated calls do not grow memory.
Every wait has a timeout, so a deadlock fails the test instead of hanging it."""
import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import pytest

import lowbit

from conftest import skip_if_emulated
from numpy_models import images, small_cnn

SANITIZED = bool(os.environ.get("LOWBIT_SANITIZED"))
DEADLINE_S = 120  # no test here takes a tenth of it unless it is stuck


def _models():
    """Three models of different kernels (W2A2 grouplut, W4A4 dot8/grouplut, W1A2), with the
    inputs and the outputs a single thread computes."""
    out = []
    for seed, (wb, ab) in enumerate([(2, 2), (4, 4), (1, 2)]):
        m = small_cnn(seed, wb, ab, size=12)
        x = images(100 + seed, 9, size=12)
        lowbit.set_num_threads(1)
        out.append((m, x, m(x)))
    return out


def _join_all(threads):
    end = time.monotonic() + DEADLINE_S
    for t in threads:
        t.join(timeout=max(0.0, end - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"threads did not finish in {DEADLINE_S} s (deadlock?): {stuck}"


def test_threads_on_several_models_while_settings_change():
    models = _models()
    tiers = lowbit.supported_tiers()
    errors, stop = [], threading.Event()

    def caller(i):
        m, x, want = models[i % len(models)]
        settings = [{}, {"isa": tiers[i % len(tiers)]}, {"strategy": "fastest"}]
        try:
            for it in range(12):
                with lowbit.use(**settings[(i + it) % len(settings)]):  # per thread: never leaks to the others
                    y = m(x)
                if not np.array_equal(y, want):
                    errors.append(f"caller {i} iteration {it}: result differs from the single-threaded one")
                    return
        except Exception as exc:  # reported below, never swallowed
            errors.append(f"caller {i}: {exc!r}")

    def thread_count_changer():
        n = 0
        while not stop.is_set():
            lowbit.set_num_threads(1 + n % 3)
            n += 1
            time.sleep(0.001)

    def dispatch_changer():
        # use() is thread-local: this thread's settings must not reach the callers
        while not stop.is_set():
            for tier in tiers:
                with lowbit.use(isa=tier, strategy="lutgemm"):
                    time.sleep(0.001)

    callers = [threading.Thread(target=caller, args=(i,), name=f"caller{i}") for i in range(6)]
    changers = [threading.Thread(target=f, name=f.__name__) for f in (thread_count_changer, dispatch_changer)]
    for t in changers + callers:
        t.start()
    try:
        _join_all(callers)
    finally:
        stop.set()
        _join_all(changers)
    assert not errors, errors


def _child_computes(model, x, want, threads, queue):
    lowbit.set_num_threads(threads)
    queue.put(all(np.array_equal(model(x), want) for _ in range(3)))


@skip_if_emulated
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # forking one is the point
def test_fork_while_the_pool_is_busy():
    (m, x, want), *_ = _models()
    big = np.concatenate([x] * 30)
    lowbit.set_num_threads(2)
    stop, busy = threading.Event(), threading.Event()
    errors = []

    def keep_pool_busy():
        try:
            while not stop.is_set():
                m(big)
                busy.set()
        except Exception as exc:
            errors.append(repr(exc))
            busy.set()

    worker = threading.Thread(target=keep_pool_busy, name="busy")
    worker.start()
    ctx = multiprocessing.get_context("fork")
    try:
        assert busy.wait(timeout=DEADLINE_S)
        for child_threads in (1, 2, 2, 2):
            queue = ctx.Queue()
            proc = ctx.Process(target=_child_computes, args=(m, x, want, child_threads, queue))
            proc.start()  # forks while the busy thread is (most likely) inside a parallel GEMM
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
                proc.join()
                pytest.fail("a child forked while the pool was busy deadlocked")
            assert proc.exitcode == 0
            assert queue.get(timeout=10) is True
    finally:
        stop.set()
        _join_all([worker])
    assert not errors, errors
    assert np.array_equal(m(x), want)  # the parent's pools still work


def test_keyboard_interrupt_during_a_long_call_leaves_the_library_usable():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("the test runner runs this test outside the main thread, and SIGINT reaches only the main thread")
    (m, x, want), *_ = _models()
    big = np.concatenate([x] * 60)
    lowbit.set_num_threads(2)
    interrupted = 0
    for delay in (0.05, 0.02, 0.1):
        timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            end = time.monotonic() + 10
            while time.monotonic() < end:  # long calls until the signal lands in one
                m(big)
        except KeyboardInterrupt:
            interrupted += 1
        finally:
            timer.cancel()
            timer.join()
        assert np.array_equal(m(x), want)                    # usable, same result
        assert np.array_equal(m(big)[:len(x)], want)
    assert interrupted == 3


@pytest.mark.skipif(SANITIZED, reason="AddressSanitizer's quarantine holds freed memory: RSS is not comparable")
def test_repeated_calls_do_not_grow_memory():
    def rss_bytes():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    models = _models()
    lowbit.set_num_threads(2)

    def run_all(times):
        for _ in range(times):
            for m, x, want in models:
                assert np.array_equal(m(x), want)
                lowbit.gemm(np.ones((50, 64), np.uint8), lowbit.pack_weights(np.ones((30, 64), np.uint8), 2), 2)

    run_all(30)  # caches, pools and malloc arenas reach their steady state
    before = rss_bytes()
    run_all(300)
    grown = rss_bytes() - before
    assert grown < 8 << 20, f"RSS grew by {grown / 2**20:.1f} MiB over 900 model calls"
