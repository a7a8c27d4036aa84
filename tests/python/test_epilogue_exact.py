"""Code outputs of the epilogue are decided in float64 (csrc/ops/epilogue.h): on every tier
they equal lowbit.reference.epilogue, which is the float64 formula, also at and next to
rounding ties, where the float32 fast path alone would round the other way."""
import numpy as np
import pytest

import lowbit
from lowbit import _core, quant, reference

ACTIVATIONS = {"none": (-np.inf, np.inf), "relu": (0.0, np.inf), "relu6": (0.0, 6.0), "band": (-0.75, 1.25)}
REQUANTS = [lowbit.Requant(2, 0.37, False), lowbit.Requant(2, 0.05, True), lowbit.Requant(4, 0.11),
            lowbit.Requant(4, 0.2833181619644165), lowbit.Requant(8, 0.013, True), lowbit.Requant(8, 0.0625),
            lowbit.Requant(1, 0.5),
            # narrowed ranges: a 5-bit grid in 8-bit codes, a narrow-range signed 4-bit grid,
            # a signed 5-bit grid (all fold into epilogues since the 5-bit ProxylessNAS)
            lowbit.Requant(8, 0.07, False, 0, 31), lowbit.Requant(4, 0.3, True, -7, 7),
            lowbit.Requant(8, 0.021, True, -16, 15)]


def float64_codes(acc, scale64, bias64, residual, lo, hi, rq):
    """The contract written independently, one output at a time in Python floats (IEEE
    float64; round() rounds half to even)."""
    out = np.zeros(acc.shape, np.uint8)
    for m in range(acc.shape[0]):
        for n in range(acc.shape[1]):
            v = float(acc[m, n]) * float(scale64[n])
            v = v + float(bias64[n])
            if residual is not None:
                v = v + float(residual[m, n])
            v = lo if v < lo else v
            v = hi if v > hi else v
            t = v / rq.step64
            t = min(max(t, rq.qmin - 1), rq.qmax + 1)   # the same code; an infinite t becomes finite
            q = rq.qmin if t != t else min(max(round(t), rq.qmin), rq.qmax)
            out[m, n] = q - rq.qmin
    return out


def float32_codes(acc, scale, bias, residual, lo, hi, rq):
    """The old float32 contract (float32 v, times float32 1/step, rounded): what the fast
    path alone would give."""
    v = acc.astype(np.float32) * scale + bias
    if residual is not None:
        v = v + residual
    v = np.minimum(np.maximum(v, np.float32(lo)), np.float32(hi))
    q = np.rint(v * rq.inv_step)
    q = np.where(np.isnan(q), rq.qmin, np.clip(q, rq.qmin, rq.qmax))
    return (q - rq.qmin).astype(np.uint8)


def fast_rule_codes(acc, scale64, bias64, residual, lo, hi, rq):
    """What the fast path alone (csrc/ops/epilogue.cc, code_constants: t - qmin from per-column
    constants, clamped, rounded; no near-tie test) would give. Its single-rounding fmas are
    emulated in float64 (the product is exact there; one extra rounding at worst), which is
    close enough to count the outputs where that rule departs from the formula."""
    step = np.float64(rq.step64)
    s = (np.asarray(scale64, np.float64) / step).astype(np.float32).astype(np.float64)
    b = (np.asarray(bias64, np.float64) / step - rq.qmin).astype(np.float32).astype(np.float64)
    t = (acc.astype(np.float32).astype(np.float64) * s + b).astype(np.float32)   # t - qmin
    if residual is not None:
        t = (residual.astype(np.float64) * np.float64(np.float32(1 / step)) + t.astype(np.float64)).astype(np.float32)
    t_lo = np.float32(max(np.float64(np.float32(lo)) / step, rq.qmin) - rq.qmin)
    t_hi = np.float32(min(np.float64(np.float32(hi)) / step, rq.qmax) - rq.qmin)
    q = np.rint(np.minimum(np.maximum(t, t_lo), t_hi))
    return np.where(np.isnan(q), 0, q).astype(np.uint8)


