"""W2A2 GEMM: every registered kernel, forced tier by tier, bit-exact against
the NumPy reference over the edge-shape matrix, extreme codes, long K and
property-based inputs. (Other bit widths: test_bitwidths.py.)"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit import reference

from conftest import assert_best_of_its_family, available_kernels

LSQ_A = [0, 1, 2, 3]          # unsigned 2-bit activations
LSQ_W = [-2, -1, 0, 1]        # signed 2-bit weights
WIDE_A = [-7, -1, 2, 9]       # non-uniform
WIDE_W = [3, -128, 127, 5]    # products need int16 tables

W2A2_KERNELS = [k for k in available_kernels() if k["w_bits"] in (0, 2) and k["a_bits"] in (0, 2)]


def codebooks_for(kernel):
    """Codebook pairs (a, w) each kernel must handle exactly."""
    if kernel["table_kind"] == "split":
        return [(None, None), (LSQ_A, LSQ_W), (WIDE_A, WIDE_W), ([-128] * 4, [-128, 127, 0, 1])]
    if kernel["family"] == "dot8":  # unsigned activation levels, 2 * max|a| * max|w| <= 32767
        return [(None, None), (LSQ_A, LSQ_W), ([1, 2, 3, 4], [-2, -1, 0, 1]), ([0, 127, 7, 100], [1, 0, -1, -128]),
                ([127, 0, 5, 1], [127, -127, 0, 3])]
    return [(None, None), (LSQ_A, LSQ_W), ([1, 2, 3, 4], [-2, -1, 0, 1]), ([0, 1, -2, 3], [1, 0, -1, -3])]


def run_forced(kernel, a, w, a_cb, w_cb):
    packed = lowbit.pack_weights(w, bits=2, codebook=w_cb)
    with lowbit.use(kernel=kernel["name"]):
        y = lowbit.gemm(a, packed, a_bits=2, a_codebook=a_cb)
    assert lowbit.last_kernel() == kernel["name"]
    return y


def edge_sizes(tile):
    sizes = {1, 2, max(1, tile - 1), tile, tile + 1, 2 * tile + 3}
    if tile >= 64:  # wide tiles run narrower blocks at the edges (e.g. 4x128: one 64-channel block)
        sizes |= {tile // 4, tile // 2, tile // 2 + 1}
    return sorted(sizes)


@pytest.mark.parametrize("kernel", W2A2_KERNELS, ids=lambda k: k["name"])
def test_edge_shapes_bit_exact(kernel, rng):
    ks = [1, 3, 4, 5, 31, 63, 64, 65, 127, 128, 129, 255, 256, 257, 300]
    for a_cb, w_cb in codebooks_for(kernel):
        for m in edge_sizes(kernel["mr"]):
            for n in edge_sizes(kernel["nr"]):
                for k in ks if (m, n) == (edge_sizes(kernel["mr"])[-1], edge_sizes(kernel["nr"])[-1]) else ks[::4]:
                    a = rng.integers(0, 4, (m, k), dtype=np.uint8)
                    w = rng.integers(0, 4, (n, k), dtype=np.uint8)
                    y = run_forced(kernel, a, w, a_cb, w_cb)
                    assert y.dtype == np.int32 and y.shape == (m, n)
                    np.testing.assert_array_equal(y, reference.gemm(a, w, 2, 2, a_cb, w_cb),
                                                  err_msg=f"{kernel['name']} M={m} N={n} K={k} {a_cb} {w_cb}")


@pytest.mark.parametrize("kernel", W2A2_KERNELS, ids=lambda k: k["name"])
def test_extreme_codes(kernel, rng):
    for a_cb, w_cb in codebooks_for(kernel):
        for a_code in (0, 3):
            for w_code in (0, 3):
                a = np.full((9, 700), a_code, np.uint8)
                w = np.full((67, 700), w_code, np.uint8)
                np.testing.assert_array_equal(run_forced(kernel, a, w, a_cb, w_cb),
                                              reference.gemm(a, w, 2, 2, a_cb, w_cb))


@pytest.mark.parametrize("kernel", W2A2_KERNELS, ids=lambda k: k["name"])
def test_long_k_worst_case(kernel):
    """Narrow accumulators must widen in time: all products at the kernel's
    largest magnitude, both signs, over a long K."""
    if kernel["table_kind"] == "split":
        cases = [([-128, 0, 0, 0], [-128, 0, 0, 0], 131071),   # +16384 each, K = K_max
                 ([-128, 0, 0, 0], [127, 0, 0, 0], 131071)]    # -16256 each
    elif kernel["family"] == "dot8":  # pair sums at the int16 edge: widened after every step
        cases = [(LSQ_A, LSQ_W, 200_003), ([0, 0, 0, 127], [0, 0, 0, -128], 131_585),  # -16256 each
                 ([0, 0, 0, 127], [0, 0, 0, 127], 100_001)]                             # +16129 each
    else:
        cases = [(LSQ_A, LSQ_W, 200_003), ([0, 0, 0, -3], [0, 0, 0, -10], 150_001)]
    for a_cb, w_cb, k in cases:
        a = np.zeros((2, k), np.uint8) if kernel["table_kind"] == "split" else np.full((2, k), 3, np.uint8)
        w = np.zeros((3, k), np.uint8) if kernel["table_kind"] == "split" else np.full((3, k), 3, np.uint8)
        if kernel["table_kind"] != "split" and w_cb == LSQ_W:
            w[:] = 0  # level -2 with activation level 3: product -6
        y = run_forced(kernel, a, w, a_cb, w_cb)
        expected = reference.gemm(a, w, 2, 2, a_cb, w_cb)
        np.testing.assert_array_equal(y, expected)
        assert abs(int(expected[0, 0])) >= 1_000_000


def test_k_max_boundary():
    cb = [-128, 1, 2, 3]
    kmax = (2**31 - 1) // (128 * 128)
    assert kmax == 131071
    a = np.zeros((1, kmax), np.uint8)
    w = np.zeros((2, kmax), np.uint8)
    y = lowbit.gemm(a, lowbit.pack_weights(w, 2, cb), 2, cb)
    assert int(y[0, 0]) == kmax * 16384
    a1 = np.zeros((1, kmax + 1), np.uint8)
    with pytest.raises(ValueError, match="K_max"):
        lowbit.gemm(a1, lowbit.pack_weights(np.zeros((2, kmax + 1), np.uint8), 2, cb), 2, cb)


@pytest.mark.parametrize("tier", lowbit.supported_tiers())
def test_every_tier_random_codebooks(tier, rng):
    """Capping the tier never falls back silently: the kernel that ran is of
    that tier (or, for a kernel variant the tier lacks, the best below)."""
    for _ in range(12):
        a_cb = rng.integers(-128, 128, 4)
        w_cb = rng.integers(-128, 128, 4)
        m, n, k = rng.integers(1, 40), rng.integers(1, 90), rng.integers(1, 700)
        a = rng.integers(0, 4, (m, k), dtype=np.uint8)
        w = rng.integers(0, 4, (n, k), dtype=np.uint8)
        with lowbit.use(isa=tier):
            y = lowbit.gemm(a, lowbit.pack_weights(w, 2, w_cb), 2, a_cb)
        assert_best_of_its_family(lowbit.last_kernel(), tier)
        np.testing.assert_array_equal(y, reference.gemm(a, w, 2, 2, a_cb, w_cb))


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 20), n=st.integers(1, 70), k=st.integers(1, 520), seed=st.integers(0, 2**32 - 1),
       small=st.booleans())
def test_property_auto_dispatch(m, n, k, seed, small):
    r = np.random.default_rng(seed)
    lim = 4 if small else 128
    a_cb = r.integers(-lim, lim, 4)
    w_cb = r.integers(-lim, lim, 4)
    a = r.integers(0, 4, (m, k), dtype=np.uint8)
    w = r.integers(0, 4, (n, k), dtype=np.uint8)
    pa = lowbit.pack_activations(a, 2, a_cb)
    packed = lowbit.pack_weights(w, 2, w_cb)
    expected = reference.gemm(a, w, 2, 2, a_cb, w_cb)
    np.testing.assert_array_equal(lowbit.gemm(pa, packed), expected)
    np.testing.assert_array_equal(lowbit.gemm(pa, packed), expected)  # cached packed forms reused


def test_strided_and_fortran_inputs_are_read_correctly(rng):
    big_a = rng.integers(0, 4, (20, 400), dtype=np.uint8)
    big_w = rng.integers(0, 4, (40, 400), dtype=np.uint8)
    a = big_a[::2, 1::3]              # non-contiguous view
    w = np.asfortranarray(big_w[:, :a.shape[1]])
    y = lowbit.gemm(a, lowbit.pack_weights(w, 2), 2)
    np.testing.assert_array_equal(y, reference.gemm(np.ascontiguousarray(a), np.ascontiguousarray(w), 2, 2))


def test_packed_weights_roundtrip_and_size(rng):
    w = rng.integers(0, 4, (33, 301), dtype=np.uint8)
    pw = lowbit.pack_weights(w, 2, LSQ_W)
    assert pw.nbytes <= 33 * ((301 * 2 + 7) // 8)
    blob = pw.to_bytes()
    assert len(blob) <= pw.nbytes + 64
    back = lowbit.PackedWeights.from_bytes(blob)
    assert (back.N, back.K, back.bits) == (33, 301, 2)
    np.testing.assert_array_equal(back.codes(), w)
    a = rng.integers(0, 4, (5, 301), dtype=np.uint8)
    np.testing.assert_array_equal(lowbit.gemm(a, back, 2), lowbit.gemm(a, pw, 2))


def test_layout_cache_is_reported(rng):
    w = rng.integers(0, 4, (64, 128), dtype=np.uint8)
    pw = lowbit.pack_weights(w, 2)
    assert pw.layout_nbytes == {}
    lowbit.gemm(rng.integers(0, 4, (3, 128), dtype=np.uint8), pw, 2)
    assert sum(pw.layout_nbytes.values()) > 0


def test_pack_activations_reuse_matches_plain(rng):
    a = rng.integers(0, 4, (7, 150), dtype=np.uint8)
    pa = lowbit.pack_activations(a, bits=2, codebook=LSQ_A)
    for n in (1, 40):
        pw = lowbit.pack_weights(rng.integers(0, 4, (n, 150), dtype=np.uint8), 2, LSQ_W)
        np.testing.assert_array_equal(lowbit.gemm(pa, pw), lowbit.gemm(a, pw, 2, LSQ_A))


def test_empty_m(rng):
    pw = lowbit.pack_weights(rng.integers(0, 4, (5, 10), dtype=np.uint8), 2)
    y = lowbit.gemm(np.zeros((0, 10), np.uint8), pw, 2)
    assert y.shape == (0, 5) and y.dtype == np.int32


WIDE_TILE_KERNELS = [k for k in W2A2_KERNELS if k["nr"] > 64]  # none below avx512icl (the SIMDe build runs them)


# ids as a list: an empty parameter set must not reach an ids function (pytest 7.2, the Arm sysroot's)
@pytest.mark.parametrize("kernel", WIDE_TILE_KERNELS, ids=[k["name"] for k in WIDE_TILE_KERNELS])
def test_long_k_worst_case_wide_tiles(kernel):
    """Tiles of several channel blocks (each table load shared by the blocks):
    every block of every row widens in time over a K that crosses the int8
    and int16 widening points many times, both signs, N ending mid-block."""
    m, n, k = 5, kernel["nr"] + 67, 30_001
    for a_cb, w_cb in ((LSQ_A, LSQ_W), ([0, 0, 0, -3], [0, 0, 0, -10])):
        a = np.full((m, k), 3, np.uint8)
        w = np.full((n, k), 3, np.uint8)
        w[::2] = 0  # alternate channels: level cbW[0] (-2 or 0), the others cbW[3]
        np.testing.assert_array_equal(run_forced(kernel, a, w, a_cb, w_cb), reference.gemm(a, w, 2, 2, a_cb, w_cb))


BITSERIAL_KERNELS = [k for k in available_kernels() if k["family"] == "bitserial"]


@pytest.mark.parametrize("kernel", BITSERIAL_KERNELS, ids=lambda k: k["name"])
@pytest.mark.parametrize("ba,a_cb", [(1, None), (1, [-3, 5]), (2, None), (2, [-1, 1, 3, 5])])
def test_bitserial_w1_bit_exact_and_long_k(kernel, ba, a_cb, rng):
    """W1A1 / W1A2 on every bitserial kernel: N around its tile, K around the
    256-code step, and a long all-ones K (24,001 codes: 94 steps) that
    crosses every narrow popcount fold (NEON: 15 steps, AVX2: 31)."""
    cases = [(3, n, k, None) for n in (1, 3, 4, 5, 9) for k in (1, 255, 256, 257, 700)]
    cases += [(2, 5, 24_001, "ones")]
    for m, n, k, fill in cases:
        if fill == "ones":
            a = np.full((m, k), (1 << ba) - 1, np.uint8)
            w = np.ones((n, k), np.uint8)
        else:
            a = rng.integers(0, 1 << ba, (m, k), dtype=np.uint8)
            w = rng.integers(0, 2, (n, k), dtype=np.uint8)
        packed = lowbit.pack_weights(w, bits=1, codebook=[-1, 1])
        with lowbit.use(kernel=kernel["name"]):
            y = lowbit.gemm(a, packed, a_bits=ba, a_codebook=a_cb)
        assert lowbit.last_kernel() == kernel["name"]
        np.testing.assert_array_equal(y, reference.gemm(a, w, ba, 1, a_cb, [-1, 1]),
                                      err_msg=f"{kernel['name']} M={m} N={n} K={k} A{ba} {a_cb}")
