"""lowbit.convert / lowbit.Model / save-load: exactness, errors, agreement with fake-quant."""
import struct
import subprocess
import zlib

import numpy as np
import pytest

from conftest import optional_import, python_command
from parity import check_torch_parity

torch = optional_import("torch")
nn = torch.nn
F = torch.nn.functional

import lowbit  # noqa: E402
from lowbit import datasets, models, qat  # noqa: E402
from lowbit.convert import ConversionError, compare  # noqa: E402
from lowbit.io import LowbitFormatError  # noqa: E402

LUT_FAMILIES = ("lutgemm", "grouplut")




class OpZoo(nn.Module):
    """Every op the converter maps, in fused and unfused positions."""

    def __init__(self, flatten="mean"):
        super().__init__()
        self.flatten_kind = flatten
        self.c1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, 1, 2, dilation=2, groups=4)    # grouped, dilated, bias
        self.bn2 = nn.BatchNorm2d(16)
        self.bn_free = nn.BatchNorm2d(16)                              # not after a conv -> affine node
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.dw = nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False)    # depthwise
        self.bn3 = nn.BatchNorm2d(16)
        self.c4 = nn.Conv2d(16, 24, 5, 2, 2, bias=False)
        self.c5 = nn.Conv2d(24, 24, 1, bias=False)
        self.c6 = nn.Conv2d(24, 24, 1, bias=False)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(24 * (4 if flatten == "view" else 1), 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.c1(x)))
        y = F.relu6(self.bn2(self.c2(x)))
        y = torch.relu(self.bn_free(y + x))              # add after two closed epilogues
        y = self.pool(y)
        z = torch.clamp(self.bn3(self.dw(y)), -1.0, 2.0)  # signed activations follow
        z = F.avg_pool2d(z, 2, 1, 0)
        z = self.c4(z)
        z = self.c5(z) + self.c6(z)                      # residual: c6 takes c5's output
        z = z.clamp(min=0)
        if self.flatten_kind == "view":
            z = F.adaptive_avg_pool2d(z, 2)
            z = z.view(z.size(0), -1)
        else:
            z = z.mean((2, 3))
        return self.fc(self.drop(z))


def _calibrate(model, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.3, 0.3, generator=g)
        model.train()
        model(torch.randn(*shape, generator=g))
    return model.eval()


def _prepared(net, shape, w_bits=2, a_bits=2, first_last_bits=None, seed=0):
    torch.manual_seed(seed)
    return _calibrate(qat.prepare(net, w_bits, a_bits, first_last_bits=first_last_bits), shape, seed)


def _assert_trace_equal(m, x):
    t_k, t_r = m.trace(x), m.trace(x, reference=True)
    assert t_k.keys() == t_r.keys()
    for k in t_k:
        assert t_k[k].dtype == t_r[k].dtype, k
        np.testing.assert_array_equal(t_k[k], t_r[k], err_msg=f"node {k}")


BITS = [(2, 2, None), (1, 1, None), (3, 2, None), (4, 3, None), (2, 2, 8)]


