"""grouplut's fast-path details: activation bytes pre-shifted for the table
address, centred tables (step bias) and the correction the kernels subtract
while storing. Each is checked bit-exactly against the NumPy reference on
every tier this CPU has."""
import numpy as np
import pytest

import lowbit
from lowbit import _core, _dispatch, ops, reference
from lowbit.families import Grouplut
from lowbit.packing import PackedActivations

# the tiers this CPU runs that have grouplut kernels (x86: scalar, avx2; Arm64: scalar, neon)
TIERS = [t for t in lowbit.supported_tiers()
         if any(k["family"] == "grouplut" and k["tier"] == t for k in lowbit.kernels())]


def _pack_reference(codes, bits, group, shift):
    m, k = codes.shape
    g = -(-k // group)
    padded = np.zeros((m, g * group), np.uint32)
    padded[:, :k] = codes
    packed = np.zeros((m, g), np.uint32)
    for i in range(group):
        packed |= padded[:, i::group] << (bits * i)
    return (packed << shift).astype(np.uint8)


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("bits,group,shift", [
    (bits, group, shift) for bits, group in [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2), (3, 2), (1, 3), (1, 6), (2, 3)]
    for shift in (0, 1, 2) if bits * group + shift <= 8])  # a packed group and its shift fit one byte
