"""The native whole-graph executor (lowbit.executor, docs/runtime.md): every
model runs bit-identically natively and on the NumPy reference, node by node
(Model.trace) and end to end, under every dispatch setting; a node it cannot
plan is refused with a ValueError that names it."""
import threading

import numpy as np
import pytest

import lowbit
from lowbit import _dispatch
from lowbit import executor as lbx
from lowbit.runtime import Model, Node
from conftest import available_kernels
from numpy_models import images, small_cnn


def _same(a, b, what=""):
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape, what
    assert np.array_equal(a, b, equal_nan=True), what
    assert a.tobytes() == b.tobytes(), what


def same_traces(m, x):
    """Every node's value of the native trace equals the reference trace's, byte for byte."""
    native, ref = m.trace(x), m.trace(x, reference=True)
    assert list(native) == list(ref) == [n.name for n in m.nodes]
    for name, v in ref.items():
        assert native[name].dtype == v.dtype and native[name].shape == v.shape, name
        assert native[name].tobytes() == np.ascontiguousarray(v).tobytes(), name


def check(m, x, batch_size=256, **kw):
    """Native and reference agree byte for byte, on the output and on every node (the
    trace of the first batch); returns the output."""
    ref = m.run(x, batch_size=batch_size, reference=True, **kw)
    native = m.run(x, batch_size=batch_size, **kw)  # last: the kernels the nodes report
    _same(native, ref, "native vs reference")
    if len(x):
        same_traces(m, np.asarray(x)[:batch_size])
        _same(m.run(x, batch_size=batch_size, **kw), native, "after the trace")
    return native


# ---------------------------------------------------------------------------------------------
# A NumPy-built graph with every native op

def _q(name, src, bits, step, signed=False, pre=None, binary=False):
    if binary:
        a = {"bits": 1, "signed": True, "binary": True, "qn": -1, "qp": 0, "step": step, "levels": [-1, 1]}
    else:
        qn = -(1 << (bits - 1)) if signed else 0
        a = {"bits": bits, "signed": signed, "binary": False, "qn": qn, "qp": qn + (1 << bits) - 1, "step": step,
             "levels": list(range(qn, qn + (1 << bits)))}
    if pre is not None:
        a["pre_step"], a["pre_div"] = pre
    return Node(name, "quantize", [src], a)


def _layer(rng, name, op, inputs, shape, w_bits, a_levels, requant=None, clamp=(0.0, None), **conv):
    cout = shape[0]
    attrs = {"w_bits": w_bits, "a_bits": int(np.log2(len(a_levels))),
             "w_codebook": list(range(-(1 << (w_bits - 1)), 1 << (w_bits - 1))), "a_codebook": list(a_levels),
             "clamp": list(clamp), "requant": requant, "residual": len(inputs) > 1, "bn": False}
    attrs.update(conv)
    arrays = {"w_codes": rng.integers(0, 1 << w_bits, shape, dtype=np.uint8),
              "scale": rng.uniform(0.005, 0.05, cout).astype(np.float32),
              "bias": rng.uniform(-0.5, 0.5, cout).astype(np.float32)}
    return Node(name, op, inputs, attrs, arrays)