def near_tie_case(rng, rq, m, n, big=False, negative=False):
    """Sums, float64 parameters (and their float32 roundings) that put row 0 of every
    column at, or within a few float32 ulps of, a rounding tie k + 1/2 of v / step (k inside
    the code range), the other rows at other sums of the same column. ``big``: sums beyond
    2^24 (float32(acc) rounds); ``negative``: negative scales."""
    lim = 1 << 30 if big else 3000
    acc = rng.integers(-lim, lim, (m, n), dtype=np.int64).astype(np.int32)
    acc[0] = np.where(acc[0] == 0, 1, acc[0])
    k = rng.integers(rq.qmin, rq.qmax, n) if rq.qmax > rq.qmin else np.zeros(n, np.int64)
    target = (k + 0.5) * rq.step64
    # offsets from the tie, in units of the tie value's float32 spacing: 0 (an exact tie of
    # the float64 formula), a hair (float64 decides), a few float32 ulps, far
    ulp = np.spacing(np.abs(target).astype(np.float32)).astype(np.float64) + 1e-30
    offset = rng.choice([0.0, 1e-6, -1e-6, 0.3, -0.3, 1.0, -1.0, 3.0, -3.0, 64.0], n) * ulp
    magnitude = rng.uniform(0.5, 4.0, n) * rq.step64 / np.maximum(np.abs(acc[0].astype(np.float64)), 1.0)
    scale64 = -magnitude if negative else magnitude
    bias64 = target + offset - acc[0].astype(np.float64) * scale64
    return acc, scale64.astype(np.float32), bias64.astype(np.float32), scale64, bias64


@pytest.mark.parametrize("simd", [False, True])
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("big,negative", [(False, False), (False, True), (True, False), (True, True)])
def test_codes_at_and_next_to_ties_match_the_float64_formula(simd, act, residual, big, negative, rng):
    lo, hi = ACTIVATIONS[act]
    m, n = 7, 75   # 64 columns in 32-code stores, 8 in one vector, 3 in the scalar tail
    hits = fast_hits = 0
    for rq in REQUANTS:
        acc, scale, bias, scale64, bias64 = near_tie_case(rng, rq, m, n, big, negative)
        res = None
        if residual:   # dequantized codes, as a residual usually is, and a few arbitrary values
            res = (rng.integers(-8, 8, (m, n)) * np.float32(0.17)).astype(np.float32)
            res[0] = 0.0
            res[m - 1, ::5] = rng.standard_normal(len(res[m - 1, ::5])).astype(np.float32)
        got = _core.epilogue(acc, scale, bias, res, lo, hi, "codes", float(rq.inv_step), rq.qmin, rq.qmax,
                             rq.step64, scale64, bias64, simd=simd)
        want = reference.epilogue(acc, scale, bias, res, lo, hi, rq, scale64, bias64)
        np.testing.assert_array_equal(got, want, err_msg=f"{rq} {act}")
        np.testing.assert_array_equal(want, float64_codes(acc, scale64, bias64, res, lo, hi, rq))
        hits += int(np.count_nonzero(want != float32_codes(acc, scale, bias, res, lo, hi, rq)))
        fast_hits += int(np.count_nonzero(want != fast_rule_codes(acc, scale64, bias64, res, lo, hi, rq)))
    assert hits > 0   # the case reaches outputs that the float32 rule alone decides otherwise
    assert fast_hits > 0   # ... and outputs that the kernels' fast path alone would round the other way


@pytest.mark.parametrize("simd", [False, True])
def test_exact_ties_round_half_to_even(simd):
    """Power-of-two parameters: v / step is exactly k + 1/2 for half the sums; every tier
    rounds those to the even neighbour, without float64 parameters and with them."""
    acc = np.arange(-40, 40, dtype=np.int32).reshape(4, 20)
    scale = np.full(20, 0.125, np.float32)
    bias = np.full(20, 0.0625, np.float32)
    rq = lowbit.Requant(4, 0.25, True)
    want = np.clip(np.round((acc * 0.125 + 0.0625) / 0.25), rq.qmin, rq.qmax).astype(int) - rq.qmin
    for args in ((), (rq.step64, scale.astype(np.float64), bias.astype(np.float64))):
        got = _core.epilogue(acc, scale, bias, None, -np.inf, np.inf, "codes", float(rq.inv_step), rq.qmin, rq.qmax,
                             *args, simd=simd)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("tier", lowbit.supported_tiers())
@pytest.mark.parametrize("strategy", [None, "lutgemm", "dot8", "dotgemm"])
def test_gemm_codes_with_float64_parameters_every_tier(tier, strategy, rng):
    """Through lowbit.gemm (the prepared call path): codes from float64 parameters, with and
    without a residual, equal the reference on every tier and kernel family."""
    m, n, k = 37, 75, 129
    a = rng.integers(0, 4, (m, k), dtype=np.uint8)
    w = rng.integers(0, 4, (n, k), dtype=np.uint8)
    packed = lowbit.pack_weights(w, 2, [-2, -1, 0, 1])
    acc = reference.gemm(a, w, 2, 2, None, [-2, -1, 0, 1])
    for rq in REQUANTS:
        for act in ("none", "relu6"):
            for use_res in (False, True):
                scale64 = rng.random(n) * 0.02 + 1e-3
                # float64 biases that put column n's value at row n % m on a tie of the grid
                rows = np.arange(n) % m
                k_half = rng.integers(rq.qmin, max(rq.qmax, rq.qmin + 1), n) + 0.5
                bias64 = k_half * rq.step64 - acc[rows, np.arange(n)] * scale64 + rng.choice([0, 1e-9, -1e-9], n)
                res = (rng.integers(-4, 4, (m, n)) * np.float32(rq.step)).astype(np.float32) if use_res else None
                ep = lowbit.Epilogue(scale64.astype(np.float32), bias64.astype(np.float32), act, rq, residual=res,
                                     scale64=scale64, bias64=bias64)
                with lowbit.use(isa=tier, strategy=strategy):
                    y = lowbit.gemm(a, packed, 2, epilogue=ep)
                want = reference.epilogue(acc, ep.scale, ep.bias, res, ep.clamp_lo, ep.clamp_hi, rq, scale64, bias64)
                np.testing.assert_array_equal(y, want, err_msg=f"{tier} {strategy} {rq} {act} {use_res}")


