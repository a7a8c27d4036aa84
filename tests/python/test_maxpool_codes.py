"""Max pooling on the native executor's paths: the AVX2 float twin's channel blocks (up to 64
channels in registers per pass over the window) against the scalar rule, byte for byte; max
pooling of codes (the native op, scalar and AVX2, against its NumPy twin) and the lowering pass
that makes it (lowering.requant_before_maxpool); the RGB input quantizer's interleave."""
import numpy as np
import pytest

import lowbit
from lowbit import _core
from lowbit import lowering as lw
from lowbit.quant import UniformGrid
from lowbit.runtime import Node
from lowbit.runtime import io as lio
from lowbit.runtime import model as rt


def _geometry(shape, window):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = window
    b, h, w, c = shape
    oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    attrs = {"kernel": [kh, kw], "stride": [sh, sw], "padding": [ph, pw], "dilation": [dh, dw]}
    return (b, h, w, c, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow), attrs


def _awkward(rng, shape):
    """float32 values with NaN, +-inf, -0.0, +0.0 and repeated values mixed in."""
    x = rng.integers(-3, 4, shape).astype(np.float32) * np.float32(0.5)
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, -np.nan], np.float32)
    mask = rng.random(shape) < 0.08
    x[mask] = special[rng.integers(0, len(special), int(mask.sum()))]
    return x


@pytest.mark.parametrize("c", [8, 16, 24, 40, 56, 64, 72, 100, 128, 136])
@pytest.mark.parametrize("window", [((3, 3), (2, 2), (1, 1), (1, 1)), ((2, 3), (1, 2), (0, 1), (2, 1)),
                                    ((5, 5), (1, 1), (2, 2), (1, 1))])
def test_float_maxpool_channel_blocks_match_the_scalar_rule(rng, c, window):
    x = _awkward(rng, (2, 9, 10, c))
    geometry, attrs = _geometry(x.shape, window)
    scalar = _core.executor_maxpool_nhwc(x, geometry, False)
    simd = _core.executor_maxpool_nhwc(x, geometry, True)
    assert simd.tobytes() == scalar.tobytes()
    assert np.array_equal(scalar, rt.maxpool(x, attrs), equal_nan=True)


# ---- max pooling of codes: the native op (AVX2 and scalar) against its NumPy twin ----------------

@pytest.mark.parametrize("c", [1, 7, 31, 32, 33, 64, 100, 128, 129, 160, 257])
@pytest.mark.parametrize("window", [((3, 3), (2, 2), (1, 1), (1, 1)), ((2, 2), (2, 2), (0, 0), (1, 1)),
                                    ((3, 2), (1, 2), (1, 0), (2, 1)), ((1, 1), (1, 1), (1, 1), (1, 1)),
                                    ((5, 5), (1, 1), (2, 2), (1, 1))])
def test_codes_maxpool_native_matches_numpy(rng, c, window):
    x = rng.integers(0, 256, (2, 7, 9, c), dtype=np.uint8)
    x[0, 0, 0] = 255  # extreme codes: the largest and the smallest
    x[1, -1, -1] = 0
    geometry, attrs = _geometry(x.shape, window)
    want = rt.maxpool(x, attrs)   # NumPy: padding is code 0, the lowest code
    assert want.dtype == np.uint8 and want.shape == (2, geometry[12], geometry[13], c)
    for simd in (False, True):
        got = _core.maxpool_nhwc_codes(x, geometry, simd)
        assert got.dtype == np.uint8 and got.tobytes() == want.tobytes()
    assert rt.maxpool(x, attrs).tobytes() == want.tobytes()


def test_codes_maxpool_window_with_no_image_tap_gives_code_zero():
    # kernel 1 with padding 1: the border outputs read padding only (-inf for floats, code 0 for codes)
    x = np.full((1, 2, 2, 40), 3, np.uint8)
    geometry, attrs = _geometry(x.shape, ((1, 1), (1, 1), (1, 1), (1, 1)))
    for simd in (False, True):
        got = _core.maxpool_nhwc_codes(x, geometry, simd)
        assert np.all(got[0, 1:3, 1:3] == 3) and np.all(got[0, 0] == 0) and np.all(got[0, :, 0] == 0)
    assert rt.maxpool(x, attrs).tobytes() == got.tobytes()
    f = rt.maxpool(x.astype(np.float32), attrs)
    assert np.all(np.isneginf(f[0, 0]))


