"""The native float32 convolution / linear kernel (_core.FloatConv, ops/float_gemm.h): its AVX2
tier and scalar twin give identical bits, both equal the NumPy reference of the same summation
order (lowbit.runtime.floatops, native=False) byte for byte, and agree with float64 / BLAS to
float rounding; odd shapes, long chains, threads, bad arguments."""
import numpy as np
import pytest

import lowbit
from lowbit import _core
from lowbit.runtime import floatops
from numpy_models import conv_nhwc_float64


def _bytes_equal(a, b, what=""):
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape, what
    assert a.tobytes() == b.tobytes(), what


def _all_ways(x, w, b, stride, pad, dil, groups):
    """(avx2-or-best tier, scalar twin, NumPy reference): asserted byte-identical; returns the tier's."""
    conv = _core.FloatConv(w, b, groups)
    fast = conv(x, stride, pad, dil, True)
    scalar = conv(x, stride, pad, dil, False)
    ref = floatops.conv2d_f32(x, w, b, stride, pad, dil, groups, native=False)
    _bytes_equal(fast, scalar, "tier vs scalar twin")
    _bytes_equal(fast, ref, "native vs NumPy reference")
    _bytes_equal(floatops.conv2d_f32(x, w, b, stride, pad, dil, groups), fast, "floatops native")
    return fast


@pytest.mark.parametrize("b,h,w,cin,cout,k,stride,pad,dil,groups", [
    (1, 1, 1, 1, 1, 1, 1, 0, 1, 1),        # one output, K = 1
    (2, 9, 10, 3, 8, 3, 1, 1, 1, 1),
    (1, 13, 11, 3, 32, 3, 2, 1, 1, 1),     # the zoo's stem shape, small
    (1, 12, 12, 3, 64, 7, 2, 3, 1, 1),     # ResNet's 7x7 stem
    (3, 5, 7, 4, 17, 3, 1, 1, 1, 1),       # a partial panel, M not a multiple of the tile rows
    (1, 3, 3, 5, 15, 1, 1, 0, 1, 1),       # 1x1, direct rows
    (2, 6, 6, 8, 33, 1, 2, 0, 1, 1),       # 1x1 strided: gathered rows
    (2, 9, 10, 8, 16, 3, 1, 2, 2, 4),      # grouped, dilated
    (2, 9, 10, 6, 12, 3, 1, 1, 1, 6),      # channel multiplier 2: the grouped path
    (2, 9, 10, 8, 8, 3, 2, 1, 1, 8),       # depthwise (a vector + no tail)
    (1, 7, 9, 19, 19, 5, 1, 2, 1, 19),     # depthwise with a channel tail
    (1, 6, 6, 3, 3, 3, 1, 4, 3, 3),        # padding larger than the map
    (2, 5, 4, 64, 40, 3, 1, 1, 1, 1),      # K = 576
    (1, 40, 37, 3, 20, 3, 2, 1, 1, 1),     # windows read in place (interior tiles) and im2col tiles mixed
    (2, 30, 29, 4, 16, 5, 1, 2, 1, 1),
    (1, 23, 50, 3, 64, 7, 2, 3, 1, 1),
])
def test_conv_tiers_reference_and_float64(b, h, w, cin, cout, k, stride, pad, dil, groups):
    rng = np.random.default_rng(cin * 1000 + cout * 10 + k)
    x = rng.standard_normal((b, h, w, cin)).astype(np.float32)
    wt = rng.standard_normal((cout, cin // groups, k, k)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    args = ((stride, stride), (pad, pad), (dil, dil), groups)
    out = _all_ways(x, wt, bias, *args)
    ref = conv_nhwc_float64(x, wt, bias, *args)
    kdim = k * k * cin // groups
    np.testing.assert_allclose(out, ref, rtol=0, atol=4e-7 * kdim * (1 + np.abs(ref).max()))
    # without a bias: the chain alone
    _all_ways(x, wt, None, *args)


@pytest.mark.parametrize("stride,pad,dil", [((2, 1), (1, 2), (1, 1)), ((1, 3), (0, 1), (2, 1)), ((3, 2), (2, 0), (1, 2))])
def test_conv_unequal_axes(stride, pad, dil):
    """Stride, padding and dilation differing between the axes (the in-place window path needs
    an undilated width)."""
    rng = np.random.default_rng(sum(stride) + sum(dil))
    x = rng.standard_normal((2, 26, 31, 3)).astype(np.float32)
    wt = rng.standard_normal((24, 3, 3, 4)).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    out = _all_ways(x, wt, bias, stride, pad, dil, 1)
    ref = conv_nhwc_float64(x, wt, bias, stride, pad, dil, 1)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * (1 + np.abs(ref).max()))


@pytest.mark.parametrize("batch,k,n", [(1, 1, 1), (1, 5000, 10), (3, 4097, 33), (7, 16, 1000), (64, 300, 17)])
def test_linear_long_chains_against_blas(batch, k, n):
    rng = np.random.default_rng(k + n)
    x = rng.standard_normal((batch, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    out = floatops.linear_f32(x, w, b)
    _bytes_equal(out, floatops.linear_f32(x, w, b, native=False), "native vs reference")
    conv = _core.FloatConv(np.ascontiguousarray(w.reshape(n, k, 1, 1)), b)
    _bytes_equal(conv(x.reshape(batch, 1, 1, k), (1, 1), (0, 0), (1, 1), False).reshape(batch, n), out, "scalar")
    blas = x @ w.T + b
    exact = x.astype(np.float64) @ w.T.astype(np.float64) + b
    scale = np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64) + np.abs(b)
    assert np.all(np.abs(out - exact) <= 2 * k * 6e-8 * scale)      # a sequential chain's error bound
    assert np.all(np.abs(out - blas) <= 2 * k * 6e-8 * scale)


def test_the_summation_order_is_the_contract():
    """((0 + 1e8*1) + 1*1) + (-1e8)*1 in float32 is 0: the 1 is lost to rounding; pairwise or
    BLAS orders may keep it. Both tiers and the reference follow the chain."""
    x = np.array([[1e8, 1.0, -1e8]], np.float32)
    w = np.ones((2, 3), np.float32)
    w[1] = [1.0, -1.0, 1.0]
    acc = [np.float32(0)] * 2
    for n in range(2):
        for k in range(3):
            acc[n] = np.float32(acc[n] + np.float32(x[0, k] * w[n, k]))
    want = np.array([acc], np.float32)
    assert want[0, 0] == 0.0
    _bytes_equal(floatops.linear_f32(x, w), want)
    _bytes_equal(floatops.linear_f32(x, w, native=False), want)
    conv = _core.FloatConv(np.ascontiguousarray(w.reshape(2, 3, 1, 1)), None)
    _bytes_equal(conv(x.reshape(1, 1, 1, 3), (1, 1), (0, 0), (1, 1), False).reshape(1, 2), want)


def test_threads_do_not_change_bits():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 33, 31, 3)).astype(np.float32)
    w = rng.standard_normal((32, 3, 3, 3)).astype(np.float32)
    dw = rng.standard_normal((24, 1, 3, 3)).astype(np.float32)
    x24 = rng.standard_normal((1, 17, 19, 24)).astype(np.float32)
    lin = rng.standard_normal((70, 900)).astype(np.float32)
    xl = rng.standard_normal((2, 900)).astype(np.float32)
    want = (floatops.conv2d_f32(x, w, None, (2, 2), (1, 1)), floatops.conv2d_f32(x24, dw, None, (1, 1), (1, 1),
                                                                                   groups=24),
            floatops.linear_f32(xl, lin))
    try:
        for t in (1, 2, 3, 5):
            lowbit.set_num_threads(t)
            got = (floatops.conv2d_f32(x, w, None, (2, 2), (1, 1)), floatops.conv2d_f32(x24, dw, None, (1, 1),
                                                                                        (1, 1), groups=24),
                   floatops.linear_f32(xl, lin))
            for a, b in zip(got, want):
                _bytes_equal(a, b, f"{t} threads")
    finally:
        lowbit.set_num_threads(0)


