"""lowbit.lowering: each pass of the pipeline shared by lowbit.convert and lowbit.from_qonnx, on
hand-built IR graphs, including the cases where a fold must not happen."""
import numpy as np
import pytest

import lowbit
from lowbit import lowering as lw
from lowbit.runtime import Node


def inp():
    return Node("x", "input", [], {"channels": 2, "height": 4, "width": 4})


def quant(name, src, bits=2, qn=0, qp=3, step=0.5, levels=None, **extra):
    return Node(name, "quantize", [src], {"bits": bits, "signed": qn < 0, "binary": False, "qn": qn, "qp": qp,
                                          "step": step, "levels": list(range(qn, qp + 1)) if levels is None
                                          else levels, **extra})


def conv(name, src, scale=(0.25, 0.5), bias=(1.0, -1.0)):
    """An IR conv: float64 scale/bias, open epilogue."""
    c = len(scale)
    return Node(name, "conv", [src], {"w_bits": 2, "a_bits": 2, "w_codebook": [-2, -1, 0, 1],
                                      "a_codebook": [0, 1, 2, 3], "clamp": [None, None], "requant": None,
                                      "residual": False, "bn": False, "stride": [1, 1], "padding": [1, 1],
                                      "dilation": [1, 1], "groups": 1},
                {"w_codes": np.ones((c, 2, 3, 3), np.uint8), "scale": np.array(scale, np.float64),
                 "bias": np.array(bias, np.float64)})


def affine(name, src, scale=(3.0, 0.1), bias=(0.5, 0.25), **attrs):
    return Node(name, "affine", [src], attrs, {"scale": np.array(scale, np.float64),
                                               "bias": np.array(bias, np.float64)})


def clamp(name, src, lo=0.0, hi=None):
    return Node(name, "clamp", [src], {"clamp": [lo, hi]})


def graph(nodes, output=None):
    return lw.Graph(nodes, output or nodes[-1].name)


def ops(g):
    return [(n.name, n.op) for n in g.nodes]


# ---- fold_affines ------------------------------------------------------------------------------

def test_affine_folds_into_the_epilogue_in_float64_and_composes():
    g = graph([inp(), quant("q", "x"), conv("c", "q"), affine("bn", "c", bn=True), affine("mul", "bn", (2.0, 2.0),
                                                                                          (0.0, 1.0))])
    lw.fold_affines(g)
    assert ops(g) == [("x", "input"), ("q", "quantize"), ("c", "conv")] and g.output == "c"
    c = g.nodes[-1]
    np.testing.assert_array_equal(c.arrays["scale"], np.array([0.25, 0.5]) * [3.0, 0.1] * [2.0, 2.0])
    np.testing.assert_array_equal(c.arrays["bias"], (np.array([1.0, -1.0]) * [3.0, 0.1] + [0.5, 0.25]) * 2.0
                                  + [0.0, 1.0])
    assert c.attrs["bn"] and c.attrs["fused"] == ["bn", "mul"] and g.replaced == {"bn": "c", "mul": "c"}


@pytest.mark.parametrize("case", ["two_readers", "clamp_first", "residual_first", "keep", "not_a_layer",
                                  "layer_is_output"])
def test_affine_does_not_fold(case):
    nodes = [inp(), quant("q", "x"), conv("c", "q")]
    c = nodes[-1]
    out = None
    if case == "two_readers":
        nodes += [affine("a", "c"), Node("s", "add", ["a", "c"])]
    elif case == "clamp_first":
        c.attrs["clamp"] = [0.0, None]
        nodes += [affine("a", "c")]
    elif case == "residual_first":
        c.attrs["residual"], c.inputs = True, ["q", "x"]
        nodes += [affine("a", "c")]
    elif case == "keep":
        nodes += [affine("a", "c", keep=True)]
    elif case == "not_a_layer":
        nodes = [inp(), affine("a", "x")]
    else:
        nodes += [affine("a", "c")]
        out = "c"
    g = graph(nodes, out)
    before = ops(g)
    lw.fold_affines(g)
    assert ops(g) == before and not g.replaced


# ---- fuse_residuals ----------------------------------------------------------------------------

def test_residual_add_fuses_into_the_later_layer():
    g = graph([inp(), quant("q", "x"), conv("c1", "q"), conv("c2", "q"), Node("s", "add", ["c1", "c2"])])
    lw.fuse_residuals(g)
    assert ops(g)[-1] == ("c2", "conv") and g.output == "c2"
    c2 = g.nodes[-1]
    assert c2.attrs["residual"] and c2.inputs == ["q", "c1"] and c2.attrs["fused"] == ["s"]


