"""The runtime's native graph ops (csrc/ops/graph_ops.h, the functions the native executor's
steps call), through their op-level bindings, against their NumPy references in
lowbit.runtime (the reference executor's arithmetic): identical dtype, shape and bytes (NaN
payloads and the sign of zero included), and the bindings' argument checks."""
import numpy as np
import pytest

import lowbit
from lowbit import _core
from lowbit.runtime import model as rt


def assert_same(native, reference):
    assert native.dtype == reference.dtype
    assert native.shape == reference.shape
    assert np.array_equal(native, reference, equal_nan=native.dtype.kind == "f")
    assert native.tobytes() == reference.tobytes()


def awkward(rng, shape, step=1.0, lo=-4.0, hi=4.0):
    """float32 values of `shape` in [lo, hi] * step, with ties (x / step exactly k + 0.5),
    exact multiples of step, NaN, +-inf, -0.0, +0.0 and huge values mixed in."""
    x = (rng.uniform(lo, hi, shape) * step).astype(np.float32)
    flat = x.reshape(-1)
    n = flat.size
    specials = np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, 3e38, -3e38, 1e-40], np.float32)
    ties = ((rng.integers(-300, 300, n) + 0.5) * step).astype(np.float32)
    exact = (rng.integers(-300, 300, n) * step).astype(np.float32)
    pick = rng.integers(0, 6, n)
    flat[pick == 0] = specials[rng.integers(0, len(specials), n)][pick == 0]
    flat[pick == 1] = ties[pick == 1]
    flat[pick == 2] = exact[pick == 2]
    return x


def native_quantize(x, attrs):
    """_core.quantize with a quantize node's attrs; an NHWC view of NCHW memory (the model
    input) is read in place by _core.quantize_nchw_to_nhwc."""
    pre = attrs.get("pre_step")
    args = (float(np.float32(attrs["step"])), int(attrs["qn"]), int(attrs["qp"]), bool(attrs.get("binary")),
            None if pre is None else float(pre), None if pre is None else float(attrs["pre_div"]))
    if x.ndim == 4 and not x.flags.c_contiguous and x.transpose(0, 3, 1, 2).flags.c_contiguous:
        return _core.quantize_nchw_to_nhwc(x.transpose(0, 3, 1, 2), *args)
    return _core.quantize(np.ascontiguousarray(x), *args)


SHAPES = [(1,), (7,), (1, 1, 1, 1), (2, 3, 5, 1), (1, 4, 4, 3), (3, 2, 7, 9), (2, 300), (1, 2, 2, 300)]


# ---- quantize ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("qn, qp", [(0, 1), (0, 3), (-2, 1), (-8, 7), (-128, 127), (0, 255), (-100, 155)])
@pytest.mark.parametrize("step", [1.0, 0.1, 0.37109375, 2.5])
def test_quantize_matches_numpy(rng, shape, qn, qp, step):
    x = awkward(rng, shape, step, qn - 3, qp + 3)
    attrs = {"step": step, "qn": qn, "qp": qp}
    codes = native_quantize(x, attrs)
    assert_same(codes, rt.quantize(x, attrs))
    assert codes.max() <= qp - qn


@pytest.mark.parametrize("shape", SHAPES)
def test_binary_quantize_matches_numpy(rng, shape):
    x = awkward(rng, shape)
    attrs = {"step": 1.0, "qn": -1, "qp": 0, "binary": True}
    assert_same(native_quantize(x, attrs), rt.quantize(x, attrs))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pre_step, pre_div, qn, qp", [(0.05, 4, -8, 7), (0.0078125, 16, 0, 15), (0.3, 2, -2, 1),
                                                      (1.0, 8, -128, 127)])
def test_trunc_pre_step_quantize_matches_numpy(rng, shape, pre_step, pre_div, qn, qp):
    # ties at both roundings: x / pre_step = k + 0.5, and round(x / pre_step) / pre_div = k + 0.5
    x = awkward(rng, shape, float(np.float32(pre_step)), (qn - 3) * pre_div, (qp + 3) * pre_div)
    flat = x.reshape(-1)
    flat[::5] = ((rng.integers(qn, qp, flat[::5].size) + 0.5) * pre_div * np.float32(pre_step)).astype(np.float32)
    attrs = {"step": pre_step * pre_div, "qn": qn, "qp": qp, "pre_step": float(np.float32(pre_step)),
             "pre_div": float(pre_div)}
    assert_same(native_quantize(x, attrs), rt.quantize(x, attrs))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (1, 1, 4, 9), (2, 300, 2, 3), (1, 600, 1, 2),
                                   # few channels (quantized per channel row, then interleaved): rows longer
                                   # than one chunk of pixels, and the largest and smallest such C
                                   (1, 3, 2, 1400), (1, 1, 1, 4100), (2, 16, 3, 300), (1, 17, 2, 260)])
