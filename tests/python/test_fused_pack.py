"""A layer's activation packing done by the GEMM that writes its codes (docs/runtime.md, "Packing
inside the producing GEMM"): the block packer against a NumPy rule, and whole models whose plans
hand packings to their producers against the same plans with a pack step each, the Python
kernel path and the NumPy reference -- byte for byte, under every tier, forced kernel, batch and
thread count."""
import numpy as np
import pytest

import lowbit
from lowbit import _core
from lowbit import executor as lbx
from lowbit.runtime import Model, Node
from lowbit.runtime import executor as ex
from conftest import available_kernels
from test_executor import _images, _layer, _q, _same, check


def pack_rule(codes, bits, group, shift, out_bytes):
    """pack_groups' rule in NumPy: group codes a byte, LSB first, shifted, then zeros to out_bytes."""
    m, k = codes.shape
    packed = (k + group - 1) // group
    padded = np.zeros((m, packed * group), np.uint32)
    padded[:, :k] = codes
    v = (padded.reshape(m, packed, group) << (bits * np.arange(group, dtype=np.uint32))).sum(axis=2)
    out = np.zeros((m, out_bytes), np.uint8)
    out[:, :packed] = ((v << shift) & 0xFF).astype(np.uint8)
    return out


GROUPINGS = [(1, 8, 0), (2, 4, 0), (1, 4, 2), (2, 3, 0), (2, 3, 2), (1, 6, 0), (3, 2, 0), (4, 2, 0),
             (2, 2, 2), (4, 1, 0), (8, 1, 0), (1, 1, 2)]


@pytest.mark.parametrize("bits,group,shift", GROUPINGS)
@pytest.mark.parametrize("k0,k1", [(0, 5), (0, 32), (32, 64), (64, 70), (4, 37), (0, 96), (6, 110), (12, 209)])
@pytest.mark.parametrize("tier", [0, 1])
def test_pack_groups_block_matches_numpy(rng, bits, group, shift, k0, k1, tier):
    """Blocks of a wider codes matrix (rows of 211 codes; column ranges with and without vector
    tails, the last block row the matrix's last row), out_bytes below the row stride: the packed
    bytes then zeros, and the bytes after them left alone (0xAA)."""
    codes = rng.integers(0, 1 << bits, (9, 211), dtype=np.uint8)
    m0, m1 = 2, 9
    packed = (k1 - k0 + group - 1) // group
    for out_bytes in (packed, packed + 3):
        out = np.full((m1 - m0, packed + 5), 0xAA, np.uint8)
        assert _core.executor_pack_groups_block(codes, m0, m1, k0, k1, bits, group, shift, out, out_bytes, tier)
        want = pack_rule(codes[m0:m1, k0:k1], bits, group, shift, out_bytes)
        assert np.array_equal(out[:, :out_bytes], want)
        assert (out[:, out_bytes:] == 0xAA).all()


@pytest.mark.parametrize("tier", [0, 1])
def test_pack_groups_block_reports_out_of_range_codes(rng, tier):
    codes = rng.integers(0, 4, (4, 40), dtype=np.uint8)
    codes[3, 35] = 4
    out = np.zeros((4, 10), np.uint8)
    assert not _core.executor_pack_groups_block(codes, 0, 4, 0, 40, 2, 4, 0, out, 10, tier)
    assert _core.executor_pack_groups_block(codes, 0, 4, 0, 32, 2, 4, 0, out, 10, tier)  # the bad code is outside
    with pytest.raises(ValueError, match="out"):
        _core.executor_pack_groups_block(codes, 0, 4, 0, 40, 2, 4, 0, out, 11, tier)
    with pytest.raises(ValueError, match="codes"):
        _core.executor_pack_groups_block(codes, 0, 5, 0, 40, 2, 4, 0, out, 10, tier)