def test_residual_fuses_with_an_input_defined_later_and_order_moves_the_layer():
    g = graph([inp(), quant("q", "x"), conv("c", "q"), clamp("r", "x"), Node("s", "add", ["c", "r"])])
    lw.fuse_residuals(g)
    assert g.nodes[2].inputs == ["q", "r"]
    lw.order(g)
    assert ops(g) == [("x", "input"), ("q", "quantize"), ("r", "clamp"), ("c", "conv")]


@pytest.mark.parametrize("case", ["same_value", "two_readers", "clamp_first", "requant_first", "no_layer"])
def test_residual_does_not_fuse(case):
    nodes = [inp(), quant("q", "x"), conv("c", "q")]
    c = nodes[-1]
    if case == "same_value":
        nodes += [Node("s", "add", ["c", "c"])]
    elif case == "two_readers":
        nodes += [clamp("r", "c"), Node("s", "add", ["c", "r"])]
    elif case == "clamp_first":
        c.attrs["clamp"] = [0.0, 6.0]
        nodes += [Node("s", "add", ["c", "x"])]
    elif case == "requant_first":
        c.attrs["requant"] = {"bits": 2, "step": 0.5, "signed": False}
        nodes += [Node("d", "dequantize", ["c"]), Node("s", "add", ["d", "x"])]
    else:
        nodes += [clamp("r", "x"), Node("s", "add", ["r", "x"])]
    g = graph(nodes)
    before = ops(g)
    lw.fuse_residuals(g)
    assert ops(g) == before and not g.replaced


# ---- fold_clamps / remove_identities / remove_dead ---------------------------------------------

def test_clamp_folds_after_affine_and_residual():
    g = graph([inp(), quant("q", "x"), conv("c", "q"), affine("a", "c"), Node("s", "add", ["a", "x"]),
               clamp("r", "s", 0.0, 6.0)])
    lw.fold_affines(g)
    lw.fuse_residuals(g)
    lw.fold_clamps(g)
    c = g.nodes[-1]
    assert ops(g)[-1] == ("c", "conv") and c.attrs["clamp"] == [0.0, 6.0] and c.attrs["residual"]
    assert c.attrs["fused"] == ["a", "s", "r"]


def test_affine_after_clamp_stays_a_node():
    g = graph([inp(), quant("q", "x"), conv("c", "q"), clamp("r", "c"), affine("a", "r")])
    lw.fold_affines(g)
    lw.fold_clamps(g)
    lw.fold_affines(g)   # the clamp is in the epilogue now: an affine cannot come after it
    assert ops(g)[-2:] == [("c", "conv"), ("a", "affine")] and g.nodes[-1].inputs == ["c"]


@pytest.mark.parametrize("case", ["clamp_set", "requant_set", "two_readers"])
def test_clamp_does_not_fold(case):
    nodes = [inp(), quant("q", "x"), conv("c", "q")]
    if case == "clamp_set":
        nodes[-1].attrs["clamp"] = [None, 1.0]
    elif case == "requant_set":
        nodes[-1].attrs["requant"] = {"bits": 2, "step": 0.5, "signed": False}
    nodes.append(clamp("r", "c"))
    if case == "two_readers":
        nodes.append(Node("s", "add", ["c", "r"]))
    g = graph(nodes)
    before = ops(g)
    lw.fold_clamps(g)
    assert ops(g) == before


def test_identity_clamp_and_dead_nodes_are_removed():
    g = graph([inp(), clamp("id", "x", None, None), clamp("dead", "x"), clamp("r", "id")])
    lw.remove_identities(g)
    assert ops(g) == [("x", "input"), ("dead", "clamp"), ("r", "clamp")] and g.nodes[-1].inputs == ["x"]
    lw.remove_dead(g)
    assert ops(g) == [("x", "input"), ("r", "clamp")]


# ---- place_requant -----------------------------------------------------------------------------

def test_requant_moves_into_the_epilogue():
    g = graph([inp(), quant("q0", "x"), conv("c", "q0"), quant("q1", "c", 4, -8, 7, 0.25), conv("c2", "q1")])
    lw.place_requant(g)
    assert ops(g) == [("x", "input"), ("q0", "quantize"), ("c", "conv"), ("c2", "conv")]
    assert g.nodes[2].attrs["requant"] == {"bits": 4, "step": 0.25, "signed": True}
    assert g.nodes[3].inputs == ["c"] and g.replaced == {"q1": "c"}


def test_narrow_grid_requant_moves_into_the_epilogue():
    """A grid that is not a full range (narrow -7..7 at 4 bits) folds too: requant gets qmin/qmax."""
    q1 = quant("q1", "c", 4, -7, 7, 0.25)
    q1.attrs["levels"] = list(range(-7, 8)) + [0]
    g = graph([inp(), quant("q0", "x"), conv("c", "q0"), q1, conv("c2", "q1")])
    lw.place_requant(g)
    assert ops(g) == [("x", "input"), ("q0", "quantize"), ("c", "conv"), ("c2", "conv")]
    assert g.nodes[2].attrs["requant"] == {"bits": 4, "step": 0.25, "signed": True, "qmin": -7, "qmax": 7}