@pytest.mark.parametrize("attrs", [{"step": 0.1, "qn": -2, "qp": 1}, {"step": 1.0, "qn": 0, "qp": 1, "binary": True},
                                   {"step": 0.4, "qn": -8, "qp": 7, "pre_step": 0.1, "pre_div": 4.0}])
def test_fused_nchw_quantize_matches_numpy(rng, shape, attrs):
    x = awkward(rng, shape, 0.1)
    nhwc_view = x.transpose(0, 2, 3, 1)  # what the model's input node passes on
    ref = rt.quantize(np.ascontiguousarray(nhwc_view), attrs)
    pre = attrs.get("pre_step")
    direct = _core.quantize_nchw_to_nhwc(x, float(np.float32(attrs["step"])), attrs["qn"], attrs["qp"],
                                         attrs.get("binary", False), pre, attrs.get("pre_div"))
    assert_same(direct, ref)
    assert_same(native_quantize(nhwc_view, attrs), ref)


# ---- dequantize, layouts, flatten ---------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("shape", [(1,), (2, 3, 3, 5), (4, 17)])
@pytest.mark.parametrize("step", [1.0, 0.1, 3.3e-5])
def test_dequantize_matches_numpy(rng, bits, shape, step):
    levels = list(range(-(1 << bits) // 2, (1 << bits) // 2)) if bits < 8 else list(range(256))
    codes = rng.integers(0, 1 << bits, shape).astype(np.uint8)
    codes.reshape(-1)[0] = (1 << bits) - 1  # the extreme codes
    codes.reshape(-1)[-1] = 0
    c = rt.CodeTensor(codes, bits, levels, step)
    assert_same(_core.dequantize(codes, np.asarray(levels, np.int32), float(np.float32(step))), rt.dequantize(c))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 1), (1, 4, 4, 3), (3, 2, 7, 300)])
def test_layout_changes_and_flatten_match_numpy(rng, shape):
    x = awkward(rng, shape)
    assert_same(_core.nchw_to_nhwc(x), np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    assert_same(_core.nhwc_to_nchw(x), np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    assert_same(_core.flatten_nhwc(x), rt._flatten(x))
    codes = rng.integers(0, 256, shape).astype(np.uint8)
    c = rt.CodeTensor(codes, 8, list(range(256)), 0.5)
    ref = rt._flatten(c)
    assert_same(_core.flatten_nhwc(codes), ref.codes)
    assert (ref.bits, ref.step, ref.levels.tolist()) == (8, 0.5, list(range(256)))


# ---- add, clamp, affine ---------------------------------------------------------------------------

def _node(op, attrs=None, arrays=None, inputs=("x",)):
    return rt.Node("n", op, inputs, attrs, arrays)


def _run_both(node, args):
    """(the native op, the reference executor's node) on ``args``."""
    m = rt.Model.__new__(rt.Model)  # _run_node needs no graph state for these ops
    x = args[0]
    if node.op == "add":
        native = _core.add(x, args[1])
    elif node.op == "clamp":
        native = _core.clamp(x, *(float(b) for b in rt._bounds(node.attrs)))
    else:
        native = _core.affine(x, node.arrays["scale"], node.arrays["bias"])
    return native, m._run_node(node, args)


@pytest.mark.parametrize("shape", SHAPES)
def test_add_matches_numpy(rng, shape):
    a, b = awkward(rng, shape), awkward(rng, shape)
    assert_same(*_run_both(_node("add", inputs=("a", "b")), [a, b]))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("clamp", [[0, None], [0, 6], [None, 0], [-0.0, 0.0], [-1.5, 1.5], [2, 2], [None, None]])
def test_clamp_matches_numpy(rng, shape, clamp):
    x = awkward(rng, shape)
    assert_same(*_run_both(_node("clamp", {"clamp": clamp}), [x]))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 1), (3, 2, 7, 9), (4, 13), (1, 2, 2, 300)])
