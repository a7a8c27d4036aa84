"""Tests for lowbit.qat (LSQ), lowbit.models and lowbit.datasets."""

import gzip
import math
import os

import numpy as np
import pytest

from conftest import fashion_mnist_or_skip, optional_import

torch = optional_import("torch")
nn = torch.nn

import lowbit.datasets as lds  # noqa: E402
import lowbit.models as lmodels  # noqa: E402
import lowbit.qat as lqat  # noqa: E402


def _qrange(bits, signed):
    """(Qn, Qp) as in the LSQ paper; 1-bit signed uses Qp = 1 for g."""
    if signed:
        return (-1, 1) if bits == 1 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return 0, 2 ** bits - 1


def _make_x(steps, shape, bits, signed, gen):
    """x = s * v with v away from rounding ties and range edges: integers spanning
    beyond [Qn, Qp] plus offsets in {-0.3, -0.1, 0.2, 0.4}."""
    qn, qp = _qrange(bits, signed)
    k = torch.randint(qn - 2, qp + 3, shape, generator=gen).double()
    off = torch.tensor([-0.3, -0.1, 0.2, 0.4], dtype=torch.float64)[
        torch.randint(0, 4, shape, generator=gen)]
    v = k + off
    s = steps.view((-1,) + (1,) * (len(shape) - 1)) if steps.dim() else steps
    return (v * s).to(torch.float32)


def _set_step(q, steps):
    with torch.no_grad():
        q.step.copy_(steps)
        q.initialized.fill_(True)


CONFIGS = [(bits, signed, pc) for bits in (1, 2) for signed in (True, False) for pc in (False, True)]


@pytest.mark.parametrize("bits,signed,per_channel", CONFIGS)
def test_step_gradient_matches_lsq_formula(bits, signed, per_channel):
    gen = torch.Generator().manual_seed(bits * 10 + signed * 2 + per_channel)
    shape = (3, 4, 2, 5)
    steps = torch.tensor([0.5, 0.25, 1.5]) if per_channel else torch.tensor(0.75)
    q = lqat.LsqQuantizer(bits, signed, 3 if per_channel else None)
    _set_step(q, steps)
    x = _make_x(steps.double(), shape, bits, signed, gen).requires_grad_(True)
    upstream = torch.randn(shape, generator=gen)
    out = q(x)
    (out * upstream).sum().backward()

    qn, qp = _qrange(bits, signed)
    nsteps = steps.numel()
    g = 1.0 / math.sqrt(x.numel() / nsteps * qp)
    sb = steps.view(-1, 1, 1, 1).double() if per_channel else steps.double()
    v = x.detach().double() / sb
    if bits == 1 and signed:
        # levels {-s, +s}: q = s*sign(x) (sign(0)=+1), dq/ds = sign(x), dq/dx = [|x| <= s]
        sign = torch.where(v >= 0, 1.0, -1.0).double()
        expect_q = sign * sb
        dq_ds = sign
        dq_dx = (v.abs() <= 1).double()
    else:
        r = torch.clamp(v, qn, qp).round()
        expect_q = r * sb
        inside = (v > qn) & (v < qp)
        dq_ds = torch.where(inside, v.round() - v, torch.where(v <= qn, float(qn), float(qp)))
        dq_dx = inside.double()
    u = upstream.double()
    if per_channel:
        expect_ds = (u * dq_ds).sum(dim=(1, 2, 3)) * g
    else:
        expect_ds = (u * dq_ds).sum() * g

    assert q.step.grad is not None, "step must be a learned parameter"
    torch.testing.assert_close(out.double(), expect_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(q.step.grad.double(), expect_ds, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), u * dq_dx, rtol=0, atol=1e-6)
    # the test data must exercise all branches (inside, below, above)
    assert bool((dq_dx == 0).any()) and bool((dq_dx == 1).any())


def test_quant_range_and_levels():
    assert lqat.quant_range(2, True) == (-2, 1)
    assert lqat.quant_range(2, False) == (0, 3)
    assert lqat.quant_range(8, True) == (-128, 127)
    assert lqat.LsqQuantizer(1, True).levels() == [-1, 1]
    assert lqat.LsqQuantizer(1, False).levels() == [0, 1]
    assert lqat.LsqQuantizer(3, True).levels() == [-4, -3, -2, -1, 0, 1, 2, 3]
    with pytest.raises(ValueError, match="bits"):
        lqat.LsqQuantizer(5, True)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("per_channel", [False, True])
