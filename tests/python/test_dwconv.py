"""Depthwise and grouped convolution in one native call per layer
(csrc/ops/conv.h): bit-exact against lowbit.reference.conv2d on every tier,
edge shapes, zero-less codebooks, bit widths 1-4 and 8, the fused epilogue,
and a converted depthwise-separable model against run(reference=True)."""
import zlib

import numpy as np
import pytest

import lowbit
from conftest import optional_import
from lowbit import _core, reference

TIERS = lowbit.supported_tiers()
SIGNED2 = [-2, -1, 0, 1]
BIPOLAR = [-1, 1]


def _seed(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _codebook(bits, kind):
    if kind == "default":
        return None
    if kind == "bipolar":  # no zero level: padding must still add nothing
        if bits == 8:
            return list(range(1, 256)) + [-1]
        return [2 * i - (1 << bits) + 1 for i in range(1 << bits)]  # odd levels, e.g. {-1, +1}, {-3, -1, 1, 3}
    if kind == "extreme":  # the largest magnitudes a codebook may hold
        n = 1 << bits
        hi = 255 if bits == 8 else 127
        return [(-128 if i % 2 else hi) for i in range(n)] if n > 2 else [-128, hi]
    raise ValueError(kind)


def _run(rng, b, h, w, cin, cout, k, stride, padding, dilation, groups, w_bits=2, a_bits=2, w_cb=None, a_cb=None,
         epilogue=None, tier=None, kw=None):
    kw = k if kw is None else kw
    x = rng.integers(0, 1 << a_bits, (b, h, w, cin), dtype=np.uint8)
    wc = rng.integers(0, 1 << w_bits, (cout, cin // groups, k, kw), dtype=np.uint8)
    cw = lowbit.ConvWeights(wc, w_bits, w_cb, groups)
    with lowbit.use(isa=tier or TIERS[-1]):
        got = lowbit.conv2d(x, cw, stride, padding, dilation, epilogue=epilogue, a_bits=a_bits, a_codebook=a_cb)
        ran = lowbit.last_kernel()
    want = reference.conv2d(x, wc, a_bits, w_bits, a_cb, w_cb, stride, padding, dilation, groups)
    return got, want, ran


DW_CASES = [
    # b, h, w, C, k, stride, padding, dilation
    (1, 10, 10, 16, 3, 1, 1, 1),
    (2, 9, 7, 33, 3, 2, 1, 1),       # stride 2, vector tail
    (1, 12, 11, 65, 5, 1, 2, 1),
    (1, 13, 13, 130, 7, 2, 3, 1),
    (1, 9, 9, 3, 3, 1, 2, 2),        # dilation 2
    (1, 1, 1, 1, 3, 1, 1, 1),        # 1x1 spatial, one channel
    (1, 2, 3, 17, 5, 1, 2, 1),       # H and W smaller than the kernel
    (2, 6, 5, 32, 3, (2, 1), (0, 1), (1, 2)),
    (1, 4, 4, 48, 1, 1, 0, 1),       # 1x1 depthwise (a per-channel scale)
    (1, 8, 12, 32, 3, (1, 2), 1, (2, 1)),  # 3x3 rows of neighbouring pixels, 2 pixels apart, rows 2 apart
    (2, 7, 13, 16, (1, 9), 1, (0, 4), 1),   # 1 x 9: also three rows of 3 neighbouring pixels
    (1, 13, 5, 16, (9, 1), 1, (4, 0), 1),   # 9 x 1
]


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("case", DW_CASES, ids=[str(i) for i in range(len(DW_CASES))])
@pytest.mark.parametrize("cbs", ["default", "signed", "bipolar_a"])
def test_depthwise_exact_on_every_tier(tier, case, cbs):
    rng = _seed("dw", case, cbs)
    b, h, w, c, k, s, p, d = case
    k, kw = k if isinstance(k, tuple) else (k, k)
    a_bits, a_cb, w_cb = 2, None, None
    if cbs == "signed":
        a_cb = w_cb = SIGNED2
    elif cbs == "bipolar_a":
        a_bits, a_cb, w_cb = 1, BIPOLAR, SIGNED2
    got, want, ran = _run(rng, b, h, w, c, c, k, s, p, d, c, a_bits=a_bits, a_cb=a_cb, w_cb=w_cb, tier=tier, kw=kw)
    assert got.dtype == np.int32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    names = {k["name"]: k for k in lowbit.dwconv_kernels()}
    assert ran in names and names[ran]["family"] == "dwconv"
    best = max(k["tier_rank"] for k in names.values() if k["available"]
               and k["tier_rank"] <= lowbit._dispatch.tier_rank(tier))
    assert names[ran]["tier_rank"] == best


BITS = [(1, 1), (1, 2), (2, 1), (2, 2), (3, 3), (4, 4), (2, 4), (8, 2), (2, 8), (8, 8)]


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("w_bits,a_bits", BITS)
@pytest.mark.parametrize("cb", ["default", "bipolar", "extreme"])
def test_depthwise_bit_widths_and_codebooks(tier, w_bits, a_bits, cb):
    rng = _seed("bits", w_bits, a_bits, cb)
    w_cb, a_cb = _codebook(w_bits, cb), _codebook(a_bits, cb)
    got, want, _ = _run(rng, 2, 8, 9, 37, 37, 3, 1, 1, 1, 37, w_bits, a_bits, w_cb, a_cb, tier=tier)
    np.testing.assert_array_equal(got, want)
    # a 7x7 kernel sums 49 taps: with extreme codebooks the int16 stage must flush (or go int32)
    got, want, _ = _run(rng, 1, 9, 9, 20, 20, 7, 1, 3, 1, 20, w_bits, a_bits, w_cb, a_cb, tier=tier)
    np.testing.assert_array_equal(got, want)


def test_extreme_codes_hit_the_int16_bound():
    """Every product at +-max: 9 taps of 127 * 127 would overflow int16 without the flush."""
    cb = [-128, 127]
    x = np.ones((1, 5, 5, 32), np.uint8)
    wc = np.ones((32, 1, 3, 3), np.uint8)
    for tier in TIERS:
        with lowbit.use(isa=tier):
            got = lowbit.conv2d(x, lowbit.ConvWeights(wc, 1, cb, 32), 1, 1, a_bits=1, a_codebook=cb)
        np.testing.assert_array_equal(got, reference.conv2d(x, wc, 1, 1, cb, cb, 1, 1, 1, 32))
        assert got.max() == 9 * 127 * 127


GROUPED_CASES = [
    # b, h, w, cin, cout, k, stride, padding, dilation, groups
    (2, 8, 8, 32, 32, 3, 1, 1, 1, 4),
    (1, 9, 7, 12, 18, 3, 2, 1, 1, 3),
    (1, 10, 10, 8, 16, 3, 2, 1, 1, 8),    # depthwise, channel multiplier 2
    (1, 6, 6, 5, 15, 5, 1, 2, 1, 5),      # multiplier 3, odd channels
    (1, 9, 9, 66, 66, 3, 1, 2, 2, 2),     # two wide groups, dilation 2
    (1, 1, 1, 6, 4, 3, 1, 1, 1, 2),       # 1x1 spatial
    (2, 7, 7, 64, 32, 1, 1, 0, 1, 16),    # grouped 1x1
]


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("case", GROUPED_CASES, ids=[str(i) for i in range(len(GROUPED_CASES))])
@pytest.mark.parametrize("cbs", ["default", "bipolar_a"])
def test_grouped_exact_on_every_tier(tier, case, cbs):
    rng = _seed("grouped", case, cbs)
    b, h, w, cin, cout, k, s, p, d, g = case
    a_bits, a_cb = (1, BIPOLAR) if cbs == "bipolar_a" else (2, None)
    got, want, ran = _run(rng, b, h, w, cin, cout, k, s, p, d, g, a_bits=a_bits, a_cb=a_cb, w_cb=SIGNED2,
                          tier=tier)
    np.testing.assert_array_equal(got, want)
    assert lowbit._dispatch.kernel_info(ran)["family"] == "dotgemm"


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("groups,cout", [(24, 24), (6, 12)])
@pytest.mark.parametrize("requant", [None, (2, 0.37, False), (4, 0.11, True)])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("a_cb", [None, BIPOLAR])
def test_fused_epilogue(tier, groups, cout, requant, residual, a_cb):
    rng = _seed("ep", groups, requant, residual, a_cb)
    a_bits = 1 if a_cb else 2
    x = rng.integers(0, 1 << a_bits, (2, 7, 9, 24), dtype=np.uint8)
    wc = rng.integers(0, 4, (cout, 24 // groups, 3, 3), dtype=np.uint8)
    cw = lowbit.ConvWeights(wc, 2, SIGNED2, groups)
    acc = reference.conv2d(x, wc, a_bits, 2, a_cb, SIGNED2, 2, 1, 1, groups)
    m = acc.shape[0] * acc.shape[1] * acc.shape[2]
    scale = rng.uniform(0.01, 0.3, cout).astype(np.float32)
    bias = rng.normal(0, 0.5, cout).astype(np.float32)
    res = rng.normal(0, 1, (m, cout)).astype(np.float32) if residual else None
    rq = None if requant is None else lowbit.Requant(*requant)
    ep = lowbit.Epilogue(scale, bias, (-1.0, 1.5) if rq and rq.signed else "relu", requant=rq, residual=res)
    with lowbit.use(isa=tier):
        got = lowbit.conv2d(x, cw, 2, 1, epilogue=ep, a_bits=a_bits, a_codebook=a_cb)
    want = reference.epilogue(acc.reshape(m, cout), scale, bias, res, ep.clamp_lo, ep.clamp_hi, rq)
    if rq is None:
        assert got.dtype == np.float32 and got.shape == acc.shape
        np.testing.assert_array_equal(got.reshape(m, cout), want)
    else:
        assert isinstance(got, lowbit.PackedActivations) and got.shape == acc.shape
        np.testing.assert_array_equal(got.codes, want)


def test_forced_gemm_kernel_still_runs_group_by_group():
    rng = _seed("forced")
    x = rng.integers(0, 4, (1, 8, 8, 16), dtype=np.uint8)
    wc = rng.integers(0, 4, (16, 1, 3, 3), dtype=np.uint8)
    cw = lowbit.ConvWeights(wc, 2, SIGNED2, 16)
    with lowbit.use(strategy="grouplut"):
        got = lowbit.conv2d(x, cw, 1, 1)
        assert "grouplut" in lowbit.last_kernel()
    np.testing.assert_array_equal(got, reference.conv2d(x, wc, 2, 2, None, SIGNED2, 1, 1, 1, 16))


NATIVE = ("dwconv", "conv_grouped", "gemm", "gemm_codes", "epilogue", "im2col_nhwc", "pack_groups",
          "dotgemm_pack_activations", "dot8_pack_activations")


@pytest.mark.parametrize("groups,cout", [(64, 64), (8, 64)])
def test_one_native_call_per_layer(monkeypatch, groups, cout):
    calls = []
    for name in NATIVE:
        fn = getattr(_core, name)
        monkeypatch.setattr(_core, name, lambda *a, _fn=fn, _n=name: calls.append(_n) or _fn(*a))
    rng = _seed("calls", groups)
    x = rng.integers(0, 4, (1, 16, 16, 64), dtype=np.uint8)
    cw = lowbit.ConvWeights(rng.integers(0, 4, (cout, 64 // groups, 3, 3), dtype=np.uint8), 2, SIGNED2, groups)
    ep = lowbit.Epilogue(np.full(cout, 0.1, np.float32), None, "relu", requant=lowbit.Requant(2, 0.5))
    lowbit.conv2d(x, cw, 1, 1, epilogue=ep)
    assert calls == ["dwconv" if groups == cout else "conv_grouped"]


def test_bad_input_raises_clear_errors():
    cw = lowbit.ConvWeights(np.zeros((8, 1, 3, 3), np.uint8), 2, None, 8)
    x = np.zeros((1, 5, 5, 8), np.uint8)
    x[0, 2, 3, 4] = 9
    with pytest.raises(ValueError, match="expected every code in \\[0, 4\\)"):
        lowbit.conv2d(x, cw, 1, 1)
    # codes that skipped the Python range scan are checked by the native decoder
    pa = lowbit.PackedActivations(x.reshape(25, 8), 2, np.arange(4, dtype=np.int32))
    pa.shape = x.shape
    for tier in TIERS:
        with lowbit.use(isa=tier), pytest.raises(ValueError, match="x: expected every code in \\[0, 4\\)"):
            lowbit.conv2d(pa, cw, 1, 1)
    with pytest.raises(ValueError, match="x: expected 8 input channels"):
        lowbit.conv2d(np.zeros((1, 5, 5, 4), np.uint8), cw)
    with pytest.raises(ValueError, match="too small"):
        lowbit.conv2d(np.zeros((1, 2, 2, 8), np.uint8), cw)
    with pytest.raises(ValueError, match="w_codes: expected every code"):
        lowbit.ConvWeights(np.full((8, 1, 3, 3), 4, np.uint8), 2, None, 8)
    with pytest.raises(ValueError, match="groups"):
        lowbit.ConvWeights(np.zeros((8, 1, 3, 3), np.uint8), 2, None, 3)
    with pytest.raises(ValueError, match="a_levels: expected values in \\[-128, 127\\]"):
        _core.dwconv(0, np.zeros((1, 3, 3, 8), np.uint8), 2, np.array([0, 1, 2, 200], np.int16),
                     np.zeros((9, 16), np.int16), 3, 3, 1, 1, 1, 1, 1, 1, "int32", None, None, None,
                     -np.inf, np.inf, 1.0, 0, 0)
    with pytest.raises(ValueError, match="w_levels"):
        _core.dwconv(0, np.zeros((1, 3, 3, 8), np.uint8), 2, np.arange(4, dtype=np.int16),
                     np.zeros((9, 8), np.int16), 3, 3, 1, 1, 1, 1, 1, 1, "int32", None, None, None,
                     -np.inf, np.inf, 1.0, 0, 0)


def test_depthwise_separable_model_matches_reference():
    torch = optional_import("torch")
    from lowbit import models, qat

    torch.manual_seed(0)
    net = qat.prepare(models.DWSeparableNet(), 2, 2, first_last_bits=8)
    g = torch.Generator().manual_seed(0)
    net.train()
    with torch.no_grad():
        net(torch.randn(8, 3, 32, 32, generator=g))
    net.eval()
    x = torch.randn(3, 3, 32, 32, generator=g)
    m = lowbit.convert(net, x)
    xs = x.numpy()
    np.testing.assert_array_equal(m.run(xs), m.run(xs, reference=True))
    m.run(xs)
    dw = [n for n in m.nodes if n.op == "conv" and n.attrs["groups"] > 1]
    assert len(dw) == 3
    assert all(n.kernel.startswith("dwconv_") for n in dw)
    text = m.summary(print_fn=None)
    assert all(n.kernel in text for n in dw)


@pytest.mark.parametrize("groups", [40, 8])
def test_thread_count_does_not_change_results(groups):
    rng = _seed("threads", groups)
    x = rng.integers(0, 4, (3, 23, 19, 40), dtype=np.uint8)
    cw = lowbit.ConvWeights(rng.integers(0, 4, (40, 40 // groups, 3, 3), dtype=np.uint8), 2, SIGNED2, groups)
    want = reference.conv2d(x, cw.codes(), 2, 2, None, SIGNED2, 2, 1, 1,
                            groups)
    saved = lowbit.get_num_threads()
    try:
        for n in (1, 2, 3, 5):
            lowbit.set_num_threads(n)
            np.testing.assert_array_equal(lowbit.conv2d(x, cw, 2, 1), want)
    finally:
        lowbit.set_num_threads(saved)


def test_strategy_fastest_keeps_dwconv_and_runs_other_groups_on_their_gemm_family():
    rng = _seed("fastest")
    x = rng.integers(0, 4, (1, 8, 8, 16), dtype=np.uint8)
    for groups, family in ((16, "dwconv"), (4, None)):
        wc = rng.integers(0, 4, (16, 16 // groups, 3, 3), dtype=np.uint8)
        with lowbit.use(strategy="fastest"):
            got = lowbit.conv2d(x, lowbit.ConvWeights(wc, 2, SIGNED2, groups), 1, 1)
            ran = lowbit.last_kernel()
        np.testing.assert_array_equal(got, reference.conv2d(x, wc, 2, 2, None, SIGNED2, 1, 1, 1, groups))
        if family == "dwconv":
            assert ran.startswith("dwconv_")
        else:  # group by group: a GEMM registry kernel picked by the family dispatch
            assert ran in {k["name"] for k in lowbit.kernels()}