def test_affine_matches_numpy(rng, shape):
    c = shape[-1]
    x = awkward(rng, shape)
    scale = rng.normal(0, 2, c).astype(np.float32)
    scale[0] = -0.0
    bias = rng.normal(0, 1, c).astype(np.float32)
    assert_same(*_run_both(_node("affine", arrays={"scale": scale, "bias": bias}), [x]))


# ---- pools ------------------------------------------------------------------------------------------

POOLS = [  # shape, kernel, stride, padding
    ((1, 1, 1, 1), (1, 1), (1, 1), (0, 0)),
    ((2, 5, 7, 1), (2, 2), (2, 2), (0, 0)),
    ((1, 6, 6, 3), (3, 3), (1, 1), (1, 1)),   # windows larger than the stride
    ((2, 7, 5, 4), (3, 2), (2, 1), (1, 0)),
    ((1, 4, 4, 2), (2, 2), (1, 1), (1, 1)),
    ((1, 3, 3, 2), (2, 2), (3, 3), (2, 2)),   # windows entirely in the padding (0 / 0 without it)
    ((1, 5, 5, 300), (3, 3), (2, 2), (1, 1)),  # more channels than one native chunk
]


@pytest.mark.parametrize("shape, kernel, stride, padding", POOLS)
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("data", ["awkward", "zeros"])
def test_avgpool_matches_numpy(rng, shape, kernel, stride, padding, count_include_pad, data):
    x = awkward(rng, shape) if data == "awkward" else np.full(shape, -0.0, np.float32)  # -0.0 sums keep their sign
    attrs = {"kernel": kernel, "stride": stride, "padding": padding, "count_include_pad": count_include_pad}
    with np.errstate(invalid="ignore", divide="ignore"):
        assert_same(_core.avgpool_nhwc(x, *kernel, *stride, *padding, count_include_pad), rt.avgpool(x, attrs))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 7, 7, 1), (1, 5, 9, 3), (3, 6, 6, 2), (1, 4, 3, 300)])
@pytest.mark.parametrize("output_size", [(1, 1), (2, 3), (3, 3), (4, 2), (None, 1), (None, None), (8, 11)])
@pytest.mark.parametrize("data", ["awkward", "finite", "zeros"])
def test_adaptive_avgpool_matches_numpy(rng, shape, output_size, data):
    x = {"awkward": lambda: awkward(rng, shape), "finite": lambda: rng.normal(0, 3, shape).astype(np.float32),
         "zeros": lambda: np.full(shape, -0.0, np.float32)}[data]()
    attrs = {"output_size": list(output_size)}
    b, h, w, c = shape
    oh, ow = (h if output_size[0] is None else output_size[0]), (w if output_size[1] is None else output_size[1])
    assert_same(_core.adaptive_avgpool_nhwc(x, oh, ow), rt.adaptive_avgpool(x, attrs))


def test_results_do_not_depend_on_threads(rng):
    x = awkward(rng, (2, 64, 64, 40), 0.1)  # several native blocks of work
    nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    scale, bias = rng.normal(size=40).astype(np.float32), rng.normal(size=40).astype(np.float32)
    runs = []
    before = lowbit._core.get_num_threads()
    try:
        for threads in (1, 2, 3):
            _core.set_num_threads(threads)
            runs.append([_core.quantize(x, 0.1, -8, 7), _core.quantize_nchw_to_nhwc(nchw, 0.1, -8, 7),
                         _core.quantize(x, 0.4, -8, 7, False, 0.1, 4.0), _core.affine(x, scale, bias),
                         _core.avgpool_nhwc(x, 3, 3, 1, 1, 1, 1, False), _core.adaptive_avgpool_nhwc(x, 3, 5),
                         _core.dequantize(_core.quantize(x, 0.1, 0, 15), np.arange(16, dtype=np.int32), 0.5)])
    finally:
        _core.set_num_threads(before)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert_same(a, b)


# ---- the bindings' argument checks -------------------------------------------------------------------

F = np.zeros((1, 2, 2, 3), np.float32)
U = np.zeros((1, 2, 2, 3), np.uint8)
STRIDED = np.zeros((1, 2, 2, 6), np.float32)[..., ::2]
LV = np.arange(4, dtype=np.int32)
ONES = np.ones(3, np.float32)

