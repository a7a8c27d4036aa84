"""QONNX models (Brevitas exports) on lowbit: ``lowbit.from_qonnx(path) -> lowbit.Model``.

QONNX is ONNX plus three custom ops in the domain ``qonnx.custom_op.general``
(Brevitas' ``export_qonnx`` writes them; older files use ``finn.custom_op.general``
or ``onnx.brevitas``):

``Quant(x, scale, zero_point, bit_width)``, attrs ``signed``, ``narrow``, ``rounding_mode``::

    q = clamp(x / scale + zero_point, qmin, qmax); q = round(q); y = (q - zero_point) * scale
    qmin, qmax = 0 .. 2^b - 1 - narrow (unsigned), -2^(b-1) + narrow .. 2^(b-1) - 1 (signed)

``BipolarQuant(x, scale)``: ``y = (x >= 0 ? +1 : -1) * scale``.

``Trunc(x, scale, zero_point, in_bits, out_scale, out_bits)`` (v2; v1 has no
``out_scale`` and rescales by ``scale``)::

    q = round(x / scale + zero_point); T = 2^round(log2(out_scale / scale))
    r = rounding_mode(clamp(q / T, qmin(out_bits), qmax(out_bits))); y = (r - zero_point / T) * out_scale

How a graph maps onto :class:`lowbit.Model` nodes
-------------------------------------------------
The importer interprets the graph in topological order and only translates:
constants (initializers, ``Constant`` and everything computed from constants
only) are folded with NumPy (a ``Quant`` on weights keeps its integers
``q - zero_point`` as the layer's integer codebook); an activation that is
the output of a quantizer (or of a value-preserving op of one: ``MaxPool``,
``Flatten``/``Reshape``, ``Identity``) carries its grid (:class:`lowbit.quant.
UniformGrid`) and becomes codes lazily, when a conv/linear reads it (a
``quantize`` node; ``MaxPool`` runs before it, as max commutes with a
monotone quantizer); ``Conv``/``Gemm``/``MatMul`` with quantized weights and
input become ``conv``/``linear`` (others ``conv_f32``/``linear_f32``);
``BatchNormalization``, elementwise ops with a per-channel constant, ``Add``,
``Relu``/``Clip`` become ``affine``/``add``/``clamp``; a zero ``Pad`` becomes
the next conv's padding; a ``Transpose`` before a flatten into a
``Gemm``/``MatMul`` moves into the weights. :func:`lowbit.lowering.lower`
(shared with :func:`lowbit.convert`) then folds affine maps, residual adds and
clamps into the producing layer's epilogue and turns a ``quantize`` of a layer
output nothing else reads into that epilogue's requantization.

docs/brevitas.md describes every op, what is bit exact, where a code can differ
from the qonnx executor (only at a rounding tie), the signed 1-bit ``Quant``
(levels -1..0 as QONNX defines it, unlike qonnx 1.0's executor) and ``Trunc``.

Functions
---------
:func:`from_qonnx` converts (this module); :func:`to_float_onnx` lowers every
quantizer to standard float ONNX ops for onnxruntime (:mod:`lowbit.qonnx_float`);
:func:`compare_qonnx`, :func:`trace_divergence` and :func:`qonnx_execute` measure
parity against the qonnx executor (:mod:`lowbit.qonnx_parity`); :func:`bench_qonnx`
times lowbit against onnxruntime on the float-lowered model
(:mod:`lowbit.qonnx_bench`). All are importable from ``lowbit.qonnx``.
"""
from __future__ import annotations

import copy
import math
import os
from collections import Counter

import numpy as np

from .. import codebook as cbmod
from ..errors import ConversionError
from .lowering import batchnorm_affine, layer_node, lower, quantize_node, unique_name
from ..quant import ROUNDING, UniformGrid, bits_for, grid_levels, int_range
from ..runtime.model import Model, Node

__all__ = ["QonnxConversionError", "from_qonnx", "to_float_onnx", "compare_qonnx", "compare_precisions", "qonnx_execute",
           "trace_divergence", "bench_qonnx", "quant_numpy", "SUPPORTED_OPS"]

QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general", "onnx.brevitas", "qonnx.custom_op")
_QOPS = ("Quant", "BipolarQuant", "Trunc")
# ops that may read activations (anything may appear on constants: it is folded)
SUPPORTED_OPS = ("Quant", "BipolarQuant", "Trunc", "Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Neg",
                 "Relu", "Clip", "Pad",
                 "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean",
                 "BatchNormalization", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity",
                 "Dropout", "Concat")


# What to do about ops that models commonly use on activations and lowbit does not run
_HINTS = {
    "Expand": "broadcast a per-channel constant with Mul/Add instead",
    "Slice": "split channels into separate convs instead of slicing an activation",
    "Split": "split channels into separate convs instead of splitting an activation",
}

# Import limits on the graph input's C, H, W (docs/robustness.md): one image of
# at most 2**28 values (1 GiB of float32), no dimension above 2**20.
_MAX_IMAGE_DIM = 1 << 20
_MAX_IMAGE_ELEMENTS = 1 << 28


class QonnxConversionError(ConversionError):
    """The QONNX graph uses something lowbit cannot run (the message names it)."""


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:  # pragma: no cover
        raise ImportError("lowbit.from_qonnx needs the onnx package (pip install 'lowbit[qonnx]')") from exc
    return onnx, numpy_helper


def _check_strings(m):
    """ValueError unless every name the importer reads is text: protobuf hands
    back bytes for a proto2 string field that is not valid UTF-8."""
    g = m.graph
    fields = [("graph input", v.name) for v in g.input] + [("graph output", v.name) for v in g.output]
    fields += [("initializer", t.name) for t in g.initializer]
    for n in g.node:
        fields += [("node name", n.name), ("node op_type", n.op_type), ("node domain", n.domain)]
        fields += [("node input", s) for s in n.input] + [("node output", s) for s in n.output]
        fields += [("attribute name", a.name) for a in n.attribute]
    for what, value in fields:
        if not isinstance(value, str):
            raise ValueError(f"model: {what} {value!r} is not valid UTF-8 text")
    return m


def _load(model):
    """onnx.ModelProto from a path, bytes, a ModelProto or a qonnx ModelWrapper (copied);
    its names checked to be text (_check_strings)."""
    onnx, _ = _onnx()
    if isinstance(model, (str, os.PathLike)):
        if not os.path.exists(model):
            raise FileNotFoundError(f"model: no such file {os.fspath(model)!r}")
        m = onnx.load(os.fspath(model))
    elif isinstance(model, (bytes, bytearray)):
        try:
            m = onnx.load_from_string(bytes(model))
        except Exception as exc:  # protobuf's DecodeError (and RuntimeWarning-free variants)
            raise ValueError(f"model: the bytes are not a serialized ONNX model ({exc})") from None
    else:
        if hasattr(model, "model") and isinstance(getattr(model, "model"), onnx.ModelProto):  # qonnx ModelWrapper
            model = model.model
        if not isinstance(model, onnx.ModelProto):
            raise TypeError(f"model: expected a path to a .onnx file, an onnx.ModelProto or a qonnx ModelWrapper, "
                            f"got {type(model).__name__}")
        m = onnx.ModelProto()
        m.CopyFrom(model)
    return _check_strings(m)


def _attrs(node) -> dict:
    onnx, _ = _onnx()
    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _is_qop(node) -> bool:
    return node.op_type in _QOPS and (node.domain in QONNX_DOMAINS or node.domain.startswith("qonnx")
                                      or node.domain.startswith("finn") or node.domain == "")


def _desc(node) -> str:
    return f"{node.op_type} node {node.name or node.output[0]!r}"


# ---------------------------------------------------------------------------------------------
# Quantizer arithmetic (NumPy, float32, exactly the QONNX formulas)

def _round_fn(mode: str, where: str):
    fn = ROUNDING.get((mode or "ROUND").upper())
    if fn is None:
        raise QonnxConversionError(f"{where}: unknown rounding_mode {mode!r}")
    return fn


def quant_numpy(x, scale, zero_point, bits, signed, narrow, rounding_mode="ROUND"):
    """QONNX ``Quant`` in float32 NumPy (the definition; a signed 1-bit Quant has
    levels -1..0 here, unlike qonnx 1.0's executor). Returns (y, q - zero_point)."""
    x = np.asarray(x, np.float32)
    s = np.asarray(scale, np.float32)
    zp = np.asarray(zero_point, np.float32)
    bits = int(round(float(np.asarray(bits).reshape(-1)[0])))
    y = x / s + zp
    lo, hi = (np.float32(v) for v in int_range(bits, signed, narrow))
    y = np.where(y > hi, hi, y)
    y = np.where(y < lo, lo, y)
    y = _round_fn(rounding_mode, "Quant")(y).astype(np.float32)
    q = y - zp
    return (q * s).astype(np.float32), q


def _as_scalar(arr, what, where):
    a = np.asarray(arr)
    if a.size != 1:
        raise QonnxConversionError(f"{where}: {what} must be a scalar here, got shape {a.shape}")
    return a.reshape(-1)[0]


def _scale(v, what, where) -> np.float32:
    """A quantizer's scalar scale as float32; QonnxConversionError unless it is finite and > 0."""
    s = np.float32(_as_scalar(v, what, where))
    if not (np.isfinite(s) and s > 0):
        raise QonnxConversionError(f"{where}: {what} must be finite and > 0, got {s}")
    return s


def _bit_width(b, what, where) -> int:
    """A quantizer's bit width as an int in 1..32; QonnxConversionError for
    0, 33, fractional, NaN or infinite widths."""
    v = float(_as_scalar(b, what, where))
    if not (math.isfinite(v) and v.is_integer() and 1 <= v <= 32):
        raise QonnxConversionError(f"{where}: {what} {v:g} is not supported (expected an integer in 1..32)")
    return int(v)