def test_float64_parameter_errors():
    scale = np.float32([0.1, 0.2])
    with pytest.raises(ValueError, match="scale64: expected the float64 values"):
        lowbit.Epilogue(scale, scale64=np.float64([0.1, 0.3]))
    with pytest.raises(ValueError, match="bias64: expected 2 values"):
        lowbit.Epilogue(scale, bias64=np.zeros(3))
    with pytest.raises(ValueError, match="scale64: expected finite"):
        lowbit.Epilogue(scale, scale64=np.float64([0.1, np.inf]))
    acc = np.zeros((1, 2), np.int32)
    rq = lowbit.Requant(4, 0.1)
    with pytest.raises(ValueError, match="step64"):
        _core.epilogue(acc, scale, scale, None, -np.inf, np.inf, "codes", float(rq.inv_step), 0, 15, 0.2)
    with pytest.raises(ValueError, match="scale64: expected the float64 values"):
        _core.epilogue(acc, scale, scale, None, -np.inf, np.inf, "codes", float(rq.inv_step), 0, 15, rq.step64,
                       np.float64([0.1, 0.3]))
    with pytest.raises(TypeError, match="scale64"):
        _core.epilogue(acc, scale, scale, None, -np.inf, np.inf, "codes", float(rq.inv_step), 0, 15, rq.step64,
                       scale.copy())


def test_requantize_is_the_float64_division():
    # a value a hair above a tie: float64 sees it, float32 would round it onto the tie
    v = np.float64([0.25 + 1e-12])
    assert quant.requantize(v, 0.5, 0, 15)[0] == 1 and np.rint(np.float32(v[0]) / np.float32(0.5)) == 0


def _grid(step, qmin, qmax):
    """A requantization grid with any code range (reference.epilogue reads these fields)."""
    import types
    step = float(np.float32(step))
    return types.SimpleNamespace(step64=step, inv_step=quant.inv_step(step), qmin=qmin, qmax=qmax)


def _check_codes(acc, scale, bias, res, lo, hi, rq, scale64=None, bias64=None):
    scale64 = scale.astype(np.float64) if scale64 is None else scale64
    bias64 = bias.astype(np.float64) if bias64 is None else bias64
    want = float64_codes(acc, scale64, bias64, res, lo, hi, rq)
    np.testing.assert_array_equal(reference.epilogue(acc, scale, bias, res, lo, hi, rq, scale64, bias64), want)
    for simd in (False, True):
        got = _core.epilogue(acc, scale, bias, res, lo, hi, "codes", float(rq.inv_step), rq.qmin, rq.qmax,
                             rq.step64, scale64, bias64, simd=simd)
        np.testing.assert_array_equal(got, want, err_msg=f"simd={simd}")


@pytest.mark.parametrize("step", [0.25, 0.37, 0.2833181619644165])
@pytest.mark.parametrize("grid", [(0, 15), (-8, 7), (-1, 1)])
def test_clamp_bounds_on_and_next_to_ties(step, grid, rng):
    """The fast path merges the clamps into t's bounds (clamp_lo / step, clamp_hi / step,
    rounded to float32): clamp bounds that sit on a rounding tie of v / step, or a float32
    ulp or two beside one, give the float64 formula's codes on every tier."""
    rq = _grid(step, *grid)
    m, n = 6, 40
    acc = rng.integers(-400, 400, (m, n), dtype=np.int32)
    scale = rng.uniform(0.01, 0.05, n).astype(np.float32)
    bias = rng.normal(0, 0.5, n).astype(np.float32)
    for k in range(rq.qmin, rq.qmax):
        tie = (k + 0.5) * rq.step64
        for ulps in (0, 1, -1, 2, -2):
            edge = np.float32(tie)
            for _ in range(abs(ulps)):
                edge = np.nextafter(edge, np.float32(np.sign(ulps) * np.inf))
            _check_codes(acc, scale, bias, None, float(edge), np.inf, rq)
            _check_codes(acc, scale, bias, None, -np.inf, float(edge), rq)
            _check_codes(acc, scale, bias, None, float(np.float32(tie - 2 * rq.step64)), float(edge), rq)


