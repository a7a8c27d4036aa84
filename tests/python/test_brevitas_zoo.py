"""Brevitas models as they are: the brevitas_examples zoo, hand-written Brevitas models that
combine the zoo's patterns, and hand-built QONNX graphs for the ops they need (elementwise
ops with constants, float32 layers, per-channel activation scales), all against qonnx's
executor (``qonnx.core.onnx_exec.execute_onnx``).

Two measures (see lowbit.qonnx.compare_qonnx; the assertions are tests/python/parity.py's rule):

* end to end: lowbit's logits vs qonnx's on the same inputs (top-1 agreement);
* ``isolate=True``: every quantizer and the logits compared on identical quantized inputs
  (the lowbit run continues from qonnx's codes after each quantizer). Codes may then differ
  only at rounding ties (float rounding of a different summation order), so the fraction
  is ~1e-6; end to end such a difference cascades through the later layers of a deep
  random-weight network, exactly as it does between qonnx runs on inputs one ulp apart.
"""
import copy
import warnings

import numpy as np
import pytest

from conftest import optional_import

onnx = optional_import("onnx")
optional_import("qonnx")
optional_import("onnxruntime")

import lowbit  # noqa: E402
import lowbit.qonnx as lbq  # noqa: E402
from lowbit.floatops import conv2d_f32  # noqa: E402
from numpy_models import conv_nhwc_float64  # noqa: E402
from parity import check_qonnx_parity  # noqa: E402  (tests/python is on the path, as for conftest)
from test_qonnx import G as QonnxGraph  # noqa: E402

QD = "qonnx.custom_op.general"
LOWBIT_FAMILIES = ("grouplut", "grouplut6", "lutgemm", "bitserial", "dot8")   # the 1-4-bit kernels


def _family(kernel_name):
    """The registry family of a kernel (names such as a2w2_lutgemm_1x4__avx2 do not start with it)."""
    return {k["name"]: k["family"] for k in lowbit.kernels()}[kernel_name]


