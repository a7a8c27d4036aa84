"""The prepared GEMM call path (docs/architecture.md, "One GEMM call"):
ops.Bound.native (_core.PreparedGemm) and Epilogue.native() (_core.GemmEpilogue)
give the one-shot bindings' results bit for bit, check each argument once on the
native side with messages naming it, and keep Bound's fields and methods working."""
import copy
import pickle

import numpy as np
import pytest

import lowbit
from lowbit import _core, ops, reference

from conftest import available_kernels

W2A2 = [k for k in available_kernels() if k["w_bits"] in (0, 2) and k["a_bits"] in (0, 2)]


def _problem(rng, m=5, n=40, k=70, bits=2):
    a = rng.integers(0, 1 << bits, (m, k)).astype(np.uint8)
    w = rng.integers(0, 1 << bits, (n, k)).astype(np.uint8)
    return a, w


def _epilogue(rng, n, requant=None, residual=None):
    return lowbit.Epilogue(rng.uniform(0.5, 2, n).astype(np.float32), rng.normal(size=n).astype(np.float32),
                           (-1.0, 3.0), requant, residual)


def _expected(a, w, ep=None, bits=2):
    acc = reference.gemm(a, w, bits, bits)
    if ep is None:
        return acc
    return reference.epilogue(acc, ep.scale, ep.bias, ep.residual, ep.clamp_lo, ep.clamp_hi, ep.requant)


@pytest.mark.parametrize("kernel", W2A2, ids=[k["name"] for k in W2A2])
@pytest.mark.parametrize("out", ["int32", "float32", "codes", "residual"])
def test_prepared_call_matches_reference_for_every_kernel(kernel, out, rng):
    a, w = _problem(rng)
    packed = lowbit.pack_weights(w, 2)
    ep = None
    if out != "int32":
        residual = rng.normal(size=(a.shape[0], w.shape[0])).astype(np.float32) if out == "residual" else None
        ep = _epilogue(rng, w.shape[0], lowbit.Requant(2, 0.5) if out == "codes" else None, residual)
    with lowbit.use(kernel=kernel["name"]):
        y = lowbit.gemm(a, packed, a_bits=2, epilogue=ep)
        again = lowbit.gemm(a, packed, a_bits=2, epilogue=ep)  # the cached prepared call
    assert lowbit.last_kernel() == kernel["name"]
    want = _expected(a, w, ep)
    assert y.dtype == want.dtype and np.array_equal(y, want) and np.array_equal(again, want)


def test_bound_keeps_its_fields_and_methods(rng):
    a, w = _problem(rng, k=64)
    packed = lowbit.pack_weights(w, 2)
    pa = lowbit.pack_activations(a, 2)
    bound = ops._prepare(pa, packed, pa.M, pa.K)
    for field in ("plan", "fam", "kern", "w_layout", "tables", "flush8", "flush16", "step_bias", "code_shift",
                  "kmax", "pad_product", "col_correction", "native"):
        assert hasattr(bound, field)
    assert (bound.native.N, bound.native.K) == (w.shape[0], a.shape[1])
    k_steps, correction = bound.direct(pa.K)
    want = reference.gemm(a, w, 2, 2)
    y = bound.run(bound.pack(a), pa.M, packed.N, k_steps, correction)
    assert np.array_equal(y, want)
    if bound.fused_codes:
        assert np.array_equal(bound.run_codes(a, packed.N, k_steps, correction), want)
        with pytest.raises(ValueError, match="run_codes: n, k_steps and correction must be the direct GEMM's"):
            bound.run_codes(a, packed.N, k_steps + 1, correction)
    with pytest.raises(ValueError, match="n: expected the weights' N=40"):
        bound.run(bound.pack(a), pa.M, packed.N + 1, k_steps, correction)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m, n, k", [(4, 32, 64), (8, 64, 128), (64, 64, 256), (200, 96, 300)])
def test_inline_and_pooled_problems_agree_with_the_reference(threads, m, n, k, rng):
    # small problems run inline on the calling thread, larger ones on the pool: same sums either way
    a, w = _problem(rng, m, n, k)
    packed = lowbit.pack_weights(w, 2)
    ep = _epilogue(rng, n, lowbit.Requant(4, 0.25, signed=True))
    before = lowbit.get_num_threads()
    try:
        lowbit.set_num_threads(threads)
        y, yq = lowbit.gemm(a, packed, a_bits=2), lowbit.gemm(a, packed, a_bits=2, epilogue=ep)
    finally:
        lowbit.set_num_threads(before)
    assert np.array_equal(y, _expected(a, w)) and np.array_equal(yq, _expected(a, w, ep))


def test_strided_codes_are_copied_not_misread(rng):
    a, w = _problem(rng, 6, 32, 64)
    packed = lowbit.pack_weights(w, 2)
    wide = np.zeros((6, 128), np.uint8)
    wide[:, ::2] = a
    assert np.array_equal(lowbit.gemm(wide[:, ::2], packed, a_bits=2), _expected(a, w))
    assert np.array_equal(lowbit.gemm(np.asfortranarray(a), packed, a_bits=2), _expected(a, w))


# ---- one check per argument, on the native side, with the right exception type ---------------------

