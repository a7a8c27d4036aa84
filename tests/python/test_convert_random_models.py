"""Differential test of lowbit.convert: random small PyTorch models, prepared with lowbit.qat,
calibrated (and sometimes trained a few SGD steps), converted, and held to the parity rule
(tests/python/parity.py) against their fake-quant PyTorch forward.

Each seed builds one model from what the converter maps (docs/pipeline.md, section 1):
Conv2d (groups incl. depthwise, stride, dilation, int/tuple/'same'/'valid' padding, bias or
not), Linear, BatchNorm2d/1d, ReLU/ReLU6/Hardtanh/clamp/clip in module, function and method
forms (in place too), residual adds (``+``, ``+=``, ``torch.add``, ``Tensor.add``/``add_``),
MaxPool2d/AvgPool2d (count_include_pad both ways)/AdaptiveAvgPool2d in module and function
forms, mean over H,W, flatten/view/reshape(B, -1), Identity/Dropout, branches that read earlier
values, and values nothing reads. Bits: w_bits/a_bits in {1, 2, 3, 4, 8}, first_last_bits 8,
another width or None.

A model either converts and then satisfies the rule (with the native executor and with the
NumPy reference executor, whose logits are equal bit for bit), or the generator knew it uses a
pattern the converter refuses (an asymmetric 'same' padding, a pool with ceil_mode, an in-place
op whose input is read again later) and ``lowbit.convert`` raises ``ConversionError``. Also
random: per-channel or per-tensor weight steps, ``requant_in_epilogue``, and (when the model's
spatial size is free) a larger input than the example's. Anything else fails the test and prints the model's spec.

The default run checks ``DEFAULT_SEEDS`` (40 models, about 20 s on 2 vCPUs). A longer campaign::

    LOWBIT_RANDOM_MODELS=1000 PYTHONPATH=python python3 -m pytest \\
        tests/python/test_convert_random_models.py -q -p no:randomly

checks seeds 0..999 instead (``LOWBIT_RANDOM_MODELS_START`` moves the first seed).
"""
import os
import random

import numpy as np
import pytest

from conftest import optional_import
from parity import check_torch_parity

torch = optional_import("torch")
nn = torch.nn
F = torch.nn.functional

import lowbit  # noqa: E402
from lowbit import qat  # noqa: E402
from lowbit.convert import ConversionError  # noqa: E402

DEFAULT_SEEDS = list(range(40))
BITS = (1, 2, 3, 4, 8)


# ---- the model spec ---------------------------------------------------------------------------
# A spec is a list of steps; each step reads values by index (0 = the network input) and appends
# one value. Shapes: ("map", C, H, W) or ("vec", F).

def _conv_out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _every_window_sees_data(size, out, k, s, p, d):
    """Whether every pooling window has a tap inside the input (torch's max pool of a window in
    the padding alone is -inf, an average pool without count_include_pad divides by 0)."""
    return all(any(0 <= o * s - p + j * d < size for j in range(k)) for o in range(out))