def test_codes_reproduce_fake_quant_exactly(bits, signed, per_channel):
    gen = torch.Generator().manual_seed(bits + 7 * signed + 3 * per_channel)
    x = torch.randn(6, 3, 3, 3, generator=gen) * 2
    q = lqat.LsqQuantizer(bits, signed, 6 if per_channel else None)
    q.init_from(x)
    with torch.no_grad():
        q.step.mul_(torch.rand(q.step.shape, generator=gen) + 0.5)  # arbitrary, non-round steps
    codes, codebook, step = q.codes(x)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape
    assert int(codes.max()) < 2 ** bits
    assert len(codebook) == 2 ** bits and codebook == q.levels()
    assert step.shape == q.step.shape
    torch.testing.assert_close(step, q.step.detach(), rtol=1e-6, atol=0)
    s = step.view(-1, 1, 1, 1) if per_channel else step
    deq = torch.tensor(codebook, dtype=torch.float32)[codes.long()] * s
    with torch.no_grad():
        fq = q(x)
    assert torch.equal(deq, fq)


def test_codebook_values():
    # rounding is torch.round: ties to even (-0.5 -> 0); values here avoid ties
    x = torch.tensor([-3.0, -0.6, 0.0, 0.4, 2.0])
    q = lqat.LsqQuantizer(2, True)
    _set_step(q, torch.tensor(1.0))
    codes, cb, _ = q.codes(x)
    assert cb == [-2, -1, 0, 1] and codes.tolist() == [0, 1, 2, 2, 3]
    q1 = lqat.LsqQuantizer(1, True)
    _set_step(q1, torch.tensor(1.0))
    codes, cb, _ = q1.codes(x)
    assert cb == [-1, 1] and codes.tolist() == [0, 0, 1, 1, 1]  # sign(0) = +1
    qu = lqat.LsqQuantizer(2, False)
    _set_step(qu, torch.tensor(1.0))
    codes, cb, _ = qu.codes(x)
    assert cb == [0, 1, 2, 3] and codes.tolist() == [0, 0, 0, 0, 2]


@pytest.mark.parametrize("bits", [1, 2, 8])
def test_weight_init_rule(bits):
    conv = nn.Conv2d(4, 5, 3)
    qc = lqat.QConv2d.from_float(conv, w_bits=bits, a_bits=2, act_signed=False)
    qp = 1 if bits == 1 else 2 ** (bits - 1) - 1
    expect = 2 * conv.weight.detach().abs().mean(dim=(1, 2, 3)) / math.sqrt(qp)
    torch.testing.assert_close(qc.weight_quant.step.detach(), expect)
    assert bool(qc.weight_quant.initialized)
    qt = lqat.QConv2d.from_float(conv, w_bits=bits, a_bits=2, act_signed=False, per_channel=False)
    torch.testing.assert_close(qt.weight_quant.step.detach(),
                               2 * conv.weight.detach().abs().mean() / math.sqrt(qp))


@pytest.mark.parametrize("a_bits,signed", [(2, False), (2, True), (1, True), (1, False), (8, False)])
def test_activation_init_from_first_batch(a_bits, signed):
    torch.manual_seed(0)
    lin = lqat.QLinear.from_float(nn.Linear(8, 3), w_bits=2, a_bits=a_bits, act_signed=signed)
    aq = lin.act_quant
    assert not bool(aq.initialized)
    x1 = torch.randn(16, 8).abs() if not signed else torch.randn(16, 8)
    lin(x1)
    _, qp = _qrange(a_bits, signed)
    torch.testing.assert_close(aq.step.detach(), 2 * x1.abs().mean() / math.sqrt(qp))
    assert bool(aq.initialized)
    before = aq.step.detach().clone()
    lin(5 * x1)  # later batches do not re-initialise
    assert torch.equal(aq.step.detach(), before)
    # the flag is part of the state_dict, so a loaded model does not re-initialise
    other = lqat.QLinear.from_float(nn.Linear(8, 3), w_bits=2, a_bits=a_bits, act_signed=signed)
    other.load_state_dict(lin.state_dict())
    other(7 * x1)
    assert torch.equal(other.act_quant.step.detach(), before)