def test_special_values_follow_ieee():
    """inf and NaN inputs propagate as the chain's IEEE operations say, the same in every tier."""
    x = np.zeros((1, 2, 2, 3), np.float32)
    x[0, 0, 0, 0] = np.inf
    x[0, 1, 1, 2] = np.nan
    w = np.ones((4, 3, 1, 1), np.float32)
    w[1, 0] = -1.0
    out = _all_ways(x, w, np.zeros(4, np.float32), (1, 1), (0, 0), (1, 1), 1)
    assert np.isinf(out[0, 0, 0]).all() and np.isnan(out[0, 1, 1]).all() and (out[0, 0, 1] == 0).all()
    assert out[0, 0, 0, 1] == -np.inf


def test_bad_arguments_name_what_was_wrong():
    w = np.ones((4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match="groups"):
        _core.FloatConv(w, None, 3)
    with pytest.raises(ValueError, match="w: expected a 4-D"):
        _core.FloatConv(np.ones((4, 3), np.float32), None)
    with pytest.raises(TypeError, match="w: expected a C-contiguous"):
        _core.FloatConv(w.astype(np.float64), None)
    with pytest.raises(ValueError, match="bias"):
        _core.FloatConv(w, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="every dimension"):
        _core.FloatConv(np.ones((0, 3, 3, 3), np.float32), None)
    conv = _core.FloatConv(w, None)
    with pytest.raises(ValueError, match="x: expected 3 input channels, got 4"):
        conv(np.ones((1, 5, 5, 4), np.float32), (1, 1), (0, 0), (1, 1), True)
    with pytest.raises(ValueError, match="too small"):
        conv(np.ones((1, 2, 5, 3), np.float32), (1, 1), (0, 0), (1, 1), True)
    with pytest.raises(ValueError, match="stride"):
        conv(np.ones((1, 5, 5, 3), np.float32), (0, 1), (0, 0), (1, 1), True)
    with pytest.raises(ValueError, match="NHWC"):
        conv(np.ones((5, 5, 3), np.float32), (1, 1), (0, 0), (1, 1), True)
    with pytest.raises(TypeError, match="x: expected a C-contiguous"):
        conv(np.ones((1, 5, 10, 3), np.float32)[:, :, ::2], (1, 1), (0, 0), (1, 1), True)
    with pytest.raises(ValueError, match="conv2d_f32: .*groups"):
        floatops.conv2d_f32(np.ones((1, 5, 5, 3), np.float32), w, groups=2)
    with pytest.raises(ValueError, match="linear_f32: expected"):
        floatops.linear_f32(np.ones((2, 5), np.float32), np.ones((3, 4), np.float32))
