"""Fuzz harness: the QONNX importer (lowbit.from_qonnx).

The first byte of an input picks how the rest is used:

0. raw protobuf bytes (mutated serialized ONNX models), given to from_qonnx;
1. a structurally valid QONNX graph built from the rest: the bytes choose
   hostile attributes (negative, zero or huge shapes; zero, negative, NaN or
   infinite scales; bit widths 0, 33, fractional or NaN; bad rounding modes;
   negative pads, zero strides, groups that do not divide), which ops sit
   in the chain (OPS below: add an entry when the importer learns an op) and
   graph damage (cycles, dangling inputs, missing initializers, wrong
   initializer dtypes, hostile Reshape targets).

Expected: QonnxConversionError (a NotImplementedError) or ValueError with a
message. A model that converts must run one image or raise
ValueError/TypeError/RuntimeError/NotImplementedError; any other exception,
a crash or a hang is a bug.
"""
import math
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

with harness.instrument():
    import lowbit  # noqa: E402,F401
    from lowbit import qonnx as lbq  # noqa: E402

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

NAME = "qonnx"
QD = "qonnx.custom_op.general"
IMPORT_ERRORS = (lbq.QonnxConversionError, ValueError)

SCALES = [0.25, 0.5, 0.0, -1.0, float("nan"), float("inf"), 1e-45, 1e38, "per_channel"]
ZERO_POINTS = [0.0, 0.0, 1.0, 0.5, float("nan"), 300.0, -1e30]
BITS = [2, 2, 1, 4, 8, 3, 0, 33, -1, 2.5, float("nan"), 64, 1e10]
FLAGS = [0, 1, 0, 1, 2, -1]
ROUNDING = ["ROUND", "ROUND", "FLOOR", "CEIL", "HALF_UP", "bogus", ""]
DIMS = [8, 8, 6, 1, 0, -1, 3, 2**31, 2**20]
CHANNELS = [2, 2, 4, 1, 0, -3, 2**31]
KERNELS = [3, 3, 1, 2, 0, 9]
PADS = [0, 1, 1, 2, -1, 100]
STRIDES = [1, 1, 2, 0, -1, 2**31]
GROUPS = [1, 1, 2, 0, 3, -1]
RESHAPES = [[1, -1], [-1, 8], [0], [-1, -1], [2**40], [], [1, 2, 3, 4, 5]]
DTYPES = [np.float32, np.float32, np.float32, np.float64, np.int64, np.float16]


class Choices:
    """Reads choices from fuzz bytes (0 when they run out: the first option)."""

    def __init__(self, data: bytes):
        self.data, self.i = data, 0

    def byte(self) -> int:
        v = self.data[self.i] if self.i < len(self.data) else 0
        self.i += 1
        return v

    def pick(self, options):
        return options[self.byte() % len(options)]


class Builder:
    def __init__(self, ch: Choices):
        self.ch, self.nodes, self.inits, self.k = ch, [], [], 0

    def name(self, p):
        self.k += 1
        return f"{p}{self.k}"

    def const(self, arr):
        name = self.name("c")
        arr = np.asarray(arr).astype(self.ch.pick(DTYPES) if self.ch.byte() % 8 == 0 else np.asarray(arr).dtype)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op, ins, domain="", **attrs):
        out = self.name("t")
        self.nodes.append(helper.make_node(op, ins, [out], name=self.name(op), domain=domain, **attrs))
        return out

    def quant(self, x, channels=1):
        ch = self.ch
        s = ch.pick(SCALES)
        scale = (np.linspace(0.1, 1.0, max(1, min(int(channels), 64))).reshape(-1, 1, 1, 1) if s == "per_channel"
                 and isinstance(channels, int) and 0 < channels <= 64 else np.float32(0.25 if s == "per_channel" else s))
        if ch.byte() % 6 == 0:
            return self.op("BipolarQuant", [x, self.const(np.asarray(scale, np.float32))], domain=QD)
        return self.op("Quant", [x, self.const(np.asarray(scale, np.float32)),
                                 self.const(np.float32(ch.pick(ZERO_POINTS))), self.const(np.float32(ch.pick(BITS)))],
                       domain=QD, signed=ch.pick(FLAGS), narrow=ch.pick(FLAGS), rounding_mode=ch.pick(ROUNDING))


def _weights(b: Builder, shape):
    size = math.prod(max(0, s) for s in shape)
    if size > 1 << 16 or any(s < 0 for s in shape):
        shape = [1] * len(shape)  # keep initializers small; hostile shapes come from the activations
    w = (np.arange(math.prod(shape)) % 3 - 1).astype(np.float32).reshape(shape) * 0.25
    return b.quant(b.const(w), shape[0] if shape else 1)