def zoo(seed=0, w_bits=2, a_bits=2, signed=False, count_include_pad=True, out_size=(2, 3), trunc=False,
        width=16, size=10):
    """input -> quantize (NCHW fused) -> conv 3x3 (codes) -> depthwise 3x3 (float) -> maxpool ->
    quantize -> grouped 3x3 + residual -> affine -> clamp -> avgpool -> quantize (Trunc form
    when `trunc`) -> 1x1 conv (codes) -> { dequantize -> adaptive avgpool -> flatten (float) ->
    quantize -> linear (codes) -> linear } + { flatten (codes) -> linear } -> add."""
    rng = np.random.default_rng(seed)
    qn = -(1 << (a_bits - 1)) if signed else 0
    lv = list(range(qn, qn + (1 << a_bits)))
    rq = {"bits": a_bits, "step": 0.5, "signed": signed}
    c3 = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}
    c1 = dict(c3, padding=[0, 0])
    w, w2 = width, width // 2
    oh = size // 2 + 1  # after the padded avgpool
    nodes = [
        Node("input", "input", [], {"channels": 3, "height": size, "width": size, "spatial_fixed": True}),
        _q("q0", "input", a_bits, 0.25, signed),
        _layer(rng, "conv1", "conv", ["q0"], (w, 3, 3, 3), w_bits, lv, requant=rq, **c3),
        _layer(rng, "dw", "conv", ["conv1"], (w, 1, 3, 3), w_bits, lv, **dict(c3, groups=w)),
        Node("mp", "maxpool", ["dw"], {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1], "dilation": [1, 1]}),
        _q("qa", "mp", a_bits, 0.3, signed),
        _layer(rng, "grouped", "conv", ["qa", "mp"], (w, w // 4, 3, 3), w_bits, lv, clamp=(None, None),
               **dict(c3, groups=4)),
        Node("bn", "affine", ["grouped"], {}, {"scale": rng.uniform(0.5, 2, w).astype(np.float32),
                                               "bias": rng.uniform(-0.5, 0.5, w).astype(np.float32)}),
        Node("clip", "clamp", ["bn"], {"clamp": [-1.0, 2.0]}),
        Node("ap", "avgpool", ["clip"], {"kernel": [2, 2], "stride": [1, 1], "padding": [1, 1],
                                         "count_include_pad": count_include_pad}),
        _q("qb", "ap", a_bits, 1.0 if trunc else 0.2, signed, pre=(0.05, 4.0) if trunc else None),
        _layer(rng, "pw", "conv", ["qb"], (w2, w, 1, 1), w_bits, lv, requant=rq, **c1),
        Node("deq", "dequantize", ["pw"]),
        Node("aap", "adaptive_avgpool", ["deq"], {"output_size": list(out_size)}),
        Node("flat", "flatten", ["aap"]),
        _q("qc", "flat", a_bits, 0.4, signed),
        _layer(rng, "fc1", "linear", ["qc"], (12, w2 * out_size[0] * out_size[1]), w_bits, lv, requant=rq),
        _layer(rng, "fc2", "linear", ["fc1"], (10, 12), w_bits, lv, clamp=(None, None)),
        Node("flat_codes", "flatten", ["pw"]),
        _layer(rng, "fc3", "linear", ["flat_codes"], (10, w2 * oh * oh), w_bits, lv, clamp=(None, None)),
        Node("sum", "add", ["fc2", "fc3"]),
    ]
    return Model(nodes, {"name": "executor zoo"})


def _images(n, size=10, seed=1):
    return np.random.default_rng(seed).normal(0, 1, (n, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("bits", [(2, 2), (1, 2), (2, 1), (3, 3), (4, 4), (2, 4), (8, 8), (4, 8)])
@pytest.mark.parametrize("signed", [False, True])
def test_zoo_bit_identical(bits, signed):
    w_bits, a_bits = bits
    if signed and a_bits == 1:
        pytest.skip("signed 1-bit requantization is not a uniform grid")
    m = zoo(w_bits=w_bits, a_bits=a_bits, signed=signed)
    for n in (1, 2, 5):
        check(m, _images(n))


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("out_size", [(1, 1), (2, 3), (3, 2)])
@pytest.mark.parametrize("trunc", [False, True])
def test_zoo_pools_and_trunc(count_include_pad, out_size, trunc):
    m = zoo(seed=3, count_include_pad=count_include_pad, out_size=out_size, trunc=trunc)
    check(m, _images(3, seed=4))


def test_batch_chunks_and_sizes():
    m = zoo(seed=5)
    x = _images(5, seed=6)
    whole = check(m, x)
    _same(check(m, x, batch_size=2), whole)
    for i in range(5):
        _same(m.run(x[i:i + 1]), whole[i:i + 1])
    cache = m._memo["native_plans"]
    assert {k[0][0] for k in cache} >= {1, 2, 5}  # one plan per batch size


def test_numpy_models():
    for wa in [(2, 2), (1, 1), (4, 4), (8, 8), (3, 2)]:
        m = small_cnn(seed=sum(wa), w_bits=wa[0], a_bits=wa[1])
        for n in (1, 2, 5):
            check(m, images(n, n))
        check(m, images(7, 5, size=17))  # spatial size free: another plan
        check(m, images(5, 5), batch_size=2)


@pytest.mark.parametrize("isa", _dispatch.supported_tiers())
def test_every_tier_cap(isa):
    m = zoo(seed=7, w_bits=2, a_bits=2)
    m8 = zoo(seed=8, w_bits=8, a_bits=8)
    x = _images(2, seed=8)
    with lowbit.use(isa=isa):
        check(m, x)
        check(m8, x)
        m.run(x)
        kernels = [n.kernel for n in m.nodes if n.op in ("conv", "linear")]
    assert all(_dispatch.tier_rank(k.rsplit("__", 1)[1]) <= _dispatch.tier_rank(isa) for k in kernels), kernels


@pytest.mark.parametrize("bits", [(2, 2), (4, 4), (1, 1), (8, 8)])
def test_every_forced_kernel(bits):
    """Each registry kernel that can compute the layers; grouped layers then run group by group."""
    m = small_cnn(seed=9, w_bits=bits[0], a_bits=bits[1])
    z = zoo(seed=9, w_bits=bits[0], a_bits=bits[1])
    x, xz = images(3, 3), _images(3, seed=9)
    ran = 0
    want = {id(m): m.run_reference(x), id(z): z.run_reference(xz)}
    for k in available_kernels():
        for model, xin in ((m, x), (z, xz)):
            with lowbit.use(kernel=k["name"]):
                try:
                    got = model.run(xin)
                except (ValueError, NotImplementedError, RuntimeError):
                    continue  # this kernel cannot compute these layers (the plan builder says why)
                _same(got, want[id(model)], k["name"])
                assert {n.kernel for n in model.nodes if n.op == "linear"} == {k["name"]}
                ran += 1
    assert ran >= 1


@pytest.mark.parametrize("strategy", ["fastest", "dotgemm", "dot8", "grouplut", "lutgemm"])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits", [2, 8])
def test_strategies(strategy, signed, bits):
    m = zoo(seed=10, w_bits=bits, a_bits=bits, signed=signed)
    with lowbit.use(strategy=strategy):
        try:
            got = m.run(_images(2))
        except (ValueError, NotImplementedError):
            pytest.skip(f"{strategy} cannot compute W{bits}A{bits} here")
        _same(got, m.run_reference(_images(2)))


def test_autotune_on(tmp_path, monkeypatch):
    from lowbit import autotune

    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path))
    autotune.clear_memory()
    try:
        m = zoo(seed=11, w_bits=2, a_bits=2)
        x = _images(4, seed=11)
        with lowbit.use(autotune=True):
            _same(m.run(x), m.run_reference(x))
            tuned = {n.name: n.kernel for n in m.nodes if n.kernel}
            same_traces(m, x)  # the trace plan takes the same (tuned) kernels
            assert tuned == {n.name: n.kernel for n in m.nodes if n.kernel}
        _same(m.run(x), m.run_reference(x))
    finally:
        autotune.clear_memory()


