"""The dot8 family (csrc/kernels/dot8/dot8.h): uint8 x int8 byte dot products
with int16 accumulators widened every flush16 steps. Its bit-exactness over
every pair and codebook kind runs in test_bitwidths.py and test_gemm.py (the
registry loop); here: its bound, the flush across long K, its packer, where
dispatch sends it and what it refuses."""
import numpy as np
import pytest

import lowbit
from lowbit import _dispatch, reference
from lowbit.families.dot8 import Dot8

from conftest import available_kernels

DOT8 = available_kernels("dot8")
TIER_RANKS = sorted({0, _dispatch.tier_rank(lowbit.supported_tiers()[-1])})


def forced(kernel, a, w, bw, ba, cb_w=None, cb_a=None):
    packed = lowbit.pack_weights(w, bw, cb_w)
    with lowbit.use(kernel=kernel["name"]):
        y = lowbit.gemm(a, packed, ba, cb_a)
    assert lowbit.last_kernel() == kernel["name"]
    return y


@pytest.mark.parametrize("cb_w,cb_a,flush", [
    ([-1, 1], [0, 1], 16383),                        # pair sums <= 2: 16383 steps per int16 run
    (list(range(-8, 8)), None, 32767 // (2 * 15 * 8)),  # W4A4 as LSQ trains it: -8..7 x 0..15
    ([-128, 127], [0, 127], 1),                      # 2 * 127 * 128 = 32512: widen after every step
])
def test_flush_bound(cb_w, cb_a, flush):
    bw = 1 if cb_w and len(cb_w) == 2 else 4
    ba = 1 if cb_a and len(cb_a) == 2 else 4
    cw = lowbit.codebook.normalize(cb_w, bw)
    ca = lowbit.codebook.normalize(cb_a, ba)
    plan, why = Dot8.plan(bw, ba, cw, ca)
    assert plan is not None, why
    assert Dot8.tables(cw, ca, plan)[2] == flush
    assert flush * 2 * int(np.abs(ca).max()) * int(np.abs(cw).max()) <= 32767


@pytest.mark.parametrize("kernel", DOT8, ids=lambda k: k["name"])
@pytest.mark.parametrize("bw,ba,cb_w,cb_a,k", [
    (1, 1, [-1, 1], [0, 1], 200_003),            # runs of 16383 quads: crosses 3 widenings, odd tail
    (4, 4, list(range(-8, 8)), None, 150_001),   # runs of 136 quads, products -8 * 15 and 7 * 15
    (1, 1, [-128, 127], [0, 127], 131_583),      # every step at the int16 edge, near K_max
    (2, 8, [-2, -1, 0, 1], None, 70_001),        # 8-bit activations 0..255 x 2-bit weights
])
def test_long_k_crosses_every_widening(kernel, bw, ba, cb_w, cb_a, k):
    a = np.full((5, k), (1 << ba) - 1, np.uint8)         # largest activation level
    w = np.zeros((19, k), np.uint8)                      # most negative weight level
    w[1::2] = (1 << bw) - 1                              # and the largest, on odd channels
    y = forced(kernel, a, w, bw, ba, cb_w, cb_a)
    want = reference.gemm(a, w, ba, bw, cb_a, cb_w)
    assert np.array_equal(y, want)
    assert abs(int(want[0, 0])) >= 70_000


@pytest.mark.parametrize("bits", (1, 2, 3, 4, 8))
def test_packer_matches_numpy(bits, rng):
    """uint8 level packer, scalar and SIMD (vpshufb table; identity copy and
    scalar table for 8 bits), zero padding to whole quads, bad codes."""
    n = 1 << bits
    books = [np.arange(n), rng.integers(0, 128, n), np.full(n, 127)]
    if bits == 8:
        books += [np.arange(256)[::-1], rng.integers(0, 256, 256)]
    for cb in books:
        plan, why = Dot8.plan(1, bits, np.array([-1, 1]), cb)
        assert plan is not None, why
        for m, k in [(1, 1), (3, 31), (2, 32), (5, 33), (4, 100), (600, 130)]:
            codes = rng.integers(0, n, (m, k), dtype=np.uint8)
            want = np.zeros((m, 4 * -(-k // 4)), np.uint8)
            want[:, :k] = cb[codes]
            for tier_rank in TIER_RANKS:
                assert np.array_equal(Dot8.pack_activations(codes, plan, tier_rank), want), (bits, m, k, tier_rank)
            if bits < 8:
                bad = codes.copy()
                bad[-1, -1] = n
                for tier_rank in TIER_RANKS:
                    with pytest.raises(ValueError, match=r"a_codes: expected every code in \[0, "):
                        Dot8.pack_activations(bad, plan, tier_rank)


def test_plan_refuses_what_it_cannot_compute():
    lv = np.arange(16)
    assert Dot8.plan(4, 4, lv - 8, lv - 8)[0] is None                     # signed activations
    assert "activation levels in [0, 255]" in Dot8.plan(4, 4, lv - 8, lv - 8)[1]
    assert "int16" in Dot8.plan(8, 8, np.arange(256) - 128, np.arange(256))[1]   # 2 * 255 * 128
    assert Dot8.plan(8, 8, np.arange(256), np.arange(256))[0] is None      # unsigned 8-bit weights
    for k in DOT8:
        with lowbit.use(kernel=k["name"]), pytest.raises(ValueError, match="dot8 needs activation levels"):
            lowbit.gemm(np.zeros((2, 8), np.uint8), lowbit.pack_weights(np.zeros((3, 8), np.uint8), 4), 4,
                        list(range(-8, 8)))


def test_dispatch_and_explain(rng):
    a = rng.integers(0, 16, (6, 64), dtype=np.uint8)
    w = rng.integers(0, 16, (10, 64), dtype=np.uint8)
    y = lowbit.gemm(a, lowbit.pack_weights(w, 4), 4)             # W4A4 defaults: no int8 table fits
    assert lowbit.last_kernel().startswith("dot8") and np.array_equal(y, reference.gemm(a, w, 4, 4))
    signed = list(range(-64, 64, 8))                              # signed activations, products > 127:
    y = lowbit.gemm(a, lowbit.pack_weights(w, 4, list(range(-8, 8))), 4, signed)   # dotgemm
    assert lowbit.last_kernel().startswith("dotgemm")
    assert np.array_equal(y, reference.gemm(a, w, 4, 4, signed, list(range(-8, 8))))
    w3 = w % 8
    lowbit.gemm(a, lowbit.pack_weights(w3, 3), 4)                # W3A4: exact tables stay the default...
    assert lowbit.last_kernel().startswith("grouplut")
    assert "lowbit.use(strategy='dot8')" in lowbit.explain(6, 10, 64, a_bits=4, w_bits=3)   # ...explain names the faster path
    with lowbit.use(strategy="dot8"):
        y = lowbit.gemm(a, lowbit.pack_weights(w3, 3), 4)
    assert lowbit.last_kernel().startswith("dot8") and np.array_equal(y, reference.gemm(a, w3, 4, 3))


def test_strategy_fastest(rng):
    """use(strategy="fastest") runs dot8 where the exact tables measured
    slower, and changes nothing else (W2A2 tables, W8A8 dotgemm)."""
    cases = [(3, 4, "dot8"), (4, 2, "dot8"), (2, 4, "dot8"), (2, 2, "grouplut"), (1, 1, "grouplut"),
             (8, 8, "dotgemm")]
    for bw, ba, family in cases:
        a = rng.integers(0, 1 << ba, (7, 50), dtype=np.uint8)
        w = rng.integers(0, 1 << bw, (9, 50), dtype=np.uint8)
        packed = lowbit.pack_weights(w, bw)
        with lowbit.use(strategy="fastest", isa=lowbit.supported_tiers()[-1]):  # whatever LOWBIT_ISA says
            y = lowbit.gemm(a, packed, ba)
            assert lowbit.last_kernel().startswith(family + "_"), (bw, ba, lowbit.last_kernel())
            if family == "dot8":
                assert "strategy='fastest'" in lowbit.explain(7, 9, 50, a_bits=ba, w_bits=bw)
        assert np.array_equal(y, reference.gemm(a, w, ba, bw))
    with pytest.raises(ValueError, match="fastest"):
        with lowbit.use(strategy="quickest"):
            pass


@pytest.mark.parametrize("tier", lowbit.supported_tiers())
def test_convolution_indirect_and_im2col(tier, rng):
    """Cin a multiple of 4: dot8 reads the input through the indirection
    buffer (whole k quads per pixel, an all-padding pixel); otherwise the
    im2col fallback. Zero-less activation codebooks take the exact padding
    correction. Strides, padding and dilation; both against the reference."""
    from lowbit import conv
    calls = []
    real_im2col = conv._core.im2col_nhwc

    def counting_im2col(*args):
        calls.append(args)
        return real_im2col(*args)

    for cin, indirect in ((24, True), (32, True), (6, False)):
        for cb_a in (None, list(range(1, 17))):
            for stride, pad, dil in ((1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 0, 1)):
                x = rng.integers(0, 16, (2, 9, 10, cin), dtype=np.uint8)
                w = rng.integers(0, 8, (21, cin, 3, 3), dtype=np.uint8)
                want = reference.conv2d(x, w, 4, 3, cb_a, None, stride, pad, dil)
                calls.clear()
                conv._core.im2col_nhwc = counting_im2col
                try:
                    with lowbit.use(strategy="dot8", isa=tier):
                        y = lowbit.conv2d(x, lowbit.ConvWeights(w, 3), stride=stride, padding=pad, dilation=dil,
                                          a_bits=4, a_codebook=cb_a)
                        assert lowbit.last_kernel().startswith("dot8_")
                finally:
                    conv._core.im2col_nhwc = real_im2col
                assert bool(calls) != indirect, (cin, stride, pad, dil)
                assert np.array_equal(y, want), (cin, cb_a is None, stride, pad, dil, tier)