def _conv_linear_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_prepare_fmnist_model():
    torch.manual_seed(0)
    model = lmodels.fmnist_resnet()
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    names = _conv_linear_names(model)
    qm = lqat.prepare(model, w_bits=2, a_bits=2, first_last_bits=8)

    # the input model is untouched
    assert qm is not model
    assert all(type(m) in (nn.Conv2d, nn.Linear) for n, m in model.named_modules() if n in names)
    assert set(model.state_dict()) == set(ref)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ref.items())

    # every conv/linear replaced, weights and hyperparameters kept
    mods = dict(qm.named_modules())
    assert _conv_linear_names(qm) == names
    for n in names:
        assert type(mods[n]) in (lqat.QConv2d, lqat.QLinear), n
        assert torch.equal(mods[n].weight, dict(model.named_modules())[n].weight)
    assert mods["layer2.conv1"].stride == (2, 2) and mods["layer2.conv1"].padding == (1, 1)
    assert mods["layer2.downsample.0"].kernel_size == (1, 1)

    # first/last in execution order at 8 bits, the rest at 2 bits
    order = [n for n, _ in lqat.quantized_layers(qm)]
    assert order[0] == "stem.0" and order[-1] == "fc" and len(order) == len(names)
    for n in names:
        bits = 8 if n in ("stem.0", "fc") else 2
        assert (mods[n].w_bits, mods[n].a_bits) == (bits, bits), n
        assert mods[n].weight_quant.bits == bits and mods[n].act_quant.bits == bits
        assert mods[n].weight_quant.signed and mods[n].weight_quant.per_channel

    # network input (normalised image) is signed; everything after a ReLU is unsigned
    assert mods["stem.0"].act_signed and mods["stem.0"].act_quant.signed
    for n in names[1:]:
        assert not mods[n].act_signed, n
        assert not mods[n].act_quant.signed, n

    x = torch.randn(2, 1, 28, 28)
    assert qm(x).shape == (2, 10)

    qn = lqat.prepare(model, w_bits=2, a_bits=2, first_last_bits=None)
    assert all((m.w_bits, m.a_bits) == (2, 2) for _, m in lqat.quantized_layers(qn))


