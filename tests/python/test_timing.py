"""lowbit.apps.timing.time_interleaved: the benchmark protocol (round-robin, rotating start, medians)."""
from contextlib import contextmanager

from lowbit.apps.timing import time_interleaved


def test_round_robin_with_a_rotating_start_and_batched_calls():
    calls, entered = [], []

    @contextmanager
    def ctx():
        entered.append(1)
        yield

    out = time_interleaved({"a": lambda: calls.append("a"), "b": (lambda: calls.append("b"), ctx)},
                           rounds=4, warmup=2, min_time=0)
    assert calls[:6] == ["a"] * 3 + ["b"] * 3          # warmup + one sizing call each
    assert calls[6:] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # min_time=0: one call a batch, start rotates
    assert len(entered) == 1 + 4                       # b's context: once for warmup, once per batch
    for st in out.values():
        assert st["reps"] == 1 and len(st["samples"]) == len(st["cpu_samples"]) == 4
        assert st["min_s"] <= st["median_s"] and st["cpu_median_s"] >= 0


def test_a_failing_contender_is_reported_and_the_others_still_run():
    def boom():
        raise RuntimeError("no kernel")

    out = time_interleaved({"ok": lambda: None, "bad": boom}, rounds=2, min_time=0)
    assert out["bad"] == {"error": "RuntimeError: no kernel"}
    assert len(out["ok"]["samples"]) == 2


def test_batches_last_at_least_min_time():
    import time

    out = time_interleaved({"sleep": lambda: time.sleep(0.001)}, rounds=2, warmup=0, min_time=0.01)
    assert out["sleep"]["reps"] >= 5 and out["sleep"]["median_s"] >= 0.001