# One entry per op kind the chain may contain: f(builder, x, channels) -> (output, channels).
def _conv(b, x, c):
    ch = b.ch
    k, cout, g = ch.pick(KERNELS), ch.pick(CHANNELS), ch.pick(GROUPS)
    cin = c // g if isinstance(g, int) and g > 0 and c % g == 0 else c
    attrs = {"kernel_shape": [k, k], "pads": [ch.pick(PADS)] * 4, "strides": [ch.pick(STRIDES)] * 2,
             "dilations": [ch.pick([1, 1, 2, 0])] * 2, "group": g}
    if ch.byte() % 5 == 0:
        del attrs[ch.pick(sorted(attrs))]
    ins = [x, _weights(b, [cout, max(cin, 1), max(k, 1), max(k, 1)])]
    if ch.byte() % 2:
        ins.append(b.const(np.zeros(max(1, min(int(cout), 64)), np.float32)))
    return b.op("Conv", ins, **attrs), cout


def _act(b, x, c):
    kind = b.ch.pick(["Relu", "Clip", "Clip0"])
    if kind == "Relu":
        return b.op("Relu", [x]), c
    lo, hi = b.ch.pick([(0.0, 6.0), (6.0, 0.0), (float("nan"), 1.0), (0.0, float("inf"))])
    return b.op("Clip", [x, b.const(np.float32(lo)), b.const(np.float32(hi))]), c


def _bn(b, x, c):
    n = max(1, min(int(c), 64)) if isinstance(c, int) else 1
    if b.ch.byte() % 3 == 0:
        n += 1  # wrong length
    var = b.ch.pick([1.0, 0.0, -1.0, float("nan")])
    return b.op("BatchNormalization", [x] + [b.const(np.full(n, v, np.float32)) for v in (1.0, 0.0, 0.0, var)],
                epsilon=b.ch.pick([1e-5, 0.0, -1.0])), c


def _pool(b, x, c):
    kind = b.ch.pick(["MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"])
    if kind.startswith("Global"):
        return b.op(kind, [x]), c
    k = b.ch.pick(KERNELS)
    return b.op(kind, [x], kernel_shape=[k, k], strides=[b.ch.pick(STRIDES)] * 2, pads=[b.ch.pick(PADS)] * 4), c


def _add(b, x, c):
    other = x if b.ch.byte() % 2 else b.const(np.float32(b.ch.pick([1.0, float("nan")])))
    return b.op("Add", [x, other]), c


OPS = [_conv, _conv, _act, _bn, _pool, _add]


def build_model(ch: Choices):
    b = Builder(ch)
    c = ch.pick(CHANNELS)
    shape = [ch.pick([1, 1, 0, -1, "N"]), c, ch.pick(DIMS), ch.pick(DIMS)]
    x = b.quant("x")
    for _ in range(ch.byte() % 4 + 1):
        x, c = ch.pick(OPS)(b, x, c)
        if ch.byte() % 2:
            x = b.quant(x, c)
    x = b.op("GlobalAveragePool", [x]) if ch.byte() % 4 == 0 else x
    x = b.op("Flatten", [x]) if ch.byte() % 4 else b.op("Reshape", [x, b.const(np.asarray(ch.pick(RESHAPES),
                                                                                          np.int64))])
    x = b.quant(x)
    cin = c if isinstance(c, int) and 0 < c <= 64 else 2
    x = b.op("Gemm", [x, _weights(b, [ch.pick([10, 1, 0]), cin])], transB=1)
    damage = ch.byte() % 8
    if damage == 1 and len(b.nodes) > 1:  # cycle: a node reads a later node's output
        i = ch.byte() % (len(b.nodes) - 1)
        b.nodes[i].input[0] = b.nodes[-1].output[0]
    elif damage == 2 and b.nodes:  # dangling input
        b.nodes[ch.byte() % len(b.nodes)].input[0] = "ghost"
    elif damage == 3 and b.inits:  # missing initializer
        del b.inits[ch.byte() % len(b.inits)]
    elif damage == 4 and b.nodes:  # a node reads its own output
        n = b.nodes[ch.byte() % len(b.nodes)]
        n.input[0] = n.output[0]
    elif damage == 5 and len(b.nodes) > 1:  # duplicate output names
        b.nodes[0].output[0] = b.nodes[1].output[0]
    dims = [d if isinstance(d, int) else d for d in shape]
    g = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], b.inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(QD, 2)])
    m.ir_version = 8
    return m


def test_one_input(data: bytes) -> None:
    if not data:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = data[1:] if data[0] % 2 == 0 else build_model(Choices(data[1:]))
        try:
            model = lbq.from_qonnx(src)
        except IMPORT_ERRORS as exc:
            assert str(exc), "an error without a message"
            return
        harness.check_runs(model)


def seed_corpus() -> dict:
    out = {f"structured_{i}": b"\x01" + bytes(v) for i, v in
           enumerate([[], [0] * 40, list(range(40)), [1, 3, 5, 7] * 10])}
    for i in (0, 2):  # two valid graphs, serialized: protobuf mutations start from them
        out[f"protobuf_{i}"] = b"\x00" + build_model(Choices(bytes([0] * 40 if i == 0 else range(40))))\
            .SerializeToString()
    return out


if __name__ == "__main__":
    if "--write-corpus" in sys.argv:
        folder = os.path.join(harness.CORPUS, NAME)
        os.makedirs(folder, exist_ok=True)
        for name, blob in seed_corpus().items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(blob)
        sys.exit(0)
    harness.main(NAME, test_one_input)
