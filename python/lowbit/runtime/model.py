"""``lowbit.Model``: a small graph runtime for converted low-bit CNNs.

The runtime needs only NumPy and lowbit's kernels; it never imports torch
(:func:`lowbit.convert` builds a Model from a PyTorch QAT model; a saved Model
loads with :func:`lowbit.load` on a machine without torch).

Graph
-----
A Model is a list of nodes in execution order. Every node has a unique
``name``, an ``op``, the names of its ``inputs``, JSON-able ``attrs`` and
NumPy ``arrays``. A value flowing between nodes is either

* **float**: float32, NHWC ``(B, H, W, C)`` for feature maps, ``(B, F)`` after
  flatten/linear; or
* **codes**: uint8 codes of a uniform integer grid (``attrs['levels']`` of the
  producer), NHWC or ``(B, F)``, carried as :class:`CodeTensor`.

Ops (inputs -> output; the functions named state the exact arithmetic):

``input``             NCHW float32 from the caller -> NHWC float32 (a view)
``quantize``          float -> codes, LSQ exactly as torch computes it (:func:`quantize`)
``dequantize``        codes -> float: ``float32(level) * float32(step)``
``conv``, ``linear``  codes (NHWC, (B, K)) [, float residual] -> float or codes: ``lowbit.conv2d`` /
                      ``lowbit.linear`` with the fused :class:`lowbit.Epilogue`: scale, bias (folded
                      BatchNorm), + residual, clamp (ReLU/ReLU6/clamp), then float32 or requantized
                      codes (``attrs['requant']``)
``conv_f32``, ``linear_f32``  float -> float: the float32 layers of unquantized inputs, ``arrays['w']``
                      (Cout, Cin/groups, kh, kw) or (N, K) and ``arrays['bias']`` (:mod:`lowbit.floatops`)
``add``, ``clamp``, ``affine``  float -> float: float32 add; clamp (ReLU = clamp(0, inf)); per-channel
                      ``x * scale + bias`` (a BatchNorm that could not be folded into a conv epilogue)
``maxpool``           float -> float, or codes -> codes of the same grid (:func:`maxpool`)
``avgpool``, ``adaptive_avgpool``  float -> float (:func:`avgpool`, :func:`adaptive_avgpool`)
``flatten``           NHWC -> (B, C*H*W) in torch's NCHW order (float or codes)
``concat``            2 or more values, all float32 or all codes of one grid -> one, along the channel
                      (last) axis (:func:`concat_channels`)
``pad``               float or codes NHWC -> the same, padded by ``attrs['pads']`` with ``attrs['fill']``
                      (:func:`pad_nhwc`)

The model output is the value of the last node: float32 (B, F) logits (a 4-D
output is returned as NCHW).

Which values stay codes (a layer requantizing in its epilogue) and which are float32 read by
``quantize`` nodes is the lowering's choice (docs/pipeline.md). A layer's ``attrs['quantize_output']``
(set by :func:`lowbit.lowering.place_requant`) names one plain ``quantize`` node reading its float
output: the native executor writes that node's codes from the layer's epilogue with the node's own
rule (the same bytes); the reference runs the node as usual.

Execution
---------
``m(x)`` runs the kernels, the whole graph in one native call (:mod:`lowbit.runtime.executor`);
:meth:`Model.run_reference` runs the same graph node by node with the NumPy oracles
(:mod:`lowbit.reference`). The two agree bit for bit on every code and every float (the
epilogue is specified exactly), which :meth:`Model.trace` lets a test check node by node.
"""
from __future__ import annotations

import collections
import collections.abc
import functools
import math
import numbers

import numpy as np

from .. import codebook as cbmod
from .. import conv as _conv
from .. import exact_float as _exact_float
from . import executor as _executor
from . import floatops as _floatops
from .. import quant as _quant
from .. import reference as _ref
from ..epilogue import Epilogue, Requant
from ..packing import MAX_ELEMENTS, PackedWeights, check_elements

__all__ = ["CodeTensor", "Model", "Node", "NodeArrays", "OPS", "PackedCodes"]

OPS = ("input", "quantize", "dequantize", "conv", "linear", "add", "clamp", "affine", "maxpool", "avgpool",
       "adaptive_avgpool", "flatten", "conv_f32", "linear_f32", "concat", "pad")
_QUANTIZED = ("conv", "linear")
_FLOAT_LAYERS = ("conv_f32", "linear_f32")
_LAYERS = _QUANTIZED + _FLOAT_LAYERS


class CodeTensor:
    """uint8 codes (NHWC or (B, F)) of integer levels ``levels`` (code c stands
    for levels[c]) with their ``step``: a value of the reference executor."""

    __slots__ = ("codes", "bits", "levels", "step")

    def __init__(self, codes: np.ndarray, bits: int, levels, step: float):
        self.codes = codes
        self.bits = int(bits)
        self.levels = np.asarray(levels, dtype=np.int32)
        self.step = float(step)

    @property
    def shape(self):
        return self.codes.shape


