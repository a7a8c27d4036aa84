"""Differential test of lowbit.from_qonnx: random, valid, small QONNX graphs against qonnx's executor.

Each seed builds one graph (``random_graph``) out of the ops the importer supports, combined in
random but legal ways: Quant (per-tensor and per-channel scales, signed or unsigned, narrow,
1-8 bits, zero points, ROUND/HALF_EVEN and, refused on activations, FLOOR/CEIL), BipolarQuant,
Conv (groups incl. depthwise, stride, dilation, symmetric and asymmetric pads, bias),
Gemm/MatMul, BatchNormalization, Mul/Add/Sub/Div by constants, Relu/Clip, a residual Add of two
activations, MaxPool/AveragePool/GlobalAveragePool/ReduceMean, Flatten/Reshape/Transpose, a zero
Pad, Concat, Trunc after an average pool, Identity. Shapes are small (C <= 16, H, W <= 10, batch
4-16).

A graph that ``from_qonnx`` refuses with a QonnxConversionError is fine (an unsupported
pattern); one that converts must satisfy the parity rule of tests/python/parity.py against
qonnx's float32 executor (``check_qonnx_parity``) and the same codes rule against qonnx's
float64 run (``check_float64_codes``: lowbit must agree with the float64 run on every code
except within float rounding of a rounding boundary), and lowbit's native run must equal its
NumPy reference executor bit for bit (``Model.run_reference``); every fourth seed converts with
``requant_in_epilogue=False``. Any other exception is a failure.

The default suite runs a fixed list of seeds (``DEFAULT_SEEDS`` graphs, well under a minute)
and asserts that a reasonable fraction converts. A longer campaign reads the graph count from
the environment:

    LOWBIT_RANDOM_GRAPHS=2000 PYTHONPATH=python python3 -m pytest tests/python/test_qonnx_random_graphs.py -q

(seeds 0 .. N-1; ``LOWBIT_RANDOM_GRAPHS_START`` moves the first seed). A failing seed is
reproduced with ``random_graph(seed)`` and ``check_graph(seed)``.

Not generated: a signed 1-bit Quant on an activation (qonnx 1.0's executor reads it as
bipolar +-scale instead of the QONNX levels {-1, 0}: test_qonnx.py's
test_signed_1bit_quant_follows_the_definition), which would be a known reference bug.
"""
import os
import warnings
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("qonnx")
pytest.importorskip("onnxruntime")

import lowbit.qonnx as lbq  # noqa: E402
from parity import _check_codes, _check_logits, _quantizer_input, check_qonnx_parity  # noqa: E402
from test_qonnx import QD, G, _qweights  # noqa: E402

DEFAULT_SEEDS = 60
# the default seeds must convert at least this often (else the test would silently test nothing)
MIN_CONVERTED = 0.5


# ---------------------------------------------------------------------------------------------
# The generator