@pytest.mark.parametrize("w_bits,a_bits,fl", BITS, ids=[f"W{w}A{a}-fl{fl}" for w, a, fl in BITS])
def test_opzoo_kernel_matches_reference_bit_exactly(w_bits, a_bits, fl):
    q = _prepared(OpZoo(), (8, 3, 20, 20), w_bits, a_bits, fl)
    x = torch.randn(3, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    m = lowbit.convert(q, x)
    ops = {n.op for n in m.nodes}
    assert {"conv", "linear", "quantize", "add", "affine", "clamp", "maxpool", "avgpool",
            "adaptive_avgpool", "flatten"} <= ops
    assert any(n.attrs.get("residual") for n in m.nodes if n.op == "conv")
    _assert_trace_equal(m, x.numpy())
    with torch.no_grad():
        ref = q(x).numpy()
    y = m(x)
    assert y.dtype == np.float32 and y.shape == (3, 10)
    # fake-quant agreement: differences come only from rounding at code boundaries
    assert np.median(np.abs(y - ref)) <= 1e-3 * (np.abs(ref).max() + 1)


def test_bn_is_folded_into_the_epilogue_not_the_weights():
    q = _prepared(OpZoo(), (8, 3, 20, 20))
    m = lowbit.convert(q, torch.zeros(1, 3, 20, 20))
    n = m.node("c1")
    assert n.attrs["bn"] and n.attrs["clamp"] == [0.0, None]
    codes = q.c1.weight_quant.codes(q.c1.weight)[0].numpy()
    np.testing.assert_array_equal(n.arrays["w_codes"], codes)
    bn = q.bn1
    g = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double()
    a_step = q.c1.act_quant.step.detach().double()
    w_step = q.c1.weight_quant.step.detach().double()
    np.testing.assert_allclose(n.arrays["scale"], (a_step * w_step * g).numpy(), rtol=1e-6)
    np.testing.assert_allclose(n.arrays["bias"], (bn.bias - bn.running_mean * g).detach().numpy(), rtol=1e-5,
                               atol=1e-6)
    assert m.node("c2").attrs["clamp"] == [0.0, 6.0]
    assert m.node("dw").attrs["clamp"] == [-1.0, 2.0]


def test_requant_between_layers_and_float_where_needed():
    q = _prepared(models.fmnist_resnet(8), (8, 1, 28, 28))
    # give the two quantizers that read a block output different steps (as training does)
    with torch.no_grad():
        q.layer2.downsample[0].act_quant.step.mul_(1.1)
    m = lowbit.convert(q, torch.zeros(2, 1, 28, 28))
    node = m.node
    assert node("layer1.conv1").attrs["requant"]["bits"] == 2          # feeds conv2 only -> codes
    assert node("layer1.conv2").attrs["requant"] is None               # block output: residual + 2 quantizers
    assert node("layer1.conv2").attrs["residual"]                      # identity shortcut fused
    assert node("layer2.downsample.0").attrs["residual"]               # later conv of the pair takes it
    assert [n.op for n in m.nodes].count("quantize") == 5
    x = np.random.default_rng(0).normal(size=(4, 1, 28, 28)).astype(np.float32)
    _assert_trace_equal(m, x)


def test_any_batch_size_and_torch_input():
    q = _prepared(models.fmnist_resnet(8), (8, 1, 28, 28))
    m = lowbit.convert(q, torch.zeros(1, 1, 28, 28))
    x = np.random.default_rng(1).normal(size=(7, 1, 28, 28)).astype(np.float32)
    full = m(x)
    np.testing.assert_array_equal(m(torch.from_numpy(x)), full)
    np.testing.assert_array_equal(m(x, batch_size=3), full)
    np.testing.assert_array_equal(np.concatenate([m(x[i:i + 1]) for i in range(7)]), full)
    np.testing.assert_array_equal(m(x.astype(np.float64)), full)
    # spatial size is free for a global-pooling model
    assert not m.spatial_fixed and m(np.zeros((2, 1, 32, 36), np.float32)).shape == (2, 10)
    with pytest.raises(ValueError, match="channels"):
        m(np.zeros((1, 3, 28, 28), np.float32))
    with pytest.raises(TypeError, match="float32"):
        m(np.zeros((1, 1, 28, 28), np.int64))


def test_spatial_size_fixed_when_flattening_a_map():
    q = _prepared(OpZoo("view"), (8, 3, 20, 20))
    m = lowbit.convert(q, torch.zeros(1, 3, 20, 20))
    assert m.spatial_fixed
    _assert_trace_equal(m, np.random.default_rng(2).normal(size=(2, 3, 20, 20)).astype(np.float32))
    with pytest.raises(ValueError, match="20x20"):
        m(np.zeros((1, 3, 24, 24), np.float32))


def test_summary_reports_lut_kernels_for_low_bit_layers():
    q = _prepared(OpZoo(), (8, 3, 20, 20))
    m = lowbit.convert(q, torch.zeros(1, 3, 20, 20))
    text = m.summary(print_fn=None)
    registry = {k["name"]: k for k in lowbit.kernels() + lowbit.dwconv_kernels()}
    groups = {n.name: n.attrs.get("groups", 1) for n in m.nodes}
    layers = [r for r in m.layers() if r["op"] in ("conv", "linear")]
    assert layers
    for r in layers:
        assert r["kernel"] in registry, r          # a registry kernel, not a NumPy fallback
        # depthwise layers run a dwconv kernel, other grouped ones the native grouped dotgemm path
        want = {1: LUT_FAMILIES, 4: ("dotgemm",), 16: ("dwconv",)}[groups[r["name"]]]
        assert registry[r["kernel"]]["family"] in want, r
        assert r["kernel"] in text and r["bits"] in text
    assert str(m.nbytes) in text


def test_save_load_roundtrip_bit_exact(tmp_path):
    q = _prepared(OpZoo(), (8, 3, 20, 20), 3, 2)
    x = np.random.default_rng(3).normal(size=(4, 3, 20, 20)).astype(np.float32)
    m = lowbit.convert(q, x)
    path = tmp_path / "m.lowbit"
    m.save(path)
    m2 = lowbit.load(path)
    assert m2.graph() == m.graph()
    np.testing.assert_array_equal(m2(x), m(x))
    np.testing.assert_array_equal(m2.run_reference(x), m(x))
    for a, b in zip(m.nodes, m2.nodes):
        assert a.arrays.keys() == b.arrays.keys()
        for k in a.arrays:
            np.testing.assert_array_equal(a.arrays[k], b.arrays[k])
    # the runtime never needs torch
    code = ("import sys, numpy as np, lowbit; m = lowbit.load(sys.argv[1]); "
            "y = m(np.load(sys.argv[2])); np.save(sys.argv[3], y); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    np.save(tmp_path / "x.npy", x)
    subprocess.run([*python_command(), "-c", code, str(path), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                   check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), m(x))


@pytest.fixture(scope="module")
def saved_bytes():
    q = _prepared(models.fmnist_resnet(8), (8, 1, 28, 28))
    return lowbit.io.to_bytes(lowbit.convert(q, torch.zeros(1, 1, 28, 28)))


def _write(tmp_path, data):
    p = tmp_path / "f.lowbit"
    p.write_bytes(data)
    return p


def test_load_rejects_truncated(tmp_path, saved_bytes):
    for cut in (len(saved_bytes) - 1, len(saved_bytes) // 2, 30, 20, 5, 0):
        with pytest.raises(LowbitFormatError, match="truncated|bad magic"):
            lowbit.load(_write(tmp_path, saved_bytes[:cut]))


def test_load_rejects_corrupted(tmp_path, saved_bytes):
    for pos in (40, len(saved_bytes) // 2, len(saved_bytes) - 10, len(saved_bytes) - 2):
        bad = bytearray(saved_bytes)
        bad[pos] ^= 0x10
        with pytest.raises(LowbitFormatError, match="checksum|corrupted"):
            lowbit.load(_write(tmp_path, bytes(bad)))
    with pytest.raises(LowbitFormatError, match="unexpected bytes"):
        lowbit.load(_write(tmp_path, saved_bytes + b"\0"))


def test_load_rejects_foreign_and_other_versions(tmp_path, saved_bytes):
    p = tmp_path / "ckpt.pt"
    torch.save({"w": torch.zeros(3)}, p)
    with pytest.raises(LowbitFormatError, match="not a lowbit model file.*PyTorch"):
        lowbit.load(p)
    with pytest.raises(LowbitFormatError, match="not a lowbit model file"):
        lowbit.load(_write(tmp_path, b"hello world, this is not a model" * 4))
    pw = lowbit.pack_weights(np.zeros((2, 8), np.uint8), 2).to_bytes()
    with pytest.raises(LowbitFormatError, match="PackedWeights"):
        lowbit.load(_write(tmp_path, pw))
    body = bytearray(saved_bytes[:-4])
    struct.pack_into("<I", body, 8, 2)
    other = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))
    with pytest.raises(LowbitFormatError, match="version 2 is not supported"):
        lowbit.load(_write(tmp_path, other))
    assert isinstance(LowbitFormatError("x"), ValueError)


def test_unsupported_layers_are_listed_by_name():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 4, 3)
            self.act = nn.GELU()
            self.plain = nn.Conv2d(4, 4, 1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = self.act(self.c(x))
            x = torch.sigmoid(x) * 2
            x = self.plain(x)
            return self.fc(x.mean((2, 3)))

    q = qat.prepare(Bad(), 2, 2, first_last_bits=None)
    q.plain = nn.Conv2d(4, 4, 1)  # left unquantized
    _calibrate(q, (2, 1, 8, 8))
    with pytest.raises(ConversionError) as ei:
        lowbit.convert(q, torch.zeros(1, 1, 8, 8))
    msg = str(ei.value)
    assert "'act' (GELU)" in msg
    assert "sigmoid" in msg
    assert "'plain' (Conv2d (not quantized" in msg
    assert "operator.mul" in msg or "mul" in msg
    assert isinstance(ei.value, NotImplementedError)


class _ClampInverted(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = torch.clamp(self.c1(x), 1.5, -0.5)        # epilogue clamp: min > max
        z = self.c2(y) + self.c2(y).clamp(2.0, 0.25)  # clamp node (its input has two readers)
        return self.fc(z.mean((2, 3)))


def test_clamp_with_min_above_max_sets_every_element_to_max():
    # torch.clamp(x, lo, hi) with lo > hi is hi everywhere; it used to convert to an invalid
    # clamp [lo, hi] (ValueError from the Model's validation)
    q = _prepared(_ClampInverted(), (8, 2, 6, 6), 3, 3)
    x = np.random.default_rng(0).normal(size=(6, 2, 6, 6)).astype(np.float32)
    m = lowbit.convert(q, x)
    assert m.node("c1").attrs["clamp"] == [-0.5, -0.5]
    assert [0.25, 0.25] in [n.attrs.get("clamp") for n in m.nodes]
    assert check_torch_parity(q, m, x)["tie_samples"] == []


class _InplaceReadAgain(nn.Module):
    """``y += z`` / ``relu_`` change memory that another name of the same tensor reads later."""

    def __init__(self, form):
        super().__init__()
        self.form = form
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.c1(x)
        saved = [y]                # a second name of y's tensor
        if self.form == "iadd":
            y += self.c2(y)
        elif self.form == "relu_":
            y = y.relu_()
        elif self.form == "module":
            y = self.relu(y)
        elif self.form == "view":
            y.flatten(1).clamp_(0.0, 1.0)   # writes y's memory through a view
        z = y + saved[0]           # torch: saved[0] is y's modified memory
        return self.fc(z.mean((2, 3)))


@pytest.mark.parametrize("form", ["iadd", "relu_", "module", "view"])
def test_inplace_op_on_a_value_read_again_is_refused(form):
    # fx gives every in-place result a new name (and recorded ``y += z`` as ``y = y + z``), so the
    # converter read the unmodified value where torch reads the modified memory: wrong outputs
    q = _prepared(_InplaceReadAgain(form), (8, 2, 6, 6))
    with pytest.raises(ConversionError, match="in-place .* reads afterwards"):
        lowbit.convert(q, torch.zeros(1, 2, 6, 6))


class _InplaceLastRead(nn.Module):
    """In-place ops where nothing reads the old value afterwards: the usual ResNet forms."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        identity = self.relu(self.c1(x))
        out = self.c2(identity)
        out += identity
        out = F.relu(out, inplace=True).clamp_(max=3.0)
        return self.fc(out.mean((2, 3)))


def test_inplace_ops_whose_input_is_not_read_again_convert_with_parity():
    q = _prepared(_InplaceLastRead(), (8, 2, 6, 6), 3, 3)
    x = np.random.default_rng(1).normal(size=(6, 2, 6, 6)).astype(np.float32)
    m = lowbit.convert(q, x)
    assert m.node("c2").attrs["residual"]
    assert check_torch_parity(q, m, x)["tie_samples"] == []


def test_non_finite_step_and_bad_example_input_are_value_errors():
    # a max pool window in the padding alone gives -inf in torch; an LSQ quantizer initialised on
    # it has step inf: a ValueError naming the quantizer (it was one blaming a BatchNorm)
    class PoolAllPadding(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 2, 1)
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(F.max_pool2d(self.c(x), 2, 2, 1, 2).mean((2, 3)))

    q = qat.prepare(PoolAllPadding(), 2, 2)
    with torch.no_grad():
        q(torch.randn(4, 1, 1, 1))
    assert not torch.isfinite(q.fc.act_quant.step)
    with pytest.raises(ValueError, match="'fc.act_quant' has a non-finite step"):
        lowbit.convert(q.eval(), torch.zeros(1, 1, 1, 1))
    with pytest.raises(ValueError, match="fails on example_input of shape \\(1, 3, 4, 4\\)"):
        lowbit.convert(q, torch.zeros(1, 3, 4, 4))


def test_view_with_a_constant_other_than_the_batch_size_is_refused():
    # x.view(4, -1) on a batch of 8 puts two samples in each row: it converted to a per-sample
    # flatten, and the model then failed at run time ("K mismatch")
    class ViewConst(nn.Module):
        def __init__(self, rows):
            super().__init__()
            self.rows = rows
            self.c = nn.Conv2d(2, 3, 3, padding=1)
            self.fc = nn.Linear(3 * 4 * 4 * 8 // rows, 2)

        def forward(self, x):
            return self.fc(self.c(x).view(self.rows, -1))

    x = torch.randn(8, 2, 4, 4)
    for rows in (8, 4):
        q = _calibrate(qat.prepare(ViewConst(rows), 2, 2), (8, 2, 4, 4))
        if rows == 8:
            assert check_torch_parity(q, lowbit.convert(q, x), x.numpy())["top1_agreement"] > 0
        else:
            with pytest.raises(ConversionError, match="Tensor.view"):
                lowbit.convert(q, x)


def test_uncalibrated_model_is_rejected():
    q = qat.prepare(models.fmnist_resnet(8), 2, 2, first_last_bits=None)
    with pytest.raises(ValueError, match="not initialised"):
        lowbit.convert(q, torch.zeros(1, 1, 28, 28))


def test_float_then_quantize_variant_is_exact_too():
    q = _prepared(models.fmnist_resnet(8), (8, 1, 28, 28))
    m = lowbit.convert(q, torch.zeros(1, 1, 28, 28), requant_in_epilogue=False)
    assert all(n.attrs.get("requant") is None for n in m.nodes if n.op == "conv")
    _assert_trace_equal(m, np.random.default_rng(4).normal(size=(2, 1, 28, 28)).astype(np.float32))


# ---- the shipped Fashion-MNIST model ------------------------------------------------------------

def _fmnist_subset(n):
    images, labels = datasets.load_fashion_mnist("test")
    return datasets.normalize(images[:n]), labels[:n]


@pytest.fixture(scope="module")
def shipped():
    q = models.load_fmnist("w2a2_qat")
    return q, lowbit.convert(q, torch.zeros(1, 1, 28, 28))


def test_shipped_model_structure(shipped):
    _, m = shipped
    bits = {n.name: (n.attrs["w_bits"], n.attrs["a_bits"]) for n in m.nodes if n.op in ("conv", "linear")}
    assert bits["stem.0"] == (8, 8) and bits["fc"] == (8, 8)
    assert all(b == (2, 2) for k, b in bits.items() if k not in ("stem.0", "fc"))


def test_shipped_model_reference_agrees_with_fake_quant(shipped):
    """Reference executor (= the kernel path, bit for bit) vs PyTorch fake-quant on a subset:
    tests/python/parity.py's rule (codes differ only at rounding ties, logits within float rounding)."""
    q, m = shipped
    x, labels = _fmnist_subset(64)  # the NumPy oracles are slow; the kernels' test below takes 1000
    r = check_torch_parity(q, m, x, reference=True)
    assert len(r["tie_samples"]) <= 1, r["tie_samples"]


def test_shipped_model_kernels_agree_with_fake_quant(shipped):
    q, m = shipped
    x, labels = _fmnist_subset(1000)
    r = check_torch_parity(q, m, x)
    assert len(r["tie_samples"]) <= 5 and r["codes_differ"] < 1e-3 * r["codes_total"], r["tie_samples"]
    xs = x[:16]
    _assert_trace_equal(m, xs)


@pytest.mark.slow
def test_shipped_model_full_test_set(shipped):
    q, m = shipped
    x, labels = _fmnist_subset(10000)
    r = compare(q, m, x, codes=False)
    assert r["top1_agreement"] >= 0.995
    acc = np.mean(r["lowbit_logits"].argmax(1) == labels)
    assert acc >= 0.90


@pytest.mark.parametrize("shape,kernel,stride,padding,dilation", [
    ((1, 112, 112, 64), (3, 3), (2, 2), (1, 1), (1, 1)),   # ResNet stem pool
    ((2, 9, 7, 5), (2, 3), (1, 2), (1, 1), (2, 1)),
    ((1, 4, 4, 3), (4, 4), (1, 1), (2, 2), (1, 1)),
])
def test_native_maxpool_matches_numpy(shape, kernel, stride, padding, dilation):
    from lowbit.runtime import model as runtime
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    x.flat[::97] = -np.inf
    x.flat[5] = np.nan  # NaN propagates through its windows, as with np.maximum
    attrs = {"kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation}
    got = runtime.maxpool(x, attrs)
    want = runtime.maxpool(x, attrs)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got, want, equal_nan=True)
    # strided input is read correctly
    xt = np.ascontiguousarray(x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    assert np.array_equal(runtime.maxpool(xt, attrs), want, equal_nan=True)


@pytest.mark.parametrize("qn,qp", [(0, 3), (-2, 1), (-128, 127), (0, 255), (0, 1)])
def test_native_quantize_matches_numpy(qn, qp):
    from lowbit.runtime import model as runtime
    rng = np.random.default_rng(qp - qn)
    step = np.float32(0.37)
    x = (rng.standard_normal((3, 17, 19, 5)) * (qp - qn) * 0.4).astype(np.float32)
    ties = ((np.arange(x.size) % (qp - qn + 4)) + qn - 2 + 0.5).astype(np.float32) * step  # exact .5 cases
    x.flat[::3] = ties[::3]
    x.flat[1] = 1e30
    x.flat[2] = -1e30
    x.flat[4] = -0.0
    attrs = {"qn": qn, "qp": qp, "step": float(step)}
    got = runtime.quantize(x, attrs)
    want = runtime.quantize(x, attrs)
    assert got.dtype == np.uint8 and got.shape == x.shape
    assert np.array_equal(got, want)


def test_strategy_fastest_runs_dot8_in_a_w3a4_model_with_identical_outputs():
    """docs/pipeline.md: inside use(strategy="fastest") the 3-4-bit layers run
    dot8; every value the model computes stays bit-identical."""
    q = _prepared(OpZoo(), (8, 3, 20, 20), 3, 4)
    x = torch.randn(2, 3, 20, 20, generator=torch.Generator().manual_seed(3)).numpy()
    m = lowbit.convert(q, torch.zeros(1, 3, 20, 20))
    default = m.trace(x)
    kernels_default = {r["kernel"] for r in m.layers() if r["op"] in ("conv", "linear")}
    with lowbit.use(strategy="fastest", isa=lowbit.supported_tiers()[-1]):  # whatever LOWBIT_ISA says
        fastest = m.trace(x)
        kernels_fastest = {r["kernel"] for r in m.layers() if r["op"] in ("conv", "linear")}
    assert any(k.startswith("dot8_") for k in kernels_fastest), kernels_fastest
    assert not any(k.startswith("dot8_") for k in kernels_default), kernels_default
    assert default.keys() == fastest.keys()
    for k in default:
        np.testing.assert_array_equal(default[k], fastest[k], err_msg=f"node {k}")