def test_codes_maxpool_binding_checks_its_arguments():
    geometry, _ = _geometry((1, 4, 4, 8), ((2, 2), (2, 2), (0, 0), (1, 1)))
    with pytest.raises(ValueError, match="x: expected uint8 codes of shape"):
        _core.maxpool_nhwc_codes(np.zeros((1, 4, 5, 8), np.uint8), geometry, True)
    with pytest.raises(ValueError, match="output size does not match"):
        _core.maxpool_nhwc_codes(np.zeros((1, 4, 4, 8), np.uint8), geometry[:-1] + (3,), True)
    with pytest.raises(TypeError):
        _core.maxpool_nhwc_codes(np.zeros((1, 4, 4, 8), np.float32), geometry, True)


# ---- lowering.requant_before_maxpool --------------------------------------------------------------

_LEVELS2 = [0, 1, 2, 3]


def _conv(name, src, rng, cin, cout, k=3, stride=1, pad=1, a_levels=_LEVELS2, a_step=0.5, scale=0.05):
    w = rng.integers(0, 4, (cout, cin, k, k), dtype=np.uint8)
    return lw.layer_node(name, "conv", src, int(np.log2(len(a_levels))), a_levels, a_step, 2, [-2, -1, 0, 1], w,
                         rng.uniform(0.5, 1.5, cout) * scale, rng.uniform(-0.5, 0.5, cout), stride=[stride, stride],
                         padding=[pad, pad], dilation=[1, 1], groups=1)


def _resnet_like(rng, c=32, shortcut="codes", stem_scale=0.05):
    """A ResNet-18-like start in IR: input quantizer, stem conv (stride 2) + BatchNorm + ReLU,
    3x3/2 max pool, its quantizer, one basic block whose shortcut reads the pooled codes
    (dequantized: a quantized identity, as Brevitas/FINN ResNets have; ``shortcut="float"``: the
    float pool output, as lowbit.qat's), then global pooling, flatten, a quantized classifier."""
    g4 = UniformGrid(0.25, -8, 7)
    g2 = UniformGrid(0.5, 0, 3)
    nodes = [Node("x", "input", [], {"channels": 3, "height": 16, "width": 16}),
             lw.quantize_node("x.quant", "x", g4),
             _conv("stem", "x.quant", rng, 3, c, k=5, stride=2, pad=2, a_levels=g4.levels(), a_step=0.25,
                   scale=stem_scale),
             Node("bn", "affine", ["stem"], {"bn": True},
                  {"scale": rng.uniform(0.5, 2.0, c), "bias": rng.uniform(-1.0, 1.0, c)}),
             Node("relu", "clamp", ["bn"], {"clamp": [0.0, None]}),
             Node("pool", "maxpool", ["relu"], {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1],
                                                "dilation": [1, 1]}),
             lw.quantize_node("pool.quant", "pool", g2),
             _conv("b.conv1", "pool.quant", rng, c, c),
             Node("b.relu1", "clamp", ["b.conv1"], {"clamp": [0.0, None]}),
             lw.quantize_node("b.conv2.quant", "b.relu1", g2),
             _conv("b.conv2", "b.conv2.quant", rng, c, c)]
    if shortcut == "codes":
        nodes.append(Node("pool.dequant", "dequantize", ["pool.quant"], {}))
        nodes.append(Node("b.add", "add", ["b.conv2", "pool.dequant"], {}))
    else:
        nodes.append(Node("b.add", "add", ["b.conv2", "pool"], {}))
    nodes += [Node("b.relu2", "clamp", ["b.add"], {"clamp": [0.0, None]}),
              Node("gap", "adaptive_avgpool", ["b.relu2"], {"output_size": [1, 1]}),
              Node("flat", "flatten", ["gap"], {}),
              lw.quantize_node("fc.quant", "flat", UniformGrid(0.1, 0, 255)),
              lw.layer_node("fc", "linear", "fc.quant", 8, UniformGrid(0.1, 0, 255).levels(), 0.1, 2, [-2, -1, 0, 1],
                            rng.integers(0, 4, (10, c), dtype=np.uint8), np.full(10, 0.01), np.zeros(10))]
    return nodes


