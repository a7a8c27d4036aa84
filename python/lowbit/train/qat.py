"""Quantization-aware training with Learned Step Size Quantization (LSQ).

Esser et al., "Learned Step Size Quantization", ICLR 2020. This module is the
only part of lowbit that trains; it needs torch, the rest of lowbit does not.

Entry point::

    qat = lowbit.qat.prepare(model, w_bits=2, a_bits=2, first_last_bits=8)

returns a deep copy of ``model`` in which every ``nn.Conv2d`` / ``nn.Linear``
is a :class:`QConv2d` / :class:`QLinear` that fake-quantizes its weight
(signed, per output channel by default) and its input activation (unsigned
when the input comes from a ReLU, signed otherwise; see :func:`prepare`).

Levels (real value = level * step) are the full signed (-2^(b-1) .. 2^(b-1)-1)
or unsigned (0 .. 2^b-1) ranges of :func:`lowbit.quant.int_range`, code =
level - Qn; signed 1-bit is binary, levels {-1, +1}. Rounding is ``torch.round``,
half to even, as :func:`lowbit.quant.quantize_codes` computes it.

Export for the converter: ``codes, codebook, step = quantizer.codes(x)`` with
``torch.tensor(codebook)[codes.long()] * step_broadcast == quantizer(x)``
bit-exactly (see :meth:`LsqQuantizer.codes`).

BatchNorm layers are left in place (not folded) during QAT: weight steps are
per output channel, so a following BN is a per-channel affine map that the
converter folds exactly into the per-channel output scale and bias.
"""

from __future__ import annotations

import copy
import math
import operator
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..quant import BINARY_LEVELS, int_range

__all__ = [
    "LsqQuantizer",
    "QConv2d",
    "QLinear",
    "prepare",
    "quant_range",
    "grad_scale",
    "round_ste",
    "quantized_layers",
]

SUPPORTED_BITS = (1, 2, 3, 4, 8)
_STEP_EPS = 1e-8  # steps are clamped to >= this in the forward (never hit in practice)