class _Mixed(nn.Module):
    """Registered in reverse execution order; mixes signed and unsigned producers."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)          # executes last
        self.c_add_relu = nn.Conv2d(8, 8, 1)  # input: relu(a) + relu(b) -> unsigned
        self.c_add = nn.Conv2d(8, 8, 1)       # input: conv + relu -> signed
        self.c_bn = nn.Conv2d(8, 8, 1)        # input: BN output -> signed
        self.bn = nn.BatchNorm2d(8)
        self.c_pool = nn.Conv2d(8, 8, 1)      # input: maxpool(relu) -> unsigned
        self.pool = nn.MaxPool2d(2)
        self.c0 = nn.Conv2d(3, 8, 3, padding=1)  # executes first, input signed

    def forward(self, x):
        a = torch.relu(self.c0(x))
        b = self.c_pool(self.pool(a))
        c = self.c_bn(self.bn(b))
        d = self.c_add(c + torch.relu(b))
        e = self.c_add_relu(torch.relu(d) + nn.functional.relu(c))
        return self.head(torch.relu(e).mean(dim=(2, 3)))


def test_prepare_execution_order_and_sign_rule():
    qm = lqat.prepare(_Mixed(), w_bits=2, a_bits=2, first_last_bits=8)
    order = [n for n, _ in lqat.quantized_layers(qm)]
    assert order == ["c0", "c_pool", "c_bn", "c_add", "c_add_relu", "head"]
    signed = {n: m.act_signed for n, m in lqat.quantized_layers(qm)}
    assert signed == {"c0": True, "c_pool": False, "c_bn": True, "c_add": True,
                      "c_add_relu": False, "head": False}
    bits = {n: m.w_bits for n, m in lqat.quantized_layers(qm)}
    assert bits == {"c0": 8, "c_pool": 2, "c_bn": 2, "c_add": 2, "c_add_relu": 2, "head": 8}
    assert qm(torch.randn(2, 3, 8, 8)).shape == (2, 3)


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.b = nn.Linear(4, 4)
        self.a = nn.Linear(4, 4)
        self.c = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > -1e9:  # data-dependent control flow: fx cannot trace this
            x = torch.relu(self.a(x))
        return self.c(self.b(x))


def test_prepare_hook_fallback():
    with pytest.raises(RuntimeError, match="example_input"):
        lqat.prepare(_Untraceable())
    qm = lqat.prepare(_Untraceable(), first_last_bits=8, example_input=torch.randn(5, 4))
    assert (qm.a.w_bits, qm.b.w_bits, qm.c.w_bits) == (8, 2, 8)
    assert qm.a.act_signed and not qm.b.act_signed and qm.c.act_signed


def test_prepare_rejects_bad_bits():
    with pytest.raises(ValueError, match="bits"):
        lqat.prepare(lmodels.fmnist_resnet(8), w_bits=5)


def test_fmnist_model_shape_and_fx():
    m = lmodels.fmnist_resnet(width=8)
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    gm = torch.fx.symbolic_trace(m)
    torch.testing.assert_close(gm(torch.ones(1, 1, 28, 28)), m(torch.ones(1, 1, 28, 28)))
    kinds = {type(mod) for mod in m.modules()} - {lmodels.FmnistResNet, lmodels.BasicBlock,
                                                  nn.Sequential}
    assert kinds <= {nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Linear, nn.Identity}


def test_trained_checkpoints_load():
    path = os.path.join(lmodels.DATA_DIR, "fmnist_train.json")
    assert os.path.exists(path), f"the trained demo checkpoints ship with lowbit: {path} is missing"
    import json

    info = json.load(open(path))
    assert info["fp32"]["test_acc"] >= 0.91
    assert info["fp32"]["test_acc"] - info["qat"]["test_acc"] <= 0.02
    qm = lmodels.load_fmnist("w2a2_qat")
    layers = lqat.quantized_layers(qm)
    assert all(bool(m.act_quant.initialized) for _, m in layers)
    assert [(m.w_bits, m.a_bits) for _, m in layers][1] == (2, 2)
    fm = lmodels.load_fmnist("fp32")
    assert not any(isinstance(m, (lqat.QConv2d, lqat.QLinear)) for m in fm.modules())


# ---------------------------------------------------------------- datasets

def _write_idx(path, arr, gz):
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_and_loader_on_synthetic_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 7).astype(np.uint8)
    sfx = ".gz" if gz else ""
    _write_idx(str(tmp_path / f"t10k-images-idx3-ubyte{sfx}"), imgs, gz)
    _write_idx(str(tmp_path / f"t10k-labels-idx1-ubyte{sfx}"), labels, gz)
    x, y = lds.load_fashion_mnist("test", root=str(tmp_path))
    assert x.dtype == np.uint8 and x.shape == (7, 28, 28) and np.array_equal(x, imgs)
    assert y.dtype == np.int64 and np.array_equal(y, labels)
    with pytest.raises(RuntimeError, match="dataset-fashion-mnist"):
        lds.load_fashion_mnist("train", root=str(tmp_path), allow_fallback=False)
    with pytest.raises(ValueError, match="split"):
        lds.load_fashion_mnist("valid", root=str(tmp_path))


def test_normalize():
    x = np.full((2, 28, 28), 255, dtype=np.uint8)
    out = lds.normalize(x)
    assert out.dtype == np.float32 and out.shape == (2, 1, 28, 28)
    np.testing.assert_allclose(out, (1.0 - lds.FMNIST_MEAN) / lds.FMNIST_STD, rtol=1e-6)
    with pytest.raises(TypeError, match="uint8"):
        lds.normalize(x.astype(np.float32))


def test_fashion_mnist_real_data():
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = fashion_mnist_or_skip(split)
        assert x.shape == (n, 28, 28) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int64
        assert set(np.unique(y)) == set(range(10))
    xn = lds.normalize(x)
    assert abs(float(xn.mean())) < 0.05 and abs(float(xn.std()) - 1) < 0.05
