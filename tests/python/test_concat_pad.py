"""QONNX Concat of activations, asymmetric zero padding (conv and pools) and a declared input
quantization (``from_qonnx(..., input_scale=...)``), each against qonnx's executor with the
parity rule of tests/python/parity.py, plus the runtime's ``concat``/``pad`` ops on their own."""
import numpy as np
import pytest

from conftest import optional_import

optional_import("onnx")
optional_import("qonnx")
optional_import("onnxruntime")

import lowbit  # noqa: E402
import lowbit.qonnx as lbq  # noqa: E402
from lowbit.runtime.model import CodeTensor, Model, Node, concat_channels, pad_nhwc  # noqa: E402
from parity import check_qonnx_parity  # noqa: E402
from test_brevitas_zoo import G  # noqa: E402


# ---------------------------------------------------------------------------------------------
# the runtime ops

def test_concat_op_float_and_codes():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3, 3, 4)).astype(np.float32), rng.standard_normal((2, 3, 3, 2)).astype(np.float32)
    np.testing.assert_array_equal(concat_channels([a, b]), np.concatenate([a, b], -1))
    ca = CodeTensor(rng.integers(0, 16, (2, 3, 3, 4), dtype=np.uint8), 4, range(16), 0.5)
    cb = CodeTensor(rng.integers(0, 16, (2, 3, 3, 2), dtype=np.uint8), 4, range(16), 0.5)
    out = concat_channels([ca, cb])
    assert isinstance(out, CodeTensor) and out.step == 0.5
    np.testing.assert_array_equal(out.codes, np.concatenate([ca.codes, cb.codes], -1))
    with pytest.raises(RuntimeError, match="different grids"):
        concat_channels([ca, CodeTensor(cb.codes, 4, range(16), 0.25)])
    with pytest.raises(RuntimeError, match="both codes and float"):
        concat_channels([ca, b])
    with pytest.raises(ValueError, match="differ off the channel axis"):
        concat_channels([a, b[:, :2]])


def test_pad_op_float_and_codes():
    x = np.arange(2 * 2 * 3 * 1, dtype=np.float32).reshape(2, 2, 3, 1)
    y = pad_nhwc(x, [1, 0, 0, 2], "-inf")
    assert y.shape == (2, 3, 5, 1) and np.all(np.isneginf(y[:, 0])) and np.all(np.isneginf(y[:, :, 3:]))
    np.testing.assert_array_equal(y[:, 1:, :3], x)
    c = CodeTensor(np.full((1, 2, 2, 3), 3, np.uint8), 4, range(-8, 8), 1.0)    # level 0 is code 8
    p = pad_nhwc(c, [0, 1, 1, 0])
    assert p.codes[0, 2, 0, 0] == 8 and p.codes[0, 0, 1, 0] == 3 and p.codes.shape == (1, 3, 3, 3)
    with pytest.raises(RuntimeError, match="have no 0"):
        pad_nhwc(CodeTensor(c.codes % 2, 1, [-1, 1], 1.0), [0, 1, 0, 0])
    with pytest.raises(ValueError, match="attribute 'pads'"):
        Model([Node("input", "input", [], {"channels": 1, "height": 2, "width": 2}),
               Node("p", "pad", ["input"], {"pads": [1, -1, 0, 0]})])
    with pytest.raises(ValueError, match="2 or more inputs"):
        Model([Node("input", "input", [], {"channels": 1, "height": 2, "width": 2}),
               Node("c", "concat", ["input"], {})])


# ---------------------------------------------------------------------------------------------
# Concat in imported graphs