def quant_range(bits: int, signed: bool) -> Tuple[int, int]:
    """Integer clamp range (Qn, Qp) of the LSQ formula.

    Signed b-bit: (-2^(b-1), 2^(b-1)-1); unsigned: (0, 2^b-1). Signed 1-bit
    returns (-1, 1): its levels are {-1, +1} (no zero), handled by a separate
    path; Qp = 1 is also the value used for its gradient scale and init.
    """
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
    if signed and bits == 1:
        return BINARY_LEVELS
    return int_range(bits, signed)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) in the forward, identity gradient (straight-through estimator)."""
    return (x.round() - x).detach() + x


def grad_scale(s: torch.Tensor, g: float) -> torch.Tensor:
    """Value of ``s``, gradient multiplied by ``g`` (LSQ's gradient-scale trick)."""
    y = s * g
    return (s - y).detach() + y


class LsqQuantizer(nn.Module):
    """LSQ fake quantizer with a learned step ``s`` (``self.step``).

    Args:
        bits: 1, 2, 3, 4 or 8.
        signed: signed or unsigned level set (table in the module docstring).
        num_channels: ``None`` for one step per tensor; else one step per index
            of axis 0 of the input (output channels of a weight).

    Forward (b >= 2, or unsigned 1-bit), with ``s_g = grad_scale(s, g)``::

        q = round_ste(clamp(x / s_g, Qn, Qp)) * s_g

    which equals ``clamp(round(x/s), Qn, Qp) * s`` and gives the LSQ gradients
    dq/dx = 1 inside [Qn*s, Qp*s] and 0 outside;
    dq/ds = (round(x/s) - x/s) inside, Qn below, Qp above; each times
    g = 1 / sqrt(numel_per_step * Qp), numel_per_step = x.numel() / num_steps
    (for activations this includes the batch dimension).

    Signed 1-bit (levels {-s, +s}): q = s * sign(x) with sign(0) = +1;
    dq/dx = 1 where |x| <= s, else 0 (clipped STE); dq/ds = sign(x) * g
    (with Qp = 1 in g). This step gradient is the one whose fixed point under a
    reconstruction loss ||q - x||^2 is the MSE-optimal binary scale mean|x|.

    Initialisation (LSQ): s = 2 * mean(|v|) / sqrt(Qp) (Qp = 1 for 1-bit),
    per channel when per-channel. Call :meth:`init_from` for weights; an
    activation quantizer that was not initialised does it on the first batch
    it sees (``initialized`` buffer, saved in the state_dict).
    """

    def __init__(self, bits: int, signed: bool, num_channels: Optional[int] = None,
                 device=None, dtype=None):
        super().__init__()
        self.bits = int(bits)
        self.signed = bool(signed)
        self.qn, self.qp = quant_range(self.bits, self.signed)
        self.binary_signed = self.signed and self.bits == 1
        self.num_channels = num_channels
        shape = (num_channels,) if num_channels is not None else ()
        self.step = nn.Parameter(torch.ones(shape, device=device, dtype=dtype))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool, device=device))

    @property
    def per_channel(self) -> bool:
        return self.num_channels is not None

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, signed={self.signed}, "
                f"per_channel={self.per_channel}, levels=[{self.levels()[0]}..{self.levels()[-1]}]")

    def levels(self) -> List[int]:
        """Integer level of each code, in code order (the codebook)."""
        if self.binary_signed:
            return list(BINARY_LEVELS)
        return list(range(self.qn, self.qp + 1))

    def _view(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Broadcast a per-step tensor against ``x`` (steps along axis 0)."""
        if not self.per_channel:
            return t
        if x.shape[0] != self.num_channels:
            raise ValueError(f"per-channel quantizer has {self.num_channels} steps but the "
                             f"input has {x.shape[0]} entries on axis 0 (shape {tuple(x.shape)})")
        return t.view((-1,) + (1,) * (x.dim() - 1))

    @torch.no_grad()
    def init_from(self, v: torch.Tensor) -> None:
        """LSQ init: s = 2 * mean|v| / sqrt(Qp) (per channel on axis 0 if per-channel)."""
        v = v.detach().abs().to(self.step.dtype)
        if self.per_channel:
            m = v.reshape(v.shape[0], -1).mean(dim=1)
        else:
            m = v.mean()
        s = 2.0 * m / math.sqrt(self.qp)
        self.step.copy_(s.clamp_min(_STEP_EPS).reshape(self.step.shape))
        self.initialized.fill_(True)

    def effective_step(self, x: torch.Tensor) -> torch.Tensor:
        """Step as used by the forward: value s (clamped >= 1e-8), gradient scaled by g,
        broadcastable against ``x``."""
        steps = self.step.numel()
        g = 1.0 / math.sqrt((x.numel() / steps) * self.qp)
        return self._view(grad_scale(self.step.clamp_min(_STEP_EPS), g), x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.init_from(x)
        s = self.effective_step(x)
        if self.binary_signed:
            sign = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
            u = torch.clamp(x / s.detach(), -1.0, 1.0)
            # value sign * s exactly (u - u.detach() == 0); gradients as documented
            return (sign + (u - u.detach())) * s
        return round_ste(torch.clamp(x / s, self.qn, self.qp)) * s

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[int], torch.Tensor]:
        """Integer export of ``self(x)``.

        Returns ``(codes, codebook, step)``:
          * codes: uint8 tensor shaped like ``x``, values in [0, 2^bits);
          * codebook: list of 2^bits ints, the integer level of each code
            (signed 2-bit [-2, -1, 0, 1]; signed 1-bit [-1, 1]; unsigned 2-bit
            [0, 1, 2, 3]);
          * step: float tensor, shape () per-tensor or (C,) per-channel (axis 0),
            the exact step value used by the forward.
        Contract: ``codebook[codes] * step`` (step broadcast along axis 0) equals
        ``self(x)`` bit for bit. Does not initialise the quantizer.
        """
        if not bool(self.initialized):
            raise RuntimeError("quantizer is not initialised: call init_from() or run a forward first")
        s = self.effective_step(x).detach()
        if self.binary_signed:
            c = (x >= 0).to(torch.uint8)
        else:
            c = (torch.clamp(x / s, self.qn, self.qp).round() - self.qn).to(torch.uint8)
        return c, self.levels(), s.reshape(self.step.shape).clone()


def _add_quantizers(layer, w_bits: int, a_bits: int, act_signed: bool, per_channel: bool) -> None:
    """layer.weight_quant (signed, per output channel if per_channel, initialised from the weight)
    and layer.act_quant (signed iff act_signed, per tensor, initialised on its first batch)."""
    w = layer.weight
    layer.w_bits, layer.a_bits, layer.act_signed = int(w_bits), int(a_bits), bool(act_signed)
    layer.weight_quant = LsqQuantizer(layer.w_bits, True, w.shape[0] if per_channel else None, w.device, w.dtype)
    layer.weight_quant.init_from(w)
    layer.act_quant = LsqQuantizer(layer.a_bits, layer.act_signed, None, device=w.device, dtype=w.dtype)


def _copy_float(q, layer):
    """q with layer's weight and bias copied in, its weight step initialised from them and layer's mode."""
    with torch.no_grad():
        q.weight.copy_(layer.weight)
        if layer.bias is not None:
            q.bias.copy_(layer.bias)
    q.weight_quant.init_from(q.weight)
    q.train(layer.training)
    return q


class QConv2d(nn.Conv2d):
    """nn.Conv2d whose weight and input are LSQ fake-quantized.

    Same parameters (``weight``, ``bias``) and hyperparameters as the source
    conv; adds ``weight_quant`` (signed, ``w_bits``) and ``act_quant``
    (``a_bits``, signed iff ``act_signed``). Only ``padding_mode='zeros'``.
    Note: ``isinstance(m, nn.Conv2d)`` is also true for QConv2d.
    """

    def __init__(self, *args, w_bits: int = 2, a_bits: int = 2, act_signed: bool = False,
                 per_channel: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError(f"QConv2d supports padding_mode='zeros' only, got {self.padding_mode!r}")
        _add_quantizers(self, w_bits, a_bits, act_signed, per_channel)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, w_bits: int, a_bits: int, act_signed: bool,
                   per_channel: bool = True) -> "QConv2d":
        """Copy ``conv`` (weights and hyperparameters) into a QConv2d; init the weight step."""
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype,
                w_bits=w_bits, a_bits=a_bits, act_signed=act_signed, per_channel=per_channel)
        return _copy_float(q, conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.act_quant(x), self.weight_quant(self.weight), self.bias)


class QLinear(nn.Linear):
    """nn.Linear whose weight and input are LSQ fake-quantized (see :class:`QConv2d`).

    Note: ``isinstance(m, nn.Linear)`` is also true for QLinear.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 w_bits: int = 2, a_bits: int = 2, act_signed: bool = False,
                 per_channel: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        _add_quantizers(self, w_bits, a_bits, act_signed, per_channel)

    @classmethod
    def from_float(cls, lin: nn.Linear, w_bits: int, a_bits: int, act_signed: bool,
                   per_channel: bool = True) -> "QLinear":
        """Copy ``lin`` into a QLinear; init the weight step."""
        q = cls(lin.in_features, lin.out_features, lin.bias is not None, w_bits=w_bits,
                a_bits=a_bits, act_signed=act_signed, per_channel=per_channel,
                device=lin.weight.device, dtype=lin.weight.dtype)
        return _copy_float(q, lin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act_quant(x), self.weight_quant(self.weight), self.bias)


# --------------------------------------------------------------------------
# Graph analysis: execution order and activation signedness.

_RELU_MODULES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid)
_RELU_FUNCTIONS = {F.relu, torch.relu, F.relu6, torch.sigmoid, F.sigmoid, F.hardsigmoid}
_RELU_METHODS = {"relu", "relu_", "sigmoid"}
# Ops whose output is >= 0 whenever their tensor input (first argument) is.
_KEEP_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                 nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout2d)
_KEEP_FUNCTIONS = {torch.flatten, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                   F.adaptive_max_pool2d, F.dropout, torch.reshape, torch.squeeze,
                   torch.unsqueeze}