def test_bad_activations_name_the_argument(rng):
    a, w = _problem(rng, 4, 32, 64)
    packed = lowbit.pack_weights(w, 2)
    with pytest.raises(TypeError, match="a_codes: expected dtype uint8, got int32"):
        lowbit.gemm(a.astype(np.int32), packed, a_bits=2)
    with pytest.raises(ValueError, match=r"a: K mismatch: activations have K=63, weights have K=64"):
        lowbit.gemm(a[:, :63].copy(), packed, a_bits=2)
    bad = a.copy()
    bad[2, 5] = 7
    with pytest.raises(ValueError, match=r"a_codes: expected every code in \[0, 4\) for bits=2, got max 7"):
        lowbit.gemm(bad, packed, a_bits=2)
    with pytest.raises(ValueError, match="a_codes: expected a 2-D array"):
        lowbit.gemm(a[None], packed, a_bits=2)
    with pytest.raises(TypeError, match="a_codes: expected a numpy.ndarray of uint8 codes, got list"):
        lowbit.gemm(a.tolist(), packed, a_bits=2)


def test_bad_epilogue_and_residual_name_the_argument(rng):
    a, w = _problem(rng, 4, 32, 64)
    packed = lowbit.pack_weights(w, 2)
    with pytest.raises(ValueError, match="epilogue: scale has 31 values but the layer has 32 outputs"):
        lowbit.gemm(a, packed, a_bits=2, epilogue=_epilogue(rng, 31))
    ep = _epilogue(rng, 32)
    ep.residual = np.zeros((4, 31), np.float32)
    with pytest.raises(ValueError, match=r"epilogue: residual shape \(4, 31\), expected \(4, 32\)"):
        lowbit.gemm(a, packed, a_bits=2, epilogue=ep)
    ep.residual = np.zeros((4, 32), np.float64)
    with pytest.raises(TypeError, match="residual: expected dtype float32"):
        lowbit.gemm(a, packed, a_bits=2, epilogue=ep)
    bound = next(iter(packed._bound.values()))
    with pytest.raises(TypeError, match="epilogue: expected a _core.GemmEpilogue or None, got Epilogue"):
        bound.native.codes(a, _epilogue(rng, 32))
    with pytest.raises(ValueError, match="residual: needs an epilogue"):
        bound.native.codes(a, None, np.zeros((4, 32), np.float32))


@pytest.mark.parametrize("args, exc, message", [
    (("float32", np.ones(3, np.float64), np.ones(3, np.float32)), TypeError, "scale: expected dtype float32"),
    (("float32", [1.0, 2.0], np.ones(2, np.float32)), TypeError, "scale: expected a 1-D float32 NumPy array"),
    (("float32", np.ones(3, np.float32), np.ones(2, np.float32)), ValueError, "bias: expected 3 values"),
    (("float32", np.array([1, np.inf], np.float32), np.ones(2, np.float32)), ValueError, "scale: expected finite"),
    (("int32", np.ones(3, np.float32), np.ones(3, np.float32)), ValueError, "out_kind: expected 'float32' or"),
    (("float32", np.ones(3, np.float32), np.ones(3, np.float32), 2.0, 1.0), ValueError, "clamp_lo/clamp_hi"),
    (("codes", np.ones(3, np.float32), np.ones(3, np.float32), 0.0, 1.0, 0.0, 0, 3), ValueError, "inv_step"),
    (("codes", np.ones(3, np.float32), np.ones(3, np.float32), 0.0, 1.0, 1.0, 0, 256), ValueError, "qmin/qmax"),
])
def test_native_epilogue_checks_once_when_built(args, exc, message):
    with pytest.raises(exc, match=message):
        _core.GemmEpilogue(*args)


def test_conv_bad_codes_raise_natively_with_the_largest_code(rng):
    x = rng.integers(0, 4, (1, 5, 5, 8)).astype(np.uint8)
    x[0, 2, 2, 3] = 9
    dw = lowbit.ConvWeights(rng.integers(0, 4, (8, 1, 3, 3)).astype(np.uint8), 2, groups=8)
    pa = lowbit.PackedActivations(x.reshape(25, 8), 2, np.arange(4, dtype=np.int32))  # skips the Python scan
    pa.shape = x.shape
    grouped = lowbit.ConvWeights(rng.integers(0, 4, (8, 2, 3, 3)).astype(np.uint8), 2, groups=4)
    for weights in (dw, grouped):  # _core.dwconv, _core.conv_grouped
        with pytest.raises(ValueError, match=r"x: expected every code in \[0, 4\) for a_bits=2, got max 9"):
            lowbit.conv2d(pa, weights, padding=1)


# ---- the epilogue's native form ----------------------------------------------------------------

def test_epilogue_native_form_follows_changes_and_copies(rng):
    a, w = _problem(rng, 4, 32, 64)
    packed = lowbit.pack_weights(w, 2)
    ep = _epilogue(rng, 32)
    assert np.array_equal(lowbit.gemm(a, packed, a_bits=2, epilogue=ep), _expected(a, w, ep))
    spec = ep.native()
    assert ep.native() is spec  # built once
    ep.scale = ep.scale * 2  # a new array: the native form is rebuilt
    assert ep.native() is not spec
    assert np.array_equal(lowbit.gemm(a, packed, a_bits=2, epilogue=ep), _expected(a, w, ep))
    ep.requant = lowbit.Requant(3, 0.5)
    assert np.array_equal(lowbit.gemm(a, packed, a_bits=2, epilogue=ep), _expected(a, w, ep))
    res = copy.copy(ep)  # the runtime's residual copy keeps the checked native form
    res.residual = rng.normal(size=(4, 32)).astype(np.float32)
    assert res.native() is ep.native()
    assert np.array_equal(lowbit.gemm(a, packed, a_bits=2, epilogue=res), _expected(a, w, res))
    back = pickle.loads(pickle.dumps(res))
    assert np.array_equal(lowbit.gemm(a, packed, a_bits=2, epilogue=back), _expected(a, w, res))