def _conv_step(rng, shape, src):
    _, c, h, w = shape
    depthwise = rng.random() < 0.25
    if depthwise:
        cout, groups = c * rng.choice((1, 1, 2)), c
    else:
        cout = rng.choice((c, rng.randint(1, 12)))
        common = [g for g in range(1, min(c, cout) + 1) if c % g == 0 and cout % g == 0]
        groups = rng.choice(common) if rng.random() < 0.4 else 1
    for _ in range(20):
        k = (rng.choice((1, 2, 3, 3, 5)), rng.choice((1, 2, 3, 3)))
        if rng.random() < 0.6:
            k = (k[0], k[0])
        stride = (rng.choice((1, 1, 2)),) * 2 if rng.random() < 0.8 else (rng.choice((1, 2)), rng.choice((1, 2)))
        dilation = (rng.choice((1, 1, 2)),) * 2 if rng.random() < 0.8 else (1, 2)
        mode = rng.choice(("int", "int", "tuple", "same", "valid"))
        if mode == "same" and stride != (1, 1):
            mode = "int"
        if mode == "int":
            padding = rng.choice((0, 1, 2))
            pads = (padding, padding)
        elif mode == "tuple":
            padding = (rng.choice((0, 1, 2)), rng.choice((0, 1)))
            pads = padding
        elif mode == "valid":
            padding, pads = "valid", (0, 0)
        else:
            padding = "same"
            pads = tuple(d * (kk - 1) // 2 for d, kk in zip(dilation, k))
        ho = _conv_out(h, k[0], stride[0], pads[0], dilation[0])
        wo = _conv_out(w, k[1], stride[1], pads[1], dilation[1])
        if ho >= 1 and wo >= 1:
            break
    else:
        return None
    refused = []
    if padding == "same" and any(d * (kk - 1) % 2 for d, kk in zip(dilation, k)):
        refused.append("padding='same'")
        ho, wo = h, w
    return {"op": "conv", "src": src, "cin": c, "cout": cout, "k": k, "stride": stride, "padding": padding,
            "dilation": dilation, "groups": groups, "bias": rng.random() < 0.5, "out": ("map", cout, ho, wo),
            "refused": refused}


ACT_FORMS = ("ReLU", "ReLU6", "Hardtanh", "F.relu", "torch.relu", "F.relu6", "F.hardtanh", "torch.clamp",
             "torch.clip", "Tensor.clamp", "Tensor.relu", "clamp_min_only", "clamp_max_only", "clamp_inverted")
INPLACE_FORMS = ("ReLU(inplace)", "F.relu(inplace)", "Tensor.relu_", "Tensor.clamp_", "F.hardtanh(inplace)")


def _act_step(rng, shape, src, inplace):
    form = rng.choice(INPLACE_FORMS if inplace else ACT_FORMS)
    lo = round(rng.uniform(-2.0, 0.5), 3)
    hi = round(lo + rng.uniform(0.1, 4.0), 3)
    if form == "clamp_inverted":   # min > max: torch sets every element to max
        lo, hi = hi, lo
    return {"op": "act", "form": form, "src": src, "lo": lo, "hi": hi, "out": shape, "refused": []}


def _pool_step(rng, shape, src):
    _, c, h, w = shape
    kind = rng.choice(("maxpool", "avgpool", "adaptive", "maxpool", "avgpool"))
    functional = rng.random() < 0.4
    if kind == "adaptive":
        out = rng.choice((1, 2, 3, (2, 1), (None, 1), (1, None)))   # larger than the map: windows overlap
        if isinstance(out, int):
            ho = wo = out
        else:
            ho, wo = (h if out[0] is None else out[0]), (w if out[1] is None else out[1])
        return {"op": "adaptive", "src": src, "size": out, "functional": functional, "out": ("map", c, ho, wo),
                "refused": []}
    for _ in range(20):
        k = rng.choice((1, 2, 2, 3))
        s = rng.choice((None, 1, 2))
        p = rng.randint(0, k // 2)
        d = rng.choice((1, 1, 2)) if kind == "maxpool" else 1
        st = k if s is None else s
        ho, wo = _conv_out(h, k, st, p, d), _conv_out(w, k, st, p, d)
        if ho >= 1 and wo >= 1 and _every_window_sees_data(h, ho, k, st, p, d) and \
                _every_window_sees_data(w, wo, k, st, p, d):
            ceil_mode = rng.random() < 0.03
            if ceil_mode:   # torch: one more window where a partial one starts inside the input or left padding
                ho, wo = (_conv_out(n + st - 1, k, st, p, d) if (_conv_out(n + st - 1, k, st, p, d) - 1) * st < n + p
                          else _conv_out(n, k, st, p, d) for n in (h, w))
            return {"op": kind, "src": src, "k": k, "stride": s, "padding": p, "dilation": d, "ceil_mode": ceil_mode,
                    "count_include_pad": rng.random() < 0.5, "functional": functional, "out": ("map", c, ho, wo),
                    "refused": ["ceil_mode"] if ceil_mode else []}
    return None


def _add_step(rng, values, src):
    shape = values[src]
    partners = [i for i, v in enumerate(values) if v == shape and i != 0]
    if not partners:
        return None
    other = rng.choice(partners)
    form = rng.choice(("+", "+", "torch.add", "Tensor.add", "+=", "Tensor.add_"))
    return {"op": "add", "form": form, "src": src, "other": other, "out": shape, "refused": []}


def make_spec(seed):
    """A random model spec (dict) from ``seed``, deterministic."""
    rng = random.Random(seed)
    c, h, w = rng.choice((1, 2, 3, 4)), rng.randint(5, 12), rng.randint(5, 12)
    values = [("map", c, h, w)]
    steps = []
    n_steps = rng.randint(2, 10)
    flat = False
    while len(steps) < n_steps or not any(s["op"] in ("conv", "linear") for s in steps):
        # usually the latest value; sometimes an earlier one (a branch)
        src = len(values) - 1 if rng.random() < 0.75 else rng.randrange(len(values))
        if flat and values[src][0] == "map":
            src = len(values) - 1
        shape = values[src]
        r = rng.random()
        step = None
        if shape[0] == "map":
            if r < 0.30:
                step = _conv_step(rng, shape, src)
            elif r < 0.42:
                step = {"op": "bn", "src": src, "affine": rng.random() < 0.8, "out": shape, "refused": []}
            elif r < 0.57:
                step = _act_step(rng, shape, src, src != 0 and rng.random() < 0.2)
            elif r < 0.67:
                step = _add_step(rng, values, src)
            elif r < 0.80:
                step = _pool_step(rng, shape, src)
            elif r < 0.84:
                step = {"op": "alias", "form": rng.choice(("Identity", "Dropout", "Dropout2d", "contiguous",
                                                           "F.dropout")), "src": src, "out": shape, "refused": []}
            elif r < 0.92 and len(steps) >= 2:
                step = _flatten_step(rng, shape, src)
                flat = True
        else:
            if r < 0.35:
                step = {"op": "linear", "src": src, "fin": shape[1], "fout": rng.randint(1, 16),
                        "bias": rng.random() < 0.6, "out": None, "refused": []}
                step["out"] = ("vec", step["fout"])
            elif r < 0.5:
                step = {"op": "bn1d", "src": src, "affine": rng.random() < 0.8, "out": shape, "refused": []}
            elif r < 0.7:
                step = _act_step(rng, shape, src, rng.random() < 0.2)
            elif r < 0.85:
                step = _add_step(rng, values, src)
            elif r < 0.9:
                step = {"op": "alias", "form": "Dropout", "src": src, "out": shape, "refused": []}
        if step is None:
            continue
        steps.append(step)
        values.append(step["out"])
    # a 2-D output: flatten what is still a map, then usually a classifier
    while values[-1][0] == "map":
        steps.append(_flatten_step(rng, values[-1], len(values) - 1))
        values.append(steps[-1]["out"])
    if rng.random() < 0.8 or steps[-1]["op"] in ("flatten", "mean"):
        steps.append({"op": "linear", "src": len(values) - 1, "fin": values[-1][1], "fout": rng.randint(2, 10),
                      "bias": rng.random() < 0.7, "out": None, "refused": []})
        steps[-1]["out"] = ("vec", steps[-1]["fout"])
        values.append(steps[-1]["out"])
    _mark_inplace_refusals(steps)
    fl = rng.choice((8, 8, None, rng.choice(BITS)))
    return {"seed": seed, "input": (c, h, w), "steps": steps, "w_bits": rng.choice(BITS),
            "a_bits": rng.choice(BITS), "first_last_bits": fl, "train_steps": rng.choice((0, 0, 3)),
            "batch": rng.randint(8, 16), "input_scale": rng.choice((0.5, 1.0, 3.0)),
            "bigger_input": rng.random() < 0.3, "per_channel": rng.random() < 0.8,
            "requant_in_epilogue": rng.random() < 0.8}


def _flatten_step(rng, shape, src):
    _, c, h, w = shape
    form = rng.choice(("torch.flatten", "nn.Flatten", "Tensor.flatten", "view", "reshape", "mean", "mean_keepdim"))
    if form == "mean_keepdim":
        return {"op": "mean", "keepdim": True, "src": src, "out": ("map", c, 1, 1), "refused": []}
    if form == "mean":
        return {"op": "mean", "keepdim": False, "src": src, "out": ("vec", c), "refused": []}
    return {"op": "flatten", "form": form, "src": src, "out": ("vec", c * h * w), "refused": []}


def _mutates(step):
    """Index of the value a step modifies in place, or None."""
    if step["op"] == "act" and step["form"] in INPLACE_FORMS:
        return step["src"]
    if step["op"] == "add" and step["form"] in ("+=", "Tensor.add_"):
        return step["src"]
    return None


def _mark_inplace_refusals(steps):
    """Value i is step i-1's output. An in-place op of step i changes the memory of its input and
    of every view of it (flatten/view/reshape/Identity/Dropout/contiguous share memory); a later
    step reading one of those values by a name from before the op (index <= i) sees the modified
    memory in torch: such a model is expected to be refused. An in-place op on (a view of) the
    network input becomes its out-of-place form (it would modify the caller's array)."""
    root = {0: 0}
    for i, s in enumerate(steps):
        root[i + 1] = root[s["src"]] if s["op"] in ("flatten", "alias") or _mutates(s) is not None else i + 1
    for i, s in enumerate(steps):
        v = _mutates(s)
        if v is None:
            continue
        if root[v] == 0:
            s["form"] = "+" if s["op"] == "add" else "F.relu"
            for j in range(i + 1, len(steps) + 1):   # the value is no longer the input's memory
                if root[j] == 0 and j > i:
                    root[j] = i + 1
            continue
        stale = {j for j in range(i + 1) if root[j] == root[v]}
        if any(t["src"] in stale or t.get("other") in stale for t in steps[i + 1:]):
            s["refused"].append("in-place op on a value read again later")


# ---- the torch model --------------------------------------------------------------------------

class RandomNet(nn.Module):
    """Runs a spec; every step's module (if any) is ``self.m<i>``."""

    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        for i, s in enumerate(spec["steps"]):
            mod = _module_for(s)
            if mod is not None:
                setattr(self, f"m{i}", mod)

    def forward(self, x):
        vals = [x]
        for i, s in enumerate(self.spec["steps"]):
            vals.append(_apply(self, i, s, vals))
        return vals[-1]


def _module_for(s):
    op = s["op"]
    if op == "conv":
        return nn.Conv2d(s["cin"], s["cout"], s["k"], s["stride"], s["padding"], s["dilation"], s["groups"],
                         s["bias"])
    if op == "linear":
        return nn.Linear(s["fin"], s["fout"], s["bias"])
    if op in ("bn", "bn1d"):
        c = s["out"][1]
        return (nn.BatchNorm2d if op == "bn" else nn.BatchNorm1d)(c, affine=s["affine"])
    if op == "act":
        return {"ReLU": lambda: nn.ReLU(), "ReLU6": lambda: nn.ReLU6(),
                "Hardtanh": lambda: nn.Hardtanh(s["lo"], s["hi"]), "ReLU(inplace)": lambda: nn.ReLU(inplace=True),
                }.get(s["form"], lambda: None)()
    if op == "alias" and s["form"] in ("Identity", "Dropout", "Dropout2d"):
        return getattr(nn, s["form"])()
    if op == "maxpool" and not s["functional"]:
        return nn.MaxPool2d(s["k"], s["stride"], s["padding"], s["dilation"], ceil_mode=s["ceil_mode"])
    if op == "avgpool" and not s["functional"]:
        return nn.AvgPool2d(s["k"], s["stride"], s["padding"], s["ceil_mode"], s["count_include_pad"])
    if op == "adaptive" and not s["functional"]:
        return nn.AdaptiveAvgPool2d(s["size"])
    if op == "flatten" and s["form"] == "nn.Flatten":
        return nn.Flatten()
    return None


def _apply(net, i, s, vals):
    op, x = s["op"], vals[s["src"]]
    mod = getattr(net, f"m{i}", None)
    if op in ("conv", "linear", "bn", "bn1d") or (mod is not None and op != "add"):
        return mod(x)
    if op == "act":
        lo, hi, form = s["lo"], s["hi"], s["form"]
        return {"F.relu": lambda: F.relu(x), "torch.relu": lambda: torch.relu(x), "F.relu6": lambda: F.relu6(x),
                "F.hardtanh": lambda: F.hardtanh(x, lo, hi), "torch.clamp": lambda: torch.clamp(x, lo, hi),
                "torch.clip": lambda: torch.clip(x, min=lo, max=hi), "Tensor.clamp": lambda: x.clamp(lo, hi),
                "Tensor.relu": lambda: x.relu(), "clamp_min_only": lambda: x.clamp(min=lo),
                "clamp_max_only": lambda: torch.clamp(x, max=hi), "clamp_inverted": lambda: torch.clamp(x, lo, hi),
                "F.relu(inplace)": lambda: F.relu(x, inplace=True), "Tensor.relu_": lambda: x.relu_(),
                "Tensor.clamp_": lambda: x.clamp_(lo, hi),
                "F.hardtanh(inplace)": lambda: F.hardtanh(x, lo, hi, inplace=True)}[form]()
    if op == "add":
        y, form = vals[s["other"]], s["form"]
        if form == "+":
            return x + y
        if form == "torch.add":
            return torch.add(x, y)
        if form == "Tensor.add":
            return x.add(y)
        if form == "Tensor.add_":
            return x.add_(y)
        x += y
        return x
    if op == "alias":
        return x.contiguous() if s["form"] == "contiguous" else F.dropout(x, 0.3, net.training)
    if op == "maxpool":
        return F.max_pool2d(x, s["k"], s["stride"], s["padding"], s["dilation"], ceil_mode=s["ceil_mode"])
    if op == "avgpool":
        return F.avg_pool2d(x, s["k"], s["stride"], s["padding"], s["ceil_mode"], s["count_include_pad"])
    if op == "adaptive":
        return F.adaptive_avg_pool2d(x, s["size"])
    if op == "mean":
        return x.mean((2, 3), keepdim=True) if s["keepdim"] else x.mean((-1, -2))
    if op == "flatten":
        return {"torch.flatten": lambda: torch.flatten(x, 1), "Tensor.flatten": lambda: x.flatten(1),
                "view": lambda: x.view(x.size(0), -1), "reshape": lambda: x.reshape(x.size(0), -1)}[s["form"]]()
    raise AssertionError(op)


# ---- building, checking -----------------------------------------------------------------------

def build_qat(spec):
    """The prepared, calibrated (and maybe trained) fake-quant model of ``spec``, in eval mode."""
    torch.manual_seed(spec["seed"])
    g = torch.Generator().manual_seed(spec["seed"])
    net = RandomNet(spec)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and m.affine:
                m.weight.uniform_(-0.5, 1.5, generator=g)   # a negative gamma flips a channel's sign
                m.bias.uniform_(-0.5, 0.5, generator=g)
    q = qat.prepare(net, spec["w_bits"], spec["a_bits"], first_last_bits=spec["first_last_bits"],
                    per_channel=spec["per_channel"])
    shape = (spec["batch"],) + tuple(spec["input"])
    q.train()
    with torch.no_grad():
        for _ in range(3):   # initialises every activation step; BatchNorm statistics move
            q(torch.randn(*shape, generator=g) * spec["input_scale"])
    if spec["train_steps"]:
        opt = torch.optim.SGD(q.parameters(), lr=0.01)
        for _ in range(spec["train_steps"]):
            opt.zero_grad()
            out = q(torch.randn(*shape, generator=g) * spec["input_scale"])
            try:
                (out - torch.randn(out.shape, generator=g)).square().mean().backward()
            except RuntimeError as exc:   # autograd refuses some in-place ops: stay calibrated only
                if "inplace" not in str(exc):
                    raise
                break
            opt.step()
    return q.eval()


def inputs(spec, seed_offset=1):
    rng = np.random.default_rng(spec["seed"] + seed_offset)
    c, h, w = spec["input"]
    return (rng.standard_normal((spec["batch"], c, h, w)) * spec["input_scale"]).astype(np.float32)


def check_model(spec):
    """Convert ``spec``'s model and assert the outcome; returns "converted" or "refused: <reason>"."""
    q = build_qat(spec)
    x = inputs(spec)
    refused = sorted({r for s in spec["steps"] for r in s["refused"]})
    if refused:
        with pytest.raises(ConversionError) as info:
            lowbit.convert(q, torch.from_numpy(x), spec["requant_in_epilogue"])
        return "refused: " + ", ".join(refused) + f" ({str(info.value).splitlines()[0][:80]})"
    m = lowbit.convert(q, torch.from_numpy(x), spec["requant_in_epilogue"])
    if spec["bigger_input"] and not m.spatial_fixed:
        c, h, w = spec["input"]
        x = inputs(dict(spec, input=(c, h + 3, w + 2)), 2)
    r = check_torch_parity(q, m, x)  # the native executor (its trace and its logits)
    ref = check_torch_parity(q, m, x, reference=True)
    np.testing.assert_array_equal(r["lowbit_logits"], ref["lowbit_logits"], err_msg="native executor != reference")
    return "converted"


def _seeds():
    n = os.environ.get("LOWBIT_RANDOM_MODELS")
    if not n:
        return DEFAULT_SEEDS
    start = int(os.environ.get("LOWBIT_RANDOM_MODELS_START", "0"))
    return list(range(start, start + int(n)))


@pytest.mark.parametrize("seed", _seeds())
def test_random_model_converts_with_parity(seed):
    spec = make_spec(seed)
    try:
        check_model(spec)
    except BaseException as exc:
        if isinstance(exc, pytest.skip.Exception):
            raise
        raise AssertionError(f"seed {seed}: {type(exc).__name__}: {exc}\nspec: {spec}") from exc