def _model(seed, **kw):
    lower_kw = {k: kw.pop(k) for k in ("pool_codes", "requant_in_epilogue") if k in kw}
    return lowbit.Model(lw.lower(_resnet_like(np.random.default_rng(seed), **kw), "fc", **lower_kw).nodes)


def _images(n=3):
    x = np.random.default_rng(7).standard_normal((n, 3, 16, 16)).astype(np.float32) * 2
    x[0, :, :4, :4] = 1e30   # extreme inputs: the quantizers' clamps
    x[1, :, 5:9, 5:9] = -1e30
    return x


def test_pass_fires_on_a_resnet18_like_stem_and_pools_codes():
    m = _model(0)
    by = {n.name: n for n in m.nodes}
    assert "pool.quant" not in by                                        # folded into the stem's epilogue
    assert by["stem"].attrs["requant"] == {"bits": 2, "step": 0.5, "signed": False}
    assert by["pool"].inputs == ["stem"] and by["b.conv1"].inputs == ["pool"]
    x = _images()
    y = m(x)
    for reference in (False, True):
        pooled = m.trace(x[:1], reference)["pool"]
        assert pooled.dtype == np.uint8 and pooled.shape == (1, 4, 4, 32)   # codes, not float32
        assert 0 < len(np.unique(pooled)) <= 4                              # the 2-bit grid's codes
    np.testing.assert_array_equal(y, m.run_reference(x))
    assert lio.from_bytes(lio.to_bytes(m))(x).tobytes() == y.tobytes()   # saved and loaded, the same graph


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("stem_scale", [0.05, 50.0])
def test_pass_changes_no_value(seed, stem_scale):
    x = _images()
    # without the epilogue fold the pass only reorders quantize and pool: byte-identical always
    on = _model(seed, stem_scale=stem_scale, requant_in_epilogue=False)
    off = _model(seed, stem_scale=stem_scale, requant_in_epilogue=False, pool_codes=False)
    assert [n.op for n in on.nodes].index("maxpool") > [n.op for n in on.nodes].index("quantize", 1)
    assert on(x).tobytes() == off(x).tobytes() == on.run_reference(x).tobytes() == off.run_reference(x).tobytes()
    # the default (the moved quantizer folds into the stem's epilogue): the same bytes here too
    on, off = _model(seed, stem_scale=stem_scale), _model(seed, stem_scale=stem_scale, pool_codes=False)
    assert [n.op for n in off.nodes].count("quantize") == [n.op for n in on.nodes].count("quantize") + 1
    assert on(x).tobytes() == off(x).tobytes()
    assert on.run_reference(x).tobytes() == off.run_reference(x).tobytes()


def test_pass_keeps_a_float_shortcut_pool():
    # lowbit.qat's ResNet-18: the pool's float output is also the first block's residual
    m = _model(0, shortcut="float")
    by = {n.name: n for n in m.nodes}
    assert "pool.quant" in by and by["stem"].attrs["requant"] is None and by["pool"].inputs == ["stem"]


def _stem_graph(case):
    rng = np.random.default_rng(0)
    nodes = _resnet_like(rng)
    by = {n.name: n for n in nodes}
    out = "fc"
    if case == "keep":
        by["pool.quant"].attrs["keep"] = True
    elif case == "binary":
        by["pool.quant"].attrs.update(bits=1, qn=-1, qp=1, binary=True, levels=[-1, 1])
    elif case == "pre_step":
        by["pool.quant"].attrs.update(pre_step=0.125, pre_div=2.0)
    elif case == "residual":
        by["stem"].attrs["residual"] = True
        by["stem"].inputs.append("x")
    elif case == "layer_read_twice":
        nodes.append(Node("other", "add", ["relu", "relu"], {}))
        nodes.append(Node("fc_and_other", "add", ["fc", "other"], {}))   # keeps "other" alive (not run)
        out = "fc_and_other"
    elif case == "two_pool_readers":
        nodes.append(Node("other", "add", ["pool", "pool"], {}))
        nodes.append(Node("fc_and_other", "add", ["fc", "other"], {}))
        out = "fc_and_other"
    elif case == "pool_is_output":
        out = "pool"
    elif case == "not_a_layer":
        by["pool"].inputs = ["x"]
    elif case == "narrow_grid":
        by["pool.quant"].attrs.update(qn=1, levels=[1, 2, 3])
    return lw.Graph(nodes, out)