BAD_CALLS = [
    (lambda: _core.quantize(F.astype(np.float64), 1.0, 0, 3), TypeError, "x: expected dtype float32"),
    (lambda: _core.quantize(STRIDED, 1.0, 0, 3), ValueError, "x: expected a C-contiguous"),
    (lambda: _core.quantize(F, 0.0, 0, 3), ValueError, "step: expected a finite value > 0"),
    (lambda: _core.quantize(F, float("nan"), 0, 3), ValueError, "step"),
    (lambda: _core.quantize(F, 1.0, 3, 0), ValueError, "qn/qp"),
    (lambda: _core.quantize(F, 1.0, -129, 0), ValueError, "qn/qp"),
    (lambda: _core.quantize(F, 1.0, 0, 256), ValueError, "qn/qp"),
    (lambda: _core.quantize(F, 1.0, 0, 3, False, 0.5, None), ValueError, "pre_step/pre_div"),
    (lambda: _core.quantize(F, 1.0, 0, 3, False, -0.5, 2.0), ValueError, "pre_step"),
    (lambda: _core.quantize(F, 1.0, 0, 3, False, 0.5, 0.0), ValueError, "pre_div"),
    (lambda: _core.quantize(F, 1.0, 0, 3, False, 0.5, 1e-300), ValueError, "pre_div"),
    (lambda: _core.quantize_nchw_to_nhwc(F[0], 1.0, 0, 3), ValueError, "x: expected a 4-D"),
    (lambda: _core.dequantize(F, LV, 1.0), TypeError, "codes: expected dtype uint8"),
    (lambda: _core.dequantize(U + 4, LV, 1.0), ValueError, "codes: expected every code in [0, 4)"),
    (lambda: _core.dequantize(U, LV.astype(np.int16), 1.0), TypeError, "levels: expected dtype int32"),
    (lambda: _core.dequantize(U, LV[:0], 1.0), ValueError, "levels: expected 1 to 256"),
    (lambda: _core.dequantize(U, LV, float("inf")), ValueError, "step"),
    (lambda: _core.nchw_to_nhwc(F[0]), ValueError, "x: expected a 4-D"),
    (lambda: _core.nhwc_to_nchw(U), TypeError, "x: expected dtype float32"),
    (lambda: _core.flatten_nhwc(F.astype(np.int32)), TypeError, "x: expected dtype float32 or uint8"),
    (lambda: _core.flatten_nhwc(U[0]), ValueError, "x: expected a 4-D"),
    (lambda: _core.add(F, F[0]), ValueError, "b: expected the shape of a"),
    (lambda: _core.add(F, U), TypeError, "b: expected dtype float32"),
    (lambda: _core.add(STRIDED, STRIDED), ValueError, "a: expected a C-contiguous"),
    (lambda: _core.clamp(F, 1.0, 0.0), ValueError, "lo/hi"),
    (lambda: _core.clamp(F, float("nan"), 0.0), ValueError, "lo/hi"),
    (lambda: _core.affine(F, ONES[:2], ONES), ValueError, "scale/bias: expected 3 values"),
    (lambda: _core.affine(F, ONES, ONES.astype(np.float64)), TypeError, "bias: expected dtype float32"),
    (lambda: _core.affine(F, ONES.reshape(1, 3), ONES), ValueError, "scale: expected a 1-D"),
    (lambda: _core.avgpool_nhwc(F, 3, 3, 1, 1, 0, 0, True), ValueError, "too small for the pooling window"),
    (lambda: _core.avgpool_nhwc(F, 0, 1, 1, 1, 0, 0, True), ValueError, "kernel/stride/dilation"),
    (lambda: _core.avgpool_nhwc(F, 1, 1, 1, 0, 0, 0, True), ValueError, "kernel/stride/dilation"),
    (lambda: _core.avgpool_nhwc(F, 1, 1, 1, 1, 2 ** 40, 0, True), ValueError, "expected values below 2^31"),
    (lambda: _core.avgpool_nhwc(U, 1, 1, 1, 1, 0, 0, True), TypeError, "x: expected dtype float32"),
    (lambda: _core.adaptive_avgpool_nhwc(F, 0, 1), ValueError, "oh/ow"),
    (lambda: _core.adaptive_avgpool_nhwc(np.zeros((1, 0, 2, 3), np.float32), 1, 1), ValueError, "at least 1x1"),
    (lambda: _core.adaptive_avgpool_nhwc(F, 2 ** 20, 2 ** 20), ValueError, "2^31 - 1 elements"),
    (lambda: _core.adaptive_avgpool_nhwc(F[0], 1, 1), ValueError, "x: expected a 4-D"),
    (lambda: _core.maxpool_nhwc(F, 3, 3, 1, 1, 0, 0, 1, 1), ValueError, "too small for the pooling window"),
]