def test_pack_groups_shift_matches_reference(tier, bits, group, shift, rng):
    rank = _dispatch.tier_rank(tier)
    # groups of 3 and 6 take blocks of 96 codes (104 readable): 103, 104, 200, 297 cross those edges
    for k in (1, 31, 32, 33, 100, 103, 104, 200, 297):
        codes = rng.integers(0, 1 << bits, (5, k), dtype=np.uint8)
        codes[0] = (1 << bits) - 1  # extreme codes: every bit set
        g = -(-k // group)
        got = _core.pack_groups(codes, bits, group, g + 3, rank, shift)
        assert np.array_equal(got[:, :g], _pack_reference(codes, bits, group, shift)), (k, tier)
        assert not got[:, g:].any()


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("bits,group", [(2, 3), (1, 3), (1, 6)])
def test_pack_groups_of_3_and_6_reject_a_bad_code_anywhere(tier, bits, group, rng):
    """grouplut6's packers: a code >= 2**bits in the vector blocks or the tail raises."""
    rank = _dispatch.tier_rank(tier)
    for k in (5, 103, 250):
        for pos in (0, k // 2, k - 1):
            codes = rng.integers(0, 1 << bits, (3, k), dtype=np.uint8)
            codes[1, pos] = 1 << bits
            with pytest.raises(ValueError, match="code"):
                _core.pack_groups(codes, bits, group, -(-k // group), rank, 0)


def test_pack_groups_rejects_bad_shift():
    codes = np.zeros((2, 8), np.uint8)
    with pytest.raises(ValueError, match="shift"):
        _core.pack_groups(codes, 2, 4, 2, 0, 1)  # 2 * 4 + 1 > 8
    with pytest.raises(ValueError, match="shift"):
        _core.pack_groups(codes, 1, 1, 8, 0, 3)


def test_gemm_rejects_code_shift_for_other_families():
    k = next(k for k in lowbit.kernels() if k["family"] == "dotgemm" and k["tier"] == "scalar")
    with pytest.raises(ValueError, match="a_code_shift"):
        _core.gemm(k["index"], np.zeros((4, 8), np.uint8), np.zeros(4096, np.uint8), np.zeros(8, np.int8),
                   4, 16, 4, 1, 1, 0, 2)
    g = next(k for k in lowbit.kernels() if k["family"] == "grouplut" and k["tier"] == "scalar")
    with pytest.raises(ValueError, match="a_code_shift"):
        _core.gemm(g["index"], np.zeros((4, 8), np.uint8), np.zeros(4096, np.uint8), np.zeros(8192, np.int8),
                   4, 16, 4, 1, 1, 0, 1)


def test_registry_reports_who_subtracts_the_correction():
    for k in lowbit.kernels():
        assert isinstance(k["subtracts_correction"], bool)
        if k["family"] == "grouplut":
            assert k["subtracts_correction"], k["name"]


def test_centred_tables_widen_less_often():
    cb_w, cb_a = np.array([-2, -1, 0, 1]), np.arange(4)
    plan, _ = Grouplut.plan(2, 2, cb_w, cb_a)
    tables, flush8, flush16, step_bias = Grouplut.tables(cb_w, cb_a, plan)
    # pair sums of a * w lie in [-12, 6]: centred by +3 they fit [-9, 9]
    assert step_bias == 3
    assert flush8 == 127 // 9 and flush16 == 32767 // (flush8 * 9)
    live = tables.reshape(256, 32)[:16, :16].astype(int)
    assert live.min() == -9 and live.max() == 9
    assert Grouplut.code_shift(plan) == 2  # 4-bit activation group codes: bytes hold code << 2


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("bw,ba,cb_w,cb_a", [
    (2, 2, [-2, -1, 0, 1], None),            # asymmetric: step bias 3
    (2, 2, [-1, 0, 1, 2], [0, 1, 2, 3]),     # step bias -3
    (1, 1, [-1, 1], None),                   # W1A1, 16 tables
    (1, 4, [-1, 1], [0, 2, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31]),  # 8-bit group codes: no shift
    (2, 3, [-3, -1, 1, 3], [-4, -3, -2, -1, 0, 1, 2, 3]),
])
def test_worst_case_long_k_across_chunks(tier, bw, ba, cb_w, cb_a):
    """K long enough for several int8 flushes and several int16 chunks, with
    the codes that give the largest |table entry| (overflow of a narrow lane
    or a wrong step bias would show)."""
    cbw = np.array(cb_w)
    cba = np.arange(1 << ba) if cb_a is None else np.array(cb_a)
    plan, _ = Grouplut.plan(bw, ba, cbw, cba)
    _, flush8, flush16, _ = Grouplut.tables(cbw, cba, plan)
    gw = plan.params[2]
    k = flush8 * flush16 * gw * 2 + 3 * gw + 1  # two int16 chunks and a ragged tail
    m, n = 5, 70
    rng = np.random.default_rng(k)
    a = np.empty((m, k), np.uint8)
    w = np.empty((n, k), np.uint8)
    a[0], w[0] = np.argmax(np.abs(cba)), np.argmax(np.abs(cbw))   # largest products
    a[1], w[1] = np.argmax(cba), np.argmin(cbw)                   # most negative products
    a[2:] = rng.integers(0, 1 << ba, (m - 2, k))
    w[2:] = rng.integers(0, 1 << bw, (n - 2, k))
    packed = lowbit.pack_weights(w, bw, cbw)
    with lowbit.use(isa=tier):
        y = lowbit.gemm(a, packed, ba, cba)
        assert lowbit.last_kernel().startswith("grouplut_") and lowbit.last_kernel().endswith("__" + tier)
    assert np.array_equal(y, reference.gemm(a, w, ba, bw, cba, cbw))


def test_bound_is_cached_per_activation_setting(rng):
    w = rng.integers(0, 4, (8, 40), dtype=np.uint8)
    packed = lowbit.pack_weights(w, 2, [-2, -1, 0, 1])
    pa = PackedActivations.from_codes(rng.integers(0, 4, (3, 40), dtype=np.uint8), 2, None)
    best = lowbit.supported_tiers()[-1]
    with lowbit.use(isa=best):  # whatever LOWBIT_ISA says
        b1 = ops._prepare(pa, packed, 3, 40)
        assert ops._prepare(pa, packed, 3, 40) is b1
        assert ops._prepare(pa, packed, 300, 40) is b1  # shape matters only when autotuning
        pa2 = PackedActivations.from_codes(pa.codes, 2, [0, 1, 2, 4])
        assert ops._prepare(pa2, packed, 3, 40) is not b1
    with lowbit.use(isa="scalar"):
        assert ops._prepare(pa, packed, 3, 40) is not b1
    with lowbit.use(autotune=True):  # one Bound per shape class
        b2 = ops._prepare(pa, packed, 3, 40)
        assert b2 is not b1 and ops._prepare(pa, packed, 4, 40) is b2
        assert ops._prepare(pa, packed, 5, 40) is not b2


@pytest.mark.parametrize("tier", TIERS)
def test_pack_groups_appends_padding_rows(tier, rng):
    """Convolution's all-padding pixel is packed after the input rows (no copy of the input)."""
    rank = _dispatch.tier_rank(tier)
    codes = rng.integers(0, 4, (7, 45), dtype=np.uint8)
    got = _core.pack_groups(codes, 2, 2, 23, rank, 2, 2, 3)
    assert got.shape == (9, 23)
    assert np.array_equal(got[:7], _pack_reference(codes, 2, 2, 2))
    pad = _pack_reference(np.full((1, 45), 3, np.uint8), 2, 2, 2)
    assert np.array_equal(got[7:], np.repeat(pad, 2, axis=0))
    with pytest.raises(ValueError, match="pad_code"):
        _core.pack_groups(codes, 2, 2, 23, rank, 2, 1, 4)


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("threads", [1, 2])
# Each task packs its own rows when there are >= 8 row blocks per thread of
# 32 rows, or of fewer rows down to two register tiles (130 rows: 16-row
# blocks at 1 thread, 8-row ones at 2); fewer rows (1, 37) are packed first.
@pytest.mark.parametrize("m", [1, 37, 130, 700])
def test_codes_are_packed_inside_the_gemm(tier, threads, m, rng):
    k, n = 77, 45  # odd K: every row has a packing tail
    cb_a, cb_w = [0, 1, 2, 3], [-2, -1, 0, 1]
    a = rng.integers(0, 4, (m, k), dtype=np.uint8)
    w = rng.integers(0, 4, (n, k), dtype=np.uint8)
    packed = lowbit.pack_weights(w, 2, cb_w)
    want = reference.gemm(a, w, 2, 2, cb_a, cb_w)
    lowbit.set_num_threads(threads)
    with lowbit.use(isa=tier):
        assert np.array_equal(lowbit.gemm(a, packed, 2, cb_a), want)
        assert lowbit.last_kernel().startswith("grouplut")
        pre = lowbit.pack_activations(a, 2, cb_a)  # the cached, pre-packed path agrees
        assert np.array_equal(lowbit.gemm(pre, packed), want)
        ep = lowbit.Epilogue(np.full(n, 0.5, np.float32), np.arange(n, dtype=np.float32), "relu")
        got = lowbit.gemm(a, packed, 2, cb_a, epilogue=ep)
        assert np.array_equal(got, reference.epilogue(want, ep.scale, ep.bias, clamp_lo=0.0))
        bad = a.copy()
        bad[m // 2, k - 1] = 4
        with pytest.raises(ValueError, match="a_codes: expected every code in \\[0, 4\\)"):
            lowbit.gemm(bad, packed, 2, cb_a)


@pytest.mark.parametrize("out", ["int32", "float32", "codes"])
def test_outputs_start_on_a_cache_line(out, rng):
    # threads write 64-column blocks of each row: an aligned start keeps two
    # threads off a shared cache line (csrc/bindings/module.cc empty_aligned)
    a = rng.integers(0, 4, (67, 40), dtype=np.uint8)
    w = rng.integers(0, 4, (48, 40), dtype=np.uint8)
    packed = lowbit.pack_weights(w, 2)
    want = reference.gemm(a, w, 2, 2)
    ep = None
    if out != "int32":
        ep = lowbit.Epilogue(np.ones(48, np.float32), np.zeros(48, np.float32),
                             requant=lowbit.Requant(4, 8.0) if out == "codes" else None)
    for _ in range(5):
        got = lowbit.gemm(a, packed, 2, epilogue=ep)
        assert got.ctypes.data % 64 == 0 and got.flags.c_contiguous and got.flags.writeable
        assert got.shape == (67, 48)
    if out == "int32":
        assert np.array_equal(got, want)
    del packed
    got[0, 0] = 1  # the view keeps its buffer alive