def test_kernels_and_shapes_reported():
    m = zoo(seed=12)
    x = _images(2)
    m.run(x)
    trace = m.trace(x)
    assert [n.out_shape for n in m.nodes] == [trace[n.name].shape for n in m.nodes]
    layers = [n for n in m.nodes if n.op in ("conv", "linear")]
    names = {k["name"] for k in lowbit.kernels() + lowbit.dwconv_kernels()}
    assert all(n.kernel in names for n in layers), [n.kernel for n in layers]
    assert lowbit.last_kernel() == layers[-1].kernel
    text = m.summary(print_fn=None)
    assert all(n.kernel[:26] in text for n in layers)


def test_inputs_non_contiguous_and_torch():
    m = zoo(seed=13)
    x = _images(3, seed=13)
    want = m.run_reference(x)
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # same values, strided
    assert not xt.flags.c_contiguous
    _same(m.run(xt), want)
    _same(m.run(x.astype(np.float64)), want)
    torch = pytest.importorskip("torch")
    _same(m.run(torch.from_numpy(x)), want)


def test_two_threads_one_model():
    m = zoo(seed=14)
    xs = [_images(3, seed=s) for s in (1, 2)]
    want = [m.run_reference(x) for x in xs]
    errors, barrier = [], threading.Barrier(2)

    def worker(i):
        try:
            barrier.wait()
            for _ in range(30):
                _same(m.run(xs[i]), want[i])
        except Exception as exc:  # reported on the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_profile_is_per_node():
    m = zoo(seed=15)
    prof = {}
    m.run(_images(2), profile=prof)
    names = {n.name for n in m.nodes}
    assert set(prof) <= names and {"conv1", "dw", "grouped", "fc3"} <= set(prof)
    assert all(v >= 0 for v in prof.values()) and sum(prof.values()) > 0


def _with_float_layer():
    rng = np.random.default_rng(16)
    m = small_cnn(seed=16)
    nodes = list(m.nodes)
    f32 = Node("stem_f32", "conv_f32", ["input"], {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1],
                                                   "groups": 1},
               {"w": rng.normal(0, 0.3, (3, 3, 3, 3)).astype(np.float32), "bias": np.zeros(3, np.float32)})
    q0 = Node(nodes[1].name, "quantize", ["stem_f32"], nodes[1].attrs)
    return Model([nodes[0], f32, q0] + nodes[2:], m.meta)


def test_float_stem_runs_natively():
    m = _with_float_layer()
    x = images(2, 2)
    check(m, x)
    assert m.node("stem_f32").kernel.startswith("f32gemm_")