class PackedCodes:
    """Weight codes of logical ``shape`` kept bit-packed: ``packed`` is a
    PackedWeights of shape[0] rows of prod(shape[1:]) codes in C order (the
    model file's ``packed_weights`` form) with the default codebook (the
    layer's codebook is an attribute of its node). :meth:`unpack` makes a new
    uint8 array of ``shape``."""

    __slots__ = ("packed", "shape")
    dtype = np.dtype(np.uint8)

    def __init__(self, packed: PackedWeights, shape):
        self.packed = packed
        self.shape = tuple(int(s) for s in shape)

    @classmethod
    def pack(cls, codes: np.ndarray, bits: int) -> "PackedCodes":
        """Pack uint8 ``codes`` (any shape of >= 2 dims, rows = the first axis) at ``bits``
        (PackedWeights.from_codes checks the range)."""
        return cls(PackedWeights.from_codes(codes.reshape(codes.shape[0], -1), bits), codes.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the packed codes: shape[0] rows of ceil(prod(shape[1:]) * bits / 8)."""
        return self.packed.nbytes

    def unpack(self) -> np.ndarray:
        return self.packed.codes().reshape(self.shape)


class NodeArrays(collections.abc.MutableMapping):
    """A node's arrays by key (a dict-like mapping).

    The weight codes of a quantized layer (``"w_codes"``) are kept bit-packed
    once its Model has validated them (as :class:`PackedCodes`): reading
    ``arrays["w_codes"]`` then returns a new unpacked uint8 array (the
    caller's; the node keeps only the packed form), and :meth:`stored` /
    :meth:`shape` give the stored form and the shape without unpacking.
    Any other value is stored and returned as it is."""

    __slots__ = ("_data",)

    def __init__(self, arrays=()):
        self._data = dict(arrays)

    def __getitem__(self, key):
        value = self._data[key]
        return value.unpack() if isinstance(value, PackedCodes) else value

    def __setitem__(self, key, value):
        self._data[key] = value

    def __delitem__(self, key):
        del self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def stored(self, key):
        """The value as stored: a NumPy array or :class:`PackedCodes` (no unpacking)."""
        return self._data[key]

    def shape(self, key) -> tuple:
        """The (logical) shape of array ``key``, without unpacking."""
        return tuple(self._data[key].shape)

    def __repr__(self):
        return f"NodeArrays({ {k: (type(v).__name__, tuple(v.shape)) for k, v in self._data.items()} })"


class Node:
    """One graph node (see the module docstring for ops and attrs).

    ``arrays`` is a :class:`NodeArrays` (assigning a dict wraps it); a quantized
    layer's ``arrays["w_codes"]`` is kept bit-packed once a Model validated it."""

    __slots__ = ("name", "op", "inputs", "attrs", "_arrays", "kernel", "out_shape", "_cache")

    def __init__(self, name: str, op: str, inputs=(), attrs=None, arrays=None):
        if op not in OPS:
            raise ValueError(f"node {name!r}: unknown op {op!r} (known: {', '.join(OPS)})")
        self.name = str(name)
        self.op = op
        self.inputs = [str(i) for i in inputs]
        self.attrs = dict(attrs or {})
        self.arrays = arrays or {}
        self.kernel = None      # registry name of the kernel its last native run used
        self.out_shape = None   # output shape of the last run
        self._cache = {}

    @property
    def arrays(self) -> NodeArrays:
        return self._arrays

    @arrays.setter
    def arrays(self, value):
        self._arrays = NodeArrays(value.items() if isinstance(value, NodeArrays) else value)

    def to_dict(self) -> dict:
        return {"name": self.name, "op": self.op, "inputs": list(self.inputs), "attrs": self.attrs}

    def weight_bytes(self) -> int:
        """Bytes of this node's parameters as saved (the model file's data): packed
        weight codes (rows of ceil(K * w_bits / 8) bytes) + float32 arrays."""
        n = 0
        for key in self.arrays:
            shape = self.arrays.shape(key)
            if key == "w_codes":
                k = math.prod(shape[1:])
                n += shape[0] * ((k * self.attrs["w_bits"] + 7) // 8)
            else:
                n += self.arrays.stored(key).nbytes
        return n

    def __repr__(self):
        return f"Node({self.name!r}, {self.op!r}, inputs={self.inputs})"


def resident_bytes(roots) -> int:
    """Bytes of the NumPy arrays reachable from ``roots`` through lowbit objects,
    dicts, lists and tuples (each buffer counted once, views by their base):
    what a model keeps in memory, caches of the kernels that ran included."""
    seen, buffers, stack = set(), {}, list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            while isinstance(obj.base, np.ndarray):
                obj = obj.base
            buffers[id(obj)] = obj.nbytes
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif type(obj).__module__.startswith("lowbit"):
            stack.extend(getattr(obj, "__dict__", {}).values())
            for cls in type(obj).__mro__:
                slots = getattr(cls, "__slots__", ())
                stack.extend(getattr(obj, a) for a in ((slots,) if isinstance(slots, str) else slots)
                             if hasattr(obj, a))
    return sum(buffers.values())


# ---- attribute validation (Model construction: converted, imported and loaded graphs alike) ----

def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_finite(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_pair(pred):
    return lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(pred(x) for x in v)


def _pos_int(v) -> bool:
    return _is_int(v) and 1 <= v <= MAX_ELEMENTS


def _level(v) -> bool:
    return _is_int(v) and -128 <= v <= 255


def _bits(v) -> bool:
    return _is_int(v) and v in (1, 2, 3, 4, 8)


def _clamp_pair(v) -> bool:
    ok = _is_pair(lambda x: x is None or (isinstance(x, numbers.Real) and not isinstance(x, bool)
                                          and not math.isnan(x)))(v)
    return ok and (v[0] is None or v[1] is None or v[0] <= v[1])


def _requant(v) -> bool:
    """A ``requant`` attribute: None, or the fields of a valid :class:`lowbit.Requant` (which checks
    bits, step and the qmin/qmax range; its fields' types are checked first)."""
    try:
        return v is None or (isinstance(v, dict) and _bits(v.get("bits")) and _is_finite(v.get("step"))
                             and isinstance(v.get("signed"), bool) and _requant_of(v) is not None)
    except (ValueError, NotImplementedError):
        return False


def _requant_of(r) -> Requant | None:
    """The Requant of a ``requant`` attribute, None for None (qmin/qmax optional: the full range of bits)."""
    return None if r is None else Requant(r["bits"], r["step"], r["signed"], r.get("qmin"), r.get("qmax"))


# (check, what is expected) of an attribute's value
_POS_INT = (_pos_int, "an int >= 1")
_POS_PAIR = (_is_pair(_pos_int), "a pair of ints >= 1")
_BITS = (_bits, "1, 2, 3, 4 or 8")
_BOOL = (lambda v: isinstance(v, bool), "a bool")
_LEVEL = (_level, "an int in [-128, 255]")
_CLAMP = (_clamp_pair, "[lo, hi] (numbers or null, lo <= hi)")
_CODEBOOK = (lambda v: isinstance(v, (list, tuple)), "a list of ints")
_STRIDE_PADDING = [("stride", *_POS_PAIR),
                   ("padding", _is_pair(lambda v: _is_int(v) and 0 <= v <= MAX_ELEMENTS), "a pair of ints >= 0")]
# op -> [(attribute, check, what is expected[, default: the attribute is optional])]
_ATTRS = {
    "input": [("channels", *_POS_INT), ("height", *_POS_INT), ("width", *_POS_INT)],
    "quantize": [("bits", *_BITS), ("step", lambda v: _is_finite(v) and v > 0, "a finite number > 0"),
                 ("qn", *_LEVEL), ("qp", *_LEVEL), ("binary", *_BOOL, False),
                 ("levels", lambda v: isinstance(v, (list, tuple)) and all(map(_level, v)),
                  "a list of ints in [-128, 255]")],
    "clamp": [("clamp", *_CLAMP)],
    "maxpool": [("kernel", *_POS_PAIR), *_STRIDE_PADDING, ("dilation", *_POS_PAIR)],
    "avgpool": [("kernel", *_POS_PAIR), *_STRIDE_PADDING, ("count_include_pad", *_BOOL)],
    "pad": [("pads", lambda v: isinstance(v, (list, tuple)) and len(v) == 4
             and all(_is_int(x) and 0 <= x <= MAX_ELEMENTS for x in v), "[top, left, bottom, right] ints >= 0"),
            ("fill", lambda v: v in ("zero", "-inf"), "'zero' or '-inf'", "zero")],
    "adaptive_avgpool": [("output_size", _is_pair(lambda x: x is None or _pos_int(x)), "a pair of ints >= 1 or null")],
    "linear": [("w_bits", *_BITS), ("a_bits", *_BITS), ("w_codebook", *_CODEBOOK), ("a_codebook", *_CODEBOOK),
               ("clamp", *_CLAMP, [None, None]),
               ("requant", _requant, "null or {bits, step > 0, signed[, qmin, qmax]}", None),
               ("residual", *_BOOL, False),
               ("quantize_output", lambda v: v is None or isinstance(v, str), "null or a node name", None)],
    "conv_f32": [*_STRIDE_PADDING, ("dilation", *_POS_PAIR), ("groups", *_POS_INT)],
}
_ATTRS["conv"] = _ATTRS["linear"] + _ATTRS["conv_f32"]


def _check_node(n: Node) -> None:
    """Node ``n``'s attributes (types and ranges; an optional one missing gets its default),
    input count and arrays; ValueError naming the node otherwise. From then on a quantized
    layer keeps its weight codes packed."""
    for key, ok, expected, *default in _ATTRS.get(n.op, ()):
        if key not in n.attrs:
            if not default:
                raise ValueError(f"node {n.name!r} ({n.op}): missing attribute {key!r}")
            n.attrs[key] = default[0]
        elif not ok(n.attrs[key]):
            raise ValueError(f"node {n.name!r} ({n.op}): attribute {key!r} is {n.attrs[key]!r}, expected {expected}")
    a = n.attrs
    if n.op == "concat":
        if len(n.inputs) < 2:
            raise ValueError(f"node {n.name!r} (concat): expected 2 or more inputs, got {len(n.inputs)}")
    else:  # a second input: a quantized layer's residual, an exact_float quantizer's float layer input
        second = a["residual"] if n.op in _QUANTIZED else n.op == "quantize" and a.get("exact_float")
        want = {"input": 0, "add": 2}.get(n.op, 1) + bool(second)
        if len(n.inputs) != want:
            raise ValueError(f"node {n.name!r} ({n.op}): expected {want} inputs, got {len(n.inputs)}")
    if n.op == "quantize":
        if not a["qn"] <= a["qp"] or len(a["levels"]) != 1 << a["bits"] or (a["binary"] and a["bits"] != 1):
            raise ValueError(f"node {n.name!r} (quantize): inconsistent bits={a['bits']}, qn={a['qn']}, "
                             f"qp={a['qp']}, levels of length {len(a['levels'])}, binary={a['binary']}")
        if not a["binary"] and a["qp"] - a["qn"] >= 1 << a["bits"]:
            raise ValueError(f"node {n.name!r} (quantize): qn..qp = {a['qn']}..{a['qp']} needs more than "
                             f"{a['bits']} bits")
    if n.op in _QUANTIZED:
        for side in ("w", "a"):  # the codebook's size for the bits, integer levels in range
            try:
                cbmod.normalize(a[f"{side}_codebook"], a[f"{side}_bits"], f"{side}_codebook")
            except (TypeError, ValueError) as exc:
                raise ValueError(f"node {n.name!r} ({n.op}): {exc}") from None
        w = n.arrays.stored("w_codes") if "w_codes" in n.arrays else None
        if isinstance(w, PackedCodes) and w.packed.bits != a["w_bits"]:
            w = w.unpack()  # packed at another width (a foreign file): checked and repacked below
        if not isinstance(w, (np.ndarray, PackedCodes)) or w.dtype != np.uint8:
            raise ValueError(f"node {n.name!r}: missing uint8 'w_codes'")
        shape = w.shape
        if (n.op == "conv" and len(shape) != 4) or (n.op == "linear" and len(shape) != 2) or 0 in shape:
            raise ValueError(f"node {n.name!r}: w_codes has shape {shape}")
        if n.op == "conv" and shape[0] % a["groups"]:
            raise ValueError(f"node {n.name!r}: groups={a['groups']} does not divide Cout={shape[0]}")
        for key in ("scale", "bias"):
            arr = n.arrays.get(key)
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or arr.shape != (shape[0],):
                raise ValueError(f"node {n.name!r}: '{key}' must be float32 of shape ({shape[0]},)")
            if not np.isfinite(arr).all():
                raise ValueError(f"node {n.name!r} ({n.op}): {key!r} has non-finite values")
        if isinstance(w, np.ndarray):  # codes packed at w_bits are in range by construction
            if int(w.max()) >= (1 << a["w_bits"]):
                raise ValueError(f"node {n.name!r}: weight code out of range for {a['w_bits']} bits")
            n.arrays["w_codes"] = PackedCodes.pack(w, a["w_bits"])  # from now on the node keeps only packed codes
    if n.op in _FLOAT_LAYERS:
        w, b = n.arrays.get("w"), n.arrays.get("bias")
        nd = 4 if n.op == "conv_f32" else 2
        if not isinstance(w, np.ndarray) or w.dtype != np.float32 or w.ndim != nd:
            raise ValueError(f"node {n.name!r}: 'w' must be a {nd}-D float32 array")
        if not isinstance(b, np.ndarray) or b.dtype != np.float32 or b.shape != (w.shape[0],):
            raise ValueError(f"node {n.name!r}: 'bias' must be float32 of shape ({w.shape[0]},)")
    if n.op == "affine":
        for key in ("scale", "bias"):
            arr = n.arrays.get(key)
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or arr.ndim != 1 \
                    or not np.isfinite(arr).all():
                raise ValueError(f"node {n.name!r} (affine): {key!r} must be a finite 1-D float32 array")
        if n.arrays["scale"].shape != n.arrays["bias"].shape:
            raise ValueError(f"node {n.name!r}: affine needs 'scale' and 'bias' of one shape")


def _bounds(attrs):
    lo, hi = attrs.get("clamp", [None, None])
    return (-np.inf if lo is None else np.float32(lo)), (np.inf if hi is None else np.float32(hi))


# ---------------------------------------------------------------------------------------------
# The graph ops' reference arithmetic (plain NumPy): the reference executor runs these, and the
# native executor's steps (csrc/ops/graph_ops.h) agree with them bit for bit.

def quantize(x: np.ndarray, attrs) -> np.ndarray:
    """LSQ codes of float32 ``x``: clamp(round_half_even(x / step), Qn, Qp) - Qn, computed in
    float32 with a true division exactly as torch does (signed 1-bit: code = x >= 0). With
    ``pre_step``/``pre_div`` (QONNX Trunc with ROUND), ``x / step`` is ``round_half_even(x / pre_step)
    / pre_div`` (pre_div a power of two: the division is exact, by a multiplication)."""
    if attrs.get("binary"):
        return _quant.quantize_codes(x, 1.0, 0, 1, binary=True)
    if attrs.get("pre_step") is not None:
        x = np.rint(np.divide(x, np.float32(attrs["pre_step"]), dtype=np.float32))
        x *= np.float32(1.0 / attrs["pre_div"])
        return _quant.quantize_codes(x, 1.0, attrs["qn"], attrs["qp"])
    return _quant.quantize_codes(x, attrs["step"], attrs["qn"], attrs["qp"])


def dequantize(c: CodeTensor) -> np.ndarray:
    """float32(level) * float32(step) of each code (:func:`lowbit.quant.dequantize`)."""
    return _quant.dequantize(c.levels, c.codes, c.step)


def maxpool(x, attrs):
    """NHWC max pooling of float32 values, or of uint8 codes (a quantized value pooled: see
    :func:`lowbit.lowering.requant_before_maxpool`). Padding never wins: it is -inf for floats
    and code 0, the lowest code (the code of -inf), for codes."""
    g = _floatops.geometry(x.shape, attrs["kernel"], attrs["stride"], attrs["padding"], attrs["dilation"], "pooling")
    views = _floatops.taps(x, g, 0 if x.dtype == np.uint8 else -np.inf)
    return functools.reduce(np.maximum, views[1:], views[0].copy())


def avgpool(x, attrs):
    """NHWC average pooling: float64 sums of the window taps in (ky, kx) order (the first
    tap's value, 0.0 for padding, as the start), divided by the window size (or, without
    count_include_pad, by its in-image taps), rounded to float32."""
    g = _floatops.geometry(x.shape, attrs["kernel"], attrs["stride"], attrs["padding"], what="pooling")
    _, h, w, _, kh, kw, _, _, ph, pw = g[:10]
    acc = functools.reduce(np.add, _floatops.taps(x.astype(np.float64), g))  # in tap order
    if attrs["count_include_pad"] or (ph == 0 and pw == 0):
        return (acc / (kh * kw)).astype(np.float32)
    in_image_taps = sum(_floatops.taps(np.ones((1, h, w, 1)), (1, h, w, 1) + g[4:]))
    return (acc / in_image_taps).astype(np.float32)


def adaptive_avgpool(x, attrs):
    """Output cell (i, j) averages rows [floor(i*H/OH), ceil((i+1)*H/OH)) and columns
    [floor(j*W/OW), ceil((j+1)*W/OW)) (torch's rule): a float64 sum of the cell's taps in
    row-major (y, x) order (explicit, not np.mean's), the first tap's value as the start, then
    one float64 division by the tap count, rounded to float32."""
    b, h, w, c = x.shape
    oh, ow = attrs["output_size"]
    oh, ow = h if oh is None else oh, w if ow is None else ow  # None: the input's size
    check_elements((b, oh, ow, c), "adaptive_avgpool output")
    out = np.empty((b, oh, ow, c), np.float32)
    for i in range(oh):
        y0, y1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        for j in range(ow):
            x0, x1 = (j * w) // ow, -((-(j + 1) * w) // ow)
            cell = x[:, y0:y1, x0:x1].astype(np.float64).reshape(b, -1, c)  # its taps in row-major order
            out[:, i, j] = functools.reduce(np.add, cell.transpose(1, 0, 2)) / ((y1 - y0) * (x1 - x0))
    return out


_POOLS = {"maxpool": maxpool, "avgpool": avgpool, "adaptive_avgpool": adaptive_avgpool}


def _flatten(v):
    """NHWC (B, H, W, C) -> (B, C*H*W) in NCHW order, float or codes."""
    arr = v.codes if isinstance(v, CodeTensor) else v
    if arr.ndim == 4:
        arr = np.ascontiguousarray(arr.transpose(0, 3, 1, 2)).reshape(arr.shape[0], -1)
    return CodeTensor(arr, v.bits, v.levels, v.step) if isinstance(v, CodeTensor) else arr


def output_array(value) -> np.ndarray:
    """The model output of the last node's reference value: float32, codes dequantized, a 4-D
    map as NCHW."""
    if isinstance(value, CodeTensor):
        value = dequantize(value)
    return np.ascontiguousarray(value.transpose(0, 3, 1, 2) if value.ndim == 4 else value, dtype=np.float32)


def concat_channels(values, name="concat"):
    """The ``concat`` op of the reference executor: float32 arrays, or
    CodeTensors of one grid, joined along the last (channel) axis. RuntimeError for a mixture
    of float and codes or of grids, ValueError for shapes that differ off the channel axis."""
    codes = [isinstance(v, CodeTensor) for v in values]
    if any(codes) and not all(codes):
        raise RuntimeError(f"node {name!r}: concat got both codes and float (graph error)")
    arrays = [v.codes if isinstance(v, CodeTensor) else v for v in values]
    if len({a.shape[:-1] for a in arrays}) != 1:  # (so of one ndim too)
        raise ValueError(f"node {name!r}: concat inputs differ off the channel axis: "
                         f"{[tuple(a.shape) for a in arrays]}")
    if not all(codes):
        return np.concatenate(arrays, axis=-1).astype(np.float32, copy=False)
    first = values[0]
    if any(v.bits != first.bits or not np.array_equal(v.levels, first.levels) or v.step != first.step
           for v in values[1:]):
        raise RuntimeError(f"node {name!r}: concat of codes of different grids (graph error: dequantize first)")
    return CodeTensor(np.concatenate(arrays, axis=-1), first.bits, first.levels, first.step)


def pad_nhwc(x, pads, fill="zero", name="pad"):
    """The ``pad`` op: NHWC ``x`` (float32 or a CodeTensor) padded by ``pads`` = [top, left,
    bottom, right] rows/columns with ``fill``: "zero" (codes: the code of level 0) or "-inf"
    (float only)."""
    t, l, b, r = (int(p) for p in pads)
    arr = x.codes if isinstance(x, CodeTensor) else x
    if arr.ndim != 4:
        raise ValueError(f"node {name!r}: pad needs an NHWC input, got shape {arr.shape}")
    if isinstance(x, CodeTensor):
        if fill != "zero":
            raise RuntimeError(f"node {name!r}: pad of codes with {fill} (graph error)")
        fill, has_zero = _conv.pad_code(x.levels)  # the code of level 0
        if not has_zero:
            raise RuntimeError(f"node {name!r}: pad of codes whose levels {x.levels.tolist()} have no 0 "
                               "(graph error)")
    else:
        fill = np.float32(0.0 if fill == "zero" else -np.inf)
    bn, h, w, c = arr.shape
    check_elements((bn, h + t + b, w + l + r, c), "pad output")
    out = np.full((bn, h + t + b, w + l + r, c), fill, arr.dtype)
    out[:, t:t + h, l:l + w] = arr
    return CodeTensor(out, x.bits, x.levels, x.step) if isinstance(x, CodeTensor) else out


# ---------------------------------------------------------------------------------------------

class Model:
    """A converted low-bit network: ``logits = m(x)``.

    Build one with :func:`lowbit.convert` (from a PyTorch QAT model) or
    :func:`lowbit.load`. ``x``: float32 NCHW (NumPy array or torch tensor), any
    batch size; returns float32 NumPy logits.
    """

    FORMAT_GRAPH_VERSION = 1

    def __init__(self, nodes, meta=None):
        self.nodes = list(nodes)
        self.meta = dict(meta or {})
        self._by_name = {}
        self._validate()

    # ---- structure ---------------------------------------------------------------------------
    def _validate(self):
        if not self.nodes or self.nodes[0].op != "input":
            raise ValueError("graph: the first node must be the 'input' node")
        for i, n in enumerate(self.nodes):
            if n.name in self._by_name:
                raise ValueError(f"graph: duplicate node name {n.name!r}")
            if n.op == "input" and i:
                raise ValueError("graph: exactly one 'input' node is supported")
            for src in n.inputs:
                if src not in self._by_name:
                    raise ValueError(f"graph: node {n.name!r} reads {src!r}, which is not computed before it")
            _check_node(n)
            self._by_name[n.name] = n
        for n in self.nodes:
            self._check_exact_float(n)
            name = n.attrs.get("quantize_output") if n.op in _QUANTIZED else None
            q = self._by_name.get(name)
            if name is not None and (q is None or q.op != "quantize" or q.inputs != [n.name] or q.attrs["binary"]
                                     or q.attrs.get("pre_step") is not None or n.attrs["requant"] is not None):
                raise ValueError(f"node {n.name!r} ({n.op}): attribute 'quantize_output' is {name!r}, expected the "
                                 "name of a plain (not binary, no pre_step) quantize node reading this layer's "
                                 "float output")

    def _check_exact_float(self, n: Node):
        """A quantize node's ``exact_float`` (lowbit.exact_float) names a float layer whose input
        is the node's second input, and an affine (or None); its clamp is [lo, hi]."""
        e = n.attrs.get("exact_float") if n.op == "quantize" else None
        if not e:
            return
        d = e if isinstance(e, dict) else {}
        layer, affine, clamp = self._by_name.get(d.get("layer")), d.get("affine"), d.get("clamp")
        if layer is None or layer.op not in ("conv_f32", "linear_f32") or layer.inputs[0] != n.inputs[1] or \
                (affine is not None and getattr(self._by_name.get(affine), "op", None) != "affine") or \
                not (isinstance(clamp, list) and len(clamp) == 2) or n.attrs["binary"] or \
                n.attrs.get("pre_step") is not None:
            raise ValueError(f"node {n.name!r} (quantize): attribute 'exact_float' is {e!r}, expected {{layer: a "
                             "conv_f32/linear_f32 node whose input is this node's second input, affine: an affine "
                             "node or None, clamp: [lo, hi]}} on a plain quantize node")

    def node(self, name: str) -> Node:
        return self._by_name[name]

    @property
    def input_shape(self):
        """(C, H, W) of the example input given to convert()."""
        a = self.nodes[0].attrs
        return (a["channels"], a["height"], a["width"])

    @property
    def spatial_fixed(self) -> bool:
        """True when the input H x W must equal the example input's (e.g. flatten of a
        spatial map into a linear layer); False when any size that the convolutions
        accept works (global pooling before the classifier)."""
        return bool(self.nodes[0].attrs.get("spatial_fixed", True))

    def graph(self) -> dict:
        return {"version": self.FORMAT_GRAPH_VERSION, "nodes": [n.to_dict() for n in self.nodes],
                "meta": self.meta}

    # ---- execution ---------------------------------------------------------------------------
    def __call__(self, x, batch_size: int = 256, check_finite: bool = True) -> np.ndarray:
        return self.run(x, batch_size, False, None, check_finite)

    def run(self, x, batch_size: int = 256, reference: bool = False, profile: dict | None = None,
            check_finite: bool = True) -> np.ndarray:
        """Logits for float32 NCHW ``x``, ``batch_size`` images at a time (results do
        not depend on it): each batch is one native call (:mod:`lowbit.runtime.executor`,
        docs/runtime.md). ``reference=True`` runs the NumPy oracles instead, node by node.
        ``profile`` (native only): a dict that receives per-node seconds (summed over the
        node's native steps and the batches).

        ``check_finite`` (default True): NaN or Inf in ``x`` raise ValueError.
        With False the caller vouches for its input: +-Inf clamp to the extreme
        codes, NaN becomes code 0 (docs/robustness.md). An empty batch (N = 0)
        returns an empty result of the right shape."""
        if not reference and profile is None:  # a repeat of the last native call: one check, one native call
            out = _executor.run_repeat(self, x, batch_size, check_finite)
            if out is not None:
                return out
        if reference and profile is not None:
            raise ValueError("profile: the reference executor is not profiled (profile a native run)")
        x = self._check_input(x, check_finite)
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if len(x) == 0:
            # the output shape of an empty batch: one zero image's, with N = 0
            return self._execute(np.zeros((1,) + x.shape[1:], np.float32), reference)[:0]
        outs = [self._execute(x[i:i + batch_size], reference, profile) for i in range(0, len(x), batch_size)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def run_reference(self, x, batch_size: int = 64) -> np.ndarray:
        """Logits from the slow NumPy reference executor (lowbit.reference oracles)."""
        return self.run(x, batch_size=batch_size, reference=True)

    def trace(self, x, reference: bool = False) -> dict:
        """{node name: output} for one run: uint8 codes or float32 arrays, NHWC or (B, F) (the
        input node: the NHWC view of ``x``). The native executor's trace is a plan of its own that
        keeps every value (no buffer reuse); ``reference=True`` traces the NumPy oracles."""
        x = self._check_input(x)
        if x.shape[0] == 0:
            raise ValueError("x: empty batch (trace needs at least one image)")
        values = {}
        if reference:
            self._execute(x, True, None, values)
        else:
            values = _executor.trace(self, x)
        return {k: (v.codes if isinstance(v, CodeTensor) else v) for k, v in values.items()}

    def _check_input(self, x, check_finite: bool = True):
        """``x`` as a float32 NCHW NumPy array (a torch tensor converted, duck-typed: no torch
        import) of this model's input size, finite unless ``check_finite`` is False."""
        if not isinstance(x, np.ndarray):
            if type(x).__module__.startswith("torch") and hasattr(x, "detach"):
                x = x.detach().cpu().numpy()
            else:
                raise TypeError(f"x: expected a float32 NCHW numpy.ndarray or torch.Tensor, got {type(x).__name__}")
        if x.dtype != np.float32:
            if x.dtype.kind != "f":
                raise TypeError(f"x: expected float32 values, got dtype {x.dtype}")
            x = x.astype(np.float32)
        c, h, w = self.input_shape
        if x.ndim != 4:
            raise ValueError(f"x: expected a 4-D NCHW batch (N, {c}, H, W), got shape {x.shape}")
        if x.shape[1] != c:
            raise ValueError(f"x: expected {c} channels (NCHW), got shape {x.shape}")
        if self.spatial_fixed and x.shape[2:] != (h, w):
            raise ValueError(f"x: this model needs {h}x{w} inputs (the example_input size; it flattens a "
                             f"spatial map into a linear layer), got {x.shape[2]}x{x.shape[3]}")
        if check_finite and not np.isfinite(x).all():
            bad = np.argwhere(~np.isfinite(x))[0]
            raise ValueError(f"x: expected finite values, got {x[tuple(bad)]} at index {tuple(int(i) for i in bad)}"
                             " (pass check_finite=False to skip this check)")
        return x

    def _execute(self, x, reference, profile=None, record=None):
        """One batch: the native executor, or (``reference``) the NumPy oracles node by node;
        ``record`` (reference only) receives every node's value."""
        if not reference:
            return _executor.run(self, x, profile)
        vals = {} if record is None else record  # a record keeps every value
        last_use = self._last_use()
        for i, n in enumerate(self.nodes):
            out = x.transpose(0, 2, 3, 1) if n.op == "input" else self._run_node(n, [vals[s] for s in n.inputs])
            vals[n.name] = out
            if record is None:
                for s in last_use.get(i, ()):
                    del vals[s]
        return output_array(vals[self.nodes[-1].name])

    def _last_use(self):
        if "last_use" not in self.__dict__.setdefault("_memo", {}):
            last = {s: i for i, n in enumerate(self.nodes) for s in n.inputs}  # the index of its last reader
            last.pop(self.nodes[-1].name, None)  # the output is kept
            by_index = {}
            for s, i in last.items():
                by_index.setdefault(i, []).append(s)
            self._memo["last_use"] = by_index
        return self._memo["last_use"]

    def _run_node(self, n: Node, args):
        """Node ``n``'s value in the reference executor, from its inputs' values ``args``."""
        op, a, x = n.op, n.attrs, args[0] if args else None
        if op == "quantize":
            if isinstance(x, CodeTensor):
                raise RuntimeError(f"node {n.name!r}: quantize got codes")
            # exact_float: codes decided in float64 (lowbit.exact_float)
            codes = _exact_float.reference_codes(self, n, args[1]) if a.get("exact_float") else quantize(x, a)
            return CodeTensor(codes, a["bits"], a["levels"], a["step"])
        if op == "dequantize":
            return dequantize(x)
        if op in _QUANTIZED:
            return self._run_quantized(n, args)
        if op == "flatten":
            return _flatten(x)
        if op == "concat":
            return concat_channels(args, n.name)
        if op == "pad":
            return pad_nhwc(x, a["pads"], a["fill"], n.name)
        if op == "maxpool" and isinstance(x, CodeTensor):  # the largest code is the code of the largest value
            return CodeTensor(maxpool(x.codes, a), x.bits, x.levels, x.step)
        if isinstance(x, CodeTensor):
            raise RuntimeError(f"node {n.name!r} ({op}) got codes; expected float")
        if op in _POOLS:
            return _POOLS[op](x, a)
        if op == "linear_f32":
            return _floatops.linear_f32(x, n.arrays["w"], n.arrays["bias"], False)
        if op == "conv_f32":
            return _floatops.conv2d_f32(x, n.arrays["w"], n.arrays["bias"], a["stride"], a["padding"], a["dilation"],
                                        a["groups"], False)
        if op == "add":
            return np.add(x, args[1], dtype=np.float32)
        if op == "clamp":
            lo, hi = _bounds(a)
            return np.minimum(np.maximum(x, np.float32(lo)), np.float32(hi))
        if op == "affine":
            return (x * n.arrays["scale"] + n.arrays["bias"]).astype(np.float32)
        raise AssertionError(op)

    # ---- conv / linear -----------------------------------------------------------------------
    def _epilogue(self, n: Node):
        ep = n._cache.get("epilogue")
        if ep is None:
            ep = n._cache["epilogue"] = Epilogue(n.arrays["scale"], n.arrays["bias"], _bounds(n.attrs),
                                                 _requant_of(n.attrs["requant"]), scale64=n.arrays.get("scale64"),
                                                 bias64=n.arrays.get("bias64"))
        return ep

    def _weights(self, n: Node):
        """ConvWeights / PackedWeights, built on first use (packing is cached inside them)."""
        w = n._cache.get("weights")
        if w is None:
            a = n.attrs
            codes = n.arrays.stored("w_codes")
            if not isinstance(codes, PackedCodes):  # codes assigned after validation: packed (and range-checked) here
                codes = PackedCodes.pack(codes, a["w_bits"])
            packed = codes.packed.with_codebook(a["w_codebook"])  # shares the node's packed codes: no copy
            w = _conv.ConvWeights.from_packed(packed, codes.shape, a["groups"]) if n.op == "conv" else packed
            n._cache["weights"] = w
        return w

    def _run_quantized(self, n: Node, args):
        """A conv/linear node in the reference executor: lowbit.reference's sums and epilogue."""
        a = n.attrs
        x = args[0]
        if not isinstance(x, CodeTensor):
            raise RuntimeError(f"node {n.name!r}: expected activation codes, got float (graph error)")
        if x.bits != a["a_bits"] or x.levels.tolist() != list(a["a_codebook"]):
            raise RuntimeError(f"node {n.name!r}: input codes are {x.bits}-bit {x.levels.tolist()}, expected "
                               f"{a['a_bits']}-bit {a['a_codebook']}")
        if x.codes.ndim != (4 if n.op == "conv" else 2):
            raise ValueError(f"node {n.name!r}: {n.op} needs {'NHWC codes' if n.op == 'conv' else '(B, K) input'}, "
                             f"got shape {x.codes.shape}")
        w = n.arrays["w_codes"]
        grids = (a["a_bits"], a["w_bits"], a["a_codebook"], a["w_codebook"])
        acc = _ref.gemm(x.codes, w, *grids) if n.op == "linear" else _ref.conv2d(
            x.codes, w, *grids, tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), a["groups"])
        out_shape, acc = acc.shape, acc.reshape(-1, w.shape[0])  # (M, Cout) sums
        lo, hi = _bounds(a)
        rq = _requant_of(a["requant"])
        res = None if len(args) < 2 else args[1].reshape(acc.shape)
        y = _ref.epilogue(acc, n.arrays["scale"], n.arrays["bias"], res, lo, hi, rq, n.arrays.get("scale64"),
                          n.arrays.get("bias64")).reshape(out_shape)
        return y if rq is None else CodeTensor(y, rq.bits, rq.codebook(), rq.step)

    # ---- reporting ---------------------------------------------------------------------------
    @property
    def nbytes_disk(self) -> int:
        """Bytes of the parameters as saved: packed weight codes (ceil(K * w_bits / 8)
        bytes per output channel) and float32 parameters (the model file's data,
        less its alignment padding, header and checksum)."""
        return sum(n.weight_bytes() for n in self.nodes)

    @property
    def nbytes(self) -> int:
        """The same as :attr:`nbytes_disk` (kept for existing callers)."""
        return self.nbytes_disk

    @property
    def nbytes_resident(self) -> int:
        """Bytes of the NumPy arrays this Model holds now: the packed weight codes
        and float32 parameters (:attr:`nbytes_disk`) plus what the runs so far
        built and cached per layer (kernel weight layouts, lookup tables,
        epilogue parameters). It grows with the first run and with each other
        kernel a layer runs on; unpacked weight codes are never kept."""
        return resident_bytes(self.nodes)

    def memory(self) -> dict:
        """{"disk": nbytes_disk, "resident": nbytes_resident}."""
        return {"disk": self.nbytes_disk, "resident": self.nbytes_resident}

    def layers(self) -> list:
        """One dict per node: name, op, bits, kernel (after a run), output shape, bytes."""
        return [{"name": n.name, "op": n.op, "bits": self._bits_label(n), "detail": self._detail(n),
                 "kernel": n.kernel if n.op in _LAYERS else None, "out_shape": n.out_shape, "bytes": n.weight_bytes(),
                 "inputs": list(n.inputs), "source": n.attrs.get("source")} for n in self.nodes]

    @staticmethod
    def _bits_label(n: Node) -> str:
        """W{w_bits}A{a_bits} of a quantized layer, F32 of a float layer, A{bits} of a quantizer, else ''."""
        if n.op in _QUANTIZED:
            return f"W{n.attrs['w_bits']}A{n.attrs['a_bits']}"
        return "F32" if n.op in _FLOAT_LAYERS else f"A{n.attrs['bits']}" if n.op == "quantize" else ""

    @staticmethod
    def _detail(n: Node) -> str:
        a = n.attrs
        if n.op == "quantize":
            return f"{'signed' if a['signed'] else 'unsigned'} step={a['step']:.6g}"
        if n.op == "clamp":
            return f"[{a['clamp'][0]}, {a['clamp'][1]}]"
        if n.op in ("maxpool", "avgpool"):
            return f"{a['kernel'][0]}x{a['kernel'][1]} s{a['stride'][0]} p{a['padding'][0]}"
        if n.op == "adaptive_avgpool":
            return f"-> {a['output_size']}"
        if n.op not in _LAYERS:
            return ""
        w = n.arrays.shape("w" if n.op in _FLOAT_LAYERS else "w_codes")
        s = f"{w[1]}->{w[0]}" if len(w) == 2 else (
            f"{w[2]}x{w[3]} {w[1] * a['groups']}->{w[0]} s{a['stride'][0]} p{a['padding'][0]}"
            + (f" d{a['dilation'][0]}" if max(a["dilation"]) > 1 else "")
            + (f" g{a['groups']}" if a["groups"] > 1 else ""))
        if n.op in _FLOAT_LAYERS:
            return s + " float32"
        fused = ["bn"] if a.get("bn") else []
        if a.get("residual"):
            fused.append("+res")
        lo, hi = a.get("clamp", [None, None])
        if lo is not None or hi is not None:
            fused.append("relu" if (lo == 0 and hi is None) else "relu6" if (lo == 0 and hi == 6) else
                         f"clamp[{lo},{hi}]")
        r = a.get("requant")
        fused.append(f"->A{r['bits']} codes" if r else "->f32")
        return s + " " + " ".join(fused)

    def summary(self, print_fn=print, example: bool = True) -> str:
        """Print (and return) a table of layers: op, bit widths, kernel that ran, bytes.

        Kernels are known after a run; if the model has not run yet and ``example``,
        one image of the example input size (zeros) runs first."""
        if example and any(n.kernel is None for n in self.nodes if n.op in _QUANTIZED):
            self.run(np.zeros((1, *self.input_shape), np.float32))
        rows = self.layers()
        head = f"{'#':>3} {'name':<22} {'op':<16} {'bits':<6} {'detail':<40} {'out shape':<18} {'kernel':<26} {'bytes':>9}"
        lines = [f"lowbit.Model: {len(self.nodes)} nodes, input (N, {', '.join(map(str, self.input_shape))}) "
                 f"float32 NCHW, spatial size {'fixed' if self.spatial_fixed else 'free'}", head,
                 "-" * len(head)]
        for i, r in enumerate(rows):
            shp = "" if r["out_shape"] is None else "x".join(map(str, r["out_shape"][1:]))
            lines.append(f"{i:>3} {r['name'][:22]:<22} {r['op']:<16} {r['bits']:<6} {r['detail'][:40]:<40} "
                         f"{shp:<18} {(r['kernel'] or '')[:26]:<26} {r['bytes'] or '':>9}")
        q = [n for n in self.nodes if n.op in _QUANTIZED]
        lines.append("-" * len(head))
        nf = sum(n.op in _FLOAT_LAYERS for n in self.nodes)
        lines.append(f"{len(q)} quantized layers" + (f" + {nf} float32 layers" if nf else "") + " ("
                     + ", ".join(f"{k}: {v}" for k, v in sorted(self._bit_counts().items()))
                     + f"); {self.nbytes_disk} bytes of weights and epilogue parameters on disk, "
                     f"{self.nbytes_resident} resident with the kernel layouts built so far")
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text

    def _bit_counts(self) -> dict:
        return dict(collections.Counter(self._bits_label(n) for n in self.nodes if n.op in _LAYERS))

    def __repr__(self):
        return (f"lowbit.Model({len(self.nodes)} nodes, input {self.input_shape}, "
                f"{self._bit_counts()}, {self.nbytes_disk} bytes on disk)")

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the model to ``path`` (format: docs/pipeline.md, :mod:`lowbit.io`)."""
        from . import io

        io.save(self, path)

    def __reduce__(self):
        """Pickle as the model file's bytes (:func:`lowbit.io.to_bytes`), so a Model can be
        sent to other processes (multiprocessing, Ray); unpickling runs :func:`lowbit.io.from_bytes`,
        with all its checks. Run-time caches (packed weights, kernels that ran) are not sent."""
        from . import io

        return io.from_bytes, (io.to_bytes(self),)
