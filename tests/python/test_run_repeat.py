"""Model.run's lean path for a repeat call (executor.run_repeat): after one native
run, a call with an input of the same shape goes straight to the cached plan. It
must give the full path's bytes, its errors and its reports, and step aside for
anything else (another shape, dtype, layout, batch split or dispatch state)."""
import re

import numpy as np
import pytest

import lowbit
from lowbit import _dispatch
from lowbit import executor as lbx
from numpy_models import images, small_cnn


def _model_and_first_call(seed=0, n=2):
    m = small_cnn(seed=seed)
    x = images(seed, n)
    want = m.run(x, reference=True)
    assert m(x).tobytes() == want.tobytes()  # the full path: remembers the plan
    assert m._memo["last_native"][0] == x.shape
    return m, x, want


def _repeat_taken(m, x, **kw):
    """Whether Model.run(x, **kw) would take the lean path now."""
    return lbx.run_repeat(m, x, kw.get("batch_size", 256), kw.get("check_finite", True)) is not None


def test_repeat_gives_the_same_bytes_and_reports():
    m, x, want = _model_and_first_call()
    x2 = images(7, 2)
    assert _repeat_taken(m, x2)
    assert m(x2).tobytes() == m.run(x2, reference=True).tobytes()
    assert m(x).tobytes() == want.tobytes()
    kernels = {n.name: n.kernel for n in m.nodes}
    m.trace(x)  # the nodes now report the trace plan's run: the lean path steps aside once
    assert not _repeat_taken(m, x)
    assert m(x).tobytes() == want.tobytes()
    assert {n.name: n.kernel for n in m.nodes} == kernels
    assert _dispatch.last_kernel() == [n.kernel for n in m.nodes if n.kernel][-1]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_repeat_refuses_non_finite_input_naming_the_index(bad):
    m, x, want = _model_and_first_call(n=3)
    y = x.copy()
    y[1, 2, 5, 7] = bad
    with pytest.raises(ValueError, match=r"x: expected finite values.*\(1, 2, 5, 7\).*check_finite=False"):
        m(y)
    with pytest.raises(ValueError, match=r"x: expected finite values.*\(1, 2, 5, 7\)"):
        m.run(y, batch_size=2)
    # the caller vouches for its input: the native run maps it as the reference does
    assert m(y, check_finite=False).tobytes() == m.run(y, reference=True, check_finite=False).tobytes()
    assert m(x).tobytes() == want.tobytes()


def test_repeat_steps_aside_for_other_inputs():
    m, x, want = _model_and_first_call(n=4)
    assert not _repeat_taken(m, x[:3])                         # another shape: the full path
    assert not _repeat_taken(m, x.astype(np.float64))          # another dtype: converted by the full path
    assert not _repeat_taken(m, np.asfortranarray(x))          # not C-contiguous
    assert not _repeat_taken(m, x, batch_size=2)               # split into batches
    assert not _repeat_taken(m, x.tolist())
    assert m(x.astype(np.float64)).tobytes() == want.tobytes()
    assert m(np.asfortranarray(x)).tobytes() == want.tobytes()
    assert m.run(x, batch_size=2).tobytes() == want.tobytes()
    with pytest.raises(ValueError, match="batch_size"):
        m.run(x, batch_size=0)


def test_repeat_follows_the_dispatch_state(monkeypatch):
    m, x, want = _model_and_first_call()
    # another dispatch state: the scalar tier, or where the tier is capped at scalar already
    # (LOWBIT_ISA=scalar, as in the sanitizer runs) autotuning switched
    to_scalar = _dispatch.tier_cap() != "scalar"
    other = {"isa": "scalar"} if to_scalar else {"autotune": not _dispatch.autotune_enabled()}
    before = _dispatch.state()
    with lowbit.use(**other):
        assert _dispatch.state() != before
        assert not _repeat_taken(m, x)  # another dispatch state: another plan
        assert m(x).tobytes() == want.tobytes()
        if to_scalar:
            assert all(n.kernel.endswith("__scalar") for n in m.nodes if n.kernel)
        assert _repeat_taken(m, x)
    assert not _repeat_taken(m, x)
    monkeypatch.setenv("LOWBIT_EXECUTOR", "python")
    assert not _repeat_taken(m, x)
    assert m(x).tobytes() == want.tobytes()


@pytest.mark.parametrize("cin", [1, 3, 20])  # the input quantizer's one-plane, few-channel and gather paths
@pytest.mark.parametrize("isa", [None, "scalar"])
def test_input_quantizer_checks_the_input(cin, isa):
    """A plan whose first step quantizes the NCHW input checks it there (no pass of its own):
    a NaN or Inf anywhere (first and last value, every channel) raises NonFiniteInput and leaves
    the output unwritten; Model.__call__ then names the index as before."""
    from lowbit import _core
    from test_fused_pack import chain

    m = chain(cin, 8)
    x = np.random.default_rng(cin).normal(size=(2, cin, 9, 9)).astype(np.float32)
    with lowbit.use(isa=isa):
        want = m(x)
        plan = lbx.plan_for(m, x.shape)
        assert plan.core.step_kinds[0] == "quantize"
        spots = [(0, 0, 0, 0), (1, cin - 1, 8, 8)] + [(1, c, 4, 3) for c in range(cin)]
        for spot in spots:
            for bad in (np.nan, np.inf, -np.inf):
                y = x.copy()
                y[spot] = bad
                out = np.full(plan.out_shape, 7.0, np.float32)
                with pytest.raises(_core.NonFiniteInput, match="expected finite values"):
                    plan.core.run(y, out, False, True)
                assert (out == 7.0).all()
                with pytest.raises(ValueError, match=r"expected finite values.*" + re.escape(str(spot))):
                    m(y)
        assert m(x).tobytes() == want.tobytes()  # the plan runs on after a refused input
        assert plan.core.run(x, np.empty(plan.out_shape, np.float32), False, True) is None