def chain(cin, width, seed=0, dual=True, w_bits=2, a_bits=2):
    """input -> quantize -> conv 3x3 (codes) -> conv 3x3 (float) -> quantize -> conv 3x3 stride 2
    (float) -> quantize -> conv 3x3 + residual -> quantize -> flatten -> linear; with `dual` the
    float convs write their quantizer's codes as the epilogue's second output. Each GEMM's codes
    are read by the next conv's packing."""
    rng = np.random.default_rng(seed)
    lv = list(range(1 << a_bits))
    rq = {"bits": a_bits, "step": 0.5, "signed": False}
    c3 = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}
    w = width
    nodes = [
        Node("input", "input", [], {"channels": cin, "height": 9, "width": 9, "spatial_fixed": True}),
        _q("q0", "input", a_bits, 0.25),
        _layer(rng, "c1", "conv", ["q0"], (w, cin, 3, 3), w_bits, lv, requant=rq, **c3),
        _layer(rng, "c2", "conv", ["c1"], (w, w, 3, 3), w_bits, lv, **c3),
        _q("q2", "c2", a_bits, 0.3),
        _layer(rng, "c3", "conv", ["q2"], (w, w, 3, 3), w_bits, lv, **dict(c3, stride=[2, 2])),
        _q("q3", "c3", a_bits, 0.35),
        _layer(rng, "c4", "conv", ["q3", "c3"], (w, w, 3, 3), w_bits, lv, clamp=(None, None), **c3),
        _q("q4", "c4", a_bits, 0.2),
        Node("flat", "flatten", ["q4"]),
        _layer(rng, "fc", "linear", ["flat"], (10, w * 25), w_bits, lv, clamp=(None, None)),
    ]
    if dual:
        nodes[3].attrs["quantize_output"] = "q2"
        nodes[5].attrs["quantize_output"] = "q3"
    return Model(nodes, {"name": "fused pack chain"})


def _unfused(m, x):
    """The model's native output from a plan with a pack step for every packing; checks that
    the fused plan has one pack step less for each packing its GEMMs do."""
    core = lbx.plan_for(m, x.shape).core
    fused, packs = len(core.fused_packs), core.step_kinds.count("pack")
    ex.FUSE_PACKING = False
    try:
        m.__dict__.pop("_memo", None)
        out = m.run(x)
        core = lbx.plan_for(m, x.shape).core
        assert not core.fused_packs and core.step_kinds.count("pack") == packs + fused
        return out
    finally:
        ex.FUSE_PACKING = True
        m.__dict__.pop("_memo", None)


def _fused_packs(m, shape):
    return len(lbx.plan_for(m, shape).core.fused_packs)


@pytest.mark.parametrize("width", [8, 64, 68, 132, 6, 13, 70])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("isa", [None, "scalar"])
def test_fused_packing_bit_identical(width, batch, isa):
    """Channel counts below, at and across the kernels' 64-column tiles (68, 132: a last tile of
    4 columns), and not multiples of the indirect step (6, 13, 70: im2col, nothing to fuse):
    native with fused packings == native with pack steps == reference, at 1 and 2
    threads."""
    x = _images(batch, size=9, seed=3)[:, :2] * 2
    with lowbit.use(isa=isa):
        for dual in (True, False):
            m = chain(2, width, dual=dual)
            on = check(m, x)
            if width % 4 == 0:  # the 3x3 layers run indirectly on packed codes
                assert _fused_packs(m, x.shape) >= (3 if dual else 1)
            try:
                lowbit.set_num_threads(2)
                _same(m.run(x), on, "2 threads")
            finally:
                lowbit.set_num_threads(0)
            _same(_unfused(m, x), on, "pack steps")