def test_clamps_outside_the_code_range(rng):
    """Clamps whose range misses the code range (every code qmin, or every code qmax) or
    touches it at one end: the fast path's merged bounds are empty or a single point."""
    m, n = 5, 27
    acc = rng.integers(-300, 300, (m, n), dtype=np.int32)
    scale = rng.uniform(0.01, 0.05, n).astype(np.float32)
    bias = rng.normal(0, 1, n).astype(np.float32)
    rq = _grid(0.5, 0, 3)
    for lo, hi in ((-2.0, -1.0), (-2.0, -0.25), (-2.0, -0.2500001), (-2.0, 0.0), (10.0, 20.0), (1.5, 20.0),
                   (1.75, 1.75), (1.74, 1.76), (0.3, 0.3)):
        _check_codes(acc, scale, bias, None, lo, hi, rq)


def test_nonfinite_and_huge_residuals(rng):
    """Residuals that are NaN, infinite, or so large that t's error bound fails: those
    outputs are decided by the float64 formula (a NaN gives code 0)."""
    m, n = 6, 35
    acc = rng.integers(-3000, 3000, (m, n), dtype=np.int32)
    scale = rng.uniform(0.001, 0.01, n).astype(np.float32)
    bias = rng.normal(0, 1, n).astype(np.float32)
    res = rng.normal(0, 1, (m, n)).astype(np.float32)
    special = np.float32([np.nan, np.inf, -np.inf, 3e38, -3e38, 1e7, -1e7, 2.5e5, 0.0, -0.0])
    res.flat[rng.choice(m * n, 60, replace=False)] = rng.choice(special, 60)
    for rq in (_grid(0.37, 0, 3), _grid(0.05, -128, 127)):
        for lo, hi in ((-np.inf, np.inf), (0.0, np.inf), (0.0, 6.0)):
            _check_codes(acc, scale, bias, res, lo, hi, rq)


def test_huge_per_column_constants_and_extreme_steps(rng):
    """scale / step or bias / step beyond 2^64 (or float32) make a column exact; a step
    whose inverse lies outside [2^-100, 2^100], or a code range starting beyond +-255,
    makes every output exact: the codes are the formula's either way."""
    m, n = 4, 19
    acc = rng.integers(-50, 50, (m, n), dtype=np.int32)
    acc[0] = 0
    scale = rng.uniform(0.01, 0.05, n).astype(np.float32)
    bias = rng.normal(0, 1, n).astype(np.float32)
    scale[[1, 5, 9]] = np.float32([1e30, -3e38, 2e19])
    bias[[2, 9, 12]] = np.float32([1e30, -3e38, 1e20])
    for rq in (_grid(0.25, 0, 15), _grid(1e-30, -128, 127), _grid(1e-35, 0, 255), _grid(1e35, 0, 3),
               _grid(3e-31, -8, 7), _grid(0.01, 300, 310), _grid(0.02, -400, -390)):
        for lo, hi in ((-np.inf, np.inf), (0.0, 6.0)):
            _check_codes(acc, scale, bias, None, lo, hi, rq)


def test_narrowed_requant_ranges():
    """qmin/qmax narrow a Requant to any integer range of at most 2**bits levels; the codebook
    pads the codes no output takes (as quant.grid_levels does); anything else is refused."""
    rq = lowbit.Requant(8, 0.07, False, 0, 31)
    assert (rq.qmin, rq.qmax) == (0, 31)
    cb = rq.codebook()
    assert cb.shape == (256,) and list(cb[:32]) == list(range(32)) and not cb[32:].any()
    assert list(lowbit.Requant(4, 0.3, True, -7, 7).codebook()) == list(range(-7, 8)) + [0]
    assert list(lowbit.Requant(4, 0.3, True).codebook()) == list(range(-8, 8))
    for qmin, qmax in ((0, 16), (3, 3), (-129, 0), (200, 256)):
        with pytest.raises(ValueError, match="qmin/qmax: expected"):
            lowbit.Requant(4, 0.3, False, qmin, qmax)
    with pytest.raises(ValueError, match="qmin: expected an int"):
        lowbit.Requant(4, 0.3, False, 0.5, 3)
    assert quant.UniformGrid(0.1, 0, 31).requant() == {"bits": 8, "step": quant.UniformGrid(0.1, 0, 31).step,
                                                       "signed": False, "qmin": 0, "qmax": 31}
    assert "qmin" not in quant.UniformGrid(0.1, -8, 7).requant()