def _concat_graph(rng, same_grid):
    """Two 4-bit branches concatenated along channels (a DenseNet/Inception-style block), read by
    a conv; ``same_grid``: both branch quantizers share one step (codes concatenate), else the
    float values concatenate and a Quant follows."""
    g = G()
    q = g.quant("x", 2.0 ** -3, 4)
    a = g.op("Relu", [g.op("Conv", [q, g.qweights(rng, (6, 3, 3, 3), 2, 2.0 ** -2)], kernel_shape=[3, 3],
                            pads=[1, 1, 1, 1])])
    b = g.op("Relu", [g.op("Conv", [q, g.qweights(rng, (5, 3, 1, 1), 2, 2.0 ** -2)], kernel_shape=[1, 1])])
    qa = g.quant(a, 2.0 ** -2, 4, signed=0)
    qb = g.quant(b, 2.0 ** -2 if same_grid else 0.3, 4, signed=0)
    if same_grid:   # a third branch (qonnx's cleanup mis-renames a tensor concatenated twice)
        e = g.op("Relu", [g.op("Conv", [q, g.qweights(rng, (4, 3, 1, 1), 2, 2.0 ** -2)], kernel_shape=[1, 1])])
        qe = g.quant(e, 2.0 ** -2, 4, signed=0)
    c = g.op("Concat", [qa, qb, qe] if same_grid else [qa, qb], axis=1)
    if not same_grid:
        c = g.quant(g.op("Relu", [c]), 0.25, 4, signed=0)
    y = g.op("Conv", [c, g.qweights(rng, (8, 15 if same_grid else 11, 3, 3), 2, 2.0 ** -2)], kernel_shape=[3, 3],
             strides=[2, 2])
    q = g.quant(g.op("Relu", [y]), 0.5, 4, signed=0)
    p = g.op("Concat", [g.op("Flatten", [q], axis=1), g.op("Flatten", [q], axis=1)], axis=-1)   # 2-D concat
    y = g.op("Gemm", [p, g.qweights(rng, (10, 2 * 8 * 3 * 3), 2, 2.0 ** -3)], transB=1)
    return g.model(y, [1, 3, 8, 8])


@pytest.mark.parametrize("same_grid", [True, False])
def test_concat_against_qonnx(same_grid, tmp_path):
    rng = np.random.default_rng(10 + same_grid)
    model = _concat_graph(rng, same_grid)
    x = rng.standard_normal((48, 3, 8, 8)).astype(np.float32)
    r = check_qonnx_parity(model, x, batch_size=48, rel=0.0)
    assert r["codes_differ"] == 0 and r["top1_agreement"] == 1.0   # power-of-two scales: exact
    m = r["model"]
    cats = [n for n in m.nodes if n.op == "concat"]
    assert len(cats) == 2
    tr = m.trace(x[:2])
    assert tr[cats[0].name].dtype == (np.uint8 if same_grid else np.float32)
    # the layers around the concat still run on the integer kernels, the kernel path equals the oracle
    assert [n.op for n in m.nodes if n.op in ("conv", "linear", "conv_f32", "linear_f32")] == \
        ["conv"] * (4 if same_grid else 3) + ["linear"]
    np.testing.assert_array_equal(m.run_reference(x[:4]), m(x[:4]))
    m.save(tmp_path / "c.lowbit")
    np.testing.assert_array_equal(lowbit.load(tmp_path / "c.lowbit")(x[:4]), m(x[:4]))


def test_concat_errors():
    g = G()
    q = g.quant("x", 0.1, 4)
    c = g.op("Concat", [q, q], axis=2)
    with pytest.raises(lbq.QonnxConversionError, match="Concat node .*along channels"):
        lbq.from_qonnx(g.model(c, [1, 3, 4, 4]))


# ---------------------------------------------------------------------------------------------
# Asymmetric padding

def _asym_graph(rng, bits, pool):
    g = G()
    q = g.quant("x", 2.0 ** -3, bits, signed=1) if bits != 1 else g.bipolar("x", 0.5)
    y = g.op("Conv", [q, g.qweights(rng, (8, 3, 3, 3), 2, 2.0 ** -2)], kernel_shape=[3, 3], pads=[0, 1, 1, 2],
             strides=[2, 1])                                           # begin != end, stride 2 on H
    q = g.quant(y, 0.5, 4)
    if pool == "max":
        q = g.op("MaxPool", [q], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 0, 0, 1])
    elif pool == "avg":
        q = g.quant(g.op("AveragePool", [q], kernel_shape=[3, 3], strides=[1, 1], pads=[0, 0, 2, 1],
                         count_include_pad=1), 0.25, 4)
    y = g.op("Conv", [q, g.qweights(rng, (4, 8, 3, 3), 2, 2.0 ** -2)], kernel_shape=[3, 3], auto_pad="SAME_UPPER",
             strides=[2, 2])                                           # odd total padding: one more at the end
    f = g.op("Flatten", [y], axis=1)
    return g.model(f, [1, 3, 9, 8])