class _Gen:
    """Builds one random graph. ``self.cur``: (tensor, shape without the batch axis, magnitude
    estimate of its values, grid) where grid is None for a float tensor or (scale, bits, signed)
    for a per-tensor Quant output (Trunc and the residual add read it)."""

    def __init__(self, seed: int, exact: bool = False):
        self.rng = np.random.default_rng(seed)
        self.exact = exact   # every float operation of qonnx's executor exact (see random_graph)
        self.g = G()
        self.maps = []   # earlier quantized 4-D tensors: (tensor, shape, magnitude) for residual adds

    # ---- helpers -----------------------------------------------------------------------------
    def chance(self, p):
        return self.rng.random() < p

    def pick(self, options, p=None):
        return options[self.rng.choice(len(options), p=p)]

    def scale_near(self, v):
        """A quantizer step near v: a power of two (exact float arithmetic) or arbitrary."""
        v = max(float(v), 1e-3)
        if self.exact or self.chance(0.3):
            return float(2.0 ** np.round(np.log2(v)))
        return float(np.float32(v * self.rng.uniform(0.6, 1.6)))

    def factors(self, shape, lo=0.5, hi=2.0):
        """Per-channel multipliers in [lo, hi] (powers of two when exact)."""
        if self.exact:
            return 2.0 ** self.rng.integers(int(np.log2(lo)), int(np.log2(hi)) + 1, shape)
        return self.rng.uniform(lo, hi, shape)

    def offsets(self, shape, mag):
        """Biases of about ``mag`` (multiples of 1/16 when exact)."""
        v = self.rng.uniform(-1, 1, shape) * mag
        return np.round(v * 16) / 16 if self.exact else v

    def act_quant(self, x, shape, mag, allow_per_channel=True):
        """A Quant (or BipolarQuant) of activation x; returns the new current tuple."""
        rng, g = self.rng, self.g
        if self.chance(0.08):
            s = self.scale_near(mag)
            return g.bipolar(x, s), shape, s, None
        bits = int(self.pick([1, 2, 2, 3, 4, 4, 5, 6, 8]))
        signed = int(self.chance(0.5)) if bits > 1 else 0
        narrow = int(self.chance(0.25)) if bits > 1 else 0
        zp = 0.0
        if not signed and self.chance(0.12):   # odd ones too: QONNX rounds x / s + z (test_odd_zero_point_...)
            zp = float(rng.integers(-2, 3))
        mode = self.pick(["ROUND", "HALF_EVEN", "FLOOR", "CEIL"], p=[0.84, 0.08, 0.04, 0.04])
        half = 2 ** (bits - 1) if signed else 2 ** bits
        s = self.scale_near(2.5 * mag / half)
        if allow_per_channel and self.chance(0.2 if len(shape) == 4 else 0.1):
            c = shape[1]
            s = (s * self.factors((1, c) + (1,) * (len(shape) - 2))).astype(np.float32)
            grid = None
        else:
            grid = (s, bits, signed) if zp == 0.0 and mode in ("ROUND", "HALF_EVEN") else None
        y = g.op("Quant", [x, g.c(s), g.c(zp), g.c(float(bits))], domain=QD, signed=signed, narrow=narrow,
                 rounding_mode=mode)
        return y, shape, float(np.mean(s)) * half / 2, grid

    def weights(self, shape, fan_in, per_channel_axis0=True):
        """Quantized (or bipolar) weights of ``shape``, scaled so that a layer's output has about
        the magnitude of its input (as in a trained network: large terms that cancel would make
        the float32 reference itself miss the float64 result by more than the parity rule's
        relative tolerance); returns (tensor, magnitude of one weight)."""
        rng = self.rng
        target = 1.5 / np.sqrt(fan_in)
        if self.chance(0.1):
            s = self.scale_near(target)
            return _qweights(self.g, rng, shape, 1, bipolar=True, scale=s), s
        bits = int(self.pick([2, 2, 3, 4] if self.exact else [2, 2, 3, 4, 4, 5, 8]))
        signed = int(self.chance(0.85))
        narrow = int(self.chance(0.5))
        s = self.scale_near(2 * target / 2 ** (bits - 1))
        zp = 0.0
        if not signed and self.chance(0.5):
            zp = float(rng.integers(1, 2 ** bits - 1))
        if per_channel_axis0 and self.chance(0.3):
            s = (s * self.factors((shape[0],) + (1,) * (len(shape) - 1))).astype(np.float32)
        mode = self.pick(["ROUND", "FLOOR", "CEIL"], p=[0.8, 0.1, 0.1])
        w = _qweights(self.g, rng, shape, bits, signed, narrow, s, zp)
        if mode != "ROUND":   # the weights' rounding mode (constant-folded by the importer)
            next(a for a in self.g.nodes[-1].attribute if a.name == "rounding_mode").s = mode.encode()
        return w, float(np.mean(s)) * 2 ** (bits - 1) / 2

    # ---- stages on a 4-D map -----------------------------------------------------------------
    def conv_block(self, cur, after_pad=False):
        rng, g = self.rng, self.g
        x, (n, cin, h, w), mag, _ = cur
        groups = 1
        if cin > 1 and self.chance(0.35):
            groups = cin if self.chance(0.5) else int(self.pick([d for d in range(1, cin + 1) if cin % d == 0]))
        cout = groups * int(rng.integers(1, max(2, 16 // groups) + 1)) if groups > 1 else int(rng.integers(1, 17))
        cout = min(cout, 16) - (min(cout, 16) % groups) or groups
        k = int(self.pick([1, 2, 3, 3, 5])) if min(h, w) >= 5 else int(self.pick([1, 2, 3]))
        stride = [int(rng.integers(1, 3)), int(rng.integers(1, 3))]
        dil = [1, 1] if k == 1 or self.chance(0.7) else [int(rng.integers(1, 3)), int(rng.integers(1, 3))]
        if self.chance(0.3):
            pads = [int(v) for v in rng.integers(0, k, 4)]           # asymmetric
        else:
            p = [int(rng.integers(0, k)), int(rng.integers(0, k))]
            pads = p + p
        eff = [dil[i] * (k - 1) + 1 for i in range(2)]
        oh = (h + pads[0] + pads[2] - eff[0]) // stride[0] + 1
        ow = (w + pads[1] + pads[3] - eff[1]) // stride[1] + 1
        if oh < 1 or ow < 1:
            pads, stride, dil, oh, ow, k = [0, 0, 0, 0], [1, 1], [1, 1], h, w, 1
        wt, wmag = self.weights((cout, cin // groups, k, k), cin // groups * k * k)
        ins = [x, wt]
        if self.chance(0.4):
            ins.append(g.c(self.offsets(cout, mag)))
        if self.chance(0.1) and not after_pad and dil == [1, 1]:   # (onnxruntime: no dilated SAME)   # SAME_UPPER / SAME_LOWER: ceil(in / stride) outputs
            oh, ow = -(-h // stride[0]), -(-w // stride[1])
            y = g.op("Conv", ins, kernel_shape=[k, k], strides=stride, dilations=dil, group=groups,
                     auto_pad=self.pick(["SAME_UPPER", "SAME_LOWER"]))
        else:
            y = g.op("Conv", ins, kernel_shape=[k, k], strides=stride, dilations=dil, pads=pads, group=groups)
        shape = (n, cout, oh, ow)
        mag = mag * wmag * np.sqrt(cin // groups * k * k)
        y, mag = self.affines(y, shape, mag)
        if self.chance(0.25):   # residual add of an earlier quantized map of the same shape
            same = [m for m in self.maps if m[1] == shape]
            if same:
                other = same[int(rng.integers(len(same)))]
                y = g.op("Add", [y, other[0]] if self.chance(0.5) else [other[0], y])
                mag = mag + other[2]
        y = self.clamp(y)
        return self.maybe_quant((y, shape, mag, None), p=0.85)

    def affines(self, y, shape, mag):
        """0-2 of BatchNormalization and Mul/Add/Sub/Div by (per-channel or scalar) constants."""
        rng, g = self.rng, self.g
        c = shape[1]
        for _ in range(int(rng.integers(0, 3))):
            kind = self.pick(["Mul", "Add", "Sub", "Div"] if self.exact else ["BN", "Mul", "Add", "Sub", "Div"])
            per_channel = self.chance(0.6)
            cshape = ((1, c, 1, 1) if self.chance(0.5) else (c, 1, 1)) if len(shape) == 4 else (1, c)
            if kind == "BN":
                gam, var = rng.uniform(0.5, 2, c), rng.uniform(0.5, 2, c)
                mean, beta = rng.uniform(-1, 1, c) * mag, rng.uniform(-1, 1, c) * mag
                y = g.op("BatchNormalization", [y, g.c(gam), g.c(beta), g.c(mean), g.c(var)],
                         epsilon=float(self.pick([1e-5, 1e-3])))
                mag = mag * 1.2
                continue
            if kind in ("Mul", "Div"):
                v = self.factors(cshape if per_channel else ()) * self.pick([1, -1], p=[0.8, 0.2])
                mag = mag * (1.3 if kind == "Mul" else 1.0)
            else:
                v = self.offsets(cshape if per_channel else (), mag / 2)
            const = g.c(v)
            y = g.op(kind, [const, y] if kind in ("Mul", "Add", "Sub") and self.chance(0.3) else [y, const])
        return y, mag

    def clamp(self, y):
        r = self.rng.random()
        if r < 0.5:
            return self.g.op("Relu", [y])
        if r < 0.65:
            lo, hi = self.offsets((), 1.0) - 1, 1.5 + self.offsets((), 1.5)
            return self.g.op("Clip", [y, self.g.c(float(min(lo, 0))), self.g.c(float(hi))])
        return y

    def maybe_quant(self, cur, p):
        if not self.chance(p):
            return cur
        out = self.act_quant(cur[0], cur[1], cur[2])
        if len(out[1]) == 4:
            self.maps.append(out[:3])
        return out

    def maxpool(self, cur):
        rng, g = self.rng, self.g
        x, (n, c, h, w), mag, grid = cur
        if self.chance(0.1):
            return g.op("GlobalMaxPool", [x]), (n, c, 1, 1), mag, grid
        k = int(rng.integers(1, min(3, h, w) + 1))
        s = int(rng.integers(1, 3))
        pads = [int(v) for v in rng.integers(0, k, 4)] if k > 1 and self.chance(0.4) else [0, 0, 0, 0]
        d = 2 if k > 1 and min(h, w) > 2 * k and self.chance(0.15) else 1
        extra = {"ceil_mode": 1} if self.chance(0.1) else {}
        e = d * (k - 1) + 1
        if extra and any(_pool_out(size, pads[i], pads[i + 2], e, s, True) != -(-(size + pads[i] + pads[i + 2] - e)
                                                                                 // s) + 1
                         for i, size in enumerate((h, w))):
            extra = {}   # (onnx's shape inference ignores ceil_mode's last-window rule, onnxruntime applies it)
        oh, ow = (_pool_out(size, pads[i], pads[i + 2], e, s, bool(extra)) for i, size in enumerate((h, w)))
        y = g.op("MaxPool", [x], kernel_shape=[k, k], strides=[s, s], pads=pads, dilations=[d, d], **extra)
        return y, (n, c, oh, ow), mag, grid

    def avgpool(self, cur):
        """AveragePool (then a Quant or, of a per-tensor Quant's output, a Trunc)."""
        rng, g = self.rng, self.g
        x, (n, c, h, w), mag, grid = cur
        k = int(rng.integers(1, min(4, h, w) + 1))
        if self.exact:   # a power-of-two window, every window counting k * k values
            k = int(self.pick([v for v in (1, 2, 4) if v <= min(h, w)]))
        trunc = grid is not None and self.chance(0.6)
        if trunc:   # TruncAvgPool2d: stride = kernel, no padding
            s, pads, include = k, [0, 0, 0, 0], 0
        else:
            s = int(rng.integers(1, 3))
            pads = [int(v) for v in rng.integers(0, k, 4)] if k > 1 and self.chance(0.4) else [0, 0, 0, 0]
            include = int(self.exact or self.chance(0.5))
        oh, ow = (h + pads[0] + pads[2] - k) // s + 1, (w + pads[1] + pads[3] - k) // s + 1
        y = g.op("AveragePool", [x], kernel_shape=[k, k], strides=[s, s], pads=pads, count_include_pad=include)
        shape = (n, c, oh, ow)
        if trunc:
            scale, bits, signed = grid
            in_bits = bits + int(np.ceil(np.log2(k * k)))
            out_bits = int(rng.integers(max(1, bits - 1), in_bits + 1))
            ts = np.float32(scale) / np.float32(k * k)
            out_s = ts * np.float32(2.0 ** (in_bits - out_bits))
            mode = self.pick(["FLOOR", "ROUND", "CEIL"])
            y = g.op("Trunc", [y, g.c(ts), g.c(0.0), g.c(float(in_bits)), g.c(out_s), g.c(float(out_bits))],
                     domain=QD, rounding_mode=mode, signed=signed, narrow=0)
            return y, shape, mag, None
        return self.maybe_quant((y, shape, mag, None), p=0.7)

    def pad(self, cur):
        """A zero Pad of H and W, then a conv (which reads it)."""
        x, (n, c, h, w), mag, grid = cur
        t, l, b, r = (int(v) for v in self.rng.integers(0, 3, 4))
        y = self.g.op("Pad", [x, self.g.c(np.array([0, 0, t, l, 0, 0, b, r], np.int64), np.int64)], mode="constant")
        return self.conv_block((y, (n, c, h + t + b, w + l + r), mag, grid), after_pad=True)

    def concat(self, cur):
        """Two or three conv branches of cur, concatenated along channels."""
        rng = self.rng
        branches = []
        for _ in range(int(rng.integers(2, 4))):
            b = self.conv_block(cur)
            branches.append(b)
        # branches differ in H, W unless their geometry agrees: keep those that match the first
        keep = [b for b in branches if b[1][2:] == branches[0][1][2:]]
        if len(keep) < 2 or sum(b[1][1] for b in keep) > 24:
            return keep[0]
        y = self.g.op("Concat", [b[0] for b in keep], axis=1)
        shape = (keep[0][1][0], sum(b[1][1] for b in keep)) + keep[0][1][2:]
        return self.maybe_quant((y, shape, max(b[2] for b in keep), None), p=0.5)

    def global_pool(self, cur):
        x, (n, c, h, w), mag, grid = cur
        if self.chance(0.5):
            y = self.g.op("GlobalAveragePool", [x])
        else:
            y = self.g.op("ReduceMean", [x], axes=[2, 3], keepdims=1)
        shape = (n, c, 1, 1)
        if self.chance(0.4):
            y, mag = self.affines(y, shape, mag)
            y = self.clamp(y)
        return self.maybe_quant((y, shape, mag, None), p=0.5)

    def add_maps(self, cur):
        """Add of cur and an earlier quantized map of the same shape (two activations), then a Quant."""
        same = [m for m in self.maps if m[1] == cur[1] and m[0] != cur[0]]
        if not same:
            return cur
        other = same[int(self.rng.integers(len(same)))]
        y = self.g.op("Add", [cur[0], other[0]])
        return self.maybe_quant((self.clamp(y), cur[1], cur[2] + other[2], None), p=0.8)

    def pointwise(self, cur):
        """Affine maps and/or a Relu/Clip straight on the current map (not after a layer), maybe a Quant."""
        y, mag = self.affines(cur[0], cur[1], cur[2])
        y = self.clamp(y)
        return self.maybe_quant((y, cur[1], mag, None), p=0.7)

    def requantize(self, cur):
        """A Quant of the current tensor (often itself a quantizer's output)."""
        return self.maybe_quant(cur, p=1.0)

    def identity(self, cur):
        return (self.g.op("Identity", [cur[0]]),) + tuple(cur[1:])

    def flatten(self, cur):
        rng, g = self.rng, self.g
        x, (n, c, h, w), mag, grid = cur
        r = rng.random()
        if r < 0.4:
            y = g.op("Flatten", [x], axis=1)
        elif r < 0.7:
            y = g.op("Reshape", [x, g.c([1, -1] if self.chance(0.5) else [1, c * h * w], np.int64)])
        else:   # a transposed flattening (NHWC, or any order of C, H, W)
            perm = [0, 2, 3, 1] if self.chance(0.6) else [0] + [int(v) + 1 for v in rng.permutation(3)]
            t = g.op("Transpose", [x], perm=perm)
            y = g.op("Reshape", [t, g.c([1, -1], np.int64)])
        return y, (n, c * h * w), mag, grid

    # ---- stages on a 2-D (N, F) tensor -------------------------------------------------------
    def linear(self, cur, last):
        rng, g = self.rng, self.g
        x, (n, f), mag, _ = cur
        out = int(rng.integers(2, 17))
        if self.chance(0.5):
            wt, wmag = self.weights((out, f), f)
            ins = [x, wt]
            if self.chance(0.5):
                ins.append(g.c(self.offsets(out, mag)))
            alpha = float(self.pick([1.0, 1.0, 0.5, 2.0] if self.exact else [1.0, 1.0, 0.5, 1.7]))
            y = g.op("Gemm", ins, transB=1, alpha=alpha)
            wmag *= alpha
        else:
            wt, wmag = self.weights((f, out), f, per_channel_axis0=False)
            y = g.op("MatMul", [x, wt])
        shape = (n, out)
        mag = mag * wmag * np.sqrt(f)
        if last:
            if self.chance(0.3):
                y, mag = self.affines(y, shape, mag)
            return y, shape, mag, None
        y, mag = self.affines(y, shape, mag)
        y = self.clamp(y)
        return self.maybe_quant((y, shape, mag, None), p=0.9)

    # ---- the whole graph ---------------------------------------------------------------------
    def build(self):
        rng = self.rng
        c, h, w = int(rng.integers(1, 9)), int(rng.integers(3, 11)), int(rng.integers(3, 11))
        shape = (1, c, h, w)
        self.in_shape = list(shape)
        self.x_scale = float(self.pick([0.5, 1.0, 2.0, 3.0]))
        cur = ("x", shape, self.x_scale, None)
        if self.exact or self.chance(0.9):   # (a float input makes no graph exact)
            cur = self.act_quant("x", shape, self.x_scale)
            if self.chance(0.7):   # the input quantizer: most often 8 bits
                self.g.nodes.pop()
                s = self.scale_near(2.5 * self.x_scale / 128)
                signed = 1
                cur = (self.g.quant("x", s, 8, signed, int(self.chance(0.3))), shape, self.x_scale, (s, 8, signed))
            if len(cur[1]) == 4 and cur[3] is not None:
                self.maps.append(cur[:3])
        map_stages = [(self.conv_block, 5), (self.maxpool, 1.5), (self.avgpool, 1.5), (self.pad, 1),
                      (self.concat, 1), (self.add_maps, 0.7), (self.pointwise, 0.7), (self.requantize, 0.5),
                      (self.identity, 0.3)]
        fns, weights = zip(*map_stages)
        weights = np.array(weights) / sum(weights)
        for _ in range(int(rng.integers(1, 5))):
            if cur[1][2] * cur[1][3] == 1:
                break
            cur = fns[rng.choice(len(fns), p=weights)](cur)
        n_hw = cur[1][2] * cur[1][3] if len(cur[1]) == 4 else 0
        if self.chance(0.3) and (not self.exact or n_hw & (n_hw - 1) == 0):   # exact: a power-of-two mean
            cur = self.global_pool(cur)
            if self.chance(0.3):
                cur = self.conv_block(cur)   # a 1x1 map into a conv
        r = rng.random()
        if r < 0.7:
            cur = self.flatten(cur)
            if self.chance(0.15):   # a 2-D Concat of the flattened tensor with itself (through an Identity:
                twin = self.g.op("Identity", [cur[0]])   # qonnx's cleanup breaks a tensor concatenated twice)
                y = self.g.op("Concat", [cur[0], twin], axis=int(self.pick([1, -1])))
                cur = (y, (cur[1][0], 2 * cur[1][1])) + tuple(cur[2:])
            layers = int(rng.integers(1, 4))
            for i in range(layers):
                if cur[1][1] > 2048:
                    break
                cur = self.linear(cur, last=i == layers - 1)
        return self.g.model(cur[0], self.in_shape)

    def inputs(self):
        n = int(self.rng.integers(4, 17))
        return (self.rng.standard_normal([n] + self.in_shape[1:]) * self.x_scale).astype(np.float32)


def _pool_out(size, begin, end, extent, stride, ceil):
    """A pool's output size (ONNX; with ceil_mode the last window must start inside the input or its
    leading padding)."""
    num = size + begin + end - extent
    out = (-(-num // stride) if ceil else num // stride) + 1
    return out - 1 if ceil and (out - 1) * stride >= size + begin else out


def is_exact(seed: int) -> bool:
    """Every fifth graph uses only power-of-two scales and multipliers, biases and bounds that are
    multiples of 1/16, power-of-two pooling windows and no BatchNorm: qonnx's float32 arithmetic is
    then exact (rounding ties are exact ties), so lowbit must match it code for code and bit for bit."""
    return seed % 5 == 1


def random_graph(seed: int):
    """(QONNX ModelProto, float32 NCHW input batch) for ``seed``, deterministic."""
    gen = _Gen(seed, exact=is_exact(seed))
    model = gen.build()
    return model, gen.inputs()


# ---------------------------------------------------------------------------------------------
# The checks

def check_float64_codes(model, lb, x, rel: float = 1e-5):
    """The parity rule against qonnx's float64 run (lowbit.qonnx_parity.float64_graph): every code
    lowbit materializes agrees with the float64 run's, except (at each sample's first differing
    quantizer) within float rounding of a rounding boundary; the logits of samples whose codes
    all agree are within ``rel``. Returns the tie samples."""
    from lowbit.qonnx_parity import _qonnx_batches, _qonnx_executor, _run_against

    cleaned = _qonnx_executor(model, len(x)).model
    qmap = lb.meta.get("qonnx_codes", {})
    (_, ref, ctx), = list(_qonnx_batches(cleaned, x, len(x), "float64", Counter()))
    record = {}
    out = _run_against(lb, x, ctx, qmap, {}, False, record)
    records = []
    graph = cleaned.graph   # the float64 run's tensor names are the cleaned graph's
    for tensor, (ours, theirs, step) in record.items():
        def value_over_step(tensor=tensor, shape=ours.shape, step=step):
            pre, mode = _quantizer_input(graph, tensor, ctx, shape)
            return (pre if mode == "SIGN" else pre / step), mode
        records.append((tensor, ours, theirs, value_over_step))
    ties = np.flatnonzero(_check_codes(records, len(x), False)).tolist()
    _check_logits(out.reshape(ref.shape), np.asarray(ref, np.float64), ties, rel)
    return ties


def check_graph(seed: int, float64: bool = True):
    """'refused: <reason>' or 'converted'; raises AssertionError on a parity violation."""
    model, x = random_graph(seed)
    requant_in_epilogue = seed % 4 != 3   # every fourth graph keeps its quantizers as nodes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            lb = lbq.from_qonnx(lbq._qonnx_executor(model, len(x)).model, requant_in_epilogue)
        except lbq.QonnxConversionError as exc:
            return "refused: " + refusal_reason(str(exc))
        # the native kernels against lowbit's NumPy reference executor: bit for bit
        np.testing.assert_array_equal(lb(x), lb.run_reference(x))
        if is_exact(seed):
            r = check_qonnx_parity(model, x, batch_size=len(x), lowbit_model=lb, rel=0.0)
            assert r["codes_differ"] == 0, f"exact graph: {r['codes_differ']} codes differ"
            np.testing.assert_array_equal(r["lowbit_logits"], r["reference_logits"].reshape(
                r["lowbit_logits"].shape))
            return "converted"
        try:
            check_qonnx_parity(model, x, batch_size=len(x), lowbit_model=lb)
        except AssertionError as exc:
            if not str(exc).startswith("logits differ"):
                raise
            _reference_rounding_only(model, lb, x)
        if float64:
            check_float64_codes(model, lb, x)
    return "converted"


def _reference_rounding_only(model, lb, x, rel: float = 1e-5):
    """After check_qonnx_parity found every code within the rule but a logit of lowbit further
    than ``rel`` from qonnx's float32 one: passes only when each such logit is one where the
    float32 reference itself misses qonnx's float64 result by more than ``rel`` (terms that
    cancel: lowbit's exact integer sum gives 0.0 where float32 gives 1e-4) and lowbit is within
    ``rel`` of the float64 result, in every sample whose codes agree with the float64 run's."""
    ties = check_float64_codes(model, lb, x, rel)   # codes and logits against float64
    ref32 = lbq.qonnx_execute(model, x, batch_size=len(x)).astype(np.float64)
    ref64 = lbq.qonnx_execute(model, x, batch_size=len(x), precision="float64")
    out = lb(x).reshape(ref32.shape).astype(np.float64)
    far = np.abs(out - ref32) > rel * (1 + np.abs(ref32))
    far[ties] = False
    reference_off = np.abs(ref32 - ref64) > rel * (1 + np.abs(ref64))
    assert not (far & ~reference_off).any(), (
        f"logits differ from qonnx's float32 output beyond float rounding where it agrees with float64: lowbit "
        f"{out[far & ~reference_off][:4]}, float32 {ref32[far & ~reference_off][:4]}")


def refusal_reason(msg: str) -> str:
    """A refusal message without its node names and numbers (to count reasons)."""
    import re

    msg = re.sub(r"^[^:]*node [^:]*: ", "", msg)
    msg = re.sub(r"'[^']*'", "'…'", msg)
    msg = re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "#", msg)
    return msg[:110]


def _seeds():
    n = int(os.environ.get("LOWBIT_RANDOM_GRAPHS", DEFAULT_SEEDS))
    start = int(os.environ.get("LOWBIT_RANDOM_GRAPHS_START", 0))
    return list(range(start, start + n))


@pytest.mark.parametrize("seed", _seeds())
def test_random_graph_parity(seed):
    check_graph(seed)


def test_enough_random_graphs_convert():
    """The generator makes graphs the importer mostly supports (else the test above would
    silently test little)."""
    outcomes = Counter()
    for seed in _seeds():
        model, x = random_graph(seed)
        try:
            lbq.from_qonnx(model)
            outcomes["converted"] += 1
        except lbq.QonnxConversionError as exc:
            outcomes[refusal_reason(str(exc))] += 1
    assert outcomes["converted"] >= MIN_CONVERTED * len(_seeds()), outcomes.most_common()