class G(QonnxGraph):
    """test_qonnx's QONNX graph builder, plus quantized random weights and an unfolded BatchNorm."""

    def qweights(self, rng, shape, bits, scale=0.25):
        lo, hi = -(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1
        w = rng.integers(lo, hi + 1, shape).astype(np.float32) * np.asarray(scale, np.float32)
        return self.quant(self.c(w), scale, bits, 1, 1)

    def bn(self, x, rng, c):
        return self.op("BatchNormalization", [x, self.c(rng.uniform(0.5, 2, c)), self.c(rng.uniform(-1, 1, c)),
                                              self.c(rng.uniform(-1, 1, c)), self.c(rng.uniform(0.5, 2, c))])


# ---------------------------------------------------------------------------------------------
# Elementwise ops with constants: the zoo's 2x - 1 input scaling and TensorNorm

def _tensornorm_graph(rng, div_scale=0.75):
    g = G()
    x = g.op("Mul", ["x", g.c(2.0)])                       # 2x - 1 (bnn_pynq's forward)
    x = g.op("Sub", [x, g.c([1.0])])
    q = g.quant(x, 2.0 ** -5, 8)
    y = g.op("Conv", [q, g.qweights(rng, (8, 3, 3, 3), 2)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = g.bn(y, rng, 8)
    y = g.op("Sub", [y, g.c(rng.uniform(-1, 1, (1, 8, 1, 1)))])     # per-channel Sub, Div, Neg, c - x
    y = g.op("Div", [y, g.c(rng.uniform(0.5, 2, (8, 1, 1)))])
    y = g.op("Neg", [y])
    y = g.op("Sub", [g.c(0.5), y])
    y = g.op("Relu", [y])
    q = g.quant(y, 0.3, 2, signed=0)
    y = g.op("Conv", [q, g.qweights(rng, (16, 8, 3, 3), 2)], kernel_shape=[3, 3], strides=[2, 2])
    y = g.op("Relu", [g.bn(y, rng, 16)])
    q = g.quant(y, 0.5, 2, signed=0)
    f = g.op("Flatten", [q], axis=1)
    w = g.qweights(rng, (10, 16 * 3 * 3), 2)
    y = g.op("MatMul", [f, g.op("Transpose", [w], perm=[1, 0])])
    # TensorNorm in eval mode: (x - mean) / (var + eps) ** 0.5 * w + b, the pow folded
    y = g.op("Sub", [y, g.c([0.3])])
    y = g.op("Div", [y, g.op("Pow", [g.c([div_scale]), g.c(0.5)])])
    y = g.op("Mul", [y, g.c([1.5])])
    y = g.op("Add", [y, g.c([-0.25])])
    return g.model(y, [1, 3, 8, 8])


def test_elementwise_constant_ops_fold_into_epilogues():
    rng = np.random.default_rng(0)
    model = _tensornorm_graph(rng)
    x = rng.uniform(0, 1, (64, 3, 8, 8)).astype(np.float32)
    r = check_qonnx_parity(model, x, batch_size=64)
    m = r["model"]
    assert r["code_tensors"] == 3 and r["codes_differ"] <= 1e-3 * r["codes_total"], r["codes_differ"]
    assert len(r["tie_samples"]) <= 1, r["tie_samples"]
    ops = [n.op for n in m.nodes]
    # the input's 2x - 1 stays two exact float32 affine nodes; everything after a layer folds into it
    assert ops.count("affine") == 2 and ops.count("conv") == 2 and ops.count("linear") == 1
    conv1 = next(n for n in m.nodes if n.op == "conv")
    assert [f.rstrip("0123456789_") for f in conv1.attrs["fused"]] == ["BatchNormalization", "Sub", "Div", "Neg",
                                                                       "Sub", "Relu", "Quant"]
    lin = next(n for n in m.nodes if n.op == "linear")
    assert [f.rstrip("0123456789_") for f in lin.attrs["fused"]] == ["Sub", "Div", "Mul", "Add"]


def test_input_scaling_is_exact():
    """2x - 1 in float32 then an 8-bit quantizer: the codes equal qonnx's bit for bit."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (64, 3, 8, 8)).astype(np.float32)
    r = lbq.compare_qonnx(_tensornorm_graph(rng, div_scale=0.25), x, batch_size=64)
    first = next(iter(r["code_diff"].values()))
    assert first["differ"] == 0 and first["total"] == x.size


# ---------------------------------------------------------------------------------------------
# Float32 layers


@pytest.mark.parametrize("cin,cout,k,stride,pad,dil,groups", [
    (3, 8, 3, 1, 1, 1, 1), (3, 16, 7, 2, 3, 1, 1), (8, 8, 3, 2, 1, 1, 8), (8, 16, 3, 1, 2, 2, 4),
    (4, 8, 1, 1, 0, 1, 1), (6, 12, 3, 1, 1, 1, 6)])
def test_conv2d_f32(cin, cout, k, stride, pad, dil, groups):
    rng = np.random.default_rng(cin * 100 + cout)
    x = rng.standard_normal((2, 9, 10, cin)).astype(np.float32)
    w = rng.standard_normal((cout, cin // groups, k, k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    out = conv2d_f32(x, w, b, (stride, stride), (pad, pad), (dil, dil), groups)
    ref = conv_nhwc_float64(x, w, b, (stride, stride), (pad, pad), (dil, dil), groups)
    assert out.dtype == np.float32 and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    with pytest.raises(ValueError, match="groups"):
        conv2d_f32(x, w[:, :1], b, groups=groups + 1)


def _float_layers_graph(rng, float_weights=False):
    g = G()
    w1 = g.c(rng.standard_normal((16, 3, 3, 3)) * 0.3) if float_weights else g.qweights(rng, (16, 3, 3, 3), 8,
                                                                                        0.01)
    y = g.op("Conv", ["x", w1, g.c(rng.uniform(-0.5, 0.5, 16))], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
             strides=[2, 2])                                             # float input: conv_f32
    y = g.op("Relu", [g.bn(y, rng, 16)])
    q = g.quant(y, 0.2, 4, signed=0)
    y = g.op("Conv", [q, g.qweights(rng, (16, 1, 3, 3), 4, 0.1)], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
             group=16)                                                   # 4-bit depthwise: integer kernels
    y = g.op("Relu", [g.bn(y, rng, 16)])
    q = g.quant(y, 0.25, 4, signed=0)
    p = g.op("GlobalAveragePool", [q])
    f = g.op("Flatten", [p], axis=1)
    y = g.op("Gemm", [f, g.c(rng.standard_normal((10, 16))), g.c(rng.uniform(-1, 1, 10))], transB=1)  # float
    return g.model(y, [1, 3, 12, 12])


@pytest.mark.parametrize("float_weights", [False, True])
def test_float_layers_against_qonnx(float_weights, tmp_path):
    rng = np.random.default_rng(2)
    model = _float_layers_graph(rng, float_weights)
    x = rng.standard_normal((48, 3, 12, 12)).astype(np.float32)
    r = check_qonnx_parity(model, x, batch_size=48)
    assert r["codes_differ"] <= 1e-3 * r["codes_total"] and len(r["tie_samples"]) <= 1, r["tie_samples"]
    iso = check_qonnx_parity(model, x, batch_size=48, isolate=True)
    assert iso["codes_differ"] <= 1e-4 * iso["codes_total"]
    m = r["model"]
    assert [n.op for n in m.nodes if n.op in ("conv", "linear", "conv_f32", "linear_f32")] == \
        ["conv_f32", "conv", "linear_f32"]
    text = m.summary(print_fn=None)
    assert text.count(" F32 ") == 2 and "f32gemm_" in text and "+ 2 float32 layers" in text
    rows = {r_["op"]: r_ for r_ in m.layers()}
    assert rows["conv_f32"]["bits"] == "F32" and rows["conv"]["kernel"].startswith("dwconv_")
    np.testing.assert_array_equal(m.run_reference(x[:4]), m(x[:4]))
    m.save(tmp_path / "f.lowbit")
    np.testing.assert_array_equal(lowbit.load(tmp_path / "f.lowbit")(x[:4]), m(x[:4]))


# ---------------------------------------------------------------------------------------------
# qonnx's executor in float64: the yardstick for rounding ties

def test_float64_graph_widens_every_float_tensor():
    from onnx import TensorProto, numpy_helper

    from lowbit.qonnx_parity import float64_graph

    model = _float_layers_graph(np.random.default_rng(2))
    wide = float64_graph(model)
    for t32, t64 in zip(model.graph.initializer, wide.graph.initializer):
        a, b = numpy_helper.to_array(t32), numpy_helper.to_array(t64)
        assert b.dtype == (np.float64 if a.dtype == np.float32 else a.dtype)
        np.testing.assert_array_equal(a, b)
    g = wide.graph
    assert all(v.type.tensor_type.elem_type != TensorProto.FLOAT for v in list(g.input) + list(g.output) +
               list(g.value_info))
    assert model.graph.initializer[0].data_type == TensorProto.FLOAT   # the original is untouched


def test_float64_run_of_qonnx_executor():
    """precision="float64" runs qonnx's executor on the float64 graph: the nodes onnxruntime has no
    float64 kernel for run on onnx's reference evaluator, qonnx's own execute_node is restored
    afterwards, and the result is the float32 run's within float32 rounding."""
    from qonnx.core import onnx_exec

    rng = np.random.default_rng(2)
    model = _float_layers_graph(rng)
    x = rng.standard_normal((16, 3, 12, 12)).astype(np.float32)
    before = onnx_exec.execute_node
    r64 = lbq.compare_qonnx(model, x, batch_size=8, precision="float64")
    assert onnx_exec.execute_node is before
    assert r64["reference_logits"].dtype == np.float64 and r64["precision"] == "float64"
    assert set(r64["reference_evaluator_ops"]) == {"Conv", "GlobalAveragePool"}, r64["reference_evaluator_ops"]
    assert r64["reference_evaluator_ops"]["Conv"] == 2 * 2   # two convs, two batches
    y32 = lbq.qonnx_execute(model, x, batch_size=8)
    np.testing.assert_allclose(r64["reference_logits"], y32, rtol=1e-5, atol=1e-5)
    assert r64["top1_agreement"] == 1.0 and r64["code_tensors"] == 2
    with pytest.raises(ValueError, match="precision: expected one of"):
        lbq.compare_qonnx(model, x, precision="float16")


def test_compare_precisions_exact_graph():
    """Power-of-two scales: float32 arithmetic is exact, so lowbit, qonnx in float32 and qonnx in
    float64 agree on every code and every logit."""
    from lowbit.qonnx_parity import PAIRS, compare_precisions

    rng = np.random.default_rng(3)
    model = _per_channel_graph(rng)
    x = rng.standard_normal((24, 3, 8, 8)).astype(np.float32)
    r = compare_precisions(model, x, batch_size=16)
    assert r["top1"] == dict.fromkeys(PAIRS, 1.0)
    assert r["codes_differ"] == dict.fromkeys(PAIRS, 0) and r["codes_total"] > 0 and len(r["codes"]) == 4
    assert r["first_differing"] == {p: {} for p in PAIRS} and r["tie_distance"] == dict.fromkeys(PAIRS)
    np.testing.assert_array_equal(r["float64_logits"], r["float32_logits"])
    np.testing.assert_array_equal(r["lowbit_logits"], r["float32_logits"])


def test_float64_run_keeps_weight_levels():
    """A weight above the tie between levels 2 and 3 (w / s = 2.5000000426 exactly) whose float32
    quotient rounds to the tie 2.5 (then to even: level 2): the float64 run keeps the float32
    graph's level 2 (the model's, as Brevitas and lowbit compute it), dequantized exactly, where
    float64 arithmetic would give 3."""
    s, w = np.float32(0.7), np.float32(1.75)
    assert w / s == np.float32(2.5) and np.float64(w) / np.float64(s) > 2.5
    g = G()
    q = g.quant(g.c(np.full((1, 1, 1, 1), w, np.float32)), float(s), 4)
    y = g.op("Conv", ["x", q], kernel_shape=[1, 1])
    model = g.model(y, [1, 1, 2, 2])
    x = np.ones((1, 1, 2, 2), np.float32)
    y32 = lbq.qonnx_execute(model, x)
    y64 = lbq.qonnx_execute(model, x, precision="float64")
    assert y32.ravel()[0] == np.float32(2) * s                        # round half to even: level 2
    assert y64.ravel()[0] == 2 * np.float64(s)                        # the same level, exactly


# ---------------------------------------------------------------------------------------------
# Per-channel activation scales

def _per_channel_graph(rng, c=8):
    g = G()
    q = g.quant("x", 2.0 ** -4, 8)
    y = g.op("Conv", [q, g.qweights(rng, (c, 3, 3, 3), 2, 2.0 ** -2)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = g.op("Relu", [y])
    steps = (2.0 ** -rng.integers(0, 4, (1, c, 1, 1))).astype(np.float32)   # powers of two: exact arithmetic
    q = g.quant(y, steps, 4, signed=0)                                      # per-channel scales...
    y = g.op("Conv", [q, g.qweights(rng, (c, 1, 3, 3), 4, 2.0 ** -3)], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
             group=c)                                                        # ...read by a depthwise conv
    y = g.op("Relu", [y])
    q = g.quant(y, steps, 2, signed=0)
    y = g.op("Conv", [q, g.qweights(rng, (4, c, 1, 1), 2, 2.0 ** -2)], kernel_shape=[1, 1])  # dense: float32
    q = g.quant(y, 2.0 ** -2, 4)
    m = g.op("MaxPool", [q], kernel_shape=[2, 2], strides=[2, 2])
    f = g.op("Flatten", [m], axis=1)
    y = g.op("Gemm", [f, g.qweights(rng, (6, 4 * 4 * 4), 2, 2.0 ** -3)], transB=1)
    return g.model(y, [1, 3, 8, 8])


@pytest.mark.parametrize("requant", [True, False])
def test_per_channel_activation_scales_exact(requant):
    rng = np.random.default_rng(3)
    model = _per_channel_graph(rng)
    x = rng.standard_normal((64, 3, 8, 8)).astype(np.float32)
    r = lbq.compare_qonnx(model, x, batch_size=64, requant_in_epilogue=requant)
    assert r["code_tensors"] == 4 and r["codes_differ"] == 0, r["code_diff"]
    assert r["logit_absdiff_max"] == 0.0
    m = r["model"]
    assert [n.op for n in m.nodes if n.op in ("conv", "linear", "conv_f32")] == ["conv", "conv", "conv_f32", "linear"]
    dw = [n for n in m.nodes if n.op == "conv"][1]
    assert dw.attrs["groups"] == 8
    first = [n for n in m.nodes if n.op == "conv"][0]
    assert (first.attrs["requant"] is not None) == requant
    if requant:
        assert len(first.attrs["requant"]["channel_steps"]) == 8


@pytest.mark.parametrize("requant", [True, False])
def test_narrow_activation_grids_fold_into_the_epilogue(requant):
    """Activation grids that are not a full 1/2/3/4/8-bit range (ProxylessNAS 4b5b's 5-bit
    unsigned quantizers with per-channel scales, a narrow-range signed 4-bit one) are emitted by
    the producing conv's epilogue (``requant`` with ``qmin``/``qmax``, decided in float64), read
    by the next conv as 8-bit / 4-bit codes, exactly as qonnx computes them; saved and loaded."""
    rng = np.random.default_rng(5)
    g = G()
    c = 8
    q = g.quant("x", 2.0 ** -4, 8)
    y = g.op("Conv", [q, g.qweights(rng, (c, 3, 3, 3), 4, 2.0 ** -3)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = g.op("Relu", [y])
    steps = (2.0 ** -rng.integers(1, 4, (1, c, 1, 1))).astype(np.float32)
    q = g.quant(y, steps, 5, signed=0)                                   # levels 0..31, per channel
    y = g.op("Conv", [q, g.qweights(rng, (c, 1, 3, 3), 4, 2.0 ** -3)], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
             group=c)                                                    # depthwise, as in ProxylessNAS
    q = g.quant(y, 2.0 ** -2, 4, signed=1, narrow=1)                     # levels -7..7
    y = g.op("Conv", [q, g.qweights(rng, (4, c, 3, 3), 2, 2.0 ** -2)], kernel_shape=[3, 3])
    model = g.model(y, [1, 3, 8, 8])
    x = rng.standard_normal((32, 3, 8, 8)).astype(np.float32)
    r = lbq.compare_qonnx(model, x, batch_size=32, requant_in_epilogue=requant)
    assert r["codes_differ"] == 0, r["code_diff"]
    assert r["logit_absdiff_max"] == 0.0
    m = r["model"]
    convs = [n for n in m.nodes if n.op == "conv"]
    assert [n.attrs["a_bits"] for n in convs] == [8, 8, 4]
    if requant:
        assert [n.op for n in m.nodes].count("quantize") == 1   # the input quantizer alone
        first, second = convs[0].attrs["requant"], convs[1].attrs["requant"]
        assert (first["bits"], first["qmin"], first["qmax"], len(first["channel_steps"])) == (8, 0, 31, c)
        assert (second["bits"], second["qmin"], second["qmax"]) == (4, -7, 7)
    back = lowbit.io.from_bytes(lowbit.io.to_bytes(m))   # the model file keeps qmin/qmax
    assert [n.attrs.get("requant") for n in back.nodes] == [n.attrs.get("requant") for n in m.nodes]
    np.testing.assert_array_equal(back(x), m(x))
    if requant:   # a range wider than the code width, or an empty one, is refused by the model
        for qmin, qmax in ((0, 16), (3, 3), (0.5, 7)):
            nodes = [lowbit.runtime.Node(n.name, n.op, list(n.inputs), copy.deepcopy(n.attrs), n.arrays)
                     for n in m.nodes]
            layer = next(n for n in nodes if n.name == convs[1].name)
            layer.attrs["requant"] = {**layer.attrs["requant"], "bits": 4, "qmin": qmin, "qmax": qmax}
            with pytest.raises(ValueError, match="attribute 'requant'"):
                lowbit.Model(nodes)


def test_per_channel_zero_point_is_refused():
    g = G()
    q = g.op("Quant", ["x", g.c(0.1), g.c(np.zeros((1, 3, 1, 1))), g.c(4)], domain=QD, signed=1, narrow=0,
             rounding_mode="ROUND")
    with pytest.raises(lbq.QonnxConversionError, match="Quant node .*per-channel activation zero points"):
        lbq.from_qonnx(g.model(q, [1, 3, 4, 4]))


@pytest.mark.parametrize("what,pattern", [
    ("const_div", "Div node .*dividing by an activation"),
    ("act_mul", "Mul node .*product of two activations"),
    ("act_sub", "Sub node .*difference of two activations"),
])
def test_elementwise_errors(what, pattern):
    g = G()
    q = g.quant("x", 0.1, 4)
    if what == "const_div":
        y = g.op("Div", [g.c(1.0), q])
    elif what == "act_mul":
        y = g.op("Mul", [q, q])
    else:
        y = g.op("Sub", [q, g.op("Relu", [q])])
    with pytest.raises(lbq.QonnxConversionError, match=pattern):
        lbq.from_qonnx(g.model(y, [1, 3, 4, 4]))


# ---------------------------------------------------------------------------------------------
# The Brevitas zoo (brevitas_examples) and hand-written Brevitas models

try:
    import brevitas  # noqa: F401
    import brevitas_examples  # noqa: F401
    import torch
except ImportError:  # the graph tests above still run
    torch = None
needs_brevitas = pytest.mark.skipif(torch is None, reason="brevitas, brevitas_examples and torch are not installed")

SMALL = ["tfc_1w1a", "tfc_1w2a", "tfc_2w2a", "sfc_1w1a", "sfc_1w2a", "sfc_2w2a", "lfc_1w1a", "lfc_1w2a",
         "cnv_1w1a", "cnv_1w2a", "cnv_2w2a"]
# (quant_proxylessnas_mobile14_hadamard_4b is left out: Brevitas 0.13.4's HadamardClassifier fails in its
# own forward, "'bool' object has no attribute 'any'", so it can be neither calibrated nor exported.)
LARGE = ["resnet18_4w4a", "quant_mobilenet_v1_4b", "quant_mobilenet_v1", "quant_proxylessnas_mobile14_4b",
         "quant_proxylessnas_mobile14_4b5b", "quant_mobilenet_v1_4b_round_avgpool",
         "quant_proxylessnas_mobile14_4b_round_avgpool"]


def _low_bit_layers_on_lowbit_kernels(m):
    """Every conv/linear whose weights and activations are 1-4 bits ran on a low-bit kernel,
    except depthwise convs (K = kh*kw per channel), which run as exact int32 multiply-adds
    over all channels at once. Returns the number of each."""
    low = [n for n in m.nodes if n.op in ("conv", "linear") and n.attrs["w_bits"] <= 4 and n.attrs["a_bits"] <= 4]
    lut = dw = 0
    for n in low:
        if n.op == "conv" and n.attrs["groups"] > 1 and n.arrays.shape("w_codes")[1] == 1 and \
                n.arrays.shape("w_codes")[0] == n.attrs["groups"]:
            assert n.kernel.startswith("dwconv_"), (n.name, n.kernel)  # the native depthwise kernels
            dw += 1
        else:
            assert n.kernel is not None and _family(n.kernel) in LOWBIT_FAMILIES, (n.name, n.kernel)
            lut += 1
    return lut, dw


def _zoo_parity(name, n, tmp_path, dynamo=False, end_to_end_min=0.99, batch_size=32):
    import brevitas_zoo as bz

    path = tmp_path / f"{name}.onnx"
    net = bz.export(name, path, dynamo=dynamo)
    x = bz.inputs(name, n, seed=1)
    r = check_qonnx_parity(path, x, batch_size=min(n, batch_size))
    iso = check_qonnx_parity(path, x, batch_size=min(n, batch_size), isolate=True, rel=1e-4)
    m = r["model"]
    ref = r["reference_logits"]
    # not a degenerate model (a constant output would make top-1 agreement vacuous): with 8 or more
    # inputs at least two predicted classes; with fewer (the 416x416 VGGs run on 2, and VGG-11's
    # random weights predict class 727 for both) logits that move with the input
    if n >= 8:
        assert len(np.unique(ref.argmax(1))) >= 2, "degenerate model: qonnx predicts one class for every input"
    else:
        assert np.abs(ref - ref[:1]).max() > 1e-3 * np.abs(ref).max(), "degenerate model: constant logits"
    assert iso["codes_differ"] <= 1e-5 * iso["codes_total"], iso["codes_differ"]
    assert r["top1_agreement"] >= end_to_end_min, r["top1_agreement"]
    _low_bit_layers_on_lowbit_kernels(m)
    # Brevitas' own PyTorch output agrees as well (its convolutions round differently from qonnx's)
    agree_torch = np.mean(bz.torch_logits(net, x).argmax(1) == r["lowbit_logits"].argmax(1))
    return r, iso, agree_torch


# Where qonnx's float32 run first differs from its float64 run in a sample, the exact value lies
# within float32 rounding of a rounding tie: |frac(v) - 1/2| in steps for the 1-8-bit levels here
# (|v| <= 255: float32 rounding is below 255 * 2^-23 = 3e-5 steps)
FLOAT64_TIE_BOUND = 1e-4


def _float64_yardstick(name, path, n, batch_size=8):
    """lowbit, qonnx's float32 run and qonnx's float64 run end to end (compare_precisions). lowbit
    decides every code as the float64 run does (its integer sums are exact, its requantization and
    its float first layer's quantizer are decided in float64: docs/brevitas.md), so not one code
    differs and top-1 agrees on every input; qonnx's float32 run departs from the float64 run only
    at rounding ties of the exact value. Returns the comparison."""
    import brevitas_zoo as bz
    from lowbit.qonnx_parity import compare_precisions

    p = compare_precisions(path, bz.inputs(name, n, seed=1), batch_size=min(n, batch_size))
    print(f"{name}: top-1 {p['top1']}, codes differing {p['codes_differ']} of {p['codes_total']}, first "
          f"differing {p['first_differing']}, tie distance (float64) {p['tie_distance']}, reference evaluator "
          f"{p['reference_evaluator_ops']}")
    assert p["codes_differ"]["lowbit_vs_float64"] == 0, p["first_differing"]
    assert p["top1"]["lowbit_vs_float64"] == 1.0, p["top1"]
    d = p["tie_distance"]["float32_vs_float64"]
    assert d is None or d <= FLOAT64_TIE_BOUND, p["tie_distance"]
    return p


@needs_brevitas
@pytest.mark.parametrize("name", SMALL)
def test_zoo_small(name, tmp_path):
    r, iso, agree_torch = _zoo_parity(name, 32, tmp_path)
    assert r["top1_agreement"] == 1.0 and r["codes_differ"] <= 2 and agree_torch >= 0.99
    assert len(r["tie_samples"]) <= 2, r["tie_samples"]


@needs_brevitas
@pytest.mark.slow
@pytest.mark.parametrize("name", SMALL)
def test_zoo_small_float64(name, tmp_path):
    import brevitas_zoo as bz

    path = tmp_path / f"{name}.onnx"
    bz.export(name, path)
    p = _float64_yardstick(name, path, 32, batch_size=32)
    assert p["top1"] == {"lowbit_vs_float32": 1.0, "lowbit_vs_float64": 1.0, "float32_vs_float64": 1.0}


@needs_brevitas
@pytest.mark.slow
@pytest.mark.parametrize("name", ["tfc_2w2a", "cnv_1w1a"])
def test_zoo_dynamo_exporter(name, tmp_path):
    r, _, _ = _zoo_parity(name, 16, tmp_path, dynamo=True)
    assert r["top1_agreement"] == 1.0


@needs_brevitas
@pytest.mark.slow
def test_resnet18_dynamo_export_fails_inside_brevitas(tmp_path):
    """Documented in docs/brevitas.md: ResNet-18 4w4a needs dynamo=False. When Brevitas fixes
    its dynamo export this test fails, and the docs should change."""
    import brevitas_zoo as bz

    with pytest.raises(Exception, match="Perform add among QuantTensors"):   # torch wraps Brevitas' assert
        bz.export("resnet18_4w4a", tmp_path / "r.onnx", dynamo=True, passes=1)


@needs_brevitas
@pytest.mark.slow
@pytest.mark.parametrize("name", LARGE)
def test_zoo_large(name, tmp_path):
    """End to end, a random-weight deep network quantized to 4 bits is chaotic: qonnx's own
    top-1 changes on some inputs when they move by one float ulp. Against qonnx's float32 run the
    strict bound is therefore on the isolated comparison (every layer on identical inputs); end to
    end, lowbit must agree with it about as well as qonnx agrees with itself on inputs one ulp
    apart. Against qonnx's float64 run (exact to ~1e-15, so it rounds the ties right) lowbit
    decides every code the same way, end to end (_float64_yardstick)."""
    import brevitas_zoo as bz

    n = 8 if name != "resnet18_4w4a" else 32
    r, iso, _ = _zoo_parity(name, n, tmp_path, end_to_end_min=0.0)
    x = bz.inputs(name, n, seed=1)
    moved = lbq.qonnx_execute(tmp_path / f"{name}.onnx", np.nextafter(x, np.float32(np.inf)), batch_size=n)
    self_agree = float(np.mean(moved.argmax(1) == r["reference_logits"].argmax(1)))
    print(f"{name}: end-to-end top-1 {r['top1_agreement']:.3f} (qonnx vs qonnx one ulp away: {self_agree:.3f}), "
          f"isolated {iso['top1_agreement']:.3f}, isolated codes differing {iso['codes_differ']} of "
          f"{iso['codes_total']}")
    # where the codes first differ end to end: rounding ties, after which qonnx's executor, fed
    # lowbit's codes, stays closer to lowbit's codes than to its own run
    t = lbq.trace_divergence(tmp_path / f"{name}.onnx", x)
    if t is not None:
        cont = np.array(list(t["continued"].values()))
        print(f"{name}: first differing codes at {t['tensor']}: {len(t['positions'])}, qonnx value / step "
              f"{t['qonnx_over_step'][:4]} (tie distance {t['tie_distance']:.2g}); qonnx continued from "
              f"lowbit's codes differs from lowbit in {cont[:, 0].sum()} and from its own run in "
              f"{cont[:, 1].sum()} of {cont[:, 2].sum()} codes at the next {len(cont)} quantizers")
        # float32 rounding of values about |v| steps: ties within 1e-5 * |v| steps
        v = np.abs(t["qonnx_over_step"])
        assert np.all(np.abs(v - np.floor(v) - 0.5) <= 1e-5 * np.maximum(v, 1.0)), t
        # (later independent ties start their own cascades, so the continued run is only closer)
        assert cont[:, 0].sum() < cont[:, 1].sum(), t["continued"]
    # the exact yardstick: qonnx's executor in float64
    _float64_yardstick(name, tmp_path / f"{name}.onnx", n, batch_size=4 if n == 8 else n)  # 224x224: 4 at a time
    if name in END_TO_END_UNBOUNDED:
        return
    assert r["top1_agreement"] >= min(0.99, self_agree) - 2.0 / n


@needs_brevitas
@pytest.mark.slow
@pytest.mark.parametrize("depth", [11, 13, 16, 19])
@pytest.mark.parametrize("bn", ["", "_bn"])
def test_zoo_vgg(depth, bn, tmp_path):
    """The zoo's VGGs (8-bit weights and activations, float first conv, 416x416 inputs: QuantVGG's
    classifier needs a 13x13 feature map) import like the others. Minutes each on 2 cores: 2 inputs
    against qonnx's float32 run, 1 against its float64 run (its im2col takes GBs per image)."""
    name = f"quant_vgg{depth}{bn}"
    r, iso, _ = _zoo_parity(name, 2, tmp_path, end_to_end_min=0.5)
    ops = [n.op for n in r["model"].nodes]
    convs = {11: 8, 13: 10, 16: 13, 19: 16}[depth]
    assert ops.count("conv_f32") == 1 and ops.count("conv") == convs - 1 and ops.count("linear") == 3
    assert iso["top1_agreement"] == 1.0
    _float64_yardstick(name, tmp_path / f"{name}.onnx", 1, batch_size=1)


# ProxylessNAS (residual adds between 4-bit layers, random weights): the ~10 codes where qonnx's
# float32 run rounds a tie the other way across 64M (layer by layer, top-1 and logits agree) grow
# end to end into ~11% of all codes, and qonnx's float32 top-1 agrees with lowbit's (and with its
# own float64 run's, which lowbit matches code for code) on 0.125-0.75 of 8 inputs. qonnx's one-ulp
# self-agreement is no yardstick there (a one-ulp input move flips no code at all); traced in
# docs/brevitas.md, the first differing codes are within float32 rounding of a tie, and qonnx
# continued from lowbit's codes there reproduces lowbit's later codes exactly. Against qonnx's
# float32 run only the layer-by-layer bound is asserted for them.
END_TO_END_UNBOUNDED = {"quant_proxylessnas_mobile14_4b", "quant_proxylessnas_mobile14_4b5b",
                        "quant_proxylessnas_mobile14_4b_round_avgpool"}


@needs_brevitas
@pytest.mark.slow
def test_zoo_declared_input_quantization(tmp_path):
    """ResNet-18 4w4a reads the float image in its first (8-bit-weight) conv: declared as 8-bit
    input codes of step 2^-5, that conv runs on the integer kernels, and the model is the
    original one run on the input rounded to that grid."""
    import brevitas_zoo as bz

    path = tmp_path / "r.onnx"
    bz.export("resnet18_4w4a", path)
    x = bz.inputs("resnet18_4w4a", 16, seed=1)
    cleaned = lbq._qonnx_executor(path, 16).model   # the graph check_qonnx_parity runs (its tensor names)
    plain, quant = lbq.from_qonnx(cleaned), lbq.from_qonnx(cleaned, input_scale=2.0 ** -5, input_bits=8)
    assert [n.op for n in plain.nodes].count("conv_f32") == 1 and "conv_f32" not in [n.op for n in quant.nodes]
    first = next(n for n in quant.nodes if n.op == "conv")
    assert (first.attrs["a_bits"], first.attrs["w_bits"]) == (8, 8)
    xq, _ = lbq.quant_numpy(x, 2.0 ** -5, 0.0, 8, True, False)
    np.testing.assert_array_equal(quant(x), quant(xq))
    r = check_qonnx_parity(path, xq, batch_size=16, lowbit_model=quant)
    assert r["code_tensors"] >= 10 and r["top1_agreement"] >= 1.0 - 2.0 / 16


def _handwritten_net():
    """Float input into an 8-bit conv, a 4-bit per-channel activation quantizer, 4-bit depthwise
    and pointwise convs with unfolded BatchNorm, a residual add of two quantized branches,
    TruncAvgPool and a 4-bit classifier."""
    import brevitas.nn as qnn
    import torch.nn as nn
    from brevitas.quant import Int8WeightPerChannelFloat, Int8WeightPerTensorFloat, Uint8ActPerTensorFloat

    W4 = dict(weight_quant=Int8WeightPerChannelFloat, weight_bit_width=4, bias=False)

    def relu(c, per_channel=False):
        return qnn.QuantReLU(act_quant=Uint8ActPerTensorFloat, bit_width=4, return_quant_tensor=True,
                             per_channel_broadcastable_shape=(1, c, 1, 1), scaling_stats_permute_dims=(1, 0, 2, 3),
                             scaling_per_output_channel=per_channel)

    class Net(nn.Module):
        def __init__(s):
            super().__init__()
            s.stem = qnn.QuantConv2d(3, 16, 3, stride=2, padding=1, weight_quant=Int8WeightPerTensorFloat,
                                     weight_bit_width=8, bias=False)         # reads the float image
            s.b0, s.a0 = nn.BatchNorm2d(16), relu(16, per_channel=True)
            s.dw = qnn.QuantConv2d(16, 16, 3, padding=1, groups=16, **W4)
            s.b1, s.a1 = nn.BatchNorm2d(16), relu(16)
            s.pw = qnn.QuantConv2d(16, 16, 1, **W4)
            s.b2, s.a2 = nn.BatchNorm2d(16), relu(16)
            s.a3 = relu(16)
            s.pool = qnn.TruncAvgPool2d(kernel_size=8, bit_width=6)
            s.fc = qnn.QuantLinear(16, 10, bias=True, weight_quant=Int8WeightPerTensorFloat, weight_bit_width=4)

        def forward(s, x):
            x0 = s.a0(s.b0(s.stem(x)))
            x1 = s.a1(s.b1(s.dw(x0)))
            x2 = s.a2(s.b2(s.pw(x1)))
            x = s.a3(x2.value + x1.value)                # residual add of two quantized branches
            x = s.pool(x)
            return s.fc(torch.flatten(x.value if hasattr(x, "value") else x, 1))

    return Net()


@needs_brevitas
def test_handwritten_brevitas_model(tmp_path):
    from brevitas.export import export_qonnx

    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = _handwritten_net()
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None
    net.train()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for _ in range(3):
            net(torch.from_numpy(rng.standard_normal((16, 3, 16, 16)).astype(np.float32)))
    net.eval()
    path = tmp_path / "hand.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_qonnx(net, torch.randn(1, 3, 16, 16), str(path), dynamo=False)
    x = rng.standard_normal((128, 3, 16, 16)).astype(np.float32)
    r = check_qonnx_parity(path, x, batch_size=64)
    iso = check_qonnx_parity(path, x, batch_size=64, isolate=True)
    m = r["model"]
    assert r["codes_differ"] <= 1e-3 * r["codes_total"] and len(r["tie_samples"]) <= 1, r["tie_samples"]
    assert iso["codes_differ"] <= 1e-5 * iso["codes_total"]
    with torch.no_grad():
        tl = net(torch.from_numpy(x))
    assert np.mean(tl.argmax(1).numpy() == r["lowbit_logits"].argmax(1)) >= 0.97
    ops = [n.op for n in m.nodes]
    assert ops.count("conv_f32") == 1 and ops.count("conv") == 2 and ops.count("linear") == 1
    dw = next(n for n in m.nodes if n.op == "conv" and n.attrs["groups"] == 16)
    assert dw.attrs["w_bits"] == 4 and dw.attrs["a_bits"] == 4
    assert any(n.op == "quantize" and "channel_steps" in n.attrs for n in m.nodes)   # per-channel scales
    assert _low_bit_layers_on_lowbit_kernels(m) == (1, 1)   # the classifier reads 6-bit Trunc codes: W4A8 (dot8)


# ---------------------------------------------------------------------------------------------
# Pad

@pytest.mark.parametrize("quantized", [True, False])
def test_zero_pad_folds_into_the_conv(quantized):
    """A zero Pad (here asymmetric, completed to symmetric padding by the conv's own pads)
    becomes the conv's padding, on the integer kernels and on the float32 path."""
    rng = np.random.default_rng(5)
    g = G()
    q = g.quant("x", 2.0 ** -3, 4) if quantized else "x"
    p = g.op("Pad", [q, g.c([0, 0, 2, 1, 0, 0, 0, 1], np.int64)], mode="constant")
    y = g.op("Conv", [p, g.qweights(rng, (8, 3, 3, 3), 2, 2.0 ** -2)], kernel_shape=[3, 3], pads=[0, 1, 2, 1])
    f = g.op("Flatten", [y], axis=1)
    model = g.model(f, [1, 3, 6, 6])
    x = rng.standard_normal((16, 3, 6, 6)).astype(np.float32)
    # power-of-two scales: exact on the integer kernels; float32 rounding on the float path
    r = check_qonnx_parity(model, x, batch_size=16, rel=0.0 if quantized else 1e-5)
    conv = next(n for n in r["model"].nodes if n.op in ("conv", "conv_f32"))
    assert conv.op == ("conv" if quantized else "conv_f32") and conv.attrs["padding"] == [2, 2]
    assert r["tie_samples"] == []


def test_pad_elsewhere_is_refused():
    g = G()
    q = g.quant("x", 0.1, 4)
    p = g.op("Pad", [q, g.c([0, 0, 1, 1, 0, 0, 1, 1], np.int64)], mode="constant")
    y = g.op("Relu", [p])
    with pytest.raises(lbq.QonnxConversionError, match="Relu node .*Pad of an activation.*right before a Conv"):
        lbq.from_qonnx(g.model(y, [1, 3, 4, 4]))
    g = G()
    p = g.op("Pad", ["x", g.c([0, 0, 1, 1, 0, 0, 1, 1], np.int64)], mode="reflect")
    with pytest.raises(lbq.QonnxConversionError, match="Pad node .*only a constant zero Pad"):
        lbq.from_qonnx(g.model(p, [1, 3, 4, 4]))


# ---------------------------------------------------------------------------------------------
# Depthwise convolutions (MobileNet, ProxylessNAS): exact int32 sums, then the native epilogue

@pytest.mark.parametrize("stride,pad,residual,requant", [(1, 1, False, True), (2, 1, True, False), (1, 0, True, True)])
def test_depthwise_conv_with_epilogue(stride, pad, residual, requant):
    from lowbit import reference as ref
    from lowbit.epilogue import Epilogue, Requant

    rng = np.random.default_rng(stride * 10 + pad)
    c = 24
    x = rng.integers(0, 16, (2, 9, 9, c), dtype=np.uint8)
    w = rng.integers(0, 16, (c, 1, 3, 3), dtype=np.uint8)
    a_cb, w_cb = list(range(16)), list(range(-8, 8))
    cw = lowbit.ConvWeights(w, 4, w_cb, groups=c)
    acc = ref.conv2d(x, w, 4, 4, a_cb, w_cb, stride, pad, 1, c)
    np.testing.assert_array_equal(lowbit.conv2d(x, cw, stride, pad, a_bits=4, a_codebook=a_cb), acc)
    assert lowbit.last_kernel().startswith("dwconv_")
    m = acc.shape[0] * acc.shape[1] * acc.shape[2]
    scale, bias = rng.uniform(0.01, 0.1, c).astype(np.float32), rng.uniform(-1, 1, c).astype(np.float32)
    res = rng.standard_normal((m, c)).astype(np.float32) if residual else None
    rq = Requant(4, 0.3) if requant else None
    ep = Epilogue(scale, bias, "relu", rq, res)
    got = lowbit.conv2d(x, cw, stride, pad, epilogue=ep, a_bits=4, a_codebook=a_cb)
    want = ref.epilogue(acc.reshape(m, c), scale, bias, res, 0.0, np.inf, rq)
    np.testing.assert_array_equal((got.codes if requant else got).reshape(m, c), want)


# ---------------------------------------------------------------------------------------------
# trace_divergence: where lowbit and qonnx first part ways end to end, and whether it is a tie

def test_trace_divergence_finds_a_real_difference():
    rng = np.random.default_rng(3)
    model = _per_channel_graph(rng)   # exact arithmetic: lowbit and qonnx agree everywhere
    x = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    assert lbq.trace_divergence(model, x) is None
    # a lowbit model with a semantic difference: the depthwise conv's bias moved by 0.3 of a step
    lb = lbq.from_qonnx(lbq._qonnx_executor(model, len(x)).model)
    dw = [n for n in lb.nodes if n.op == "conv"][1]
    dw.arrays["bias"] = dw.arrays["bias"] + np.float32(0.3) * np.asarray(dw.attrs["requant"]["channel_steps"],
                                                                         np.float32)
    dw.arrays["bias64"] = dw.arrays["bias"].astype(np.float64)   # the float64 values the codes are decided with
    t = lbq.trace_divergence(model, x, lowbit_model=lb)
    assert t["tensor"] == lb.meta["qonnx_codes"][dw.name]
    assert len(t["positions"]) > 0 and np.all(t["lowbit_codes"] > t["qonnx_codes"])   # the bias moved up
    assert t["tie_distance"] > 0.1                      # not a rounding tie
    # qonnx's executor fed lowbit's codes there computes lowbit's codes after it
    assert t["continued"] and all(v[0] == 0 for v in t["continued"].values()), t["continued"]
    with pytest.raises(ValueError, match="continue_for"):
        lbq.trace_divergence(model, x, continue_for=0)