@pytest.mark.parametrize("case", ["keep", "binary", "pre_step", "residual", "layer_read_twice", "two_pool_readers",
                                  "pool_is_output", "not_a_layer", "narrow_grid"])
def test_pass_does_not_fire(case):
    g = _stem_graph(case)
    for run_pass in (lw.remove_identities, lw.fold_affines, lw.fuse_residuals, lw.fold_clamps, lw.remove_dead):
        run_pass(g)
    before = [(n.name, list(n.inputs)) for n in g.nodes]
    lw.requant_before_maxpool(g)
    assert [(n.name, list(n.inputs)) for n in g.nodes] == before


def test_executor_pools_codes_with_the_scalar_rule_under_a_forced_scalar_tier():
    m = _model(1)
    x = _images()
    want = m(x)
    with lowbit.use(isa="scalar"):
        assert m(x).tobytes() == want.tobytes()


# ---- the model input's quantizer: three channel planes interleaved into NHWC codes ----------------

@pytest.mark.parametrize("w", [1, 15, 16, 17, 33, 224, 1400])
def test_rgb_input_quantizer_interleave_matches_numpy(rng, w):
    x = (rng.standard_normal((2, 3, 3, w)) * 40).astype(np.float32)
    x[0, 0, 0, 0], x[1, 2, 2, -1] = np.nan, -np.inf   # codes 0 and the lowest, at the row ends
    attrs = {"step": 0.25, "qn": -128, "qp": 127}
    want = rt.quantize(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), attrs)
    got = _core.quantize_nchw_to_nhwc(x, 0.25, -128, 127, False, None, None)
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("batch", [1, 3])
def test_executor_input_quantizer_scalar_and_simd_agree(batch):
    # the native plan's input quantizer under a forced scalar tier runs the scalar interleave
    m = _model(2)
    x = np.random.default_rng(3).standard_normal((batch, 3, 16, 16)).astype(np.float32) * 4
    with lowbit.use(isa="scalar"):
        scalar = m.trace(x)["x.quant"], m(x)
    assert m.trace(x)["x.quant"].tobytes() == scalar[0].tobytes() and m(x).tobytes() == scalar[1].tobytes()


# ---- the pass on a converted PyTorch QAT model (lowbit.convert) ------------------------------------

def test_pass_on_a_converted_vgg_style_model(monkeypatch):
    torch = pytest.importorskip("torch")
    from lowbit import qat  # imports torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.bn1 = nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32)
            self.pool = nn.MaxPool2d(3, 2, 1)
            self.c2, self.bn2 = nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = self.pool(torch.relu(self.bn1(self.c1(x))))
            x = torch.relu(self.bn2(self.c2(x)))
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    q = qat.prepare(Net(), 2, 2, first_last_bits=8)
    q.train()
    with torch.no_grad():
        q(torch.randn(8, 3, 16, 16))
    q.eval()
    x = torch.randn(4, 3, 16, 16) * 2
    m = lowbit.convert(q, x[:1])
    c1, pool = m.node("c1"), next(n for n in m.nodes if n.op == "maxpool")
    assert c1.attrs["requant"] is not None and pool.inputs == ["c1"]          # the pass fired: codes pooled
    assert m.trace(x.numpy()[:1])[pool.name].dtype == np.uint8
    monkeypatch.setattr(lw, "requant_before_maxpool", lambda g: None)         # the same conversion without it
    off = lowbit.convert(q, x[:1])
    assert off.node("c1").attrs["requant"] is None
    y = m(x)
    assert y.tobytes() == off(x).tobytes()
    np.testing.assert_array_equal(y, m.run_reference(x.numpy()))
    with torch.no_grad():
        assert np.array_equal(y.argmax(1), q(x).numpy().argmax(1))