def test_a_node_the_executor_cannot_plan_is_refused():
    """A node the builder cannot lower (an add that broadcasts: neither converter makes one) is
    refused with a ValueError naming it; the reference still runs the graph."""
    rng = np.random.default_rng(16)
    c3 = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}
    nodes = [Node("input", "input", [], {"channels": 3, "height": 6, "width": 6}),
             _q("q", "input", 2, 0.25),
             _layer(rng, "c", "conv", ["q"], (4, 3, 3, 3), 2, range(4), **c3),
             Node("gp", "adaptive_avgpool", ["c"], {"output_size": [1, 1]}),
             Node("bcast", "add", ["c", "gp"]),
             Node("flat", "flatten", ["bcast"])]
    m = Model(nodes)
    x = _images(2, size=6)
    assert m.run_reference(x).shape == (2, 144)
    for _ in range(2):  # the refusal is cached with the plans, and raised again
        with pytest.raises(ValueError, match="bcast.*broadcast"):
            m.run(x)
    with pytest.raises(ValueError, match="bcast.*broadcast"):
        m.trace(x)


# ---------------------------------------------------------------------------------------------
# Float32 layers, concat and pad

def _f32(rng, name, op, src, shape, **attrs):
    if op == "conv_f32":
        attrs = dict({"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}, **attrs)
    return Node(name, op, [src] if isinstance(src, str) else src, attrs,
                {"w": rng.normal(0, 0.4, shape).astype(np.float32),
                 "bias": rng.uniform(-0.3, 0.3, shape[0]).astype(np.float32)})


def float_zoo(seed=0, width=20, size=9, a_bits=2):
    """input -> pad (float, asymmetric) -> conv_f32 3x3 s2 (cout 20: a partial panel) -> clamp ->
    { depthwise conv_f32 3x3 d2, grouped conv_f32 (4 groups), 1x1 conv_f32 } -> concat (float) ->
    quantize -> two convs on one grid -> concat (codes) -> pad (codes) -> conv -> dequantize ->
    adaptive avgpool -> flatten -> linear_f32 -> clamp -> concat (2-D float) -> linear_f32."""
    rng = np.random.default_rng(seed)
    lv = list(range(1 << a_bits))
    rq = {"bits": a_bits, "step": 0.5, "signed": False}
    c3 = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}
    w = width
    nodes = [
        Node("input", "input", [], {"channels": 3, "height": size, "width": size}),
        Node("pad0", "pad", ["input"], {"pads": [0, 1, 2, 1], "fill": "zero"}),
        _f32(rng, "stem", "conv_f32", "pad0", (w, 3, 3, 3), stride=[2, 2]),
        Node("relu", "clamp", ["stem"], {"clamp": [0.0, None]}),
        _f32(rng, "dw", "conv_f32", "relu", (w, 1, 3, 3), groups=w, padding=[2, 2], dilation=[2, 2]),
        _f32(rng, "grp", "conv_f32", "relu", (12, w // 4, 3, 3), groups=4),
        _f32(rng, "pw", "conv_f32", "relu", (5, w, 1, 1), padding=[0, 0]),
        Node("cat_f", "concat", ["dw", "grp", "pw", "relu"]),
        _q("q1", "cat_f", a_bits, 0.3),
        _layer(rng, "ca", "conv", ["q1"], (8, 2 * w + 17, 3, 3), 2, lv, requant=rq, **c3),
        _layer(rng, "cb", "conv", ["q1"], (3, 2 * w + 17, 1, 1), 2, lv, requant=rq, **dict(c3, padding=[0, 0])),
        Node("cat_c", "concat", ["ca", "cb", "ca"]),
        Node("pad_c", "pad", ["cat_c"], {"pads": [1, 0, 0, 2], "fill": "zero"}),
        _layer(rng, "cc", "conv", ["pad_c"], (16, 19, 3, 3), 2, lv, **dict(c3, stride=[2, 2])),
        Node("gap", "adaptive_avgpool", ["cc"], {"output_size": [1, 1]}),
        Node("flat", "flatten", ["gap"]),
        _f32(rng, "fc1", "linear_f32", "flat", (33, 16)),
        Node("relu2", "clamp", ["fc1"], {"clamp": [0.0, None]}),
        Node("cat2", "concat", ["relu2", "flat"]),
        _f32(rng, "fc2", "linear_f32", "cat2", (10, 49)),
    ]
    return Model(nodes, {"name": "executor float zoo"})


@pytest.mark.parametrize("size", [5, 9, 16])
def test_float_layers_concat_pad_bit_identical(size):
    m = float_zoo(seed=size, size=size)
    for n in (1, 2, 5):
        check(m, _images(n, size=size, seed=n))
    kinds = set(lbx.plan_for(m, (5, 3, size, size)).core.step_kinds)
    assert {"conv_f32", "concat", "pad"} <= kinds
    m.run(_images(1, size=size))
    rows = {r["name"]: r for r in m.layers()}
    assert rows["dw"]["kernel"].startswith("f32dwconv_") and rows["fc2"]["kernel"].startswith("f32gemm_")


@pytest.mark.parametrize("isa", _dispatch.supported_tiers())
def test_float_layers_every_tier_cap(isa):
    m = float_zoo(seed=31)
    x = _images(3, size=9, seed=31)
    want = m.run_reference(x)
    with lowbit.use(isa=isa):
        _same(check(m, x), want)  # the scalar twin and the AVX2 tier: the same bits
        names = {n.kernel for n in m.nodes if n.op in ("conv_f32", "linear_f32")}
    assert all(k.endswith("_scalar") for k in names) == (isa == "scalar"), names


def test_float_layers_threads():
    m = float_zoo(seed=32, size=16)
    x = _images(4, size=16, seed=32)
    want = check(m, x)
    try:
        for t in (1, 2, 3):
            lowbit.set_num_threads(t)
            _same(m.run(x), want, f"{t} threads")
    finally:
        lowbit.set_num_threads(0)


@pytest.mark.parametrize("cout,k,stride,pad,dil,groups", [
    (1, 1, 1, 0, 1, 1), (16, 3, 1, 1, 1, 1), (17, 3, 2, 1, 1, 1), (33, 7, 2, 3, 1, 1), (32, 3, 2, 1, 1, 1),
    (6, 3, 1, 2, 2, 3), (3, 3, 1, 1, 1, 3), (6, 3, 2, 0, 1, 3), (3, 5, 1, 2, 1, 3), (9, 1, 2, 0, 1, 1)])
def test_float_stem_edge_shapes(cout, k, stride, pad, dil, groups):
    """A float first layer (the zoo's stems: 3 input channels) of every kind: native and
    reference byte for byte, as the model output (NCHW) itself."""
    rng = np.random.default_rng(cout * 7 + k)
    nodes = [Node("input", "input", [], {"channels": 3, "height": 11, "width": 8}),
             _f32(rng, "c", "conv_f32", "input", (cout, 3 // groups, k, k), stride=[stride, stride],
                  padding=[pad, pad], dilation=[dil, dil], groups=groups)]
    m = Model(nodes)
    for n in (1, 3):
        out = check(m, _images(n, size=11, seed=n)[..., :8])
        assert out.shape[:2] == (n, cout)


def test_codes_pad_and_concat_edges():
    """pad of signed codes (the code of level 0 is not 0), a zero-width side, and a concat of the
    same value twice."""
    rng = np.random.default_rng(33)
    lv = [-2, -1, 0, 1]
    rq = {"bits": 2, "step": 0.5, "signed": True}
    c3 = {"stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "groups": 1}
    nodes = [Node("input", "input", [], {"channels": 3, "height": 6, "width": 7}),
             _q("q", "input", 2, 0.25, signed=True),
             _layer(rng, "a", "conv", ["q"], (5, 3, 1, 1), 2, lv, requant=rq, **c3),
             Node("p", "pad", ["a"], {"pads": [2, 0, 0, 3], "fill": "zero"}),
             Node("cat", "concat", ["p", "p"]),
             _layer(rng, "b", "conv", ["cat"], (4, 10, 3, 3), 2, lv, **c3),
             Node("pm", "pad", ["b"], {"pads": [1, 1, 1, 1], "fill": "-inf"}),
             Node("mp", "maxpool", ["pm"], {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0],
                                            "dilation": [1, 1]}),
             Node("flat", "flatten", ["mp"])]
    m = Model(nodes)
    check(m, _images(3, size=7, seed=3)[:, :, :6])


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("padding", [[1, 1], [0, 0]])
def test_no_zero_level_padding_correction(groups, padding):
    """A conv on {-1, +1} activations: padding reads code 0, the sums are corrected, then the epilogue."""
    rng = np.random.default_rng(17)
    conv = {"stride": [1, 1], "padding": padding, "dilation": [1, 1], "groups": 1}
    nodes = [Node("input", "input", [], {"channels": 4, "height": 6, "width": 6}),
             _q("q", "input", 1, 0.5, binary=True),
             _layer(rng, "c", "conv", ["q"], (6, 4 // groups, 3, 3), 2, [-1, 1],
                    requant={"bits": 2, "step": 0.5, "signed": False}, **dict(conv, groups=groups)),
             _layer(rng, "c2", "conv", ["c"], (4, 6, 3, 3), 2, range(4), **conv),
             Node("flat", "flatten", ["c2"])]
    m = Model(nodes)
    x = _images(3, size=6)[:, :1].repeat(4, axis=1) + _images(3, size=6, seed=2)[:, :1].repeat(4, axis=1)
    check(m, x)
    with lowbit.use(strategy="dotgemm"):  # grouped layers group by group
        check(m, x)


def test_input_errors():
    m = zoo(seed=19)
    with pytest.raises(ValueError, match="channels"):
        m.run(np.zeros((1, 4, 10, 10), np.float32))
    with pytest.raises(ValueError, match="finite"):
        m.run(np.full((1, 3, 10, 10), np.nan, np.float32))
    assert m.run(np.zeros((0, 3, 10, 10), np.float32)).shape == (0, 10)


def test_plan_arena_reuses_memory():
    m = zoo(seed=20)
    m.run(_images(4))
    plan = lbx.plan_for(m, (4, 3, 10, 10))
    assert 0 < plan.core.arena_bytes < plan.core.buffer_bytes


def test_trace_plan_keeps_every_buffer_and_checks_keep():
    """The trace plan: the same steps as the run plan, no arena reuse (every buffer its own
    bytes); ExecutorPlan.run(keep=...) names a bad buffer id, and copies only unprofiled."""
    m = zoo(seed=20)
    x = _images(4)
    m.trace(x)
    run, trace = lbx.plan_for(m, x.shape), lbx.plan_for(m, x.shape, keep_all=True)
    assert run.core.step_kinds == trace.core.step_kinds
    assert trace.core.arena_bytes >= trace.core.buffer_bytes > run.core.arena_bytes
    out = np.empty(trace.out_shape, np.float32)
    for bad in ([-1], [10 ** 6]):
        with pytest.raises(ValueError, match="keep: unknown buffer"):
            trace.core.run(x, out, False, False, bad)
    with pytest.raises(ValueError, match="keep: .*not profiled"):
        trace.core.run(x, out, True, False, [0])
    assert trace.core.run(x, out, False, False, []) == []


# ---------------------------------------------------------------------------------------------
# The models other test files build, run through a Model.run that checks every call

@pytest.fixture
def differential(monkeypatch):
    """Every default Model.run (m(x)) also runs the reference and the native trace and checks
    that they agree byte for byte, node by node; counts the checked runs."""
    counts = {"native": 0}
    run = Model.run

    def checked(self, x, batch_size=256, reference=False, profile=None, check_finite=True):
        if reference:
            return run(self, x, batch_size, reference, profile, check_finite)
        ref = run(self, x, batch_size, True, None, check_finite)
        out = run(self, x, batch_size, False, profile, check_finite)  # last: the kernels it reports
        _same(out, ref, "native vs reference")
        if check_finite and len(x):
            same_traces(self, np.asarray(x, np.float32)[:batch_size])
        counts["native"] += 1
        return out

    monkeypatch.setattr(Model, "run", checked)
    return counts


def test_qonnx_models(differential, tmp_path):
    tq = pytest.importorskip("test_qonnx")
    for case in sorted(tq.CONV_CASES):
        for requant in (True, False):
            tq.test_conv_exact(case, requant)
    tq.test_float_output_and_linear_exact()
    tq.test_signed_1bit_quant_follows_the_definition()
    for out_bits in (4, 5):
        for mode in ("FLOOR", "ROUND", "CEIL"):
            tq.test_trunc(out_bits, mode, 0.25)
    tq.test_shared_quant_output()
    tq.test_op_zoo_against_qonnx()
    tq.test_save_load_roundtrip(tmp_path)
    assert differential["native"] >= 30, differential


def test_torch_converted_models(differential):
    pytest.importorskip("torch")
    tm = pytest.importorskip("test_model")
    for w_bits, a_bits in ((2, 2), (4, 4), (1, 2)):
        for fl in (None, 8):
            tm.test_opzoo_kernel_matches_reference_bit_exactly(w_bits, a_bits, fl)
    tm.test_requant_between_layers_and_float_where_needed()
    tm.test_any_batch_size_and_torch_input()
    tm.test_float_then_quantize_variant_is_exact_too()
    td = pytest.importorskip("test_dwconv")
    td.test_depthwise_separable_model_matches_reference()
    assert differential["native"] >= 8, differential


def test_shipped_demo_model():
    torch = pytest.importorskip("torch")
    from lowbit import datasets, models

    q = models.load_fmnist("w2a2_qat")
    m = lowbit.convert(q, torch.zeros(1, 1, 28, 28))
    images_, _ = datasets.load_fashion_mnist("test")
    x = datasets.normalize(images_[:70])
    for n in (1, 2, 5):
        check(m, x[:n])
    _same(m.run(x, batch_size=64), m.run(x, batch_size=64, reference=True))


@pytest.mark.parametrize("requant", [True, False])
def test_outputs_of_codes_and_of_a_kept_buffer(requant):
    """A model ending in 2-D codes (dequantized into the output) or in a flatten that keeps
    its (B, F) input's buffer (copied into the output)."""
    rng = np.random.default_rng(21)
    conv = {"stride": [2, 2], "padding": [1, 1], "dilation": [1, 1], "groups": 1}
    rq = {"bits": 2, "step": 0.5, "signed": False} if requant else None
    nodes = [Node("input", "input", [], {"channels": 3, "height": 8, "width": 8}),
             _q("q", "input", 2, 0.25),
             _layer(rng, "c", "conv", ["q"], (4, 3, 3, 3), 2, range(4), requant={"bits": 2, "step": 0.5,
                                                                                 "signed": False}, **conv),
             Node("f", "flatten", ["c"]),
             _layer(rng, "fc", "linear", ["f"], (6, 64), 2, range(4), requant=rq),
             Node("f2", "flatten", ["fc"])]
    m = Model(nodes)
    out = check(m, _images(3, size=8))
    assert out.shape == (3, 6)


# ---------------------------------------------------------------------------------------------
# The dot families' im2col convolutions gather packed levels directly (docs/runtime.md)

def _stem(seed, kernel, stride, padding, dilation, signed, cin=3, size=11):
    rng = np.random.default_rng(seed)
    qn = -128 if signed else 0
    lv = list(range(qn, qn + 256))
    conv = {"stride": list(stride), "padding": list(padding), "dilation": list(dilation), "groups": 1}
    nodes = [
        Node("input", "input", [], {"channels": cin, "height": size, "width": size, "spatial_fixed": False}),
        _q("q0", "input", 8, 0.02, signed),
        _layer(rng, "stem", "conv", ["q0"], (20, cin, *kernel), 8, lv, clamp=(None, None), **conv),
    ]
    return Model(nodes, {"name": "stem"})


@pytest.mark.parametrize("geometry", [((3, 3), (1, 1), (1, 1), (1, 1)), ((7, 7), (2, 2), (3, 3), (1, 1)),
                                      ((3, 5), (2, 1), (0, 2), (1, 1)), ((3, 3), (1, 2), (2, 1), (2, 2)),
                                      ((2, 2), (1, 1), (0, 0), (1, 1))])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("cin", [1, 3, 5])
def test_dot_family_im2col_levels(geometry, signed, cin):
    kernel, stride, padding, dilation = geometry
    m = _stem(sum(kernel) + cin, kernel, stride, padding, dilation, signed, cin=cin)
    x = np.random.default_rng(cin).normal(0, 1.5, (2, cin, 11, 11)).astype(np.float32)
    names = [k["name"] for k in available_kernels() if k["name"].startswith(("dot8", "dotgemm"))]
    ran = set()
    for name in names:
        with lowbit.use(kernel=name):
            try:
                m.run(x)
            except ValueError:
                continue  # this kernel cannot compute 8-bit layers exactly (the plan builder says why)
            ran.add(name.split("_")[0])
            check(m, x)
            check(m, x[:1, :, :9, :10])
            m.run(x)
            assert m.nodes[-1].kernel == name
    assert ran == {"dot8", "dotgemm"}, ran


def test_dot_family_im2col_levels_threads():
    """The GEMM's tasks gather their own rows: the same bytes at any thread count."""
    m = _stem(11, (7, 7), (2, 2), (3, 3), (1, 1), True, cin=3, size=64)
    x = np.random.default_rng(2).normal(0, 1.5, (2, 3, 64, 64)).astype(np.float32)
    before = lowbit.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 3):
            lowbit.set_num_threads(threads)
            runs.append(check(m, x))
    finally:
        lowbit.set_num_threads(before)
    for other in runs[1:]:
        _same(other, runs[0])


# ---------------------------------------------------------------------------------------------
# A layer's epilogue writing a quantize node's codes too (attrs['quantize_output'])

def _dual_blocks(seed, cout, groups, binary_input):
    """ResNet-like: every layer's float output is read by a quantize node and by a later residual
    (or add), and names that quantize node in ``quantize_output``: a padded 3x3 conv (on {-1, +1}
    codes when ``binary_input``: the padding-correction path), a grouped 3x3 conv + residual, a
    depthwise 3x3 + residual, a linear layer read by a quantizer and an add."""
    rng = np.random.default_rng(seed)
    c3 = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}
    lv = list(range(4))
    q0 = _q("q0", "input", 1, 0.5, binary=True) if binary_input else _q("q0", "input", 2, 0.3)
    nodes = [Node("input", "input", [], {"channels": 4, "height": 7, "width": 7}), q0,
             _layer(rng, "c1", "conv", ["q0"], (cout, 4, 3, 3), 2, [-1, 1] if binary_input else lv, **c3),
             _q("q1", "c1", 2, 0.3),
             _layer(rng, "c2", "conv", ["q1", "c1"], (cout, cout // groups, 3, 3), 2, lv, **dict(c3, groups=groups)),
             _q("q2", "c2", 2, 0.25),
             _layer(rng, "c3", "conv", ["q2", "c2"], (cout, 1, 3, 3), 2, lv, clamp=(None, None),
                    **dict(c3, groups=cout)),
             _q("q3", "c3", 2, 0.2, signed=True),
             Node("flat", "flatten", ["q3"]),
             _layer(rng, "l1", "linear", ["flat"], (11, cout * 49), 2, range(-2, 2), clamp=(None, None)),
             _q("q4", "l1", 4, 0.1, signed=True),
             _layer(rng, "l2", "linear", ["q4"], (11, 11), 2, range(-8, 8), clamp=(None, None)),
             Node("sum", "add", ["l1", "l2"])]
    for n in nodes:
        if n.name in ("c1", "c2", "c3", "l1"):
            n.attrs["quantize_output"] = "q" + str(1 + ("c1", "c2", "c3", "l1").index(n.name))
    return Model(nodes)


@pytest.mark.parametrize("cout,groups", [(13, 1), (16, 2), (24, 4)])
@pytest.mark.parametrize("binary_input", [False, True])
@pytest.mark.parametrize("isa", ["scalar", None])
def test_quantize_output_bit_identical(cout, groups, binary_input, isa):
    """Native (the epilogue writes the codes, no quantize step) and reference give the same bytes, and the same as the native run without the attribute (the quantize steps)."""
    m = _dual_blocks(3, cout, groups, binary_input)
    x = _images(3, size=7, seed=5)[:, :3].repeat(2, axis=1)[:, :4] * 2
    with lowbit.use(isa=isa):
        on = check(m, x)
        try:
            for t in (2, 3):  # the tasks' tiles write their rows' codes
                lowbit.set_num_threads(t)
                _same(m.run(x), on, f"{t} threads")
        finally:
            lowbit.set_num_threads(0)
        steps = lbx.plan_for(m, (3, 4, 7, 7)).step_names
        assert not {"q1", "q2", "q3", "q4"} & set(steps) and "q0" in steps
        for n in m.nodes:
            n.attrs.pop("quantize_output", None)
        m.__dict__.pop("_memo", None)
        off = m.run(x)
        assert {"q1", "q2", "q3", "q4"} <= set(lbx.plan_for(m, (3, 4, 7, 7)).step_names)
    _same(on, off, "quantize_output on vs off")


def test_quantize_output_must_name_a_plain_quantizer_of_the_layer():
    nodes = _dual_blocks(4, 8, 1, False).nodes
    for bad in ("q2", "nowhere", "flat", "q0"):
        nodes[2].attrs["quantize_output"] = bad
        with pytest.raises(ValueError, match="quantize_output"):
            Model(nodes)
    nodes[2].attrs["quantize_output"] = 3
    with pytest.raises(ValueError, match="quantize_output"):
        Model(nodes)


@pytest.mark.parametrize("bits", [(2, 2, None), (2, 2, 8), (4, 3, None)])
def test_quantize_output_on_a_converted_resnet(bits):
    """lowbit.qat's ResNet converted: each block output read by a residual and quantizers has its
    first quantizer written by the block's last layer; the bytes are those of the quantize steps."""
    torch = pytest.importorskip("torch")
    from lowbit import models, qat

    w_bits, a_bits, first_last = bits
    torch.manual_seed(0)
    q = qat.prepare(models.fmnist_resnet(8), w_bits, a_bits, first_last_bits=first_last)
    q.train()
    with torch.no_grad():
        q(torch.randn(8, 1, 28, 28))
        q.layer2.downsample[0].act_quant.step.mul_(1.1)  # two quantizers read layer1's output (as training does)
    q.eval()
    m = lowbit.convert(q, torch.zeros(2, 1, 28, 28))
    marked = {n.name: n.attrs["quantize_output"] for n in m.nodes if n.attrs.get("quantize_output")}
    assert {"stem.0", "layer1.conv2"} <= set(marked)
    assert not set(marked.values()) & set(lbx.plan_for(m, (3, 1, 28, 28)).step_names)
    x = np.random.default_rng(2).normal(size=(3, 1, 28, 28)).astype(np.float32)
    on = check(m, x)
    for name in marked:
        m.node(name).attrs["quantize_output"] = None
    m.__dict__.pop("_memo", None)
    _same(on, m.run(x), "quantize_output on vs off")
