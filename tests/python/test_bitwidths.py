"""Every bit-width pair (1, 2, 3, 4 and 8 bits, both sides) with default,
LSQ-style, random and extreme codebooks: forced through every registry kernel
that applies and under every ISA tier this CPU has, bit-exact against the NumPy
reference (np.array_equal, never allclose). Also K near K_max at the
worst-case products, the compact size of PackedWeights for every bit width,
and PackedWeights serialized under one tier, run under every other."""
import numpy as np
import pytest

import lowbit
from lowbit import _dispatch, reference
from lowbit.families import FAMILIES
from lowbit.packing import _HEADER

from conftest import available_kernels

BITS = (1, 2, 3, 4, 8)
PAIRS = [(bw, ba) for bw in BITS for ba in BITS]
TIERS = lowbit.supported_tiers()
AVAILABLE = available_kernels()
CODEBOOK_KINDS = ("default", "lsq", "random", "neg128", "pos127", "mixed", "wide", "shifted")


def codebook(kind, bits, side, rng):
    """An integer codebook of 2**bits levels (None = the default 0 .. 2**bits-1)."""
    n = 1 << bits
    if kind == "default":
        return None
    if kind == "lsq":  # signed weights, unsigned activations, as LSQ trains them
        if side == "a":
            return list(range(n))
        return [-1, 1] if bits == 1 else list(range(-n // 2, n // 2))
    if kind == "random":
        return rng.integers(-128, 256 if bits == 8 else 128, n).tolist()
    if kind == "neg128":
        return [-128] * n
    if kind == "pos127":
        return [127] * n
    if kind == "mixed":
        return rng.choice([-128, 127], n).tolist()
    if kind == "wide":  # 8 bits: the int8 view of the codes (packer's int8 path); else -128/127 ends
        if bits == 8:
            return np.arange(256, dtype=np.uint8).view(np.int8).astype(int).tolist()
        return [-128] + rng.integers(-128, 128, n - 2).tolist() + [127] if n > 2 else [-128, 127]
    if kind == "shifted":  # 8 bits: code + offset (the packer's affine path); else a signed range
        return list(range(-128, 128)) if bits == 8 and side == "a" else list(range(-n // 2 + 1, n // 2 + 1))
    raise AssertionError(kind)


def applicable(kernel, bw, ba, cb_w, cb_a):
    """Whether lowbit.use(kernel=...) must compute this GEMM (mirrors ops._plan_uncached)."""
    if (kernel["w_bits"], kernel["a_bits"]) not in ((0, 0), (bw, ba)):
        return False
    plan, _ = FAMILIES[kernel["family"]].plan(bw, ba, cb_w, cb_a)
    if plan is None:
        return False
    return plan.table_kind == kernel["table_kind"] or (plan.table_kind == "i8" and kernel["table_kind"] == "split")


def norm(cb, bits):
    return lowbit.codebook.normalize(cb, bits)


def tier_of(name):
    return name.rsplit("__", 1)[1]


def check_all_paths(a, w, bw, ba, cb_w, cb_a, packed=None, what=""):
    """Runs the GEMM forced through every applicable available kernel and under
    every supported tier cap; every result must equal the reference exactly.
    Returns the kernels that ran."""
    ref = reference.gemm(a, w, ba, bw, cb_a, cb_w)
    packed = packed if packed is not None else lowbit.pack_weights(w, bw, cb_w)
    ran = []
    for k in AVAILABLE:
        if not applicable(k, bw, ba, norm(cb_w, bw), norm(cb_a, ba)):
            continue
        with lowbit.use(kernel=k["name"]):
            y = lowbit.gemm(a, packed, ba, cb_a)
        assert lowbit.last_kernel() == k["name"]
        assert y.dtype == np.int32 and y.shape == ref.shape
        assert np.array_equal(y, ref), f"{k['name']} W{bw}A{ba} {a.shape}x{w.shape} {what}"
        ran.append(k["name"])
    for tier in TIERS:
        with lowbit.use(isa=tier):
            y = lowbit.gemm(a, packed, ba, cb_a)
        name = lowbit.last_kernel()
        assert name.endswith("__" + tier_of(name))
        assert _dispatch.tier_rank(tier_of(name)) <= _dispatch.tier_rank(tier), (name, tier)
        assert np.array_equal(y, ref), f"auto ({name}, cap {tier}) W{bw}A{ba} {what}"
        ran.append(name)
    return ran


@pytest.mark.parametrize("kind", CODEBOOK_KINDS)
@pytest.mark.parametrize("bw,ba", PAIRS, ids=[f"W{bw}A{ba}" for bw, ba in PAIRS])
def test_pair_codebooks_bit_exact(bw, ba, kind, rng):
    cb_w, cb_a = codebook(kind, bw, "w", rng), codebook(kind, ba, "a", rng)
    m, n, k = 13, 37, 75  # > one tile in M and N for every kernel but grouplut's N; odd K
    a = rng.integers(0, 1 << ba, (m, k), dtype=np.uint8)
    w = rng.integers(0, 1 << bw, (n, k), dtype=np.uint8)
    ran = check_all_paths(a, w, bw, ba, cb_w, cb_a, what=kind)
    # dotgemm is the exact general path: it applies to every pair and codebook
    assert any(r.startswith("dotgemm") for r in ran)
    assert sum(r.startswith("dotgemm") for r in ran) >= len([x for x in AVAILABLE if x["family"] == "dotgemm"])


def _edge_values(attr, extra=()):
    vals = {1, 2}
    for kern in lowbit.kernels():  # every tile size, also of tiers this CPU lacks
        t = kern[attr]
        vals |= {max(1, t - 1), t, t + 1}
    vals |= set(extra)
    return sorted(vals)


EDGE_M = _edge_values("mr", (63, 64, 65))   # the driver's task height is ~64 rows
EDGE_N = _edge_values("nr", (63, 64, 65))
EDGE_K = [1, 2, 3, 4, 5, 31, 32, 33, 63, 64, 65, 127, 128, 129, 257]  # K steps: 2 (dotgemm), groups, 64 (lutgemm)
EDGE_PAIRS = [(8, 8), (8, 1), (1, 8), (4, 4), (2, 2), (3, 8), (8, 3), (2, 4)]


@pytest.mark.parametrize("bw,ba", EDGE_PAIRS, ids=[f"W{bw}A{ba}" for bw, ba in EDGE_PAIRS])
def test_edge_shapes(bw, ba, rng):
    """M, N, K in {1, below/at/above every kernel's tile}, one dimension at a
    time around a generic shape, for small (LUT-eligible) and wide codebooks."""
    books = [(None, None), (codebook("random", bw, "w", rng), codebook("random", ba, "a", rng)),
             ([-1, 1] if bw == 1 else list(range(-(1 << bw) // 2, (1 << bw) // 2)), list(range(2)) * ((1 << ba) // 2))]
    shapes = [(m, 17, 33) for m in EDGE_M] + [(7, n, 33) for n in EDGE_N] + [(7, 17, k) for k in EDGE_K]
    for cb_w, cb_a in books:
        for m, n, k in shapes:
            a = rng.integers(0, 1 << ba, (m, k), dtype=np.uint8)
            w = rng.integers(0, 1 << bw, (n, k), dtype=np.uint8)
            check_all_paths(a, w, bw, ba, cb_w, cb_a, what=f"M={m} N={n} K={k} {cb_w} {cb_a}")


def test_edge_shape_cross_product_dotgemm(rng):
    """The full M x N x K cross product around the dotgemm tiles (W8A8)."""
    ms = sorted({1, 5, 6, 7, 8, 9, 13})
    ns = sorted({1, 15, 16, 17, 31, 32, 33})
    ks = [1, 2, 3, 34]
    dot = [k for k in AVAILABLE if k["family"] == "dotgemm"]
    for m in ms:
        for n in ns:
            for k in ks:
                a = rng.integers(0, 256, (m, k), dtype=np.uint8)
                w = rng.integers(0, 256, (n, k), dtype=np.uint8)
                ref = reference.gemm(a, w, 8, 8)
                packed = lowbit.pack_weights(w, 8)
                for kern in dot:
                    with lowbit.use(kernel=kern["name"]):
                        assert np.array_equal(lowbit.gemm(a, packed, 8), ref), (kern["name"], m, n, k)


# ---- K_max ------------------------------------------------------------------------------

KMAX_CASES = [
    # (bw, ba, w codebook, a codebook, w code, a code): all codes the worst-case level
    (8, 8, [-128] * 256, [-128] * 256, 0, 0),           # +16384 per k
    (8, 8, [127] * 256, [-128] * 256, 0, 0),            # -16256 per k
    (8, 8, None, None, 255, 255),                       # +65025 per k (levels up to 255)
    (8, 8, None, [-128] + [0] * 255, 255, 0),           # -32640 per k
    (4, 4, [-128] * 16, [-128] * 16, 3, 5),
    (4, 4, [127] * 16, [-128] * 16, 3, 5),
    (2, 2, [-128, 127, 0, 1], [-128, 127, 0, 1], 0, 0),  # lutgemm16 (split tables) applies too
    (2, 2, [-128, 127, 0, 1], [-128, 127, 0, 1], 1, 0),
    (1, 8, [-128, 127], None, 1, 255),
    (8, 1, None, [-128, 127], 255, 0),
    (3, 2, [-128] * 8, [127] * 4, 7, 3),
]


@pytest.mark.parametrize("case", KMAX_CASES, ids=lambda c: f"W{c[0]}A{c[1]}-w{c[4]}-a{c[5]}")
def test_k_max_worst_case(case, rng):
    bw, ba, cb_w, cb_a, wc, ac = case
    cw, ca = norm(cb_w, bw), norm(cb_a, ba)
    pmax = max(abs(int(ca.min())), abs(int(ca.max()))) * max(abs(int(cw.min())), abs(int(cw.max())))
    kmax = (2**31 - 1) // pmax
    assert lowbit.codebook.k_max(ca, cw) == kmax
    for k in (kmax, kmax - 1):
        a = np.full((2, k), ac, np.uint8)
        a[1, ::3] = (ac + 1) % (1 << ba)  # a second row that is not all worst-case
        w = np.full((3, k), wc, np.uint8)
        w[2, 1::5] = (wc + 1) % (1 << bw)
        ref = reference.gemm(a, w, ba, bw, cb_a, cb_w)
        assert abs(int(ref[0, 0])) == k * abs(int(cw[wc]) * int(ca[ac]))
        check_all_paths(a, w, bw, ba, cb_w, cb_a, what=f"K={k}")
    a = np.full((1, kmax + 1), ac, np.uint8)
    w = np.full((1, kmax + 1), wc, np.uint8)
    packed = lowbit.pack_weights(w, bw, cb_w)
    with pytest.raises(ValueError, match="K_max"):
        lowbit.gemm(a, packed, ba, cb_a)
    for k in AVAILABLE:
        if applicable(k, bw, ba, cw, ca):
            with lowbit.use(kernel=k["name"]), pytest.raises(ValueError, match="K_max"):
                lowbit.gemm(a, packed, ba, cb_a)


# ---- PackedWeights: compact size, serialization across tiers ------------------------------

@pytest.mark.parametrize("bits", BITS)
def test_packed_weights_compact(bits, rng):
    header = _HEADER.size + 2 * (1 << bits) + 4  # header, int16 codebook, crc32
    for n, k in [(1, 1), (3, 7), (5, 8), (16, 33), (64, 1000)]:
        w = rng.integers(0, 1 << bits, (n, k), dtype=np.uint8)
        pw = lowbit.pack_weights(w, bits)
        assert pw.nbytes == n * -(-k * bits // 8)
        assert len(pw.to_bytes()) <= n * -(-k * bits // 8) + header
        if bits < 4 and k >= 8:  # never stored as wider codes
            assert pw.nbytes < n * -(-k * 4 // 8)
        assert np.array_equal(pw.codes(), w)
    # 8-bit codebooks of 256 levels (up to 255) round-trip, including the header's level count
    cb = rng.integers(-128, 256, 256)
    pw = lowbit.pack_weights(rng.integers(0, 256, (4, 9), dtype=np.uint8), 8, cb) if bits == 8 else None
    if pw is not None:
        back = lowbit.PackedWeights.from_bytes(pw.to_bytes())
        assert back.bits == 8 and np.array_equal(back.codebook, cb) and np.array_equal(back.codes(), pw.codes())


@pytest.mark.parametrize("bw,ba", [(8, 8), (8, 2), (1, 8), (4, 4), (2, 2), (3, 1)],
                         ids=lambda v: str(v))
def test_serialized_under_one_tier_runs_under_every_other(bw, ba, rng):
    m, n, k = 9, 35, 71
    for cb_w, cb_a in [(None, None), (codebook("random", bw, "w", rng), codebook("random", ba, "a", rng))]:
        a = rng.integers(0, 1 << ba, (m, k), dtype=np.uint8)
        w = rng.integers(0, 1 << bw, (n, k), dtype=np.uint8)
        ref = reference.gemm(a, w, ba, bw, cb_a, cb_w)
        for save_tier in TIERS:
            with lowbit.use(isa=save_tier):
                pw = lowbit.pack_weights(w, bw, cb_w)
                assert np.array_equal(lowbit.gemm(a, pw, ba, cb_a), ref)  # builds that tier's layouts
                blob = pw.to_bytes()
            for run_tier in TIERS:
                loaded = lowbit.PackedWeights.from_bytes(blob)
                assert loaded.bits == bw and np.array_equal(loaded.codebook, norm(cb_w, bw))
                with lowbit.use(isa=run_tier):
                    y = lowbit.gemm(a, loaded, ba, cb_a)
                assert _dispatch.tier_rank(tier_of(lowbit.last_kernel())) <= _dispatch.tier_rank(run_tier)
                assert np.array_equal(y, ref), (save_tier, run_tier, lowbit.last_kernel())


# ---- 8-bit rules and errors ---------------------------------------------------------------

def test_eight_bit_codebook_rules(rng):
    w = rng.integers(0, 256, (4, 10), dtype=np.uint8)
    lowbit.pack_weights(w, 8, list(range(-128, 128)))
    lowbit.pack_weights(w, 8, [255] * 256)
    with pytest.raises(ValueError):
        lowbit.pack_weights(w, 8, [256] + [0] * 255)
    with pytest.raises(ValueError):
        lowbit.pack_weights(w, 8, [-129] + [0] * 255)
    with pytest.raises(ValueError):
        lowbit.pack_weights(w, 8, list(range(16)))  # wrong count
    with pytest.raises(ValueError):
        lowbit.pack_weights(w % 4, 2, [0, 1, 2, 128])  # 1-4-bit levels stay in [-128, 127]
    for bits in (5, 6, 7):
        with pytest.raises(NotImplementedError):
            lowbit.pack_weights(w % 4, bits)
    pa = lowbit.pack_activations(rng.integers(0, 256, (3, 10), dtype=np.uint8), 8)
    assert pa.bits == 8
    y = lowbit.gemm(pa, lowbit.pack_weights(w, 8))
    assert np.array_equal(y, reference.gemm(pa.codes, w, 8, 8))


def test_dotgemm_rejects_out_of_range_activation_codes(rng):
    pw = lowbit.pack_weights(rng.integers(0, 16, (5, 40), dtype=np.uint8), 4, [-128] * 16)
    a = rng.integers(0, 16, (3, 40), dtype=np.uint8)
    a[2, 37] = 16
    for k in AVAILABLE:
        if k["family"] == "dotgemm":
            with lowbit.use(kernel=k["name"]), pytest.raises(ValueError, match="code"):
                lowbit.gemm(a, pw, 4, [-128] * 16)


def test_dispatch_prefers_tables_and_falls_back_to_dotgemm(rng):
    a = rng.integers(0, 4, (4, 20), dtype=np.uint8)
    w = rng.integers(0, 4, (6, 20), dtype=np.uint8)
    lowbit.gemm(a, lowbit.pack_weights(w, 2), 2)
    assert not lowbit.last_kernel().startswith("dotgemm")  # small products: a LUT family
    w8 = rng.integers(0, 256, (6, 20), dtype=np.uint8)
    lowbit.gemm(a, lowbit.pack_weights(w8, 8), 2)
    assert lowbit.last_kernel().startswith("dotgemm")
    a16 = rng.integers(0, 16, (4, 20), dtype=np.uint8)
    w16 = rng.integers(0, 16, (6, 20), dtype=np.uint8)
    wide = list(range(-128, 128, 16))
    y = lowbit.gemm(a16, lowbit.pack_weights(w16, 4, wide), 4, wide)  # W4A4 spanning [-128, 127]
    assert lowbit.last_kernel().startswith("dotgemm")
    assert np.array_equal(y, reference.gemm(a16, w16, 4, 4, wide, wide))
    assert "dotgemm" in lowbit.explain(4, 6, 20, a_bits=4, w_bits=4, a_codebook=wide, w_codebook=wide)


@pytest.mark.parametrize("bits", BITS)
def test_activation_packer_matches_numpy(bits, rng):
    """The native int16-level packer, scalar and SIMD paths (table, vpshufb,
    affine and int8 widening for 8 bits), against NumPy indexing."""
    from lowbit.families.dotgemm import Dotgemm
    n = 1 << bits
    books = [np.arange(n), rng.integers(-128, 128, n), np.full(n, -128)]
    if bits == 8:
        books += [np.arange(256) - 128, np.arange(256) - 100, np.arange(256, dtype=np.uint8).view(np.int8),
                  rng.integers(-128, 256, 256), np.arange(256) - 1]
    for cb in books:
        cb = np.asarray(cb, np.int64)
        plan, _ = Dotgemm.plan(2, bits, np.zeros(4, np.int32), cb.astype(np.int32))
        for m, k in [(1, 1), (3, 31), (2, 32), (5, 33), (4, 100), (600, 130)]:
            codes = rng.integers(0, n, (m, k), dtype=np.uint8)
            want = np.zeros((m, 2 * -(-k // 2)), np.int16)
            want[:, :k] = cb[codes]
            for tier_rank in sorted({0, _dispatch.tier_rank(TIERS[-1])}):
                got = Dotgemm.pack_activations(codes, plan, tier_rank).view("<i2")
                assert np.array_equal(got, want), (bits, cb[:4], m, k, tier_rank)
            if bits < 8 and k > 1:
                bad = codes.copy()
                bad[-1, -1] = n
                for tier_rank in sorted({0, _dispatch.tier_rank(TIERS[-1])}):
                    with pytest.raises(ValueError):
                        Dotgemm.pack_activations(bad, plan, tier_rank)