def _check_levels(levels, bits, where):
    lo, hi = (-128, 255) if bits == 8 else (-128, 127)
    if min(levels) < lo or max(levels) > hi:
        raise QonnxConversionError(f"{where}: integer levels [{min(levels)}, {max(levels)}] do not fit a "
                                   f"{bits}-bit lowbit codebook ([{lo}, {hi}])")


class _Codes:
    """A lowbit node whose output is codes: bits, levels (list), step; ``chan``: per-channel
    steps (then ``step`` is 1, see UniformGrid)."""

    __slots__ = ("node", "bits", "levels", "step", "chan")

    def __init__(self, node, bits, levels, step, chan=None):
        self.node, self.bits, self.levels, self.step = node, int(bits), [int(v) for v in levels], float(step)
        self.chan = chan

    def matches(self, g: UniformGrid):
        return g is not None and self.bits == g.bits and self.levels == g.levels() and \
            np.float32(self.step) == np.float32(g.step) and \
            (self.chan is None) == (g.chan is None) and (g.chan is None or np.array_equal(self.chan, g.chan))


class _QConst:
    """A quantized constant: float32 ``values`` (QONNX semantics), integer ``ints``
    (q - zero_point, or None if not integral), ``scale`` broadcast to the full shape,
    the integer range of the grid (or None) and whether it is bipolar."""

    def __init__(self, values, ints, scale, irange, binary=False):
        self.values = np.asarray(values, np.float32)
        self.ints = ints
        self.scale = np.broadcast_to(np.asarray(scale, np.float32), self.values.shape).copy()
        self.irange, self.binary = irange, binary

    def transform(self, fn):
        return _QConst(fn(self.values), None if self.ints is None else fn(self.ints), fn(self.scale), self.irange,
                       self.binary)


def _values(v):
    """The float values of a constant (a _QConst's QONNX values, or the array itself)."""
    return v.values if isinstance(v, _QConst) else v


def _to_lowbit_columns(arr, colperm):
    """arr (..., K) in ONNX column order -> lowbit's (ONNX column i is lowbit column colperm[i]);
    arr itself when colperm is None."""
    if colperm is None:
        return arr
    out = np.empty_like(arr)
    out[..., colperm] = arr
    return out


def _transform(v, fn):
    """fn applied to a constant's values (and a _QConst's integers and scales)."""
    return v.transform(fn) if isinstance(v, _QConst) else fn(v)


class _Act:
    """An activation tensor. ``shape``: its ONNX shape (batch dim None). Lowbit
    values: ``fl`` (node giving float32, NHWC for 4-D) and/or ``cd`` (_Codes).
    ``grid``: the grid its values lie on (or None). ``conv``: the conv/linear
    node whose open epilogue produces it. ``perm``: 4-D tensors only, the ONNX
    tensor is the NCHW value transposed by perm. ``colperm``: 2-D tensors only,
    ONNX column i is column colperm[i] of the lowbit value. ``global_pool``: a
    1x1 map made by global pooling (flattening it keeps the input size free).

    Quantization is lazy: a Quant output starts as ``pre`` (the float node it
    quantizes) with its grid, and becomes codes (a quantize node, or the
    requantizing epilogue of ``pre_conv``) or float (codes, then dequantize)
    only when a reader asks. Max pooling commutes with the (monotone)
    quantizer, so it runs on ``pre`` and the codes are made after it. ``name``:
    the ONNX tensor (for compare_qonnx). ``unflat``: 2-D and 3-D tensors only, the
    (N, C, 1, 1) map whose flattening this is (what Unsqueeze returns to)."""

    __slots__ = ("shape", "fl", "cd", "grid", "conv", "perm", "colperm", "global_pool", "pre", "pre_conv", "name",
                 "pad", "origin", "unflat")

    def __init__(self, shape, fl=None, cd=None, grid=None, conv=None, perm=None, colperm=None, global_pool=False,
                 pre=None, pre_conv=None, name=None, pad=None, origin=None):
        self.shape = tuple(shape)
        self.fl, self.cd, self.grid, self.conv = fl, cd, grid, conv
        self.perm, self.colperm, self.global_pool = perm, colperm, global_pool
        self.pre, self.pre_conv, self.name = pre, pre_conv, name
        self.pad = pad   # 4-D only: a pending zero Pad [top, left, bottom, right] (shape includes it)
        self.origin = origin   # the Quant node of a lazily quantized activation (lowering's ``origin``)
        self.unflat = None

    def copy(self, **kw):
        a = copy.copy(self)
        for k, v in kw.items():
            setattr(a, k, v)
        return a


def _pair_attr(v, default):
    return list(default) if v is None else [int(x) for x in v]


