"""The fused epilogue matches lowbit.reference.epilogue bit for bit, on the
SIMD and the scalar path, for every output kind."""
import numpy as np
import pytest

import lowbit
from lowbit import reference

FAMILY_OF = {k["name"]: k["family"] for k in lowbit.kernels()}


def cases(rng):
    for requant in (None, lowbit.Requant(2, 0.37, False), lowbit.Requant(2, 0.05, True), lowbit.Requant(4, 0.11),
                    lowbit.Requant(8, 0.013, True), lowbit.Requant(1, 0.5)):
        for act in ("none", "relu", "relu6", (-0.75, 1.25)):
            for residual in (False, True):
                yield requant, act, residual


# every family that computes W2A2 writes its int32 tile into the driver's
# per-thread scratch before the epilogue (None: the automatic choice)
@pytest.mark.parametrize("strategy", [None, "lutgemm", "dot8", "dotgemm"])
@pytest.mark.parametrize("tier", lowbit.supported_tiers())
def test_fused_epilogue_bit_exact(tier, strategy, rng):
    m, n, k = 37, 75, 129
    a = rng.integers(0, 4, (m, k), dtype=np.uint8)
    w = rng.integers(0, 4, (n, k), dtype=np.uint8)
    packed = lowbit.pack_weights(w, 2, [-2, -1, 0, 1])
    acc = reference.gemm(a, w, 2, 2, None, [-2, -1, 0, 1])
    for requant, act, use_res in cases(rng):
        scale = (rng.random(n) * 0.02 + 1e-3).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        res = rng.standard_normal((m, n)).astype(np.float32) if use_res else None
        ep = lowbit.Epilogue(scale, bias, act, requant, residual=res)
        with lowbit.use(isa=tier, strategy=strategy):
            y = lowbit.gemm(a, packed, 2, epilogue=ep)
            assert strategy in (None, FAMILY_OF[lowbit.last_kernel()])
        lo, hi = ep.clamp_lo, ep.clamp_hi
        ref = reference.epilogue(acc, scale, bias, res, lo, hi, requant)
        assert y.dtype == (np.float32 if requant is None else np.uint8)
        np.testing.assert_array_equal(y, ref, err_msg=f"{tier} {requant} {act} residual={use_res}")


def test_rounding_ties_go_to_even_and_clamps_hold():
    # acc * 0.5 lands exactly on .5 ties; requant step 1 -> codes must round half to even
    acc = np.arange(-40, 40, dtype=np.int32).reshape(4, 20)
    scale = np.full(20, 0.5, np.float32)
    bias = np.zeros(20, np.float32)
    rq = lowbit.Requant(4, 1.0, True)
    got = lowbit._core.epilogue(acc, scale, bias, out_kind="codes", inv_step=1.0, qmin=rq.qmin, qmax=rq.qmax)
    np.testing.assert_array_equal(got, reference.epilogue(acc, scale, bias, requant=rq))
    vals = got.astype(int) + rq.qmin
    halves = acc.astype(np.float64) * 0.5
    inside = (halves > rq.qmin) & (halves < rq.qmax)
    np.testing.assert_array_equal(vals[inside], np.round(halves[inside]))  # numpy rounds half to even
    assert vals.min() == rq.qmin and vals.max() == rq.qmax


def test_epilogue_argument_errors():
    with pytest.raises(ValueError, match="bias"):
        lowbit.Epilogue(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="finite"):
        lowbit.Epilogue(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="activation"):
        lowbit.Epilogue(np.ones(2), activation="gelu")
    with pytest.raises(ValueError, match="step"):
        lowbit.Requant(2, 0.0)
    pw = lowbit.pack_weights(np.zeros((3, 8), np.uint8), 2)
    with pytest.raises(ValueError, match="scale has 2 values"):
        lowbit.gemm(np.zeros((1, 8), np.uint8), pw, 2, epilogue=lowbit.Epilogue(np.ones(2)))


@pytest.mark.parametrize("lo,hi", [(0.0, np.inf), (0.0, 6.0), (-1.0, 1.5), (-np.inf, np.inf)])
def test_clamp_keeps_nan_and_signed_zeros_like_the_scalar_rule(lo, hi):
    """The SIMD clamps (vmaxps/vminps) give exactly `v < lo ? lo : v` and
    `v > hi ? hi : v`: NaN passes through, -0.0 stays -0.0 (bit for bit)."""
    from lowbit import _core, reference
    n = 24  # three vectors of 8
    acc = np.zeros((4, n), np.int32)
    acc[1] = np.arange(-12, 12)
    scale = np.full(n, -1.0, np.float32)   # 0 * -1 = -0.0
    bias = np.full(n, -0.0, np.float32)
    res = np.zeros((4, n), np.float32)
    res[2] = [np.nan, -0.0, 0.0, np.inf, -np.inf, 7.0, -7.0, 1.5] * 3
    res[3] = -0.0
    got = _core.epilogue(acc, scale, bias, res, float(lo), float(hi), "float32")
    want = reference.epilogue(acc, scale, bias, res, lo, hi)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("n", [1, 8, 31, 32, 40, 75, 96])
@pytest.mark.parametrize("residual", [False, True])
def test_codes_every_row_width_and_non_finite_residuals(n, residual, rng):
    """Codes rows of every width (the AVX2 twin writes 32 codes a store, then 8, then
    the scalar tail) match the reference; a NaN residual gives code 0, +-Inf the ends."""
    from lowbit import _core
    acc = rng.integers(-3000, 3000, (5, n), dtype=np.int32)
    scale = (rng.random(n) * 0.02 - 0.01).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    res = rng.standard_normal((5, n)).astype(np.float32) if residual else None
    if residual:
        res[1, ::3], res[2, ::2], res[3, 1::2] = np.nan, np.inf, -np.inf
    for rq in (lowbit.Requant(2, 0.37, False), lowbit.Requant(4, 0.11, True), lowbit.Requant(8, 0.013, True)):
        got = _core.epilogue(acc, scale, bias, res, -1.5, 2.5, "codes", np.float32(1.0) / np.float32(rq.step),
                             rq.qmin, rq.qmax)
        np.testing.assert_array_equal(got, reference.epilogue(acc, scale, bias, res, -1.5, 2.5, rq))