@pytest.mark.parametrize("pool", [None, "max", "avg"])
def test_asymmetric_padding_against_qonnx(pool, tmp_path):
    rng = np.random.default_rng(20)
    model = _asym_graph(rng, 4, pool)
    x = rng.standard_normal((32, 3, 9, 8)).astype(np.float32)
    r = check_qonnx_parity(model, x, batch_size=32, rel=1e-6)
    assert r["codes_differ"] == 0 and r["tie_samples"] == []
    m = r["model"]
    convs = [n for n in m.nodes if n.op == "conv"]
    assert len(convs) == 2 and convs[0].attrs["padding"] == [0, 1]
    assert sum(n.op == "pad" for n in m.nodes) == 2 + (pool is not None)
    np.testing.assert_array_equal(m.run_reference(x[:4]), m(x[:4]))
    m.save(tmp_path / "p.lowbit")   # a max pool's -inf padding value survives the model file
    np.testing.assert_array_equal(lowbit.load(tmp_path / "p.lowbit")(x[:4]), m(x[:4]))


def test_asymmetric_padding_float_conv_against_qonnx():
    rng = np.random.default_rng(21)
    g = G()
    y = g.op("Conv", ["x", g.c(rng.standard_normal((4, 3, 3, 3)))], kernel_shape=[3, 3], pads=[1, 0, 2, 1])
    model = g.model(g.op("Flatten", [y], axis=1), [1, 3, 6, 6])
    x = rng.standard_normal((8, 3, 6, 6)).astype(np.float32)
    r = check_qonnx_parity(model, x, batch_size=8, rel=1e-5)
    assert [n.op for n in r["model"].nodes][1:3] == ["pad", "conv_f32"]


def test_asymmetric_padding_errors():
    rng = np.random.default_rng(22)
    with pytest.raises(lbq.QonnxConversionError, match="Conv node .*asymmetric zero padding .*have no 0"):
        lbq.from_qonnx(_asym_graph(rng, 1, None))
    g = G()
    q = g.quant("x", 0.1, 4)
    p = g.op("AveragePool", [q], kernel_shape=[2, 2], pads=[0, 0, 1, 1], count_include_pad=0)
    with pytest.raises(lbq.QonnxConversionError, match="AveragePool node .*count_include_pad=0"):
        lbq.from_qonnx(g.model(p, [1, 3, 4, 4]))


# ---------------------------------------------------------------------------------------------
# Declared input quantization

