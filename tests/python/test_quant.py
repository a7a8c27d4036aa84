"""Float codebooks: the explicit mapping to integer levels plus a scale, its
rounding bound, and the GEMM error bound that follows from it."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit import quant, reference


def test_learned_levels_example():
    cb, scale = quant.integer_codebook([-1.3, -0.4, 0.4, 1.3])
    assert cb.dtype == np.int32
    assert cb.tolist() == [-127, -39, 39, 127]
    assert scale == pytest.approx(1.3 / 127, rel=1e-15)
    assert quant.rounding_error([-1.3, -0.4, 0.4, 1.3], cb, scale) <= scale / 2


def test_uniform_levels_are_exact():
    step = 0.0371
    for bits in (1, 2, 3, 4, 8):
        ints = np.arange(-(1 << bits) // 2, (1 << bits) // 2) if bits > 1 else np.array([-1, 1])
        peak = int(np.abs(ints).max())
        cb, scale = quant.integer_codebook(ints * step, bits, max_abs=peak)
        assert np.array_equal(cb, ints)
        assert scale == pytest.approx(step, rel=1e-12)
        assert quant.rounding_error(ints * step, cb, scale) <= 1e-12


@settings(max_examples=200, deadline=None)
@given(bits=st.sampled_from([1, 2, 3, 4]), max_abs=st.integers(1, 127), data=st.data())
def test_rounding_bound(bits, max_abs, data):
    levels = data.draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
                                min_size=1 << bits, max_size=1 << bits))
    peak = max(abs(x) for x in levels)
    if peak > 0 and not peak / max_abs >= np.finfo(np.float64).tiny:  # subnormal (or zero) step
        with pytest.raises(ValueError, match="too small"):
            quant.integer_codebook(levels, bits, max_abs=max_abs)
        return
    cb, scale = quant.integer_codebook(levels, bits, max_abs=max_abs)
    assert scale > 0
    assert int(np.abs(cb).max()) <= max_abs
    if max(abs(x) for x in levels) > 0:
        assert int(np.abs(cb).max()) == max_abs
    lv = np.asarray(levels, np.float64)
    assert np.all(np.abs(lv - cb * scale) <= scale / 2 * (1 + 1e-9))
    assert cb.tolist() == np.rint(lv / scale).astype(int).tolist()  # round half to even, no clipping


def test_eight_bit_levels(rng):
    levels = rng.normal(size=256)
    cb, scale = quant.integer_codebook(levels)  # bits inferred from 256 levels
    assert cb.shape == (256,) and int(np.abs(cb).max()) == 127
    assert quant.rounding_error(levels, cb, scale) <= scale / 2
    pos = np.abs(levels)
    cb, scale = quant.integer_codebook(pos, 8, max_abs=255)  # non-negative 8-bit levels may use 0..255
    assert int(cb.max()) == 255 and int(cb.min()) >= 0
    with pytest.raises(ValueError):
        quant.integer_codebook(levels, 8, max_abs=255)  # signed levels: at most 128


def test_invalid_inputs():
    with pytest.raises(ValueError):
        quant.integer_codebook([0.1, 0.2, 0.3])  # not a power-of-two count
    with pytest.raises(ValueError):
        quant.integer_codebook([0.1, np.nan])
    with pytest.raises(ValueError):
        quant.integer_codebook([0.1, 0.2], bits=2)
    with pytest.raises(ValueError):
        quant.integer_codebook([0.1, 0.2], max_abs=0)
    with pytest.raises(ValueError):
        quant.integer_codebook([0.1, 0.2], max_abs=129)
    with pytest.raises(ValueError):
        quant.integer_codebook([0.1, 0.2], max_abs=128)  # +0.2 would map to +128
    cb, _ = quant.integer_codebook([-0.2, 0.1], max_abs=128)  # -0.2 maps to -128: fine
    assert cb.tolist() == [-128, 64]
    with pytest.raises(TypeError):
        quant.integer_codebook([0.1, 0.2], max_abs=1.5)
    cb, scale = quant.integer_codebook([0.0, 0.0])
    assert cb.tolist() == [0, 0] and scale == 1.0
    with pytest.raises(ValueError, match="too small"):
        quant.integer_codebook([5e-324, 0.0], max_abs=2)  # the step would be subnormal


@pytest.mark.parametrize("bw,ba,w_max,a_max", [(2, 2, 127, 127), (2, 2, 3, 3), (4, 3, 100, 20), (8, 8, 127, 127),
                                               (1, 8, 127, 127), (3, 4, 7, 15)])
def test_float_gemm_error_bound(bw, ba, w_max, a_max, rng):
    w_levels = np.sort(rng.normal(size=1 << bw))
    a_levels = np.sort(np.abs(rng.normal(size=1 << ba)))  # e.g. post-ReLU activations
    cbs = quant.gemm_codebooks(w_levels, a_levels, w_max_abs=w_max, a_max_abs=a_max)
    assert cbs.w_bits == bw and cbs.a_bits == ba
    assert cbs.out_scale == cbs.w_scale * cbs.a_scale
    m, n, k = 11, 23, 300
    a = rng.integers(0, 1 << ba, (m, k), dtype=np.uint8)
    w = rng.integers(0, 1 << bw, (n, k), dtype=np.uint8)
    y_int = lowbit.gemm(a, lowbit.pack_weights(w, bw, cbs.w_codebook), ba, cbs.a_codebook)
    assert np.array_equal(y_int, reference.gemm(a, w, ba, bw, cbs.a_codebook, cbs.w_codebook))
    y_float = a_levels[a] @ w_levels[w].T  # float64
    err = np.abs(y_float - y_int.astype(np.float64) * cbs.out_scale)
    bound = cbs.error_bound(k)
    assert np.all(err <= bound * (1 + 1e-9) + 1e-9)
    # the bound is the sum of per-term bounds: also check it per term on one output
    da = np.abs(a_levels - cbs.a_codebook * cbs.a_scale)
    dw = np.abs(w_levels - cbs.w_codebook * cbs.w_scale)
    assert da.max() <= cbs.a_scale / 2 * (1 + 1e-12) and dw.max() <= cbs.w_scale / 2 * (1 + 1e-12)
