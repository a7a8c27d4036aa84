"""Defined behaviour for bad input (docs/robustness.md: one test per table row).

NaN/Inf inputs, empty batches, wrong dtype/layout/contiguity, sizes past the
limits (refused before anything is allocated) and allocation failure."""
import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

import lowbit
from lowbit import _core, reference
from lowbit.packing import MAX_ELEMENTS

from conftest import EMULATED, available_kernels, python_command
from numpy_models import images, small_cnn

SANITIZED = bool(os.environ.get("LOWBIT_SANITIZED"))
HUGE = 2**31  # elements: one past lowbit's per-array limit


def huge_view(shape, dtype=np.uint8):
    """An array of `shape` that takes one element of memory (every stride 0)."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=shape, strides=(0,) * len(shape))


def refused_without_allocating(fn, match, allowed=0):
    """fn() raises ValueError matching `match` having allocated at most `allowed`
    bytes + 1 MiB (tracemalloc sees NumPy's buffers)."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match):
            fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < allowed + (1 << 20), f"allocated {peak} bytes before refusing"


# ---- NaN / Inf ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_model_refuses_non_finite_input_by_default(bad):
    m = small_cnn()
    x = images(0, 3)
    x[1, 2, 5, 7] = bad
    with pytest.raises(ValueError, match=r"x: expected finite values.*\(1, 2, 5, 7\).*check_finite=False"):
        m(x)
    with pytest.raises(ValueError, match="finite"):
        m.run(x, reference=True)


def test_model_check_finite_false_maps_nan_to_code_0_and_inf_to_the_clamp():
    m = small_cnn()
    x = images(1, 4)
    x[0, 0, 0, 0], x[1, 1, 3, 3], x[2, 2, 6, 6] = np.nan, np.inf, -np.inf
    y = m(x, check_finite=False)
    assert np.isfinite(y).all()
    with np.errstate(invalid="ignore"):
        assert np.array_equal(y, m.run(x, reference=True, check_finite=False))
    # NaN acts as code 0 (level 0 here), +Inf as the top code, -Inf as code 0
    clean = x.copy()
    clean[0, 0, 0, 0], clean[1, 1, 3, 3], clean[2, 2, 6, 6] = 0.0, 1e6, -1e6
    assert np.array_equal(y, m(clean))


def test_epilogue_nan_from_the_residual_gives_code_0_in_every_path(rng):
    """inf - inf in a residual add is NaN: the requantized code is 0 in the
    scalar and AVX2 epilogues and in the reference alike."""
    acc = rng.integers(-100, 100, (5, 37)).astype(np.int32)
    res = np.zeros((5, 37), np.float32)
    res[1, 3], res[2, 20], res[4, 36] = np.nan, np.inf, -np.inf
    scale, bias = np.full(37, 0.5, np.float32), np.zeros(37, np.float32)
    for qmin, signed in ((0, False), (-8, True)):
        rq = lowbit.Requant(4, 0.25, signed)
        with np.errstate(invalid="ignore"):
            ref = reference.epilogue(acc, scale, bias, res, requant=rq)
        assert ref[1, 3] == 0 and ref[4, 36] == 0 and ref[2, 20] == 15
        out = _core.epilogue(acc, scale, bias, res, out_kind="codes", inv_step=float(rq.inv_step), qmin=rq.qmin,
                             qmax=rq.qmax)
        assert np.array_equal(out, ref), qmin


# ---- empty batch -------------------------------------------------------------------------------

def test_model_empty_batch_returns_an_empty_result_of_the_right_shape():
    m = small_cnn()
    y = m(np.zeros((0, 3, 12, 12), np.float32))
    assert y.shape == (0, 10) and y.dtype == np.float32
    assert m.run(np.zeros((0, 3, 8, 8), np.float32), reference=True).shape == (0, 10)


@pytest.mark.parametrize("kernel", available_kernels(), ids=lambda k: k["name"])
def test_gemm_empty_batch_on_every_kernel(kernel):
    bits = {"w": kernel["w_bits"] or 2, "a": kernel["a_bits"] or 2}
    packed = lowbit.pack_weights(np.ones((9, 40), np.uint8), bits["w"])
    # every kernel computes its own bit widths with the default (unsigned) codebooks: none may refuse
    with lowbit.use(kernel=kernel["name"]):
        y = lowbit.gemm(np.zeros((0, 40), np.uint8), packed, bits["a"])
        ep = lowbit.Epilogue(np.ones(9, np.float32), np.zeros(9, np.float32))
        yf = lowbit.linear(np.zeros((0, 40), np.uint8), packed, epilogue=ep, a_bits=bits["a"])
        assert lowbit.last_kernel() == kernel["name"]
    assert y.shape == (0, 9) and y.dtype == np.int32
    assert yf.shape == (0, 9) and yf.dtype == np.float32


def test_conv_empty_batch():
    w = lowbit.ConvWeights(np.ones((8, 4, 3, 3), np.uint8), 2)
    y = lowbit.conv2d(np.zeros((0, 5, 5, 4), np.uint8), w, padding=1)
    assert y.shape == (0, 5, 5, 8) and y.dtype == np.int32


# ---- dtype / layout / contiguity ---------------------------------------------------------------

def test_model_input_dtype_and_layout():
    m = small_cnn()
    x = images(2, 3)
    y = m(x)
    assert np.array_equal(m(x.astype(np.float64)), y)               # float64: converted
    assert np.array_equal(m(x.astype(">f4")), y)                    # big-endian float32: converted
    wide = np.zeros((3, 3, 12, 24), np.float32)
    wide[..., ::2] = x
    assert np.array_equal(m(wide[..., ::2]), y)                     # non-contiguous view: read correctly
    assert np.array_equal(m(np.asfortranarray(x)), y)               # Fortran order: read correctly
    with pytest.raises(TypeError, match="x: expected float32 values, got dtype int64"):
        m(x.astype(np.int64))
    with pytest.raises(TypeError, match="x: expected a float32 NCHW numpy.ndarray"):
        m(x.tolist())
    with pytest.raises(ValueError, match="x: expected a 4-D NCHW batch"):
        m(x[0])
    with pytest.raises(ValueError, match="x: expected 3 channels"):
        m(x.transpose(0, 2, 3, 1))  # NHWC by mistake


def test_gemm_and_conv_codes_layout(rng):
    a = rng.integers(0, 4, (13, 80), dtype=np.uint8)
    w = rng.integers(0, 4, (11, 40), dtype=np.uint8)
    packed = lowbit.pack_weights(w, 2)
    ref = lowbit.gemm(np.ascontiguousarray(a[:, ::2]), packed, 2)
    assert np.array_equal(lowbit.gemm(a[:, ::2], packed, 2), ref)                 # strided: copied
    assert np.array_equal(lowbit.gemm(np.asfortranarray(a[:, ::2]), packed, 2), ref)
    assert np.array_equal(lowbit.pack_weights(np.asfortranarray(w), 2).codes(), w)
    with pytest.raises(TypeError, match="a_codes: expected dtype uint8, got float32"):
        lowbit.gemm(a[:, ::2].astype(np.float32), packed, 2)
    with pytest.raises(TypeError, match="a_codes: expected dtype uint8, got int8"):
        lowbit.gemm(a[:, ::2].view(np.int8), packed, 2)
    x = rng.integers(0, 4, (2, 6, 6, 8), dtype=np.uint8)
    cw = lowbit.ConvWeights(rng.integers(0, 4, (5, 4, 3, 3), dtype=np.uint8), 2)
    ref = lowbit.conv2d(np.ascontiguousarray(x[..., ::2]), cw, padding=1)
    assert np.array_equal(lowbit.conv2d(x[..., ::2], cw, padding=1), ref)
    with pytest.raises(TypeError, match="x: expected NHWC uint8 codes"):
        lowbit.conv2d(x.astype(np.int32), cw)


# ---- sizes past the limits ---------------------------------------------------------------------

def test_gemm_operands_past_the_element_limit_are_refused_before_allocation():
    packed = lowbit.pack_weights(np.zeros((4, 2**16), np.uint8), 2)
    refused_without_allocating(lambda: lowbit.gemm(huge_view((2**15, 2**16)), packed, 2), "a_codes: .*2\\*\\*31 - 1")
    refused_without_allocating(lambda: lowbit.pack_weights(huge_view((2**15, 2**16)), 2), "w_codes: .*limit")
    wide = lowbit.pack_weights(np.zeros((2**16, 4), np.uint8), 2)
    refused_without_allocating(lambda: lowbit.gemm(huge_view((2**15, 4)), wide, 2), "output: shape \\(32768, 65536\\)")
    assert 2**15 * 2**16 == HUGE > MAX_ELEMENTS


def test_conv_sizes_past_the_limit_are_refused_before_allocation():
    cw = lowbit.ConvWeights(np.zeros((256, 1, 1, 1), np.uint8), 2)
    refused_without_allocating(lambda: lowbit.conv2d(huge_view((2**11, 2**10, 2**10, 1)), cw), "x: .*limit")
    # the 16 MiB input is copied (it is valid); the 4 Gi-element int32 output is refused
    refused_without_allocating(lambda: lowbit.conv2d(huge_view((1, 2**12, 2**12, 1)), cw), "output: .*limit",
                               allowed=2**24)


def test_conv_k_beyond_k_max_is_refused():
    # products up to 128 * 128: K_max = (2**31 - 1) // 16384 = 131071 < 3 * 3 * 16384
    cb = [-128, -1, 0, 127]
    cw = lowbit.ConvWeights(np.zeros((1, 16384, 3, 3), np.uint8), 2, cb)
    with pytest.raises(ValueError, match="K=147456 exceeds K_max=131071"):
        lowbit.conv2d(np.zeros((1, 3, 3, 16384), np.uint8), cw, a_codebook=cb)


def test_native_layer_refuses_absurd_sizes():
    """A direct _core call with sizes whose products overflow is refused, never wrapped."""
    k = next(k for k in lowbit.kernels() if k["available"] and k["family"] == "grouplut")
    buf = np.zeros(64, np.uint8)
    tables = np.zeros(256 * 32, np.int8)
    with pytest.raises(ValueError, match="2\\^31 - 1"):
        _core.gemm(k["index"], np.zeros((1, 64), np.uint8), buf, tables, 1, 2**62, 2**62, 1, 1, 0)
    with pytest.raises(ValueError, match="2\\^31 - 1"):
        _core.im2col_nhwc(np.zeros((1, 1), np.uint8), 2**32, 2**32, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0)


# ---- allocation failure ------------------------------------------------------------------------

@pytest.mark.skipif(SANITIZED, reason="AddressSanitizer reserves terabytes of address space: RLIMIT_AS cannot apply")
@pytest.mark.skipif(EMULATED, reason="qemu-user reserves the guest's address space: RLIMIT_AS cannot apply")
def test_allocation_failure_raises_memory_error_and_the_library_stays_usable():
    code = textwrap.dedent("""
        import resource, numpy as np, lowbit
        packed = lowbit.pack_weights(np.ones((40000, 8), np.uint8), 2)
        a = np.ones((40000, 8), np.uint8)
        small = lowbit.gemm(a[:3], packed, 2)            # pools, tables and layouts exist
        limit = 3 << 30                                # the 40000 x 40000 int32 output needs 6.4 GB
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        for call in (lambda: lowbit.gemm(a, packed, 2),
                     lambda: lowbit.linear(a, packed, epilogue=lowbit.Epilogue(np.ones(40000, np.float32)), a_bits=2)):
            try:
                call()
                print("no error")
            except MemoryError as exc:
                print("MemoryError", exc)
        assert np.array_equal(lowbit.gemm(a[:3], packed, 2), small)
        print("usable")
    """)
    r = subprocess.run([*python_command(), "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("MemoryError") == 2 and "usable" in r.stdout, r.stdout + r.stderr
