"""A quantize node fed by a float layer (conv_f32 / linear_f32, then an optional affine and
clamp) decides its codes by the float64 formula of lowbit.exact_float: the native executor,
the Python path and the reference agree byte for byte, also where the float32 values alone
would round to the other side of a tie."""
import numpy as np
import pytest

import lowbit
from lowbit import exact_float
from lowbit import lowering as lw
from lowbit.runtime import Node


def quant(name, src, bits=4, qn=0, qp=15, step=0.5, **extra):
    return Node(name, "quantize", [src], {"bits": bits, "signed": qn < 0, "binary": False, "qn": qn, "qp": qp,
                                          "step": step, "levels": list(range(qn, qp + 1)) + [0] * (
                                              (1 << bits) - (qp - qn + 1)), **extra})


def conv_f32(name, src, w, bias=None, stride=1, padding=0, groups=1):
    w = np.asarray(w, np.float32)
    arrays = {"w": w, "bias": np.zeros(w.shape[0], np.float32) if bias is None else np.asarray(bias, np.float32)}
    return Node(name, "conv_f32", [src], {"stride": [stride] * 2, "padding": [padding] * 2, "dilation": [1, 1],
                                          "groups": groups}, arrays)


def model(nodes, output):
    return lowbit.Model(lw.lower(nodes, output).nodes)


def run_all(m, x):
    """The native executor on every tier and the reference: the same bytes; returns the output."""
    ref = m.run(x, reference=True)
    for tier in lowbit.supported_tiers():
        with lowbit.use(isa=tier):
            native = m.run(x)
        np.testing.assert_array_equal(native, ref, err_msg=tier)
    return ref


def test_a_tie_the_float32_sum_cannot_see_is_decided_in_float64():
    # z = 1 * 0.5 + x1 * 2^-30: exactly 1/2 +- 2^-30 in float64, 0.5 (a tie, rounding to 0) in float32
    w = np.float32([0.5, 2.0 ** -30]).reshape(1, 2, 1, 1)
    nodes = [Node("x", "input", [], {"channels": 2, "height": 2, "width": 3}), conv_f32("c", "x", w),
             quant("q", "c", step=1.0)]
    m = model(nodes, "q")
    q = m._by_name["q"]
    assert q.attrs["exact_float"] == {"layer": "c", "affine": None, "clamp": [None, None]} and q.inputs == ["c", "x"]
    x = np.ones((2, 2, 2, 3), np.float32)
    x[1, 1] = -1.0
    out = run_all(m, x)
    np.testing.assert_array_equal(out[0], 1.0)   # 1/2 + 2^-30 rounds up
    np.testing.assert_array_equal(out[1], 0.0)   # 1/2 - 2^-30 rounds down
    y32 = np.float32(0.5) + np.float32(2.0 ** -30)   # what the quantize node sees
    assert y32 == np.float32(0.5) and np.rint(y32) == 0.0


