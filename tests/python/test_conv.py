"""lowbit.conv2d / lowbit.linear against the NumPy oracles, bit for bit.

Covers stride, padding, dilation, kernel sizes 1/3/5/7, grouped and depthwise
convolution, codebooks without a zero (bipolar padding correction), bit widths
1-4, every kernel family the dispatcher can pick, and the fused epilogue
(float output, requantized codes, residual).
"""
import zlib

import numpy as np
import pytest

import lowbit
from lowbit import reference

SIGNED2 = [-2, -1, 0, 1]
BIPOLAR = [-1, 1]


def _codes(rng, shape, bits):
    return rng.integers(0, 1 << bits, shape, dtype=np.uint8)


def _check(rng, b, h, w, cin, cout, k, stride, padding, dilation, groups=1, w_bits=2, a_bits=2, w_cb=None,
           a_cb=None, kh=None):
    kh = k if kh is None else kh
    x = _codes(rng, (b, h, w, cin), a_bits)
    wc = _codes(rng, (cout, cin // groups, kh, k), w_bits)
    cw = lowbit.ConvWeights(wc, w_bits, w_cb, groups)
    got = lowbit.conv2d(x, cw, stride, padding, dilation, a_bits=a_bits, a_codebook=a_cb)
    want = reference.conv2d(x, wc, a_bits, w_bits, a_cb, w_cb, stride, padding, dilation, groups)
    assert got.dtype == np.int32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    return x, wc, cw, want


CASES = [
    # b, h, w, cin, cout, k, stride, padding, dilation, groups
    (1, 7, 7, 32, 16, 1, 1, 0, 1, 1),
    (2, 9, 8, 32, 40, 3, 1, 1, 1, 1),
    (1, 10, 11, 16, 8, 3, 2, 1, 1, 1),
    (1, 12, 12, 24, 8, 3, 1, 2, 2, 1),
    (2, 11, 9, 8, 12, 5, 1, 2, 1, 1),
    (1, 13, 13, 16, 8, 5, 2, 2, 1, 1),
    (1, 16, 16, 3, 8, 7, 2, 3, 1, 1),     # ResNet stem shape, odd Cin
    (1, 15, 14, 8, 8, 7, 1, 0, 1, 1),
    (1, 9, 9, 5, 7, 3, (2, 1), (0, 1), (1, 2), 1),
    (2, 8, 8, 32, 32, 3, 1, 1, 1, 4),     # grouped
    (1, 10, 10, 16, 16, 3, 1, 1, 1, 16),  # depthwise
    (1, 10, 10, 8, 16, 3, 2, 1, 1, 8),    # depthwise, channel multiplier 2
    (1, 6, 6, 4, 4, 3, 1, 3, 1, 1),       # padding larger than half the kernel
]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
@pytest.mark.parametrize("cbs", ["default", "signed", "bipolar_a"])
def test_conv_parity(case, cbs):
    rng = np.random.default_rng(zlib.crc32(repr((case, cbs)).encode()))
    b, h, w, cin, cout, k, s, p, d, g = case
    if cbs == "default":
        _check(rng, b, h, w, cin, cout, k, s, p, d, g)
    elif cbs == "signed":
        _check(rng, b, h, w, cin, cout, k, s, p, d, g, w_cb=SIGNED2, a_cb=SIGNED2)
    else:  # activation codebook without a zero: padding must still insert 0
        _check(rng, b, h, w, cin, cout, k, s, p, d, g, w_cb=SIGNED2, a_bits=1, a_cb=BIPOLAR)


@pytest.mark.parametrize("w_bits,a_bits", [(1, 1), (1, 2), (2, 1), (2, 3), (3, 2), (3, 3), (4, 1), (2, 4)])
def test_conv_bit_widths(w_bits, a_bits):
    rng = np.random.default_rng(w_bits * 10 + a_bits)
    w_cb = BIPOLAR if w_bits == 1 else list(range(-(1 << (w_bits - 1)), 1 << (w_bits - 1)))
    _check(rng, 2, 9, 9, 16, 24, 3, 1, 1, 1, w_bits=w_bits, a_bits=a_bits, w_cb=w_cb)
    _check(rng, 1, 9, 9, 16, 8, 3, 2, 1, 2, groups=2, w_bits=w_bits, a_bits=a_bits, w_cb=w_cb)


@pytest.mark.parametrize("strategy", ["lutgemm", "grouplut"])
def test_conv_each_family(strategy):
    rng = np.random.default_rng(7)
    with lowbit.use(strategy=strategy):
        _check(rng, 1, 10, 10, 32, 16, 3, 1, 1, 1, w_cb=SIGNED2)
        assert strategy in lowbit.last_kernel()
        _check(rng, 1, 10, 10, 12, 16, 5, 2, 2, 1, w_cb=SIGNED2, a_cb=[-1, 1, 2, 3])
        _check(rng, 1, 8, 8, 16, 16, 3, 1, 1, 1, groups=16, w_cb=SIGNED2)


def test_conv_scalar_tier_matches():
    rng = np.random.default_rng(3)
    with lowbit.use(isa="scalar"):
        _check(rng, 1, 9, 9, 16, 8, 3, 1, 1, 1, w_cb=SIGNED2)
        assert lowbit.last_kernel().endswith("__scalar")


@pytest.mark.parametrize("requant", [None, (2, 0.37, False), (2, 0.5, True), (4, 0.11, False)])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("a_cb", [None, BIPOLAR])
def test_conv_fused_epilogue(requant, residual, a_cb):
    rng = np.random.default_rng(11)
    a_bits = 1 if a_cb is not None else 2
    x = _codes(rng, (2, 9, 9, 16), a_bits)
    wc = _codes(rng, (24, 16, 3, 3), 2)
    cw = lowbit.ConvWeights(wc, 2, SIGNED2)
    acc = reference.conv2d(x, wc, a_bits, 2, a_cb, SIGNED2, 1, 1, 1)
    m = acc.shape[0] * acc.shape[1] * acc.shape[2]
    scale = rng.uniform(0.01, 0.2, 24).astype(np.float32)
    bias = rng.normal(0, 0.5, 24).astype(np.float32)
    res = rng.normal(0, 1, (m, 24)).astype(np.float32) if residual else None
    rq = None if requant is None else lowbit.Requant(*requant)
    ep = lowbit.Epilogue(scale, bias, "relu" if not (rq and rq.signed) else (-1.0, 1.5), requant=rq, residual=res)
    got = lowbit.conv2d(x, cw, 1, 1, epilogue=ep, a_bits=a_bits, a_codebook=a_cb)
    want = reference.epilogue(acc.reshape(m, 24), scale, bias, res, ep.clamp_lo, ep.clamp_hi, rq)
    if rq is None:
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got.reshape(m, 24), want)
    else:
        assert isinstance(got, lowbit.PackedActivations) and got.shape == (2, 9, 9, 24)
        np.testing.assert_array_equal(got.codes, want)
        np.testing.assert_array_equal(got.codebook, rq.codebook())


def test_requantized_codes_feed_next_conv():
    """Codes returned by a requantizing epilogue are consumed without repacking and
    give the same result as the same codes passed as a plain array."""
    rng = np.random.default_rng(5)
    x = _codes(rng, (1, 8, 8, 32), 2)
    cw1 = lowbit.ConvWeights(_codes(rng, (32, 32, 3, 3), 2), 2, SIGNED2)
    cw2 = lowbit.ConvWeights(_codes(rng, (16, 32, 1, 1), 2), 2, SIGNED2)
    ep = lowbit.Epilogue(np.full(32, 0.05, np.float32), None, "relu", requant=lowbit.Requant(2, 0.3))
    pa = lowbit.conv2d(x, cw1, 1, 1, epilogue=ep)
    y1 = lowbit.conv2d(pa, cw2)
    y2 = lowbit.conv2d(pa.codes.reshape(pa.shape), cw2)
    np.testing.assert_array_equal(y1, y2)


@pytest.mark.parametrize("a_cb", [None, SIGNED2])
def test_linear_parity(a_cb):
    rng = np.random.default_rng(9)
    x = _codes(rng, (5, 200), 2)
    wc = _codes(rng, (33, 200), 2)
    pw = lowbit.pack_weights(wc, 2, SIGNED2)
    np.testing.assert_array_equal(lowbit.linear(x, pw, a_bits=2, a_codebook=a_cb),
                                  reference.gemm(x, wc, 2, 2, a_cb, SIGNED2))
    scale = np.linspace(0.01, 0.1, 33).astype(np.float32)
    ep = lowbit.Epilogue(scale, np.zeros(33), "none")
    np.testing.assert_array_equal(lowbit.linear(x, pw, ep, a_bits=2, a_codebook=a_cb),
                                  reference.epilogue(reference.gemm(x, wc, 2, 2, a_cb, SIGNED2), scale,
                                                     np.zeros(33)))


def test_conv_8bit_parity():
    rng = np.random.default_rng(8)
    cb_a = list(range(-128, 128))
    _check(rng, 1, 10, 10, 3, 16, 3, 1, 1, 1, w_bits=8, a_bits=8, w_cb=cb_a, a_cb=cb_a)
    _check(rng, 1, 12, 12, 3, 8, 7, 2, 3, 1, w_bits=8, a_bits=8, w_cb=cb_a, a_cb=None)


@pytest.mark.parametrize("b,h,w,c,kh,kw,stride,padding,dilation", [
    (1, 224, 224, 3, 7, 7, (2, 2), (3, 3), (1, 1)),   # ResNet stem
    (2, 9, 7, 5, 3, 3, (1, 1), (1, 1), (1, 1)),
    (1, 8, 11, 4, 3, 2, (2, 3), (2, 0), (2, 2)),      # dilation: tap by tap
    (1, 5, 5, 1, 5, 5, (1, 1), (4, 4), (1, 1)),       # windows mostly padding
    (3, 4, 6, 2, 1, 1, (2, 2), (0, 0), (1, 1)),
])
def test_native_im2col_matches_tap_table(b, h, w, c, kh, kw, stride, padding, dilation, rng):
    from lowbit import _core
    from lowbit.conv import _tap_rows
    x = rng.integers(0, 256, (b * h * w, c), dtype=np.uint8)
    rows, oh, ow = _tap_rows(b, h, w, kh, kw, stride, padding, dilation)
    want = np.where((rows >= 0)[:, :, None], x[np.maximum(rows, 0)], np.uint8(7)).reshape(rows.shape[0], -1)
    got = _core.im2col_nhwc(x, b, h, w, kh, kw, *stride, *padding, *dilation, 7)
    assert got.shape == (b * oh * ow, kh * kw * c)
    assert np.array_equal(got, want)


def test_native_im2col_rejects_bad_geometry():
    from lowbit import _core
    x = np.zeros((12, 2), np.uint8)
    with pytest.raises(ValueError, match="B\\*H\\*W"):
        _core.im2col_nhwc(x, 1, 3, 5, 3, 3, 1, 1, 1, 1, 1, 1, 0)
    with pytest.raises(ValueError, match="too small"):
        _core.im2col_nhwc(x, 1, 3, 4, 5, 5, 1, 1, 0, 0, 1, 1, 0)
    with pytest.raises(ValueError, match="stride"):
        _core.im2col_nhwc(x, 1, 3, 4, 3, 3, 0, 1, 1, 1, 1, 1, 0)