@pytest.mark.parametrize("bits", [(2, 2), (1, 2), (2, 1), (3, 3), (4, 4)])
def test_fused_packing_every_forced_kernel(bits):
    """Every registry kernel that can compute the layers, forced: fused where its packing allows
    (groups packings whose tiles start on a group: grouplut, lutgemm; not grouplut6's groups of
    3), else pack steps; the bytes never change."""
    w_bits, a_bits = bits
    m = chain(3, 24, w_bits=w_bits, a_bits=a_bits)
    x = _images(2, size=9, seed=4)
    ran = fused = 0
    want = m.run_reference(x)
    for k in available_kernels():
        with lowbit.use(kernel=k["name"]):
            m.__dict__.pop("_memo", None)
            try:
                on = m.run(x)
            except (ValueError, NotImplementedError, RuntimeError):
                continue  # this kernel cannot compute these layers (the plan builder says why)
            _same(on, want, k["name"])
            fused += _fused_packs(m, x.shape)
            _same(_unfused(m, x), on, f"{k['name']}: pack steps")
            ran += 1
    assert ran >= 1
    if (w_bits, a_bits) == (2, 2):
        assert fused > 0


def test_fused_packing_on_a_converted_resnet():
    """lowbit.qat's ResNet converted: every 3x3 layer reading a GEMM's codes gets them packed by
    that GEMM; the outputs are those of the plan with pack steps."""
    torch = pytest.importorskip("torch")
    from lowbit import models, qat

    torch.manual_seed(0)
    q = qat.prepare(models.fmnist_resnet(8), 2, 2, first_last_bits=8)
    q.train()
    with torch.no_grad():
        q(torch.randn(8, 1, 28, 28))
    q.eval()
    m = lowbit.convert(q, torch.zeros(2, 1, 28, 28))
    x = np.random.default_rng(0).normal(size=(3, 1, 28, 28)).astype(np.float32)
    on = check(m, x)
    core = lbx.plan_for(m, x.shape).core
    assert core.fused_packs and "pack" in core.step_kinds  # the input quantizer's codes keep their pack step
    _same(_unfused(m, x), on, "pack steps")
    for t in (2, 3):
        try:
            lowbit.set_num_threads(t)
            _same(m.run(x), on, f"{t} threads")
        finally:
            lowbit.set_num_threads(0)


def test_fused_pack_rejects_a_bad_producer():
    """ExecutorPlan.pack(..., producer): only a gemm step that writes these codes in whole rows,
    once, whose tiles start on a group and whose codes fit the bits."""
    m = chain(2, 16, dual=False)
    b = ex._Builder(m, (1, 2, 9, 9))
    for i, n in enumerate(m.nodes[:3]):  # input, q0, c1 (its gemm writes c1's codes)
        b.node(i, n)
    core, c1 = b.core, b.vals["c1"]
    gemm = core.num_steps - 1
    kinds = core.step_kinds
    assert kinds[gemm] == "gemm" and kinds[0] == "quantize"
    m_rows, k = 81, 16
    dst = core.buffer((m_rows + 1) * 16)
    args = ("groups", c1.buf, dst, m_rows, k, 2, 4, 0, 4, 1, 1, 0, None)
    with pytest.raises(ValueError, match="gemm step"):
        core.pack(2, *args, 0)  # the quantize step
    with pytest.raises(ValueError, match="producer"):
        core.pack(2, *args, 99)
    with pytest.raises(ValueError, match="whole rows"):
        core.pack(2, "groups", b.vals["q0"].buf, dst, m_rows, 2, 2, 4, 0, 4, 1, 1, 0, None, gemm)
    with pytest.raises(ValueError, match="whole rows"):
        core.pack(2, "groups", c1.buf, dst, 80, k, 2, 4, 0, 4, 1, 1, 0, None, gemm)
    with pytest.raises(ValueError, match="group"):
        core.pack(2, "groups", c1.buf, dst, m_rows, k, 1, 3, 0, 6, 1, 1, 0, None, gemm)
    with pytest.raises(ValueError, match="bits"):
        core.pack(2, "groups", c1.buf, dst, m_rows, k, 1, 8, 0, 2, 1, 1, 0, None, gemm)
    core.pack(2, *args, gemm)
    assert core.fused_packs == [gemm]
    with pytest.raises(ValueError, match="no fused pack yet"):
        core.pack(2, *args, gemm)