@pytest.mark.parametrize("clamp", [False, True])
def test_a_quantizer_behind_a_max_pool_of_a_float_layer_moves_in_front(clamp):
    """conv_f32 -> (ReLU) -> maxpool -> quantize (how the QONNX importer lowers VGG-11's
    Relu -> Quant -> MaxPool after its float first conv): lowering moves the quantizer in front of
    the pool, so it is decided in float64 like any quantizer of a float layer, and the pool takes
    the largest code. The float32 values alone would tie (0.5) and round every window to 0."""
    w = np.float32([0.5, 2.0 ** -30]).reshape(1, 2, 1, 1)
    nodes = [Node("x", "input", [], {"channels": 2, "height": 2, "width": 4}), conv_f32("c", "x", w)]
    if clamp:
        nodes.append(Node("r", "clamp", ["c"], {"clamp": [0.0, None]}))
    nodes += [Node("p", "maxpool", [nodes[-1].name], {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0],
                                                      "dilation": [1, 1]}),
              quant("q", "p", step=1.0)]
    g = lw.lower(nodes, "q")
    assert [n.op for n in g.nodes] == ["input", "conv_f32"] + ["clamp"] * clamp + ["quantize", "maxpool"]
    assert g.output == "p" and g.moved == {"q": "p"}
    m = lowbit.Model(g.nodes)
    assert m._by_name["q"].attrs["exact_float"]["layer"] == "c"
    x = np.ones((1, 2, 2, 4), np.float32)   # NCHW: the conv computes 1/2 + x[channel 1] * 2^-30
    x[0, 1, :, :2] = -1.0    # the left window: 1/2 - 2^-30 at all four positions (code 0)
    x[0, 1, 0, 2] = -1.0     # the right window: 1/2 - 2^-30 at one position, 1/2 + 2^-30 at three (code 1)
    out = run_all(m, x)
    assert out.shape == (1, 1, 1, 2)
    np.testing.assert_array_equal(out.ravel(), [0.0, 1.0])


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("groups,stride,padding", [(1, 2, 1), (2, 1, 1), (4, 1, 0)])
@pytest.mark.parametrize("clamp", [None, (0.0, None), (0.0, 6.0)])
def test_random_float_layers_every_path_agrees(per_channel, groups, stride, padding, clamp, rng):
    cin, cout = 4, 8
    w = rng.standard_normal((cout, cin // groups, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    bn_scale, bn_bias = rng.uniform(0.5, 2.0, cout), rng.standard_normal(cout)
    nodes = [Node("x", "input", [], {"channels": cin, "height": 9, "width": 9}),
             conv_f32("c", "x", w, bias, stride, padding, groups),
             Node("bn", "affine", ["c"], {"bn": True}, {"scale": bn_scale, "bias": bn_bias})]
    last = "bn"
    if clamp is not None:
        nodes.append(Node("r", "clamp", ["bn"], {"clamp": list(clamp)}))
        last = "r"
    extra = {"channel_steps": list(rng.uniform(0.05, 0.3, cout).astype(np.float32).astype(float))} if per_channel \
        else {}
    nodes.append(quant("q", last, step=1.0 if per_channel else 0.07, **extra))
    m = model(nodes, "q")
    q = m._by_name["q"]
    assert q.attrs["exact_float"]["layer"] == "c" and q.attrs["exact_float"]["affine"] == "bn"
    assert m._by_name["bn"].arrays["scale64"].dtype == np.float64
    x = (rng.standard_normal((3, cin, 9, 9)) * 3).astype(np.float32)
    run_all(m, x)
    # the reference is the formula: the same codes recomputed from scratch for every output
    codes = exact_float.reference_codes(m, q, x.transpose(0, 2, 3, 1))
    native = m.run(x)   # dequantized: level * step (per channel: the level, step 1)
    levels = np.rint(native / (1.0 if per_channel else np.float32(0.07))).astype(int)
    np.testing.assert_array_equal(levels.transpose(0, 2, 3, 1), codes.astype(int) + q.attrs["qn"])


def test_linear_f32_then_quantize(rng):
    k, n = 40, 6
    w = rng.standard_normal((n, k)).astype(np.float32)
    nodes = [Node("x", "input", [], {"channels": k, "height": 1, "width": 1}), Node("f", "flatten", ["x"]),
             Node("l", "linear_f32", ["f"], {}, {"w": w, "bias": rng.standard_normal(n).astype(np.float32)}),
             quant("q", "l", 8, -128, 127, 0.01)]
    m = model(nodes, "q")
    assert m._by_name["q"].attrs["exact_float"]["layer"] == "l"
    run_all(m, rng.standard_normal((5, k, 1, 1)).astype(np.float32))


def test_save_load_keeps_the_exact_rule(tmp_path, rng):
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    nodes = [Node("x", "input", [], {"channels": 2, "height": 6, "width": 6}), conv_f32("c", "x", w, padding=1),
             Node("bn", "affine", ["c"], {}, {"scale": rng.uniform(0.5, 2, 4), "bias": rng.standard_normal(4)}),
             quant("q", "bn", step=0.1, qn=-8, qp=7)]
    m = model(nodes, "q")
    m.save(tmp_path / "m.lowbit")
    m2 = lowbit.load(tmp_path / "m.lowbit")
    assert m2._by_name["q"].attrs["exact_float"] == m._by_name["q"].attrs["exact_float"]
    np.testing.assert_array_equal(m2._by_name["bn"].arrays["scale64"], m._by_name["bn"].arrays["scale64"])
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(run_all(m2, x), m(x))


def test_bad_exact_float_attribute_is_rejected():
    w = np.ones((1, 2, 1, 1), np.float32)
    nodes = [Node("x", "input", [], {"channels": 2, "height": 2, "width": 2}), conv_f32("c", "x", w),
             quant("q", "c", step=1.0)]
    low = lw.lower(nodes, "q").nodes
    low[-1].attrs["exact_float"] = {"layer": "x", "affine": None, "clamp": [None, None]}
    with pytest.raises(ValueError, match="exact_float"):
        lowbit.Model(low)
    with pytest.raises(ValueError, match="divisors"):
        lowbit._core.ExactFloatSpec(w, None, None, None, None, None, -np.inf, np.inf, 1.0, 0, 15, 1,
                                    np.float64([0.0]))


def test_exact_weights_decide_where_the_float32_weights_would_tie():
    # w64 = 1/2 + 2^-30 (e.g. a QONNX level * scale), w = float32(w64) = 1/2: with x = 1 the
    # formula's z is 1/2 + 2^-30 (code 1); from the float32 weight it would be a tie (code 0)
    w64 = np.float64([0.5 + 2.0 ** -30]).reshape(1, 1, 1, 1)
    layer = conv_f32("c", "x", w64.astype(np.float32))
    layer.arrays["w64"] = w64
    nodes = [Node("x", "input", [], {"channels": 1, "height": 2, "width": 2}), layer, quant("q", "c", step=1.0)]
    m = model(nodes, "q")
    np.testing.assert_array_equal(run_all(m, np.ones((1, 1, 2, 2), np.float32)), 1.0)
    m._by_name["c"].arrays["w64"] = np.float64([0.25]).reshape(1, 1, 1, 1)   # not what w was rounded from
    m._by_name["q"]._cache.clear()
    m.__dict__.pop("_memo", None)  # the plans were built with the old w64
    with pytest.raises(ValueError, match="w64"):
        m.run(np.ones((1, 1, 2, 2), np.float32))