def _pads(attrs, kernel, in_hw, strides, dilations, where):
    """[top, left, bottom, right] from ONNX pads / auto_pad (SAME_UPPER puts an odd extra
    row/column at the end, SAME_LOWER at the beginning, as ONNX defines them)."""
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        p = _pair_attr(attrs.get("pads"), [0, 0, 0, 0])
        if len(p) != 4:
            raise QonnxConversionError(f"{where}: expected 4 pads, got {p}")
        return p   # negative pads are refused by _check_window (their symmetric part is negative)
    if auto == "VALID":
        return [0, 0, 0, 0]
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise QonnxConversionError(f"{where}: auto_pad={auto!r} is not supported")
    _check_window(in_hw, kernel, strides, [0, 0], dilations, where)
    begin, end = [], []
    for i in range(2):
        out = -(-in_hw[i] // strides[i])
        total = max((out - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1 - in_hw[i], 0)
        small, large = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else large)
        end.append(large if auto == "SAME_UPPER" else small)
    return begin + end


def _check_window(in_hw, kernel, stride, pad, dil, where):
    """QonnxConversionError unless a conv/pool window is well formed: two
    sizes each, kernel, stride, dilation >= 1, padding >= 0, input >= 1."""
    for what, v, lo in (("input size", in_hw, 1), ("kernel_shape", kernel, 1), ("strides", stride, 1),
                        ("pads", pad, 0), ("dilations", dil, 1)):
        if v is None or len(v) != 2 or not all(isinstance(x, (int, np.integer)) and x >= lo for x in v):
            raise QonnxConversionError(f"{where}: {what} {v} is not supported (expected 2 ints >= {lo})")


def _out_hw(in_hw, kernel, stride, pad, dil, where, ceil=False):
    _check_window(in_hw, kernel, stride, pad, dil, where)
    out = []
    for i in range(2):
        num = in_hw[i] + 2 * pad[i] - dil[i] * (kernel[i] - 1) - 1
        o = (-(-num // stride[i]) if ceil else num // stride[i]) + 1
        if ceil and (o - 1) * stride[i] >= in_hw[i] + pad[i]:
            o -= 1
        if o < 1:
            raise QonnxConversionError(f"{where}: input {list(in_hw)} is too small for kernel {list(kernel)}, "
                                       f"dilation {list(dil)}, padding {list(pad)}")
        out.append(o)
    return out


def _window(a, kernel, x_shape, where, pool=False):
    """The window of a conv (or, with ``pool``, a pooling) node with attributes ``a`` and kernel
    size ``kernel`` over a 4-D input of shape ``x_shape``: (strides, dilations, the symmetric
    padding [ph, pw] the node applies itself, the rest [top, left, bottom, right] for an explicit
    ``pad`` node in front (zero when the pads are symmetric), [OH, OW]). A pool's padding must be
    smaller than its kernel, and its ``ceil_mode`` must not change the output size."""
    stride = _pair_attr(a.get("strides"), [1, 1])
    dil = _pair_attr(a.get("dilations"), [1, 1])
    full = _pads(a, kernel, x_shape[2:], stride, dil, where)
    pad = [min(full[0], full[2]), min(full[1], full[3])]
    extra = [full[0] - pad[0], full[1] - pad[1], full[2] - pad[0], full[3] - pad[1]]
    in_hw = [x_shape[2] + extra[0] + extra[2], x_shape[3] + extra[1] + extra[3]]
    out = _out_hw(in_hw, kernel, stride, pad, dil, where)
    if pool and any(p >= k for p, k in zip(full, kernel + kernel)):
        raise QonnxConversionError(f"{where}: padding {full} must be smaller than the kernel {kernel}")
    if pool and int(a.get("ceil_mode", 0)) and out != _out_hw(in_hw, kernel, stride, pad, dil, where, ceil=True):
        if any(extra):
            raise QonnxConversionError(f"{where}: ceil_mode=1 with asymmetric padding {full} is not supported")
        raise QonnxConversionError(f"{where}: ceil_mode=1 changes the output size here; not supported")
    return stride, dil, pad, extra, out


# ---------------------------------------------------------------------------------------------

class _Converter:
    def __init__(self, model, requant_in_epilogue=True, input_grid=None):
        onnx, nh = _onnx()
        self.input_grid = input_grid   # a declared input quantization (from_qonnx's input_scale), or None
        self.onnx, self.nh = onnx, nh
        self.graph = model.graph
        self.requant_ok = bool(requant_in_epilogue)
        self.consts = {}
        for init in self.graph.initializer:
            try:
                self.consts[init.name] = nh.to_array(init)
            except Exception as exc:  # noqa: BLE001 - onnx raises Type/Value/KeyError for undefined or
                # unknown element types, data of the wrong size...: all mean a malformed file
                raise QonnxConversionError(f"initializer {init.name!r}: unreadable tensor "
                                           f"({type(exc).__name__}: {exc})") from None
        self.vals = {}
        self.nodes, self.names = [], set()
        self.codes_of = {}   # lowbit node -> ONNX tensor whose Quant codes it outputs (for compare_qonnx)
        self.spatial_fixed = False

    # ---- structure -----------------------------------------------------------------------------
    def toposort(self):
        g = self.graph
        known = set(self.consts) | {i.name for i in g.input} | {""}
        pending, order = list(g.node), []
        while pending:
            rest = []
            for n in pending:
                if all(i in known for i in n.input):
                    order.append(n)
                    known.update(n.output)
                else:
                    rest.append(n)
            if len(rest) == len(pending):
                missing = sorted({i for n in rest for i in n.input if i not in known})
                raise QonnxConversionError(f"graph: tensors {missing[:5]} are read but never produced (or the "
                                           "graph has a cycle)")
            pending = rest
        return order

    def check_supported(self, order):
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise QonnxConversionError(f"graph: expected exactly one (non-initializer) input, got "
                                       f"{[i.name for i in inputs]}")
        if len(self.graph.output) != 1:
            raise QonnxConversionError(f"graph: expected exactly one output, got {len(self.graph.output)}")
        const = set(self.consts) | {""}
        where = {}   # unsupported op -> the nodes that use it
        self.is_const = {}
        for n in order:
            self.is_const[id(n)] = n.op_type != "Trunc" and (
                n.op_type == "Constant" or all(i in const for i in n.input)
                or (n.op_type == "CastLike" and n.input[0] in const))  # activations are float32
            if self.is_const[id(n)]:
                const.update(n.output)
                continue
            std = n.domain in ("", "ai.onnx")
            ok = _is_qop(n) or (std and n.op_type in SUPPORTED_OPS and n.op_type not in _QOPS)
            if not ok:
                key = n.op_type if std else f"{n.domain}.{n.op_type}"
                where.setdefault(key, []).append(n.name or n.output[0])
        if where:
            parts = [f"{k} x{len(v)} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
                     + (f" [{_HINTS[k]}]" if k in _HINTS else "") for k, v in sorted(where.items())]
            raise QonnxConversionError(
                "lowbit.from_qonnx: unsupported node types in the graph: " + "; ".join(parts)
                + ". Supported on activations: " + ", ".join(SUPPORTED_OPS)
                + " (anything computed from constants only is folded).")
        self.input = inputs[0]

    # ---- node list -----------------------------------------------------------------------------
    def uname(self, base):
        return unique_name(base, self.names)

    def add(self, name, op, inputs, attrs=None, arrays=None):
        node = Node(self.uname(name), op, inputs, attrs, arrays)
        self.nodes.append(node)
        return node.name

    # ---- materialization -----------------------------------------------------------------------
    def _check_readable(self, act: _Act, where):
        """QonnxConversionError for a pending zero Pad (only a Conv reads it) or Transpose (only a
        flatten into a Gemm/MatMul reads it) of an activation."""
        if act.pad is not None:
            raise QonnxConversionError(f"{where}: reads a Pad of an activation; a zero Pad is supported only right "
                                       "before a Conv (it becomes the conv's padding). Use the conv's own padding")
        if act.perm is not None:
            raise QonnxConversionError(f"{where}: reads a Transpose(perm={list(act.perm)}) of an activation; "
                                       "transposed activations are supported only before Flatten/Reshape into "
                                       "a Gemm/MatMul")

    def float_of(self, act: _Act, where):
        self._check_readable(act, where)
        if act.fl is None:
            c = act.cd if act.cd is not None else self.codes_of_act(act, where)
            act.fl = self.add(c.node + ".dequant", "dequantize", [c.node], {"source": "dequantize"})
            if c.chan is not None:  # level * step[c], the float32 product QONNX computes
                act.fl = self.add(c.node + ".dequant_scale", "affine", [act.fl], {"source": "dequantize",
                                                                                 "keep": True},
                                  {"scale": c.chan, "bias": np.zeros_like(c.chan)})
        return act.fl

    def codes_of_act(self, act: _Act, where):
        """Codes a conv/linear can read: the act's own codes when they are the canonical
        codes of its grid, else a quantize node (exact for values already on the grid). A
        quantize of the float output of a layer that nothing else reads (``pre_conv``) may
        become that layer's requantizing epilogue in lowering, one of a max pool may move in
        front of it (``requant_before_maxpool``); any other is ``keep``."""
        self._check_readable(act, where)
        if act.cd is not None and (act.grid is None or act.cd.matches(act.grid)):
            return act.cd
        g = act.grid
        if g is None:
            raise QonnxConversionError(f"{where}: its input activation is not quantized (no Quant/BipolarQuant "
                                       "before it); lowbit runs only quantized convolutions (add an input "
                                       "quantizer, e.g. Brevitas QuantIdentity)")
        if act.pre is not None and act.fl is None:
            # not keep: the float output of a layer nothing else reads (lowering may fold the quantizer
            # into its epilogue), or of a max pool (lowering may move the quantizer in front of it)
            pooled = any(n.name == act.pre and n.op == "maxpool" for n in self.nodes)
            act.cd = self.quantize(act.pre, g, f"{act.name or act.pre}.quant", where,
                                   keep=act.pre_conv is None and not pooled,
                                   **({"origin": act.origin} if act.origin else {}))
            act.pre = act.pre_conv = None
            if act.name:
                self.codes_of[act.cd.node] = act.name
            return act.cd
        fl = self.float_of(act, where)
        act.cd = self.quantize(fl, g, f"{fl}.quant", where, keep=True)
        return act.cd

    def quantize(self, src, g: UniformGrid, name, where, levels=None, keep=True, **extra):
        """A quantize node of float value src onto grid g (per-channel steps: ``channel_steps``,
        see lowbit.lowering); ``levels``: its codebook when not the grid's (a Trunc's truncated
        levels); ``keep``: never folded into an epilogue; ``extra``: more attributes."""
        if g.bits is None:
            raise QonnxConversionError(f"{where}: {g.n} quantization levels do not fit 8-bit codes")
        levels = g.levels() if levels is None else [int(v) for v in levels]
        _check_levels(levels, g.bits, where)
        node = quantize_node(self.uname(name), src, g, levels=levels, source=where, keep=bool(keep), **extra)
        self.nodes.append(node)
        return _Codes(node.name, g.bits, levels, g.step, g.chan)

    def _pad_codes(self, cd: _Codes, pads, where):
        """Codes ``cd`` padded explicitly by ``pads`` [top, left, bottom, right] with the code of
        level 0 (the asymmetric part of a conv's zero padding; the conv pads the rest itself)."""
        if 0 not in cd.levels:
            raise QonnxConversionError(f"{where}: asymmetric zero padding {pads} of codes whose levels "
                                       f"{cd.levels} have no 0 (e.g. bipolar); pad symmetrically or quantize "
                                       "the input with a grid that has the level 0")
        name = self.add(cd.node + ".pad", "pad", [cd.node], {"pads": [int(p) for p in pads], "source": where})
        return _Codes(name, cd.bits, cd.levels, cd.step, cd.chan)

    def _pad_float(self, fl, pads, fill, where):
        """Float value ``fl`` padded explicitly with ``fill``: "zero", or "-inf" before a max pool."""
        return self.add(fl + ".pad", "pad", [fl], {"pads": [int(p) for p in pads], "fill": fill, "source": where})

    # ---- values --------------------------------------------------------------------------------
    def const(self, name, where, allow_q=True):
        v = self.vals.get(name, self.consts.get(name))
        if isinstance(v, _QConst):
            return v if allow_q else v.values
        if isinstance(v, np.ndarray):
            return v
        raise QonnxConversionError(f"{where}: input {name!r} must be a constant")

    def act(self, name, where):
        v = self.vals.get(name)
        if not isinstance(v, _Act):
            raise QonnxConversionError(f"{where}: input {name!r} must be an activation here")
        return v

    def fusable(self, name, act):
        """The node behind activation ``name`` when it may end a layer's epilogue after lowering
        (a conv/linear output, or a foldable op of one) and nothing else reads ``name``."""
        return act.conv if self.n_readers[name] == 1 else None

    # ---- conversion ----------------------------------------------------------------------------
    def run(self):
        order = self.toposort()
        self.check_supported(order)
        # n_readers[tensor]: how many node inputs (and graph outputs) read it
        self.n_readers = Counter([i for n in self.graph.node for i in n.input] + [o.name for o in self.graph.output])
        shp = self.input.type.tensor_type.shape
        dims = [d.dim_value if d.HasField("dim_value") else None for d in shp.dim]
        if len(dims) != 4 or any(d is None or d < 1 for d in dims[1:]):
            raise QonnxConversionError(f"graph input {self.input.name!r}: expected a 4-D NCHW image batch "
                                       f"with static C, H, W, got shape {dims}")
        if max(dims[1:]) > _MAX_IMAGE_DIM or math.prod(dims[1:]) > _MAX_IMAGE_ELEMENTS:
            raise QonnxConversionError(f"graph input {self.input.name!r}: C, H, W = {dims[1:]} exceed the import "
                                       f"limits (each <= {_MAX_IMAGE_DIM}, C*H*W <= {_MAX_IMAGE_ELEMENTS})")
        self.export_batch = dims[0]
        name = self.add("input", "input", [], {"channels": dims[1], "height": dims[2], "width": dims[3],
                                              "onnx_input": self.input.name})
        if self.input_grid is None:
            self.vals[self.input.name] = _Act((None,) + tuple(dims[1:]), fl=name)
        else:   # quantized lazily like a Quant output: a conv reads codes, anything else their values
            self.vals[self.input.name] = _Act((None,) + tuple(dims[1:]), grid=self.input_grid, pre=name,
                                              origin="input_quantization")
        for n in order:
            try:
                if self.is_const[id(n)]:
                    self.fold(n)
                else:
                    getattr(self, "op_" + n.op_type)(n, _attrs(n), _desc(n))
            except (ArithmeticError, IndexError, KeyError, TypeError, AttributeError) as exc:
                # a malformed node that no specific check caught (found by fuzzing): name it
                raise QonnxConversionError(f"{_desc(n)}: malformed node or attributes "
                                           f"({type(exc).__name__}: {exc})") from exc
        out = self.vals.get(self.graph.output[0].name)
        if not isinstance(out, _Act):
            raise QonnxConversionError("graph: the output does not depend on the input")
        return self.finish(out)

    def finish(self, out: _Act):
        where = f"graph output {self.graph.output[0].name!r}"
        if out.colperm is not None:
            raise QonnxConversionError(f"{where}: a transposed flattening as the model output is not supported")
        self._check_readable(out, where)
        if out.fl is None and out.cd is None and out.pre is not None:
            self.codes_of_act(out, where)
        if out.fl is None and out.cd.chan is not None:   # codes of per-channel steps: the model returns
            self.float_of(out, where)                      # their values (a dequantize returns level * 1)
        last = out.fl if out.fl is not None else out.cd.node   # every activation has a float value or codes
        low = lower(self.nodes, last, self.requant_ok, QonnxConversionError)
        self.codes_of = {low.replaced.get(low.moved.get(k, k), low.moved.get(k, k)): v
                         for k, v in self.codes_of.items()}
        low.nodes[0].attrs["spatial_fixed"] = bool(self.spatial_fixed)
        return low.nodes

    # ---- constants -----------------------------------------------------------------------------
    def fold(self, n):
        where = _desc(n)
        a = _attrs(n)
        if n.op_type == "Constant":
            t = n.attribute[0]
            if t.name not in ("value", "value_float", "value_int", "value_floats", "value_ints"):
                raise QonnxConversionError(f"{where}: unsupported Constant attribute {t.name}")
            v = self.onnx.helper.get_attribute_value(t)
            self.vals[n.output[0]] = self.nh.to_array(v) if t.name == "value" else np.array(v)
            return
        if n.op_type == "Quant" and _is_qop(n):
            x = self.const(n.input[0], where, allow_q=False)
            s, zp, b = (self.const(i, where, allow_q=False) for i in n.input[1:4])
            bits = _bit_width(b, "bit_width", where)
            signed, narrow = bool(a.get("signed", 1)), bool(a.get("narrow", 0))
            y, q = quant_numpy(x, s, zp, bits, signed, narrow, a.get("rounding_mode", "ROUND"))
            ints = np.rint(q).astype(np.int64) if np.all(q == np.rint(q)) else None
            irange = None
            zpa = np.asarray(zp, np.float32)
            if zpa.size == 1 and float(zpa.reshape(-1)[0]).is_integer():
                z = int(zpa.reshape(-1)[0])
                irange = tuple(v - z for v in int_range(bits, signed, narrow))
            self.vals[n.output[0]] = _QConst(y, ints, s, irange)
            return
        if n.op_type == "BipolarQuant" and _is_qop(n):
            x = self.const(n.input[0], where, allow_q=False)
            s = np.asarray(self.const(n.input[1], where, allow_q=False), np.float32)
            ints = np.where(x >= 0, 1, -1).astype(np.int64)
            self.vals[n.output[0]] = _QConst((ints.astype(np.float32) * s).astype(np.float32), ints, s, (-1, 1),
                                             binary=True)
            return
        ins = [self.vals.get(i, self.consts.get(i)) if i else None for i in n.input]
        if n.op_type == "CastLike" and isinstance(ins[1], _Act):
            ins[1] = np.zeros(0, np.float32)
        if n.op_type in ("Transpose", "Reshape", "Identity", "Flatten", "Squeeze", "Unsqueeze") and \
                isinstance(ins[0], _QConst):
            rest = [_values(v) for v in ins[1:]]
            self.vals[n.output[0]] = ins[0].transform(lambda arr: self._eval(n, [arr] + rest)[0])
            return
        ins = [_values(v) for v in ins]
        for o, v in zip(n.output, self._eval(n, ins)):
            self.vals[o] = v

    def _eval(self, n, inputs):
        from onnx.reference import ReferenceEvaluator

        names = [f"i{k}" if i else "" for k, i in enumerate(n.input)]
        node = self.onnx.helper.make_node(n.op_type, names, [f"o{k}" for k in range(len(n.output))], domain=n.domain)
        node.attribute.extend(n.attribute)
        feeds = {nm: np.asarray(v) for nm, v in zip(names, inputs) if nm}
        try:
            out = ReferenceEvaluator(node).run(None, feeds)
        except Exception as exc:
            raise QonnxConversionError(f"{_desc(n)}: could not fold this constant expression "
                                       f"({type(exc).__name__}: {exc})") from exc
        return [np.asarray(v) for v in out]

    # ---- activation ops ------------------------------------------------------------------------
    def _alias(self, n, src):
        act = self.act(src, _desc(n))
        # same value: share the object (and what gets materialized for it) unless it may end an epilogue
        self.vals[n.output[0]] = act if act.conv is None else act.copy(conv=self.fusable(src, act))

    def op_Identity(self, n, a, where):
        self._alias(n, n.input[0])

    def op_Dropout(self, n, a, where):
        if len(n.output) > 1 and n.output[1] and self.n_readers[n.output[1]]:
            raise QonnxConversionError(f"{where}: the Dropout mask output is read; not supported")
        self._alias(n, n.input[0])

    def op_Quant(self, n, a, where):
        src = n.input[0]
        x = self.act(src, where)
        s, zp, b = (self.const(i, where, allow_q=False) for i in n.input[1:4])
        chan = None
        if np.asarray(s).size != 1:
            if len(x.shape) < 2:
                raise QonnxConversionError(f"{where}: per-channel scales need an input with a channel axis")
            chan = self._channel_vec(s, x, where).astype(np.float32)   # raises unless one per channel (axis 1)
            if not (np.all(np.isfinite(chan)) and np.all(chan > 0)):
                raise QonnxConversionError(f"{where}: scales must be finite and > 0")
            if x.colperm is not None:
                raise QonnxConversionError(f"{where}: per-channel scales after a transposed flatten are not "
                                           "supported")
            s = np.float32(1.0)
        if np.asarray(zp).size != 1:
            raise QonnxConversionError(f"{where}: per-channel activation zero points are not supported (use a "
                                       "per-tensor zero point, e.g. Brevitas' default zero_point=0)")
        step = _scale(s, "scale", where)
        z = float(np.float32(_as_scalar(zp, "zero_point", where)))
        bits_f = float(_as_scalar(b, "bit_width", where))
        if not bits_f.is_integer() or not 1 <= bits_f <= 8:
            raise QonnxConversionError(f"{where}: activation bit width {bits_f:g} is not supported (1-8)")
        if not z.is_integer():
            raise QonnxConversionError(f"{where}: non-integer activation zero point {z} is not supported")
        mode = str(a.get("rounding_mode", "ROUND")).upper()
        if mode not in ("ROUND", "HALF_EVEN"):
            raise QonnxConversionError(f"{where}: rounding_mode {mode} on activations is not supported (ROUND, "
                                       "the Brevitas default, is)")
        bits, signed, narrow = int(bits_f), bool(a.get("signed", 1)), bool(a.get("narrow", 0))
        z = int(z)
        lo, hi = int_range(bits, signed, narrow)
        g = UniformGrid(step, lo - z, hi - z, signed=signed, chan=chan)
        if z % 2:
            self._odd_zero_point_quant(n, x, g, UniformGrid(step, lo, hi, signed=signed, chan=chan), z, where)
        else:
            self._quant_act(n, src, x, g, where)

    def _odd_zero_point_quant(self, n, x: _Act, g: UniformGrid, shifted: UniformGrid, z: int, where):
        """Quant with an odd zero point z: QONNX rounds ``x / s + z`` half to even, which at an exact
        tie of ``x / s`` rounds the other way from ``x / s`` (an even z shifts a tie onto a tie of
        the same parity, so :meth:`_quant_act` serves it). So ``x + z * s`` (an affine node, per
        channel with per-channel steps) is quantized onto the ``shifted`` grid qmin..qmax, whose
        codes stand for the levels of ``g`` (qmin - z .. qmax - z)."""
        fl = self.float_of(x, where)
        steps = g.chan if g.chan is not None else np.full(x.shape[1], g.step, np.float32)
        fl = self.add(fl + ".zero_point", "affine", [fl], {"source": where, "keep": True},
                      {"scale": np.ones(len(steps), np.float32), "bias": (np.float32(z) * steps).astype(np.float32)})
        cd = self.quantize(fl, shifted, n.name or n.output[0], where, levels=g.levels())
        self.codes_of[cd.node] = n.output[0]
        self.vals[n.output[0]] = _Act(x.shape, cd=cd, grid=g, colperm=x.colperm)

    def op_BipolarQuant(self, n, a, where):
        src = n.input[0]
        x = self.act(src, where)
        step = _scale(self.const(n.input[1], where, allow_q=False), "scale", where)
        self._quant_act(n, src, x, UniformGrid(step, -1, 1, binary=True, signed=True), where)

    def _quant_act(self, n, src, x: _Act, g: UniformGrid, where):
        out = n.output[0]
        _check_levels(g.levels(), g.bits, where)
        conv = self.fusable(src, x)
        fl = self.float_of(x, where)
        self.vals[out] = _Act(x.shape, grid=g, colperm=x.colperm, pre=fl, pre_conv=conv, name=out,
                              origin=n.name or out)

    def op_Trunc(self, n, a, where):
        x = self.act(n.input[0], where)
        c = [self.const(i, where, allow_q=False) for i in n.input[1:]]
        if len(c) not in (4, 5):
            raise QonnxConversionError(f"{where}: expected 5 or 6 inputs, got {len(n.input)}")
        v2 = len(c) == 5   # v1 has no output scale (it rescales by the scale)
        s, out_s = _scale(c[0], "scale", where), _scale(c[3] if v2 else c[0], "output scale", where)
        z = float(_as_scalar(c[1], "zero_point", where))
        in_bits = _bit_width(c[2], "input bit width", where)
        out_bits = _bit_width(c[-1], "output bit width", where)
        if z != 0:
            raise QonnxConversionError(f"{where}: a nonzero zero point is not supported for Trunc")
        signed, narrow = bool(a.get("signed", 1)), bool(a.get("narrow", 0))
        rf = _round_fn(a.get("rounding_mode", "FLOOR"), where)
        # the integer input range q = qn..qp is counted before any array spans it (a 32-bit input has 2^32)
        if v2:
            t = float(2.0 ** np.round(np.log2(np.float64(out_s) / np.float64(s))))
            lo, hi = int_range(out_bits, signed, narrow)
            qn, qp = int(math.floor(lo * t)), int(math.ceil(hi * t))   # clamp(q/T) saturates outside
            if np.float32(np.float32(s) * np.float32(t)) != out_s:
                raise QonnxConversionError(f"{where}: output scale {out_s} is not scale x 2^k ({s} x {t})")
        else:
            t = 2.0 ** (in_bits - out_bits)
            qn, qp = int_range(in_bits, signed, narrow)
        bits = bits_for(qp - qn + 1)
        if bits is None:
            if not v2:
                raise QonnxConversionError(f"{where}: {qp - qn + 1} input levels do not fit 8-bit codes")
            if not (float(lo * t).is_integer() and float(hi * t).is_integer()):  # the range's ends are levels
                raise QonnxConversionError(f"{where}: truncated levels are not integers")
            return self._trunc_wide(n, x, s, t, lo, hi, signed, str(a.get("rounding_mode", "FLOOR")).upper(),
                                    where)
        q = np.arange(qn, qp + 1, dtype=np.float64)
        if v2:
            r = rf(np.clip(q / t, lo, hi))
            levels = r * t
            if not np.all(levels == np.rint(levels)):
                raise QonnxConversionError(f"{where}: truncated levels are not integers")
            grid = UniformGrid(out_s, int(r.min()), int(r.max()), signed=signed)
        else:   # every rounding mode maps the increasing q / T to non-decreasing integers
            levels = r = rf(q / t)
            grid = UniformGrid(s, int(r.min()), int(r.max()), signed=signed)
        levels = grid_levels(levels.astype(np.int64).tolist(), bits)
        fl = self.float_of(x, where)
        g_in = UniformGrid(s, qn, qp, signed=signed)
        cd = self.quantize(fl, g_in, n.name or n.output[0], where, levels=levels)
        self.codes_of[cd.node] = n.output[0]
        self.vals[n.output[0]] = _Act(x.shape, cd=cd, grid=grid)

    def _trunc_wide(self, n, x, s, t, lo, hi, signed, mode, where):
        """Trunc whose integer input range q = lo*T .. hi*T does not fit 8-bit codes: one
        quantize node at the output scale. FLOOR/CEIL (and, for grids without negative
        levels, DOWN/UP/HALF_UP/HALF_DOWN) first shift x by an offset that moves every
        q/T (a multiple of 1/T) strictly inside the rounding interval of its result (margin
        1/(4T), far above float rounding), so they stay exact. ROUND/HALF_EVEN quantize
        ``round(x / scale) / T`` (the node's ``pre_step``/``pre_div``) exactly as QONNX
        does, so a tie q/T = k + 1/2 rounds to even as there."""
        offsets = {"FLOOR": -(t - 1) / (2 * t), "CEIL": (t - 1) / (2 * t), "ROUND": 0.0, "HALF_EVEN": 0.0}
        if lo >= 0:
            offsets.update({"DOWN": offsets["FLOOR"], "UP": offsets["CEIL"], "HALF_UP": 1 / (4 * t),
                            "HALF_DOWN": -1 / (4 * t)})
        if mode not in offsets:
            raise QonnxConversionError(f"{where}: rounding_mode {mode} with {int((hi - lo) * t) + 1} input "
                                       "levels is not supported")
        out_s = float(np.float32(s) * np.float32(t))
        fl = self.float_of(x, where)
        off = offsets[mode]
        if off:
            ch = x.shape[1]
            fl = self.add(fl + ".trunc_offset", "affine", [fl], {"source": where, "keep": True},
                          {"scale": np.ones(ch, np.float32), "bias": np.full(ch, off * out_s, np.float32)})
        g = UniformGrid(out_s, lo, hi, signed=signed)
        pre = {"pre_step": float(np.float32(s)), "pre_div": float(t)} if mode in ("ROUND", "HALF_EVEN") else {}
        cd = self.quantize(fl, g, n.name or n.output[0], where, **pre)
        self.codes_of[cd.node] = n.output[0]
        self.vals[n.output[0]] = _Act(x.shape, cd=cd, grid=g)

    # ---- conv / gemm ---------------------------------------------------------------------------
    def _weights(self, wq, where):
        """(codes uint8 like wq.ints, bits, codebook list, per-row scale float64) of a quantized weight
        whose first axis is the output channel."""
        if not isinstance(wq, _QConst):
            raise QonnxConversionError(f"{where}: its weights are not quantized (no Quant/BipolarQuant on the "
                                       "weight initializer); lowbit runs only quantized layers")
        if wq.ints is None:
            raise QonnxConversionError(f"{where}: weight zero point is not an integer")
        ints = wq.ints
        rows = wq.scale.reshape(wq.scale.shape[0], -1)
        if not np.all(rows == rows[:, :1]):
            raise QonnxConversionError(f"{where}: weight scales vary along the input dimension; only "
                                       "per-tensor and per-output-channel weight scales are supported")
        if rows.size and np.any(rows[:, 0] <= 0) or not np.all(np.isfinite(rows)):
            raise QonnxConversionError(f"{where}: weight scales must be finite and > 0")
        w_scale = rows[:, 0].astype(np.float64)
        if wq.binary:
            return (ints > 0).astype(np.uint8), 1, [-1, 1], w_scale
        lo, hi = (wq.irange if wq.irange is not None else (int(ints.min()), int(ints.max())))
        lo, hi = min(lo, int(ints.min())), max(hi, int(ints.max()))
        bits = bits_for(hi - lo + 1)
        if bits is not None:
            levels = grid_levels(range(lo, hi + 1), bits)
            codes = (ints - lo).astype(np.uint8)
        else:
            u = np.unique(ints)
            bits = bits_for(len(u))
            if bits is None:
                raise QonnxConversionError(f"{where}: {len(u)} distinct weight levels do not fit 8-bit codes")
            levels = grid_levels(u.tolist(), bits)
            codes = np.searchsorted(u, ints).astype(np.uint8)
        _check_levels(levels, bits, where)
        return codes, bits, levels, w_scale

    def _layer(self, n, op, x: _Act, codes, bits, levels, w_scale, bias, extra, out_shape, where, extra_pad=None):
        cd = self.codes_of_act(x, where)
        if extra_pad is not None and any(extra_pad):
            cd = self._pad_codes(cd, extra_pad, where)
        k = int(np.prod(codes.shape[1:]))
        kmax = cbmod.k_max(np.asarray(cd.levels), np.asarray(levels))
        if k > kmax:
            raise QonnxConversionError(f"{where}: K={k} exceeds K_max={kmax} for these codebooks")
        if cd.chan is not None:   # per-channel input steps: output channel o reads input channel o // (N / groups)
            per_out = cd.chan[np.arange(codes.shape[0]) // (codes.shape[0] // extra["groups"])]
            scale = per_out.astype(np.float64) * w_scale
        else:
            scale = np.float64(np.float32(cd.step)) * w_scale
        bias = np.zeros(codes.shape[0]) if bias is None else bias.astype(np.float64)
        name = self.uname(n.name or n.output[0])
        self.nodes.append(layer_node(name, op, cd.node, cd.bits, cd.levels, cd.step, bits, levels, codes, scale, bias,
                                     module=n.name or n.output[0], source=f"{n.name or n.output[0]} ({n.op_type})",
                                     **extra))
        self.vals[n.output[0]] = _Act(out_shape, fl=name, conv=name)

    def _runs_on_integers(self, x: _Act, wq, one_input_channel: bool):
        """Whether a conv/linear reading x with weights wq runs on lowbit's integer kernels:
        its input and weights are both quantized (integer levels), and per-channel input
        steps occur only where each output channel reads one input channel (depthwise), so
        that they fold into the output scale. Otherwise the layer runs in float32."""
        if not (isinstance(wq, _QConst) and wq.ints is not None) or (x.cd is None and x.grid is None):
            return False
        own_codes = x.cd is not None and (x.grid is None or x.cd.matches(x.grid))   # else codes of x.grid
        return (x.cd.chan if own_codes else x.grid.chan) is None or one_input_channel

    def _float_layer(self, n, op, x: _Act, w, bias, extra, out_shape, where, extra_pad=None, wq=None):
        """A ``conv_f32``/``linear_f32`` node: float32 weights (dequantized exactly as QONNX
        does, or float ones) applied to the float value of x. Its output is a plain float
        activation: what follows (BatchNorm, Relu, Quant) becomes separate float nodes.
        ``wq``: the weights' _QConst, whose exact float64 values ``ints * scale`` become
        ``arrays['w64']`` (lowbit.exact_float decides ties from them)."""
        w = np.asarray(w, np.float32)
        if not np.all(np.isfinite(w)):
            raise QonnxConversionError(f"{where}: non-finite weights")
        b = np.zeros(w.shape[0], np.float32) if bias is None else np.asarray(bias, np.float32).reshape(-1)
        fl = self.float_of(x, where)
        if extra_pad is not None and any(extra_pad):
            fl = self._pad_float(fl, extra_pad, "zero", where)
        attrs = {"source": f"{n.name or n.output[0]} ({n.op_type})", "module": n.name or n.output[0], **extra}
        arrays = {"w": np.ascontiguousarray(w), "bias": b}
        if isinstance(wq, _QConst) and wq.ints is not None:
            arrays["w64"] = np.asarray(wq.ints, np.float64) * wq.scale.astype(np.float64)
        name = self.add(n.name or n.output[0], op, [fl], attrs, arrays)
        self.vals[n.output[0]] = _Act(out_shape, fl=name)

    def op_Conv(self, n, a, where):
        x = self.act(n.input[0], where)
        if len(x.shape) != 4:
            raise QonnxConversionError(f"{where}: expected a 4-D input, got shape {x.shape}")
        if x.pad is not None:   # a zero Pad in front: add it to the conv's own padding
            if a.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
                raise QonnxConversionError(f"{where}: a Pad before a conv with auto_pad is not supported")
            own = _pair_attr(a.get("pads"), [0, 0, 0, 0])
            a = dict(a, pads=[p + q for p, q in zip(own, x.pad)])
            t, l, b, r = x.pad
            x = x.copy(pad=None, shape=(None, x.shape[1], x.shape[2] - t - b, x.shape[3] - l - r))
        wq = self.const(n.input[1], where)
        wv = np.asarray(_values(wq), np.float32)
        if wv.ndim != 4:
            raise QonnxConversionError(f"{where}: only 2-D convolutions are supported (weight shape {wv.shape})")
        cout, cg, kh, kw = wv.shape
        groups = int(a.get("group", 1))
        if groups < 1 or cout % groups:
            raise QonnxConversionError(f"{where}: group={groups} is not supported (expected a divisor of the "
                                       f"{cout} output channels)")
        if cg * groups != x.shape[1]:
            raise QonnxConversionError(f"{where}: weight shape {wv.shape} with group={groups} does not match "
                                       f"{x.shape[1]} input channels")
        ks = _pair_attr(a.get("kernel_shape"), [kh, kw])
        if ks != [kh, kw]:
            raise QonnxConversionError(f"{where}: kernel_shape {ks} does not match the weights")
        stride, dil, pad, extra_pad, (oh, ow) = _window(a, [kh, kw], x.shape, where)
        bias = None
        if len(n.input) > 2 and n.input[2]:
            bias = np.asarray(self.const(n.input[2], where, allow_q=False), np.float64).reshape(-1)
        extra = {"stride": stride, "padding": pad, "dilation": dil, "groups": groups}
        if not self._runs_on_integers(x, wq, cg == 1):
            self._float_layer(n, "conv_f32", x, wv, bias, extra, (None, cout, oh, ow), where, extra_pad, wq)
            return
        codes, bits, levels, w_scale = self._weights(wq, where)
        self._layer(n, "conv", x, codes, bits, levels, w_scale, bias, extra, (None, cout, oh, ow), where,
                    extra_pad)

    def _linear(self, n, x, wmat_q, bias, alpha, where):
        """wmat_q: _QConst or array of shape (N, K)."""
        if len(x.shape) != 2:
            raise QonnxConversionError(f"{where}: expected a 2-D (N, K) input, got shape {x.shape} "
                                       "(flatten first)")
        w = np.asarray(_values(wmat_q), np.float32)
        if w.ndim != 2 or w.shape[1] != x.shape[1]:
            raise QonnxConversionError(f"{where}: weight shape {w.shape} does not match the input's K={x.shape[1]}")
        if not self._runs_on_integers(x, wmat_q, False):
            if x.colperm is not None:
                w, x = _to_lowbit_columns(w, x.colperm), x.copy(colperm=None)
            self._float_layer(n, "linear_f32", x, w * np.float32(alpha), bias, {}, (None, w.shape[0]), where)
            return
        codes, bits, levels, w_scale = self._weights(wmat_q, where)
        if x.colperm is not None:
            codes, x = _to_lowbit_columns(codes, x.colperm), x.copy(colperm=None)
        self._layer(n, "linear", x, np.ascontiguousarray(codes), bits, levels, w_scale * alpha, bias, {},
                    (None, codes.shape[0]), where)

    def op_Gemm(self, n, a, where):
        x = self.act(n.input[0], where)
        if int(a.get("transA", 0)):
            raise QonnxConversionError(f"{where}: transA=1 is not supported")
        wq = self.const(n.input[1], where)
        if not int(a.get("transB", 0)):
            wq = _transform(wq, lambda v: np.ascontiguousarray(np.swapaxes(v, 0, 1)))
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        bias = None
        nout = _values(wq).shape[0]
        if len(n.input) > 2 and n.input[2]:
            b = np.asarray(self.const(n.input[2], where, allow_q=False), np.float64)
            bias = np.broadcast_to(b.reshape(-1) if b.size == nout else b, (nout,)) * beta
        self._linear(n, x, wq, bias, alpha, where)

    def op_MatMul(self, n, a, where):
        x = self.act(n.input[0], where)
        wq = self.const(n.input[1], where)
        if _values(wq).ndim != 2:
            raise QonnxConversionError(f"{where}: only (N, K) x (K, M) matrix products are supported")
        wq = _transform(wq, lambda v: np.ascontiguousarray(v.T))
        self._linear(n, x, wq, None, 1.0, where)

    # ---- epilogue-foldable ops -----------------------------------------------------------------
    def _channel_vec(self, c, x: _Act, where):
        """A constant that broadcasts over x as one value per channel (axis 1) -> (C,) float64."""
        c = np.asarray(c, np.float64)
        ch = x.shape[1]
        if c.size == 1:
            return np.full(ch, float(c.reshape(-1)[0]))
        nd = len(x.shape)
        if (1,) * (nd - c.ndim) + c.shape != (1, ch) + (1,) * (nd - 2):
            raise QonnxConversionError(f"{where}: constant of shape {c.shape} is not per-channel for an input "
                                       f"of shape {tuple('N' if d is None else d for d in x.shape)}")
        return c.reshape(-1)

    def op_BatchNormalization(self, n, a, where):
        src = n.input[0]
        x = self.act(src, where)
        if int(a.get("training_mode", 0)) or (len(n.output) > 1 and any(self.n_readers[o] for o in n.output[1:] if o)):
            raise QonnxConversionError(f"{where}: training-mode BatchNormalization is not supported")
        gamma, beta, mean, var = (np.asarray(self.const(i, where, allow_q=False), np.float64).reshape(-1)
                                  for i in n.input[1:5])
        self._apply_affine(n, src, x, *batchnorm_affine(gamma, beta, mean, var, float(a.get("epsilon", 1e-5))),
                           where, bn=True)

    def _apply_affine(self, n, src, x: _Act, scale, bias, where, bn=False):
        """Output of node n = x * scale + bias per channel (float64 (C,) vectors, ONNX
        channel order): an ``affine`` node, which lowering folds into the epilogue of the
        layer behind x where it can."""
        scale, bias = _to_lowbit_columns(scale, x.colperm), _to_lowbit_columns(bias, x.colperm)
        fl = self.float_of(x, where)
        name = self.add(n.name or n.output[0], "affine", [fl],
                        {"source": f"{n.name} ({n.op_type})", "bn": bn, "origin": n.name or n.output[0]},
                        {"scale": np.asarray(scale, np.float64), "bias": np.asarray(bias, np.float64)})
        self.vals[n.output[0]] = _Act(x.shape, fl=name, colperm=x.colperm,
                                      conv=name if self.fusable(src, x) else None)

    def _elementwise_const(self, n, where):
        """An elementwise Add/Sub/Mul/Div/Neg of one activation and (at most) one constant,
        as x * scale + bias per channel. Div by a constant becomes a multiply by its float64
        reciprocal (rounded once to float32): only values within float rounding of a
        quantizer's rounding boundary can then quantize differently from QONNX's division."""
        ins = [self.vals.get(i, self.consts.get(i)) for i in n.input]
        acts = [i for i, v in zip(n.input, ins) if isinstance(v, _Act)]
        cons = [_values(v) for v in ins if not isinstance(v, _Act)]
        op = n.op_type
        if len(acts) != 1 or len(cons) != len(n.input) - 1:
            return False
        src = acts[0]
        x = self.act(src, where)
        const_first = n.input[0] != src
        if op == "Neg":
            c = np.ones(x.shape[1] if len(x.shape) > 1 else 1)
        else:
            if x.colperm is not None and np.asarray(cons[0]).size != 1:
                raise QonnxConversionError(f"{where}: a per-feature {op} after a transposed flatten is not "
                                           "supported")
            if len(x.shape) < 2:
                raise QonnxConversionError(f"{where}: {op} of a 1-D activation is not supported")
            c = self._channel_vec(cons[0], x, where)
        if op == "Div":
            if const_first:
                raise QonnxConversionError(f"{where}: dividing by an activation (constant / x) is not supported")
            if np.any(c == 0):
                raise QonnxConversionError(f"{where}: division by zero")
            c = 1.0 / c   # then a Mul
        one, zero = np.ones_like(c), np.zeros_like(c)
        scale, bias = {"Add": (one, c), "Sub": (-one, c) if const_first else (one, -c), "Mul": (c, zero),
                       "Div": (c, zero), "Neg": (-one, zero)}[op]
        self._apply_affine(n, src, x, scale, bias, where)
        return True

    def _two_activations(what):
        def op(self, n, a, where):
            if not self._elementwise_const(n, where):
                raise QonnxConversionError(f"{where}: {what} of two activations is not supported")
        return op

    op_Mul, op_Sub, op_Div = _two_activations("a product"), _two_activations("a difference"), \
        _two_activations("a quotient")
    del _two_activations

    def op_Neg(self, n, a, where):
        self._elementwise_const(n, where)

    def op_Add(self, n, a, where):
        if self._elementwise_const(n, where):
            return
        sa, sb = n.input[0], n.input[1]
        xa, xb = self.act(sa, where), self.act(sb, where)
        if xa.shape != xb.shape:
            raise QonnxConversionError(f"{where}: broadcasting Add of activations with shapes {xa.shape} and "
                                       f"{xb.shape} is not supported")
        if xa.colperm is not None or xb.colperm is not None:
            if not (xa.colperm is not None and xb.colperm is not None and np.array_equal(xa.colperm, xb.colperm)):
                raise QonnxConversionError(f"{where}: Add of differently ordered flattened activations")
        fa, fb = self.float_of(xa, where), self.float_of(xb, where)
        name = self.add(n.name or n.output[0], "add", [fa, fb], {"source": f"{n.name} (Add)",
                                                                 "origin": n.name or n.output[0]})
        open_ = sa != sb and (self.fusable(sa, xa) or self.fusable(sb, xb))
        self.vals[n.output[0]] = _Act(xa.shape, fl=name, colperm=xa.colperm, conv=name if open_ else None)

    def _clamp(self, n, lo, hi, where):
        src = n.input[0]
        x = self.act(src, where)
        fl = self.float_of(x, where)
        name = self.add(n.name or n.output[0], "clamp", [fl], {"clamp": [lo, hi], "source": f"{n.name} ({n.op_type})",
                                                               "origin": n.name or n.output[0]})
        self.vals[n.output[0]] = _Act(x.shape, fl=name, colperm=x.colperm, conv=name if self.fusable(src, x) else None)

    def op_Relu(self, n, a, where):
        self._clamp(n, 0.0, None, where)

    def op_Clip(self, n, a, where):
        bounds = [a.get("min"), a.get("max")]  # attributes before opset 11, inputs after
        for k, what in ((1, "min"), (2, "max")):
            if len(n.input) > k and n.input[k]:
                bounds[k - 1] = float(_as_scalar(self.const(n.input[k], where, allow_q=False), what, where))
        lo, hi = (None if v is None or math.isinf(v) else float(v) for v in bounds)
        self._clamp(n, lo, hi, where)

    # ---- pooling / reshaping -------------------------------------------------------------------
    def _pool_window(self, a, x, where):
        """(kernel, strides, padding, dilations, output shape, extra pads) of a MaxPool/AveragePool."""
        if len(x.shape) != 4:
            raise QonnxConversionError(f"{where}: expected a 4-D input")
        ks = _pair_attr(a.get("kernel_shape"), None)
        stride, dil, pad, extra_pad, (oh, ow) = _window(a, ks, x.shape, where, pool=True)
        return ks, stride, pad, dil, (None, x.shape[1], oh, ow), extra_pad

    def _maxpool(self, n, x: _Act, attrs, shape, extra_pad, where):
        """A ``maxpool`` node (geometry ``attrs``) of x. The maximum of values on a grid is on the
        grid (padding is -inf and never wins: no window lies wholly in the padding), and max
        commutes with a monotone quantizer: a lazily quantized input is pooled first."""
        lazy = x.pre is not None and x.fl is None and x.cd is None and x.perm is None
        src = x.pre if lazy else self.float_of(x, where)
        if any(extra_pad):
            src = self._pad_float(src, extra_pad, "-inf", where)
        name = self.add(n.name or n.output[0], "maxpool", [src], {**attrs, "source": f"{n.name} ({n.op_type})"})
        if lazy:
            self.vals[n.output[0]] = _Act(shape, grid=x.grid, pre=name, name=n.output[0])
        else:
            self.vals[n.output[0]] = _Act(shape, fl=name, grid=x.grid)

    def op_MaxPool(self, n, a, where):
        x = self.act(n.input[0], where)
        if len(n.output) > 1 and n.output[1] and self.n_readers[n.output[1]]:
            raise QonnxConversionError(f"{where}: MaxPool indices output is not supported")
        ks, stride, pad, dil, shape, extra_pad = self._pool_window(a, x, where)
        self._maxpool(n, x, {"kernel": ks, "stride": stride, "padding": pad, "dilation": dil}, shape, extra_pad,
                      where)

    def op_GlobalMaxPool(self, n, a, where):
        x = self.act(n.input[0], where)
        if len(x.shape) != 4:
            raise QonnxConversionError(f"{where}: expected a 4-D input")
        self.spatial_fixed = True  # the window is the export-time size
        self._maxpool(n, x, {"kernel": list(x.shape[2:]), "stride": [1, 1], "padding": [0, 0], "dilation": [1, 1]},
                      (None, x.shape[1], 1, 1), [0, 0, 0, 0], where)

    def op_AveragePool(self, n, a, where):
        x = self.act(n.input[0], where)
        ks, stride, pad, dil, shape, extra_pad = self._pool_window(a, x, where)
        if dil != [1, 1]:
            raise QonnxConversionError(f"{where}: dilated average pooling is not supported")
        include_pad = bool(int(a.get("count_include_pad", 0)))
        fl = self.float_of(x, where)
        if any(extra_pad):
            if not include_pad:   # the explicit zeros would count in the divisor
                raise QonnxConversionError(f"{where}: asymmetric padding {[p + q for p, q in zip(pad * 2, extra_pad)]}"
                                           " with count_include_pad=0 is not supported (pad symmetrically, or "
                                           "set count_include_pad=1)")
            fl = self._pad_float(fl, extra_pad, "zero", where)
        name = self.add(n.name or n.output[0], "avgpool", [fl],
                        {"kernel": ks, "stride": stride, "padding": pad,
                         "count_include_pad": include_pad,
                         "source": f"{n.name} (AveragePool)"})
        self.vals[n.output[0]] = _Act(shape, fl=name)

    def _global_avg(self, n, x, where):
        """An ``adaptive_avgpool`` of 4-D x to 1x1 (GlobalAveragePool, ReduceMean over H and W)."""
        if len(x.shape) != 4:
            raise QonnxConversionError(f"{where}: expected a 4-D input")
        name = self.add(n.name or n.output[0], "adaptive_avgpool", [self.float_of(x, where)],
                        {"output_size": [1, 1], "source": f"{n.name} ({n.op_type})"})
        return _Act((None, x.shape[1], 1, 1), fl=name, global_pool=True)

    def op_GlobalAveragePool(self, n, a, where):
        self.vals[n.output[0]] = self._global_avg(n, self.act(n.input[0], where), where)

    def op_ReduceMean(self, n, a, where):
        x = self.act(n.input[0], where)
        axes = self._axes(n, a, where)
        axes = None if axes is None else sorted(v % 4 for v in axes)
        if len(x.shape) != 4 or axes != [2, 3]:
            raise QonnxConversionError(f"{where}: only a mean over H and W (axes [2, 3]) is supported, got {axes}")
        out = self._global_avg(n, x, where)
        if not int(a.get("keepdims", 1)):
            out = self._flatten(out, n.output[0] + ".flatten", where)
        self.vals[n.output[0]] = out

    @staticmethod
    def _view(x: _Act, **kw):
        """A copy of x that reads the same lowbit values (a lazily quantized x then never
        requantizes in its conv's epilogue: both copies may read that conv's float output)."""
        if x.pre is not None:
            x.pre_conv = None
        return x.copy(pre_conv=None, **kw)

    def _flatten(self, x: _Act, name, where):
        if len(x.shape) == 2:
            return x if x.conv is None else x.copy(conv=None)
        _, c, h, w = x.shape
        if x.perm is not None:
            if x.perm[0] != 0:
                raise QonnxConversionError(f"{where}: a Transpose that moves the batch axis is not supported")
            idx = np.arange(c * h * w).reshape(c, h, w).transpose([p - 1 for p in x.perm[1:]]).reshape(-1)
            out = self._flatten(self._view(x, perm=None, conv=None), name, where)
            out.colperm = idx
            return out
        if not (x.global_pool and h == 1 and w == 1):
            self.spatial_fixed = True
        grid = x.grid
        if grid is not None and grid.chan is not None:  # feature c*H*W + i has channel c's step
            grid = UniformGrid(grid.step, grid.qn, grid.qp, grid.binary, grid.signed, np.repeat(grid.chan, h * w))
        if x.pre is not None and x.fl is None and x.cd is None and x.pre_conv is not None and self.requant_ok \
                and x.grid.requant() is not None:
            self.codes_of_act(x, where)  # requantize in the conv's epilogue, then flatten the codes
        if x.pre is not None and x.fl is None and x.cd is None:
            pre = self.add(name, "flatten", [x.pre], {"source": where})
            out = _Act((None, c * h * w), grid=grid, pre=pre, name=x.name)
        else:  # flatten whichever representations exist (codes of one step stay codes)
            fl = cd = None
            if x.cd is not None and x.cd.chan is None:
                cdn = self.add(name, "flatten", [x.cd.node], {"source": where})
                cd = _Codes(cdn, x.cd.bits, x.cd.levels, x.cd.step)
            if x.fl is not None or cd is None:  # per-channel codes: their values (float_of applies the steps)
                fl = self.add(name, "flatten", [self.float_of(x, where)], {"source": where})
            out = _Act((None, c * h * w), fl=fl, cd=cd, grid=grid)
        if h == w == 1:
            out.unflat = x
        return out

    def op_Flatten(self, n, a, where):
        x = self.act(n.input[0], where)
        axis = int(a.get("axis", 1))
        if axis % max(len(x.shape), 1) != 1 and not (len(x.shape) == 2 and axis in (1, -1)):
            raise QonnxConversionError(f"{where}: only Flatten(axis=1) is supported, got axis={axis}")
        self.vals[n.output[0]] = self._flatten(x, n.name or n.output[0], where)

    def op_Reshape(self, n, a, where):
        x = self.act(n.input[0], where)
        t = [int(v) for v in np.asarray(self.const(n.input[1], where, allow_q=False)).reshape(-1)]
        feat = int(np.prod(x.shape[1:]))
        lshape = list(x.shape) if x.perm is None else [None] + [x.shape[p] for p in x.perm[1:]]   # as ONNX sees it
        first_ok = t and (t[0] in (-1, self.export_batch) or (t[0] == 0 and not int(a.get("allowzero", 0))))
        if first_ok and len(t) == 2 and t[1] in (feat, -1) and len(x.shape) == 4:
            self.vals[n.output[0]] = self._flatten(x, n.name or n.output[0], where)
            return
        rest = [lshape[i] if (v == 0 and not int(a.get("allowzero", 0))) else v for i, v in enumerate(t)][1:]
        if first_ok and (rest == list(lshape[1:]) or (rest.count(-1) == 1 and len(rest) == len(lshape) - 1 and all(
                r in (-1, s) for r, s in zip(rest, lshape[1:])))):
            self._alias(n, n.input[0])
            return
        raise QonnxConversionError(f"{where}: Reshape of {tuple('N' if d is None else d for d in lshape)} to {t} "
                                   "is not supported (only flattening to (N, C*H*W))")

    def _axes(self, n, a, where):
        """The ``axes`` of a Squeeze, Unsqueeze or ReduceMean (the second input from opset 13 on,
        an attribute before) as a list of ints, or None."""
        axes = a.get("axes")
        if len(n.input) > 1 and n.input[1]:
            axes = self.const(n.input[1], where, allow_q=False)
        return None if axes is None else [int(v) for v in np.asarray(axes).reshape(-1)]

    def op_Squeeze(self, n, a, where):
        x = self.act(n.input[0], where)
        axes = self._axes(n, a, where)
        axes = sorted(v % 4 for v in axes) if axes is not None else None
        if len(x.shape) == 4 and x.perm is None and x.shape[2:] == (1, 1) and axes in (None, [2, 3]):
            self.vals[n.output[0]] = self._flatten(x, n.name or n.output[0], where)
            return
        raise QonnxConversionError(f"{where}: only squeezing a (N, C, 1, 1) map to (N, C) is supported")

    def op_Unsqueeze(self, n, a, where):
        """Unsqueeze (ONNX: a 1 inserted at each of ``axes`` of the output) back to the (N, C, 1, 1)
        map a Flatten/Squeeze/Reshape/ReduceMean flattened, in one step or through (N, C, 1):
        lowbit holds 4-D activations as maps and 2-D ones as (N, F), so only a flattened
        1x1 map has a 4-D form to return to."""
        x = self.act(n.input[0], where)
        axes = self._axes(n, a, where) or []
        rank = len(x.shape) + len(axes)
        inserted = sorted({v % rank for v in axes if -rank <= v < rank})
        shape = list(x.shape)
        for v in inserted:
            shape.insert(v, 1)
        flat = x.unflat
        if not axes or rank > 4 or len(inserted) != len(axes) or flat is None or x.colperm is not None or \
                shape != [None, flat.shape[1]] + [1] * (rank - 2):
            raise QonnxConversionError(f"{where}: Unsqueeze(axes={axes}) of shape "
                                       f"{tuple('N' if d is None else d for d in x.shape)} is not supported: only "
                                       "unsqueezing a flattened (N, C, 1, 1) map back to (N, C, 1, 1) is "
                                       "(activations stay (N, C, H, W) or (N, F) in lowbit)")
        self.vals[n.output[0]] = self._view(flat, conv=None) if rank == 4 else x.copy(shape=tuple(shape), conv=None)

    def op_Pad(self, n, a, where):
        """A constant zero Pad of H and W: pending on the activation until a Conv reads it
        (lowbit convolutions pad with the value 0, whatever the codebook)."""
        x = self.act(n.input[0], where)
        mode = a.get("mode", "constant")
        pads = a.get("pads")
        if len(n.input) > 1 and n.input[1]:
            pads = self.const(n.input[1], where, allow_q=False)
        value = 0.0
        if len(n.input) > 2 and n.input[2]:
            value = float(_as_scalar(self.const(n.input[2], where, allow_q=False), "constant_value", where))
        value = float(a.get("value", value))
        if len(n.input) > 3 and n.input[3]:
            raise QonnxConversionError(f"{where}: Pad with 'axes' is not supported")
        pads = [int(v) for v in np.asarray(pads).reshape(-1)] if pads is not None else None
        if mode != "constant" or value != 0.0 or len(x.shape) != 4 or pads is None or len(pads) != 8 or \
                any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
            raise QonnxConversionError(f"{where}: only a constant zero Pad of H and W of a 4-D activation is "
                                       f"supported (mode={mode}, value={value}, pads={pads})")
        pt, pl, pb, pr = pads[2], pads[3], pads[6], pads[7]
        old = x.pad or [0, 0, 0, 0]
        _, c, h, w = x.shape
        self.vals[n.output[0]] = self._view(x, conv=None, shape=(None, c, h + pt + pb, w + pl + pr),
                                            pad=[old[0] + pt, old[1] + pl, old[2] + pb, old[3] + pr])

    def op_Concat(self, n, a, where):
        """Concat of activations along channels (axis 1 of an NCHW map or of an (N, F) matrix).
        When every input lies on one grid (same levels and step, one step per tensor), their
        codes are concatenated: the output carries that grid and a conv reads it directly (exact,
        a copy). Otherwise the float values are concatenated (exact as well: each is the float32
        value QONNX computes) and the result is not quantized."""
        xs = [self.act(i, where) for i in n.input]
        nd = len(xs[0].shape)
        axis = int(a.get("axis", 1))
        if nd not in (2, 4) or axis % nd != 1:
            raise QonnxConversionError(f"{where}: only a Concat along channels (axis 1) of 4-D or 2-D activations "
                                       f"is supported, got axis={axis} for {nd}-D inputs")
        for x in xs:
            if len(x.shape) != nd or x.shape[2:] != xs[0].shape[2:]:
                raise QonnxConversionError(f"{where}: inputs of shapes {[x.shape for x in xs]} differ off the "
                                           "channel axis")
            if x.colperm is not None:
                raise QonnxConversionError(f"{where}: Concat of a transposed flattening is not supported")
        shape = (None, sum(x.shape[1] for x in xs)) + tuple(xs[0].shape[2:])
        name = n.name or n.output[0]
        grids = [x.grid for x in xs]
        g = grids[0]
        same = g is not None and g.chan is None and g.bits is not None and all(
            h is not None and h.chan is None and (h.step, h.qn, h.qp, h.binary) == (g.step, g.qn, g.qp, g.binary)
            for h in grids[1:])
        if same:
            cds = [self.codes_of_act(x, where) for x in xs]
            node = self.add(name, "concat", [c.node for c in cds], {"source": f"{name} (Concat)"})
            self.vals[n.output[0]] = _Act(shape, cd=_Codes(node, cds[0].bits, cds[0].levels, cds[0].step), grid=g)
            return
        fls = [self.float_of(x, where) for x in xs]
        node = self.add(name, "concat", fls, {"source": f"{name} (Concat)"})
        self.vals[n.output[0]] = _Act(shape, fl=node)

    def op_Transpose(self, n, a, where):
        x = self.act(n.input[0], where)
        if len(x.shape) != 4:
            raise QonnxConversionError(f"{where}: Transpose of a {len(x.shape)}-D activation is not supported")
        perm = [int(p) for p in a.get("perm", [3, 2, 1, 0])]
        base = x.perm if x.perm is not None else [0, 1, 2, 3]
        new = [base[p] for p in perm]
        # the lowbit value (and .shape) stay NCHW; perm says how ONNX sees it
        self.vals[n.output[0]] = self._view(x, perm=None if new == [0, 1, 2, 3] else new, conv=None)


def _input_grid(input_scale, input_bits, input_signed):
    """The UniformGrid of a declared input quantization (None without ``input_scale``);
    ValueError naming the argument for a bad value."""
    if input_scale is None:
        return None
    if isinstance(input_scale, bool) or not isinstance(input_scale, (int, float, np.floating, np.integer)) or \
            not (math.isfinite(float(input_scale)) and float(input_scale) > 0):
        raise ValueError(f"input_scale: expected a finite number > 0 (one step for the whole input), "
                         f"got {input_scale!r}")
    if isinstance(input_bits, bool) or not isinstance(input_bits, (int, np.integer)) or not 2 <= input_bits <= 8:
        raise ValueError(f"input_bits: expected an int in 2..8, got {input_bits!r}")
    if not isinstance(input_signed, (bool, np.bool_)):
        raise ValueError(f"input_signed: expected a bool, got {input_signed!r}")
    qn, qp = int_range(int(input_bits), bool(input_signed))
    return UniformGrid(np.float32(input_scale), qn, qp, signed=bool(input_signed))


def from_qonnx(model, requant_in_epilogue: bool = True, input_scale=None, input_bits: int = 8,
               input_signed: bool = True) -> Model:
    """Convert a QONNX model (a path to a ``.onnx`` file, an ``onnx.ModelProto``, its
    bytes, or a qonnx ``ModelWrapper``) into a :class:`lowbit.Model`.

    ``input_scale`` (optional): declare that the graph input is quantized, with step
    ``input_scale`` on ``input_bits`` (2..8) bits, signed (levels -2^(b-1) .. 2^(b-1) - 1)
    or not (0 .. 2^b - 1). Every reader of the input then sees
    ``clamp(round_half_even(x / input_scale)) * input_scale`` instead of ``x`` (a model
    whose first conv reads the float image runs that conv on the integer kernels instead
    of ``conv_f32``); the numbers change accordingly (docs/brevitas.md). Without it the
    input is used as it is.

    The model must take one float32 NCHW image batch with static C, H, W (the
    batch size is free) and return one tensor. See the module docstring for the
    mapping and for what is exact. ``requant_in_epilogue=False`` keeps every
    conv/linear output in float32 and quantizes with separate ``quantize``
    nodes (slower; the codes then differ from qonnx only through the
    convolution's float rounding). Raises :class:`QonnxConversionError` (a
    ``NotImplementedError``) naming the unsupported node types and counts, or
    the node and the reason.
    """
    grid = _input_grid(input_scale, input_bits, input_signed)
    m = _load(model)
    conv = _Converter(m, requant_in_epilogue, grid)
    nodes = conv.run()
    onnx_producer = f"{m.producer_name} {m.producer_version}".strip()
    meta = {"source_model": "qonnx", "onnx_producer": onnx_producer, "onnx_input": conv.input.name,
            "onnx_output": m.graph.output[0].name, "requant_in_epilogue": bool(requant_in_epilogue),
            "qonnx_codes": {k: v for k, v in conv.codes_of.items() if v is not None and
                            k in {nd.name for nd in nodes}},
            "example_input_shape": [1, nodes[0].attrs["channels"], nodes[0].attrs["height"],
                                    nodes[0].attrs["width"]]}
    if grid is not None:
        meta["input_quantization"] = {"scale": grid.step, "bits": int(input_bits), "signed": bool(input_signed)}
    return Model(nodes, meta)


# The float lowering, the parity checks and the benchmark live in their own modules; their
# names stay importable from here (the package imports this module first, so these see it whole).
from .qonnx_bench import bench_qonnx  # noqa: E402
from .qonnx_float import to_float_onnx  # noqa: E402
from .qonnx_parity import _qonnx_executor, compare_precisions, compare_qonnx, qonnx_execute, trace_divergence  # noqa: E402,F401