@pytest.mark.parametrize("case", ["disabled", "binary", "trunc_levels", "pre_step", "keep", "two_readers",
                                  "layer_is_output", "not_a_layer"])
def test_requant_stays_a_quantize_node(case):
    q1 = quant("q1", "c", 4, -8, 7, 0.25)
    nodes = [inp(), quant("q0", "x"), conv("c", "q0"), q1]
    out, enabled = None, True
    if case == "disabled":
        enabled = False
    elif case == "binary":
        q1.attrs.update(bits=1, qn=-1, qp=1, binary=True, levels=[-1, 1])
    elif case == "trunc_levels":
        q1.attrs["levels"] = [2 * v for v in range(-8, 8)]
    elif case == "pre_step":
        q1.attrs.update(pre_step=0.125, pre_div=2.0)
    elif case == "keep":
        q1.attrs["keep"] = True
    elif case == "two_readers":
        nodes.append(Node("s", "add", ["c", "x"]))
        nodes.append(Node("j", "add", ["s", "s"]))   # keeps both alive
    elif case == "layer_is_output":
        out = "c"
    else:
        q1.inputs = ["x"]
    g = graph(nodes, out)
    lw.place_requant(g, enabled)
    assert "q1" in [n.name for n in g.nodes] and g.nodes[2].attrs["requant"] is None


def test_per_channel_requant_divides_scale_and_bias_or_gets_an_affine():
    steps = [0.5, 0.25]
    g = graph([inp(), quant("q0", "x"), conv("c", "q0"), quant("q1", "c", channel_steps=steps)])
    lw.place_requant(g)
    c = g.nodes[-1]
    assert c.name == "c" and c.attrs["requant"] == {"bits": 2, "step": 0.5, "signed": False, "channel_steps": steps}
    np.testing.assert_array_equal(c.arrays["scale"], np.array([0.25, 0.5]) / steps)
    np.testing.assert_array_equal(c.arrays["bias"], np.array([1.0, -1.0]) / steps)
    # a clamp that does not commute with the division: float32 multiply by 1/step in front of the quantize
    g = graph([inp(), quant("q0", "x"), conv("c", "q0"), quant("q1", "c", channel_steps=steps)])
    g.nodes[2].attrs["clamp"] = [0.0, 6.0]
    lw.place_requant(g)
    assert ops(g)[-2:] == [("q1.per_channel_scale", "affine"), ("q1", "quantize")]
    assert g.nodes[-1].inputs == ["q1.per_channel_scale"] and g.nodes[-2].inputs == ["c"]
    np.testing.assert_array_equal(g.nodes[-2].arrays["scale"], np.float32([2.0, 4.0]))


@pytest.mark.parametrize("case", ["two_readers", "disabled", "keep", "binary", "pre_step", "per_channel",
                                  "second_quantizer", "not_a_layer"])
def test_a_quantizer_that_stays_may_be_written_by_its_layers_epilogue(case):
    """A plain quantize node reading a layer's float output (read by others too) is named by that
    layer's quantize_output (the first such quantizer only); binary, Trunc, per-channel quantizers
    and quantizers of other values are not."""
    q1 = quant("q1", "c", 4, -8, 7, 0.25)
    nodes = [inp(), quant("q0", "x"), conv("c", "q0"), q1, Node("s", "add", ["c", "x"]), Node("j", "add", ["s", "q1"])]
    enabled, want = True, "q1"
    if case == "disabled":
        enabled = False
    elif case == "keep":
        q1.attrs["keep"] = True
    elif case == "binary":
        q1.attrs.update(bits=1, qn=-1, qp=1, binary=True, levels=[-1, 1])
        want = None
    elif case == "pre_step":
        q1.attrs.update(pre_step=0.125, pre_div=2.0)
        want = None
    elif case == "per_channel":
        q1.attrs["channel_steps"] = [0.5, 0.25]
        want = None
    elif case == "second_quantizer":
        nodes.insert(4, quant("q2", "c", 2, 0, 3, 0.5))
        nodes.append(Node("k", "add", ["j", "q2"]))
    elif case == "not_a_layer":
        q1.inputs = ["x"]
        want = None
    g = graph(nodes)
    lw.place_requant(g, enabled)
    assert "q1" in [n.name for n in g.nodes] and g.nodes[2].attrs["requant"] is None
    assert g.nodes[2].attrs.get("quantize_output") == want


# ---- order / finalize / lower ------------------------------------------------------------------