@pytest.mark.parametrize("call, exc, message", BAD_CALLS, ids=[m for _, _, m in BAD_CALLS])
def test_bindings_reject_bad_arguments(call, exc, message):
    with pytest.raises(exc, match=None) as info:
        call()
    assert message in str(info.value)


# ---- the executor's max pooling step: the AVX2 twin and the scalar rule -----------------------------

@pytest.mark.parametrize("shape", [(1, 5, 6, 3), (2, 9, 7, 8), (1, 8, 8, 13), (1, 6, 5, 20), (1, 1, 1, 16)])
@pytest.mark.parametrize("window", [((3, 3), (2, 2), (1, 1), (1, 1)), ((2, 2), (2, 2), (0, 0), (1, 1)),
                                    ((3, 2), (1, 2), (1, 0), (2, 1)), ((1, 1), (1, 1), (0, 0), (1, 1)),
                                    ((3, 3), (1, 1), (2, 2), (1, 1))])
def test_executor_maxpool_simd_and_scalar_match_numpy(rng, shape, window):
    x = awkward(rng, shape, 0.5)  # NaN, +-inf, -0.0 and +0.0 mixed in
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = window
    b, h, w, c = shape
    oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        pytest.skip("window larger than the padded map")
    attrs = {"kernel": [kh, kw], "stride": [sh, sw], "padding": [ph, pw], "dilation": [dh, dw]}
    want = rt.maxpool(x, attrs)
    geometry = (b, h, w, c, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
    scalar = _core.executor_maxpool_nhwc(x, geometry, False)
    assert_same(_core.executor_maxpool_nhwc(x, geometry, True), scalar)
    # the native rule keeps the last NaN met in (ky, kx) order; NumPy's may keep another NaN of the
    # window (another sign bit), so against NumPy the values (NaN positions included) are compared
    assert np.array_equal(scalar, want, equal_nan=True)


# The AVX2 max pool runs each output row with vmaxps (exact without NaN) and redoes the row with the
# exact rule when a NaN sentinel fires: rows without any special value, rows whose only specials are
# +-0 ties and infinities (+inf and -inf together fire the sentinel without a NaN), and a lone NaN in
# one row -- each against the scalar rule, byte for byte.
@pytest.mark.parametrize("shape", [(1, 9, 10, 64), (2, 7, 6, 40), (1, 5, 11, 13), (1, 4, 4, 8), (1, 6, 6, 3)])
@pytest.mark.parametrize("fill", ["plain", "zeros_and_infs", "one_nan", "neg_inf_only"])
def test_executor_maxpool_fast_rows_match_scalar(rng, shape, fill):
    x = rng.normal(size=shape).astype(np.float32)
    flat = x.reshape(-1)
    if fill == "zeros_and_infs":
        pick = rng.integers(0, 5, flat.size)
        flat[pick == 0] = -0.0
        flat[pick == 1] = 0.0
        flat[pick == 2] = np.inf
        flat[pick == 3] = -np.inf
    elif fill == "one_nan":
        flat[rng.integers(0, flat.size)] = np.float32(np.nan) * np.float32(-1)
    elif fill == "neg_inf_only":
        flat[:] = -np.inf
    b, h, w, c = shape
    for (kh, kw), (sh, sw), (ph, pw) in [((3, 3), (2, 2), (1, 1)), ((2, 2), (1, 1), (0, 0)), ((3, 1), (1, 2), (1, 0))]:
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        geometry = (b, h, w, c, kh, kw, sh, sw, ph, pw, 1, 1, oh, ow)
        scalar = _core.executor_maxpool_nhwc(x, geometry, False)
        assert_same(_core.executor_maxpool_nhwc(x, geometry, True), scalar)
        if fill == "one_nan" and (kh, sh, ph) == (3, 2, 1):  # windows that cover every input pixel
            assert np.isnan(scalar).any()