_KEEP_METHODS = {"view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze",
                 "permute", "transpose", "clone", "detach", "mean"}
# Ops whose output is >= 0 when ALL their tensor inputs are (and constants are >= 0).
_ALL_FUNCTIONS = {operator.add, operator.iadd, torch.add, operator.mul, torch.mul, torch.cat}
_ALL_METHODS = {"add", "add_", "mul", "mul_"}


def _is_nonneg(node, modules: Dict[str, nn.Module], memo: Dict) -> bool:
    """True when the fx ``node``'s value is provably >= 0 (see :func:`prepare`)."""
    from torch import fx

    if node in memo:
        return memo[node]
    memo[node] = False  # guards cycles (none in fx graphs) and is the default
    result = False
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, _RELU_MODULES):
            result = True
        elif isinstance(m, _KEEP_MODULES):
            result = isinstance(node.args[0], fx.Node) and _is_nonneg(node.args[0], modules, memo)
    elif node.op in ("call_function", "call_method"):
        fns = (_RELU_FUNCTIONS, _KEEP_FUNCTIONS, _ALL_FUNCTIONS) if node.op == "call_function" \
            else (_RELU_METHODS, _KEEP_METHODS, _ALL_METHODS)
        if node.target in fns[0]:
            result = True
        elif node.target in fns[1]:
            first = node.args[0] if node.args else None
            result = isinstance(first, fx.Node) and _is_nonneg(first, modules, memo)
        elif node.target in fns[2]:
            args = list(node.args)
            if node.target is torch.cat and args and isinstance(args[0], (list, tuple)):
                args = list(args[0])
            result = bool(args) and all(_is_nonneg(a, modules, memo) if isinstance(a, fx.Node)
                                        else isinstance(a, (int, float)) and a >= 0 for a in args)
    memo[node] = result
    return result