def test_order_is_stable_and_refuses_cycles_and_unknown_inputs():
    g = graph([inp(), clamp("a", "x"), clamp("b", "x"), Node("s", "add", ["a", "b"])])
    lw.order(g)
    assert [n.name for n in g.nodes] == ["x", "a", "b", "s"]
    g = graph([inp(), clamp("a", "b"), clamp("b", "x"), Node("s", "add", ["a", "b"])])
    lw.order(g)
    assert [n.name for n in g.nodes] == ["x", "b", "a", "s"]
    with pytest.raises(ValueError, match="cycle"):
        lw.order(graph([inp(), clamp("a", "b"), clamp("b", "a")]))
    with pytest.raises(ValueError, match="'nope', which no node defines"):
        lw.order(graph([inp(), clamp("a", "nope")]))


def test_finalize_rounds_once_and_checks_finiteness():
    g = graph([inp(), quant("q", "x", keep=True), conv("c", "q", (0.1, 0.2), (1e300, 0.0)), affine("a", "c", bn=True)])
    with pytest.raises(ValueError, match="node 'c': non-finite folded scale/bias"):
        lw.finalize(g)
    g = graph([inp(), quant("q", "x", keep=True, origin="Q"), conv("c", "q", (0.1, 0.2)), affine("a", "c", bn=True)])
    lw.finalize(g)
    assert g.nodes[2].arrays["scale"].dtype == np.float32 and g.nodes[2].arrays["scale"][0] == np.float32(0.1)
    assert "keep" not in g.nodes[1].attrs and "origin" not in g.nodes[1].attrs and "bn" not in g.nodes[3].attrs
    assert g.nodes[2].attrs["bn"] is False   # a layer's own bn attribute stays


def test_lower_runs_the_whole_pipeline_into_a_valid_model():
    rng = np.random.default_rng(0)
    nodes = [inp(), quant("q0", "x", 2, 0, 3, 0.1), conv("c1", "q0"), affine("bn1", "c1", bn=True),
             clamp("r1", "bn1"), quant("q1", "r1", 2, 0, 3, 0.5), conv("c2", "q1"), Node("s", "add", ["c2", "x"]),
             clamp("r2", "s", 0.0, 6.0), clamp("noop", "r2", None, None), clamp("dead", "x")]
    low = lw.lower(nodes, "noop")
    assert [(n.name, n.op) for n in low.nodes] == [("x", "input"), ("q0", "quantize"), ("c1", "conv"),
                                                    ("c2", "conv")]
    c1, c2 = low.nodes[2], low.nodes[3]
    assert c1.attrs["requant"] == {"bits": 2, "step": 0.5, "signed": False} and c1.attrs["clamp"] == [0.0, None]
    assert c1.attrs["bn"] and c2.attrs["residual"] and c2.inputs == ["c1", "x"] and c2.attrs["clamp"] == [0.0, 6.0]
    assert low.replaced == {"noop": "c2", "bn1": "c1", "s": "c2", "r1": "c1", "r2": "c2", "q1": "c1"}
    m = lowbit.Model(low.nodes)
    x = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(m(x), m.run_reference(x))


def test_lower_reports_errors_with_the_front_ends_exception():
    class FrontEndError(Exception):
        pass

    with pytest.raises(FrontEndError, match="internal error: .*no node defines"):
        lw.lower([inp(), clamp("a", "missing")], "a", error=FrontEndError)


def test_node_helpers_both_front_ends_use():
    g, b = lw.batchnorm_affine([2.0, 1.0], [0.5, 0.0], [1.0, -2.0], [3.0, 0.0], 1.0)
    np.testing.assert_array_equal(g, [1.0, 1.0])            # 2 / sqrt(4), 1 / sqrt(1)
    np.testing.assert_array_equal(b, [-0.5, 2.0])           # beta - mean * g
    taken = {"a"}
    assert [lw.unique_name(s, taken) for s in ("a", "a", "b/c:d", "")] == ["a_2", "a_3", "b.c_d", "node"]
    c = lw.layer_node("c", "conv", "q", 2, [-2, -1, 0, 1], 0.5, 1, [-1, 1], np.zeros((1, 2, 1, 1), np.uint8),
                      [1.0], [0.0], stride=[1, 1])
    assert c.attrs["a_signed"] and not c.attrs["a_binary"] and (c.attrs["a_qn"], c.attrs["a_qp"]) == (-2, 1)
    assert c.arrays["scale"].dtype == np.float64 and c.attrs["stride"] == [1, 1]
    from lowbit.quant import UniformGrid
    q = lw.quantize_node("q", "x", UniformGrid(0.5, 0, 3, chan=[1.0, 2.0]), keep=True)
    assert q.attrs == {"bits": 2, "signed": False, "binary": False, "qn": 0, "qp": 3, "step": 0.5,
                       "levels": [0, 1, 2, 3], "channel_steps": [1.0, 2.0], "keep": True}