def _float_input_graph(rng):
    g = G()
    y = g.op("Conv", ["x", g.qweights(rng, (8, 3, 3, 3), 8, 2.0 ** -7)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = g.op("Relu", [g.bn(y, rng, 8)])
    q = g.quant(y, 2.0 ** -3, 4, signed=0)
    y = g.op("Conv", [q, g.qweights(rng, (8, 8, 3, 3), 4, 2.0 ** -3)], kernel_shape=[3, 3], strides=[2, 2])
    q = g.quant(g.op("Relu", [y]), 0.25, 4, signed=0)
    y = g.op("Gemm", [g.op("Flatten", [q], axis=1), g.qweights(rng, (10, 8 * 3 * 3), 4, 2.0 ** -3)], transB=1)
    return g.model(y, [1, 3, 8, 8])


def test_declared_input_quantization():
    rng = np.random.default_rng(30)
    model = _float_input_graph(rng)
    x = rng.standard_normal((64, 3, 8, 8)).astype(np.float32)
    cleaned = lbq._qonnx_executor(model, 64).model   # the graph check_qonnx_parity runs (its tensor names)
    plain = lbq.from_qonnx(cleaned)
    quant = lbq.from_qonnx(cleaned, input_scale=2.0 ** -5, input_bits=8)
    layers = lambda m: [n.op for n in m.nodes if n.op in ("conv", "linear", "conv_f32", "linear_f32")]  # noqa: E731
    assert layers(plain) == ["conv_f32", "conv", "linear"] and "input_quantization" not in plain.meta
    assert layers(quant) == ["conv", "conv", "linear"]
    first = next(n for n in quant.nodes if n.op == "conv")
    assert first.attrs["a_bits"] == 8 and first.attrs["w_bits"] == 8
    assert quant.meta["input_quantization"] == {"scale": 2.0 ** -5, "bits": 8, "signed": True}
    # the numeric effect: exactly the float model run on the input rounded to the declared grid
    xq, _ = lbq.quant_numpy(x, 2.0 ** -5, 0.0, 8, True, False)
    np.testing.assert_array_equal(quant(x), quant(xq))
    r = check_qonnx_parity(model, xq, batch_size=64, lowbit_model=quant, rel=0.0)
    assert r["code_tensors"] == 2 and r["codes_differ"] == 0 and r["top1_agreement"] == 1.0   # exact
    # without the option the model is unchanged, and reads the unrounded input
    r0 = check_qonnx_parity(model, x, batch_size=64)
    np.testing.assert_array_equal(r0["lowbit_logits"], plain(x))
    assert not np.array_equal(plain(x), quant(x))


@pytest.mark.parametrize("kw,pattern", [
    ({"input_scale": 0.0}, "input_scale"), ({"input_scale": float("nan")}, "input_scale"),
    ({"input_scale": "1"}, "input_scale"), ({"input_scale": 0.1, "input_bits": 9}, "input_bits"),
    ({"input_scale": 0.1, "input_signed": 1}, "input_signed")])
def test_declared_input_quantization_bad_arguments(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        lbq.from_qonnx(_float_input_graph(np.random.default_rng(0)), **kw)


# ---------------------------------------------------------------------------------------------
# lowering with concat nodes (IR built by hand, as tests/python/test_lowering.py does)

def test_lowering_requantizes_into_epilogues_in_front_of_a_concat():
    """Each branch's quantize folds into its conv's epilogue (the concat reads codes); a quantize
    of a conv output that the concat also reads as float stays a node; unread nodes go."""
    from lowbit import lowering as lw
    from test_lowering import conv, inp, quant

    nodes = [inp(), quant("q", "x"), conv("a", "q"), conv("b", "q"), quant("qa", "a"), quant("qb", "b"),
             Node("cat", "concat", ["qa", "qb"], {}), conv("c", "cat", (1.0,) * 4, (0.0,) * 4),
             Node("dead", "concat", ["a", "b"], {})]
    nodes[-2].arrays["w_codes"] = np.ones((4, 4, 3, 3), np.uint8)
    g = lw.lower(nodes, "c")
    assert [(n.name, n.op) for n in g.nodes] == [("x", "input"), ("q", "quantize"), ("a", "conv"), ("b", "conv"),
                                                ("cat", "concat"), ("c", "conv")]
    assert g.nodes[2].attrs["requant"]["bits"] == 2 and g.nodes[3].attrs["requant"]["bits"] == 2
    assert g.nodes[4].inputs == ["a", "b"] and g.replaced["qa"] == "a"
    m = Model(g.nodes)
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(m(x), m.run_reference(x))
    # a float concat of a conv output that a quantize also reads: the quantize cannot fold
    nodes = [inp(), quant("q", "x"), conv("a", "q"), quant("qa", "a"), conv("b", "qa"),
             Node("cat", "concat", ["a", "b"], {})]
    g = lw.lower(nodes, "cat")
    assert [n.op for n in g.nodes] == ["input", "quantize", "conv", "quantize", "conv", "concat"]
    assert g.nodes[2].attrs["requant"] is None


def test_parity_rule_reads_the_value_before_a_pooled_quantizer():
    """lowbit max-pools before quantizing, so its codes of a MaxPool output are compared with
    qonnx's there; where they differ, tests/python/parity.py takes the max-pooled value before
    the quantizer (asymmetric pads included): quantizing it gives qonnx's pooled codes."""
    from parity import _quantizer_input

    g = G()
    q = g.quant("x", 0.5, 4)
    p = g.op("MaxPool", [q], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 1, 1, 0])
    mw = lbq._qonnx_executor(g.model(p, [1, 2, 5, 5]), 3)
    x = np.random.default_rng(0).standard_normal((3, 2, 5, 5)).astype(np.float32)
    _, ctx = lbq.qonnx_execute(mw.model, x, 3, full=True)
    out = mw.graph.output[0].name
    pre, mode = _quantizer_input(mw.graph, out, ctx[0], ctx[0][out].shape)
    assert mode == "ROUND" and pre.shape == (3, 2, 3, 3)
    np.testing.assert_array_equal(lbq.quant_numpy(pre, 0.5, 0.0, 4, True, False)[0], ctx[0][out])