def _trace(model: nn.Module):
    """fx graph of ``model``; QConv2d/QLinear/LsqQuantizer are leaves (lowbit.convert traces with it too)."""
    from torch import fx

    class _Proxy(fx.Proxy):
        # fx's Proxy has no __iadd__, so ``x += y`` would be recorded as ``x = x + y``; on a
        # tensor it writes x's memory, which other names of that tensor see: record operator.iadd
        def __iadd__(self, other):
            return self.tracer.create_proxy("call_function", operator.iadd, (self, other), {})

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, (QConv2d, QLinear, LsqQuantizer)) or super().is_leaf_module(m, qualname)

        def proxy(self, node):
            return _Proxy(node, self)

    return _Tracer().trace(model)


def _analyse_fx(model: nn.Module) -> List[Tuple[str, bool]]:
    """[(qualified name, input_nonneg)] for each Conv2d/Linear call, in execution order."""
    from torch import fx

    graph = _trace(model)
    modules = dict(model.named_modules())
    memo: Dict = {}
    calls = []
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], (nn.Conv2d, nn.Linear)):
            inp = node.args[0]
            calls.append((node.target, isinstance(inp, fx.Node) and _is_nonneg(inp, modules, memo)))
    return calls


def _analyse_hooks(model: nn.Module, example_input) -> List[Tuple[str, bool]]:
    """Fallback for models fx cannot trace: run ``example_input`` with forward
    hooks; order = call order, input_nonneg = (input.min() >= 0) on that input."""
    calls = []
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            def hook(mod, inputs, _name=name):
                calls.append((_name, bool(inputs[0].detach().min() >= 0)))
            handles.append(m.register_forward_pre_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            if isinstance(example_input, (tuple, list)):
                model(*example_input)
            else:
                model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return calls


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def prepare(model: nn.Module, w_bits: int = 2, a_bits: int = 2,
            first_last_bits: Optional[int] = 8, per_channel: bool = True,
            example_input=None) -> nn.Module:
    """Deep copy of ``model`` with every Conv2d/Linear replaced by QConv2d/QLinear.

    * Bits: ``w_bits``/``a_bits`` everywhere, except the first and the last
      Conv2d/Linear in execution order, which get ``first_last_bits`` for both
      weight and input (``first_last_bits=None``: no exception).
    * Execution order comes from ``torch.fx.symbolic_trace`` (graph node order).
      If the model is not traceable, pass ``example_input``: the order is then
      the call order of forward pre-hooks on that input.
    * Activation sign rule (fx): a layer's input is UNSIGNED when it is provably
      >= 0: it is the output of ReLU/ReLU6/Sigmoid/Hardsigmoid (module, function
      or method), or of a shape/pooling op (max/avg/adaptive pool, flatten, view,
      reshape, dropout, identity, ...) applied to such a value, or an add/mul/cat
      whose inputs all are (constants >= 0). Everything else, the network input
      included, is SIGNED. "residual add then ReLU" is unsigned through the ReLU.
      With the hook fallback, unsigned = the example input to that layer had
      min >= 0. A module called from several places is signed if any call is.
    * Weights: signed, per output channel if ``per_channel``, step initialised
      from the weights now; activation steps initialise on the first batch.
    * Modules never called in forward are still replaced (signed input, w/a bits).

    The input model is not modified.
    """
    for b in (w_bits, a_bits) + ((first_last_bits,) if first_last_bits is not None else ()):
        quant_range(b, True)  # validates
    qmodel = copy.deepcopy(model)
    try:
        calls = _analyse_fx(qmodel)
    except Exception as exc:  # fx cannot trace data-dependent control flow etc.
        if example_input is None:
            raise RuntimeError(
                "lowbit.qat.prepare: torch.fx could not trace the model "
                f"({type(exc).__name__}: {exc}); pass example_input=<a batch> to "
                "use the forward-hook fallback") from exc
        calls = _analyse_hooks(qmodel, example_input)

    first_last = set()
    if calls and first_last_bits is not None:
        first_last = {calls[0][0], calls[-1][0]}
    nonneg: Dict[str, bool] = {}
    for name, nn_ in calls:
        nonneg[name] = nonneg.get(name, True) and nn_

    targets = [(n, m) for n, m in qmodel.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, (QConv2d, QLinear))]
    for name, m in targets:
        wb, ab = (first_last_bits, first_last_bits) if name in first_last else (w_bits, a_bits)
        signed = not nonneg.get(name, False)
        cls = QConv2d if isinstance(m, nn.Conv2d) else QLinear
        if cls is QConv2d and type(m) is not nn.Conv2d:
            raise TypeError(f"{name}: unsupported Conv2d subclass {type(m).__name__}")
        _set_submodule(qmodel, name, cls.from_float(m, wb, ab, signed, per_channel))
    return qmodel


def quantized_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """[(name, QConv2d/QLinear)] of a prepared model in execution order (fx), or
    in module-registration order if the model cannot be traced."""
    mods = dict(model.named_modules())
    try:
        names = [n for n, _ in _analyse_fx(model)]
    except Exception:
        names = [n for n, m in mods.items() if isinstance(m, (QConv2d, QLinear))]
    return [(n, mods[n]) for n in dict.fromkeys(names) if isinstance(mods[n], (QConv2d, QLinear))]
