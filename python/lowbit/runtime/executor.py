"""The native whole-graph executor of :class:`lowbit.Model` (docs/runtime.md).

A Model's forward pass is one native call (``_core.ExecutorPlan.run``, GIL released). This module
lowers a Model, for one input shape and one dispatch state, to a plan of native steps, taking
every decision from the op-level API (``lowbit.conv2d``/``linear``/``gemm``) itself
(``ops._prepare``'s Bound, ``conv._tap_rows``, the depthwise and grouped calls of ``conv``,
``conv.pad_code``, each node's fused :class:`lowbit.Epilogue`), never re-deriving it: autotuning
and ``lowbit.use(isa=/kernel=/strategy=)`` are honoured, and every integer and float is the one
those calls compute. Plans are cached on the Model (an LRU of :data:`PLAN_CACHE_SIZE`) by input
shape, ``_dispatch.state()`` and whether the plan is a trace (:func:`trace`).
"""
from __future__ import annotations

import collections
import threading

import numpy as np

from .. import _core, exact_float, _dispatch
from .. import conv as convmod
from . import floatops
from ..ops import _prepare
from ..packing import PackedActivations, check_elements

__all__ = ["PLAN_CACHE_SIZE", "Unsupported", "trace"]

PLAN_CACHE_SIZE = 8
_EPILOGUE_DEFAULTS = (1.0, 0, 0)  # inv_step, qmin, qmax of a float32 output
# Whether a layer's activation packing may run inside the GEMM that writes its codes, tile by tile
# (_Builder._fusable_producer); False gives every packing a step of its own. Both write the same
# bytes; tests and benchmarks compare them (plans are cached: rebuild after changing it).
FUSE_PACKING = True
_BUILD_LOCK = threading.Lock()


class Unsupported(ValueError):
    """A node the executor cannot plan: a graph that Model's validation let through but whose
    values do not fit together (the message names the node)."""


class _Value:
    """A value of the plan: kind 'input' (the caller's NCHW float32), 'f32' or 'codes'
    (NHWC or (B, F)), its shape and buffer; codes carry bits, levels and step."""

    __slots__ = ("kind", "shape", "buf", "bits", "levels", "step")

    def __init__(self, kind, shape, buf, bits=0, levels=None, step=1.0):
        self.kind, self.shape, self.buf = kind, tuple(int(s) for s in shape), buf
        self.bits, self.levels, self.step = bits, levels, step

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def itemsize(self) -> int:
        return 1 if self.kind == "codes" else 4


class NativePlan:
    """A built plan: the native plan, the output shape, and what the nodes report."""

    __slots__ = ("core", "out_shape", "kernels", "shapes", "step_names", "last_kernel", "values", "output_buf")

    def __init__(self, core, out_shape, kernels, shapes, step_names, float_layers=()):
        self.core, self.out_shape = core, out_shape
        self.kernels, self.shapes, self.step_names = kernels, shapes, step_names
        self.values = self.output_buf = None  # a trace plan's node values and output buffer (_build)
        # lowbit's last kernel is a quantized layer's, as lowbit.conv2d/linear set it (float layers leave it alone)
        self.last_kernel = next((k for name, k in reversed(kernels.items()) if name not in float_layers), None)


class _Builder:
    """Lowers one Model for one NCHW input shape (see the module docstring)."""

    def __init__(self, model, shape):
        self.model = model
        self.core = _core.ExecutorPlan()
        self.vals = {}
        self.kernels = {}
        self.float_layers = set()  # names of the conv_f32 / linear_f32 nodes in self.kernels
        self.packed = {}       # (codes buffer, packing) -> (packed buffer, row bytes): one pack per rule
        # codes buffer -> (gemm step, rows, kernel NR, largest code) of the GEMM whose epilogue writes those
        # codes in whole rows and has no fused pack yet (_pack may hand it the next layer's packing)
        self.codes_producers = {}
        self.nhwc_input = None
        self.output_buf = None
        self.last = len(model.nodes) - 1
        self.vals[model.nodes[0].name] = _Value("input", shape, self.core.input(4 * int(np.prod(shape))))

    # ---- buffers and values ----
    def _f32(self, i, shape):
        """A new float32 value; the last node's 2-D float output is the caller's output array."""
        nbytes = 4 * int(np.prod(shape))
        if i == self.last and len(shape) == 2:
            self.output_buf = self.core.output(nbytes)
            return _Value("f32", shape, self.output_buf)
        return _Value("f32", shape, self.core.buffer(nbytes))

    def _codes(self, shape, bits, levels, step):
        """A new codes value of ``shape`` on the grid (bits, levels, step)."""
        return _Value("codes", shape, self.core.buffer(int(np.prod(shape))), bits, levels, step)

    def _like(self, i, v, shape):
        """A new value of ``shape`` of v's kind: codes on v's grid, or float32 (_f32)."""
        return self._codes(shape, v.bits, v.levels, v.step) if v.kind == "codes" else self._f32(i, shape)

    def _dequantize(self, i, x):
        """float32(level) * float32(step) of codes value ``x`` into a new float32 value (_f32)."""
        out = self._f32(i, x.shape)
        self.core.dequantize(i, x.buf, out.buf, x.size, np.asarray(x.levels, np.int32), float(np.float32(x.step)))
        return out

    def _float_input(self, v, what):
        if v.kind == "codes":
            raise Unsupported(f"{what} got codes; expected float (graph error)")
        if v.kind == "input":  # the NHWC view of the input, materialized once
            if self.nhwc_input is None:
                b, c, h, w = v.shape
                self.nhwc_input = _Value("f32", (b, h, w, c), self.core.buffer(v.size * 4))
                self.core.layout(0, "nchw_to_nhwc", v.buf, self.nhwc_input.buf, [b, c, h, w])
            return self.nhwc_input
        return v

    @staticmethod
    def _probe(v):
        """A PackedActivations with the value's bits and levels (what _prepare and
        _native_call key their plans by); it holds no codes."""
        return PackedActivations(np.zeros((1, v.shape[-1]), np.uint8), v.bits, np.asarray(v.levels, np.int32))

    # ---- nodes ----
    def node(self, i, n):
        args = [self.vals[s] for s in n.inputs]
        op, a = n.op, n.attrs
        if n.name in self.vals:  # the input, or a quantize node the layer it reads writes (_dual_codes)
            return
        if op == "quantize":
            out = self._quantize(i, n, args[0])
            if a.get("exact_float"):   # near ties decided in float64 (lowbit.exact_float)
                x = self._float_input(args[1], f"node {n.name!r} (exact_float)")
                self.core.exact_float_fix(i, exact_float.spec(self.model, n), x.buf, args[0].buf, out.buf,
                                          exact_float.geometry(self.model, n, x.shape), floatops.simd())
        elif op == "dequantize":
            if args[0].kind != "codes":
                raise Unsupported(f"node {n.name!r}: dequantize got float")
            out = self._dequantize(i, args[0])
        elif op in ("conv", "linear"):
            out = self._quantized(i, n, args)
        elif op in ("conv_f32", "linear_f32"):
            out = self._float_layer(i, n, args[0])
        elif op == "concat":
            out = self._concat(i, n, args)
        elif op == "pad":
            out = self._pad(i, n, args[0])
        elif op == "flatten":
            x = args[0] if args[0].kind != "input" else self._float_input(args[0], "flatten")
            out = x  # already (B, F): the same buffer
            if len(x.shape) == 4:
                b, h, w, c = x.shape
                out = self._like(i, x, (b, c * h * w))
                self.core.layout(i, "flatten_u8" if x.kind == "codes" else "flatten_f32", x.buf, out.buf, [b, h, w, c])
        elif op == "maxpool" and args[0].kind == "codes":
            out = self._pool(i, n, args[0])
        else:
            x = self._float_input(args[0], f"node {n.name!r} ({op})")
            if op in ("add", "clamp", "affine"):  # elementwise: an output of x's shape
                out = self._f32(i, x.shape)
            if op == "add":
                y = self._float_input(args[1], f"node {n.name!r} (add)")
                if y.shape != x.shape:
                    raise Unsupported(f"node {n.name!r}: add of shapes {x.shape} and {y.shape} (broadcast)")
                self.core.add(i, x.buf, y.buf, out.buf, x.size)
            elif op == "clamp":
                from .model import _bounds

                lo, hi = _bounds(a)
                self.core.clamp(i, x.buf, out.buf, x.size, float(lo), float(hi))
            elif op == "affine":
                scale, bias = n.arrays["scale"], n.arrays["bias"]
                if x.shape[-1] != scale.shape[0]:
                    raise Unsupported(f"node {n.name!r}: affine of {scale.shape[0]} channels on shape {x.shape}")
                self.core.affine(i, x.buf, out.buf, x.size // scale.shape[0], scale, bias)
            elif op in ("maxpool", "avgpool", "adaptive_avgpool"):
                out = self._pool(i, n, x)
            else:
                raise Unsupported(f"node {n.name!r}: op {op!r} has no native step")
        self.vals[n.name] = out

    def _float_layer(self, i, n, x):
        """conv_f32 / linear_f32: the node's prepared FloatConv (floatops.layer) as one step."""
        x = self._float_input(x, f"node {n.name!r} ({n.op})")
        layer, w = floatops.layer(n), n.arrays["w"]
        conv = n.op == "conv_f32"
        if len(x.shape) != (4 if conv else 2) or x.shape[-1] != w.shape[1] * (n.attrs["groups"] if conv else 1):
            raise Unsupported(f"node {n.name!r}: {n.op} input shape {x.shape} (graph error)")
        geometry = floatops.layer_geometry(n, x.shape)
        shape = (x.shape[0], *geometry[12:], layer.cout) if conv else (x.shape[0], layer.cout)
        check_elements(shape, "output")
        out = self._f32(i, shape)
        self.core.conv_f32(i, layer, x.buf, out.buf, geometry, floatops.simd())
        self.kernels[n.name] = layer.kernel_name(floatops.simd())
        self.float_layers.add(n.name)
        return out

    def _concat(self, i, n, args):
        """concat (model.concat_channels): row by row copies into one value."""
        vals = [self._float_input(v, "concat") if v.kind == "input" else v for v in args]
        first = vals[0]
        if len({v.kind for v in vals}) != 1 or len({v.shape[:-1] for v in vals}) != 1:
            raise Unsupported(f"node {n.name!r}: concat of {[(v.kind, v.shape) for v in vals]} (graph error)")
        shape = first.shape[:-1] + (sum(v.shape[-1] for v in vals),)
        if first.kind == "codes" and any(v.bits != first.bits or list(v.levels) != list(first.levels)
                                         or v.step != first.step for v in vals[1:]):
            raise Unsupported(f"node {n.name!r}: concat of codes of different grids (graph error)")
        out = self._like(i, first, shape)
        self.core.concat(i, [v.buf for v in vals], [out.itemsize * v.shape[-1] for v in vals], out.buf,
                         int(np.prod(first.shape[:-1])))
        return out

    def _pad(self, i, n, x):
        """pad (model.pad_nhwc): the frame of fill values, then the input's rows."""
        if x.kind == "input":
            x = self._float_input(x, "pad")
        if len(x.shape) != 4:
            raise Unsupported(f"node {n.name!r}: pad needs an NHWC input, got shape {x.shape}")
        t, l, bo, r = (int(p) for p in n.attrs["pads"])
        b, h, w, c = x.shape
        shape = (b, h + t + bo, w + l + r, c)
        check_elements(shape, "pad output")
        fill = n.attrs["fill"]
        if x.kind == "codes":
            code, has_zero = convmod.pad_code(x.levels)  # the code of level 0
            if fill != "zero" or not has_zero:
                raise Unsupported(f"node {n.name!r}: pad of codes with {fill} (graph error)")
            fill_bytes = bytes([code])
        else:
            fill_bytes = np.float32(0.0 if fill == "zero" else -np.inf).tobytes()
        out = self._like(i, x, shape)
        self.core.pad(i, x.buf, out.buf, [b, h, w, c], out.itemsize, [t, l, bo, r], fill_bytes)
        return out

    def _quantize(self, i, n, x):
        a = n.attrs
        if x.kind == "codes":
            raise Unsupported(f"node {n.name!r}: quantize got codes (graph error)")
        pre = a.get("pre_step") is not None
        pre_step = float(np.float32(a["pre_step"])) if pre else 1.0
        pre_inv_div = float(np.float32(1.0 / a["pre_div"])) if pre else 1.0
        step = 1.0 if pre else float(np.float32(a["step"]))
        nchw = list(x.shape) if x.kind == "input" else None  # the model input: read NCHW, written NHWC
        shape = (nchw[0], *nchw[2:], nchw[1]) if nchw else x.shape
        out = self._codes(shape, a["bits"], a["levels"], a["step"])
        self.core.quantize(i, x.buf, out.buf, x.size, nchw, bool(a.get("binary")), step, a["qn"], a["qp"], pre,
                           pre_step, pre_inv_div, floatops.simd())  # a forced scalar tier: the scalar quantizer
        return out

    def _pool(self, i, n, x):
        a = n.attrs
        if len(x.shape) != 4:
            raise Unsupported(f"node {n.name!r}: {n.op} needs NHWC input")
        b, h, w, c = x.shape
        if n.op == "adaptive_avgpool":  # geometry (B, H, W, C, OH, OW); a None size keeps the input's
            oh, ow = a["output_size"]
            geometry = (b, h, w, c, h if oh is None else oh, w if ow is None else ow)
            check_elements((b, *geometry[4:], c), "adaptive_avgpool output")
            kind, simd = "adaptive", True
        else:
            dilation = a["dilation"] if n.op == "maxpool" else (1, 1)
            geometry = floatops.geometry(x.shape, a["kernel"], a["stride"], a["padding"], dilation, "pooling")
            # codes: a quantized value pooled, the largest code (model.maxpool)
            kind = "max_codes" if x.kind == "codes" else "max" if n.op == "maxpool" else "avg"
            simd = floatops.simd()  # a forced scalar tier: the scalar rule
        out = self._like(i, x, (b, *geometry[-2:], c))
        self.core.pool(i, kind, x.buf, out.buf, geometry, bool(a.get("count_include_pad")), simd)
        return out

    def _quantized(self, i, n, args):
        a = n.attrs
        x = args[0]
        if x.kind != "codes":
            raise Unsupported(f"node {n.name!r}: expected activation codes, got float (graph error)")
        if x.bits != a["a_bits"] or list(x.levels) != list(a["a_codebook"]):
            raise Unsupported(f"node {n.name!r}: input codes do not match its a_bits/a_codebook (graph error)")
        residual = self._float_input(args[1], f"node {n.name!r} (residual)") if len(args) > 1 else None
        ep = self.model._epilogue(n)
        weights = self.model._weights(n)
        cout = n.arrays.shape("w_codes")[0]  # (not unpacking the codes)
        if n.op == "conv":
            if len(x.shape) != 4:
                raise Unsupported(f"node {n.name!r}: conv needs NHWC codes")
            return self._conv(i, n, x, residual, ep, weights, cout)
        if len(x.shape) != 2 or x.shape[1] != weights.K:
            raise Unsupported(f"node {n.name!r}: linear input shape {x.shape} (graph error)")
        m = x.shape[0]
        check_elements((m, cout), "output")
        out = self._output(i, ep, (m, cout))
        ep_args = self._ep(n, ep, out, residual)
        bound = _prepare(self._probe(x), weights, m, weights.K)
        self._gemm_direct(i, x.buf, m, weights.K, bound, ep_args)
        self.kernels[n.name] = bound.kern["name"]
        return out

    def _output(self, i, ep, shape):
        r = ep.requant
        return self._f32(i, shape) if r is None else self._codes(shape, r.bits, r.codebook(), r.step)

    def _dual_codes(self, n, out, col, stride):
        """The epilogue's second output when layer n has ``attrs['quantize_output']`` (set by
        lowbit.lowering.place_requant; Model checked that it names a plain quantize node reading
        n's float output): that node's codes, written by n's epilogue with the node's own rule
        (so its step is skipped); None otherwise."""
        name = n.attrs.get("quantize_output")
        if name is None:
            return None
        a = self.model.node(name).attrs
        v = self.vals.get(name)
        if v is None:  # a grouped conv's later groups reuse the first group's buffer
            v = self.vals[name] = self._codes(out.shape, a["bits"], a["levels"], a["step"])
        return (v.buf, col, stride, float(np.float32(a["step"])), a["qn"], a["qp"])

    def _ep(self, n, ep, out, residual, cols=slice(None)):
        """The epilogue tuple of ExecutorPlan for layer ``n`` writing columns ``cols`` (all, or one
        group's) of ``out``'s rows: ep's kind, scale, bias, clamp and (inv_step, qmin, qmax), the
        output's and the residual's (buffer, first column, row stride), the second output
        (:meth:`_dual_codes`), then a code output's float64 (step64, scale64, bias64)."""
        kind, scale, bias, _, lo, hi, *rq = ep.native_args()
        rq = rq or (*_EPILOGUE_DEFAULTS, 0.0, None, None)
        col, stride = cols.start or 0, out.shape[-1]
        res = (None, 0, 0)
        if residual is not None:
            if residual.size != out.size:
                raise Unsupported(f"residual of shape {residual.shape} does not match the output (graph error)")
            res = (residual.buf, col, stride)
        scale, bias, scale64, bias64 = (None if p is None else np.ascontiguousarray(p[cols])
                                        for p in (scale, bias, *rq[4:]))
        return (kind, scale, bias, lo, hi, *rq[:3], out.buf, col, stride, *res, self._dual_codes(n, out, col, stride),
                rq[3], scale64, bias64)

    def _conv(self, i, n, x, residual, ep, weights, cout):
        a = n.attrs
        b, h, w, c = x.shape
        if c != weights.cin_per_group * weights.groups:
            raise ValueError(f"x: expected {weights.cin_per_group * weights.groups} input channels, got {c}")
        kh, kw = weights.kh, weights.kw
        geometry = floatops.geometry(x.shape, (kh, kw), a["stride"], a["padding"], a["dilation"])
        stride, padding, dilation, (oh, ow) = geometry[6:8], geometry[8:10], geometry[10:12], geometry[12:]
        m = b * oh * ow
        check_elements((m, cout), "output")
        check_elements((m, kh * kw), "x (tap table)")
        out = self._output(i, ep, (b, oh, ow, cout))
        pa = self._probe(x)
        if (weights.groups > 1 or weights.depthwise) and convmod._native_grouping_allowed(weights.depthwise):
            fn, (index, bits, a_levels, wl), extra, name = convmod._native_call(pa, weights)
            ep_args = self._ep(n, ep, out, residual)
            if fn is _core.dwconv:
                self.core.dwconv(i, index, x.buf, geometry, bits, a_levels, wl, ep_args)
            else:
                groups, cout_ = extra
                self.core.conv_grouped(i, index, x.buf, geometry, groups, cout_, bits, a_levels, wl, ep_args)
            self.kernels[n.name] = name
            return out
        rows, _, _ = convmod._tap_rows(b, h, w, kh, kw, stride, padding, dilation)
        cg, opg, taps = weights.cin_per_group, cout // weights.groups, kh * kw
        pad_code, exact = convmod.pad_code(pa.codebook)
        fused = exact or max(padding) == 0  # else padding reads code 0: correct the sums, then the epilogue
        one_by_one = kh == kw == 1 and stride == (1, 1) and max(padding) == 0
        npix = b * h * w
        for g in range(weights.groups):
            src = x.buf
            if weights.groups > 1:  # group by group (a forced kernel or family): a contiguous channel slice
                src = self.core.buffer(npix * cg)
                self.core.channel_slice(i, x.buf, src, npix, c, g * cg, (g + 1) * cg)
            ep_args = self._ep(n, ep, out, residual, slice(g * opg, (g + 1) * opg))
            if not fused:
                sums = _Value("f32", (m, opg), self.core.buffer(4 * m * opg))  # int32 sums
                final_ep, ep_args = ep_args, ("int32", ep_args[1], ep_args[2], 0.0, 0.0) + _EPILOGUE_DEFAULTS + (
                    sums.buf, 0, opg, None, 0, 0)
            packed = weights.parts[g]
            bound = _prepare(pa, packed, m, taps * cg)
            step = bound.fam.indirect_step(bound.plan)
            if one_by_one:
                # the input pixels are the GEMM rows: the same sums as the indirect or im2col path
                self._gemm_direct(i, src, m, cg, bound, ep_args)
            elif bound.kern["indirect"] and step is not None and cg % step == 0:
                seg = cg // step
                abuf, pixel_bytes = self._pack(i, src, npix, cg, bound, 1, pad_code)
                offsets = np.where(rows >= 0, rows, npix).astype(np.int64) * pixel_bytes
                k_steps = taps * seg
                self._gemm(i, bound, m, k_steps, bound.correction(k_steps, 0), abuf, 0, ep_args, offsets=offsets,
                           seg_steps=seg)
            else:  # the im2col copy, then the plain GEMM (as conv._GroupGemm)
                k = taps * cg
                check_elements((m, k), "x (im2col copy)")
                g_geometry = (b, h, w, cg) + geometry[4:]
                if bound.plan.family in ("dotgemm", "dot8"):
                    self._im2col_levels(i, src, npix, g_geometry, pad_code, m, k, bound, ep_args)
                else:
                    cols = self.core.buffer(m * k)
                    self.core.im2col(i, src, cols, g_geometry, pad_code)
                    self._gemm_direct(i, cols, m, k, bound, ep_args)
            if not fused:  # conv._GroupGemm's correction: cbA[pad code] * the weights under the padded taps
                table = np.ascontiguousarray(weights.column_sums(g), np.int64) * int(pa.codebook[pad_code])
                self.core.pad_correction(i, sums.buf, m, opg, np.ascontiguousarray(rows < 0, np.uint8), table,
                                         final_ep)
            self.kernels[n.name] = bound.kern["name"]
        return out

    # ---- packing and GEMMs ----
    def _pack(self, i, src, m, k, bound, pad_rows=0, pad_code=0):
        """Packs (m, k) codes as bound.fam.pack_activations does (the family's Packing);
        (buffer, row bytes). One pack per (codes, rule) serves every consumer."""
        plan, tier = bound.plan, bound.kern["tier_rank"]
        key = (src, m, k, plan.family, plan.params, tier > 0, pad_rows, pad_code)
        hit = self.packed.get(key)
        if hit is not None:
            return hit
        p = bound.fam.packing(plan, k)
        if pad_rows and not p.pad_rows:
            raise Unsupported(f"{plan.family} packing has no pad rows")
        stride = p.cols * p.elem
        buf = self.core.buffer((m + pad_rows) * stride)
        self.core.pack(i, p.kind, src, buf, m, k, p.bits, p.group, p.code_shift, p.cols, tier, pad_rows, pad_code,
                       p.levels, self._fusable_producer(src, m, p))
        hit = self.packed[key] = (buf, stride)
        return hit

    def _fusable_producer(self, src, m, p):
        """The gemm step that can do packing ``p`` of the (m, k) codes in buffer ``src`` tile by
        tile as its epilogue writes them (GemmStep::store; the same bytes as a pack step),
        or -1: a groups packing of codes that one GEMM writes in whole rows, whose column
        tiles (multiples of its kernel's NR) start on a packing group, and whose codes all
        fit in ``p.bits`` bits (so the packer never meets an out-of-range code there)."""
        producer = self.codes_producers.get(src)
        if producer is None or p.kind != "groups" or not FUSE_PACKING:
            return -1
        step, rows, nr, top = producer
        if rows != m or nr % p.group or top >= 1 << p.bits:
            return -1
        del self.codes_producers[src]  # one fused pack per producer
        return step

    def _im2col_levels(self, i, src, npix, geometry, pad_code, m, k, bound, ep_args):
        """The im2col GEMM of a dot-family layer on levels: the input map's (npix, cg) codes
        are converted to the family's levels once, and the im2col gather then writes the
        family's packed rows directly (level(pad_code) for padding, zero row tails): the
        bytes _pack would make from the im2col codes, with kh*kw times fewer conversions."""
        tier, p = bound.kern["tier_rank"], bound.fam.packing(bound.plan, k)
        cg, levels, elem, cols = geometry[3], p.levels, p.elem, p.cols
        check_elements((m, cols), "x (im2col copy)")
        level_map = self.core.buffer(npix * cg * elem)
        # the map's rows are contiguous (out_cols == K): packed as B*H rows of W*cg values (long rows for the
        # packer, rows to share between threads), the same bytes as npix rows of cg
        b, h, w = geometry[:3]
        self.core.pack(i, p.kind, src, level_map, b * h, w * cg, p.bits, 0, 0, w * cg, tier, 0, 0, levels, -1)
        abuf = self.core.buffer(m * cols * elem)
        k_steps, correction = bound.direct(k)
        # the GEMM's tasks gather their own rows (still in cache when multiplied)
        self._gemm(i, bound, m, k_steps, correction, abuf, cols * elem, ep_args,
                   gather=(level_map, geometry, elem, int(levels[pad_code])))

    def _gemm_direct(self, i, codes, m, k, bound, ep_args):
        """A plain (m, k) GEMM on codes in buffer `codes` (lowbit.gemm's path; grouplut
        packs inside the GEMM's tasks, as _core.gemm_codes)."""
        k_steps, correction = bound.direct(k)
        if bound.plan.family in ("grouplut", "grouplut6"):
            _, ba, gw = bound.plan.params
            abuf = self.core.buffer(max(m, 1) * max(k_steps, 1))
            self._gemm(i, bound, m, k_steps, correction, abuf, k_steps, ep_args, codes=codes, k=k, bits=ba,
                       group=gw)
        else:
            abuf, stride = self._pack(i, codes, m, k, bound)
            self._gemm(i, bound, m, k_steps, correction, abuf, stride, ep_args)

    def _gemm(self, i, bound, m, k_steps, correction, abuf, a_stride, ep_args, offsets=None, seg_steps=0, codes=-1,
              k=0, bits=0, group=0, gather=None):
        n = ep_args[1].shape[0]
        self.core.gemm(i, bound.kern["index"], bound.w_layout, bound.tables, m, n, k_steps, bound.flush8,
                       bound.flush16, correction, bound.code_shift, bound.col_correction, abuf, a_stride, offsets,
                       seg_steps, codes, k, bits, group, ep_args, gather)
        # the codes this epilogue writes in whole rows (ep_args: _ep's tuple + the second output), if any
        step, nr = self.core.num_steps - 1, bound.kern["nr"]
        if ep_args[0] == "codes":
            (qmin, qmax), (out, col, stride) = ep_args[6:8], ep_args[8:11]
            if col == 0 and stride == n:
                self.codes_producers[out] = (step, m, nr, qmax - qmin)
        elif ep_args[0] == "float32" and len(ep_args) > 14 and ep_args[14] is not None:
            out, col, stride, _, qn, qp = ep_args[14]
            if col == 0 and stride == n:
                self.codes_producers[out] = (step, m, nr, qp - qn)

    # ---- the output ----
    def finish(self):
        """Writes the last value into the caller's output (NCHW for 4-D, dequantized codes)."""
        v = self.vals[self.model.nodes[-1].name]
        if v.kind == "input":
            raise Unsupported("the model output is its input")
        if v.kind == "codes":
            v = self._dequantize(self.last, v)  # (B, F) straight into the output (_f32)
        if len(v.shape) == 4:
            b, h, w, c = v.shape
            self.core.layout(self.last, "nhwc_to_nchw", v.buf, self.core.output(4 * v.size), [b, h, w, c])
            return (b, c, h, w)
        if v.buf != self.output_buf:  # e.g. a flatten that kept its input's buffer
            self.core.layout(self.last, "copy", v.buf, self.core.output(4 * v.size), [4 * v.size])
        return v.shape


def _build(model, shape, keep_all=False) -> NativePlan:
    b = _Builder(model, shape)
    for i, n in enumerate(model.nodes):
        b.node(i, n)
    out_shape = b.finish()
    b.core.finalize(keep_all)
    shapes = {n.name: b.vals[n.name].shape for n in model.nodes}
    bn, c, h, w = shape  # the input reports its NHWC view
    shapes[model.nodes[0].name] = (bn, h, w, c)
    step_names = [model.nodes[j].name for j in b.core.step_nodes]
    plan = NativePlan(b.core, out_shape, b.kernels, shapes, step_names, b.float_layers)
    if keep_all:  # what trace reads back: each node's value (the input node's is the caller's x)
        plan.values = {n.name: b.vals[n.name] for n in model.nodes[1:]}
        plan.output_buf = b.output_buf
    return plan


def plan_for(model, shape, state=None, keep_all=False) -> NativePlan:
    """The cached plan of ``model`` for NCHW ``shape`` under the current dispatch state
    (``state``: _dispatch.state() when the caller has it); ``keep_all``: a trace plan, whose
    buffers are never reused. Raises Unsupported (cached too) when a node cannot be planned."""
    memo = model.__dict__.setdefault("_memo", {})
    cache = memo.setdefault("native_plans", collections.OrderedDict())
    key = (tuple(shape), _dispatch.state() if state is None else state, keep_all)
    hit = cache.get(key)
    if hit is None:
        with _BUILD_LOCK:
            hit = cache.get(key)
            if hit is None:
                try:
                    hit = _build(model, shape, keep_all)
                except Unsupported as exc:
                    hit = exc
                cache[key] = hit
                while len(cache) > PLAN_CACHE_SIZE:
                    cache.popitem(last=False)
    else:
        try:
            cache.move_to_end(key)
        except KeyError:  # evicted by another thread meanwhile
            pass
    if isinstance(hit, Unsupported):
        raise hit
    return hit


_FLOAT32 = np.dtype(np.float32)


def run_repeat(model, x, batch_size, check_finite):
    """Model.run's lean path for a repeat call: the logits of ``x`` when it is a
    C-contiguous float32 ndarray of the shape of this model's last native run, in one
    batch, under the same dispatch state (so the same plan, with every shape check
    done); else None, and Model.run takes its full path (checks, plan lookup or build).
    ``check_finite`` is done natively; on a NaN or Inf it also returns None, and the
    full path raises the ValueError that names x and the value's index."""
    last = model.__dict__.get("_memo", {}).get("last_native")
    if last is None or type(x) is not np.ndarray:
        return None
    shape, state, plan = last
    if (x.shape != shape or x.dtype is not _FLOAT32 or shape[0] > batch_size or not x.flags.c_contiguous
            or _dispatch.state() != state or model._memo["reported"] is not plan):
        return None
    out = np.empty(plan.out_shape, np.float32)
    try:
        plan.core.run(x, out, False, check_finite)
    except _core.NonFiniteInput:
        return None
    if plan.last_kernel is not None:
        _dispatch.set_last_kernel(plan.last_kernel)
    return out


def run(model, x, profile=None):
    """Logits of one batch (x: float32 NCHW, already checked by Model._check_input) from the
    native plan (built on first use: Unsupported, a ValueError, when a node cannot be planned).
    Remembers the plan for :func:`run_repeat`."""
    state = _dispatch.state()
    plan = plan_for(model, x.shape, state)
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(plan.out_shape, np.float32)
    seconds = plan.core.run(x, out, profile is not None)
    if profile is not None:
        for name, s in zip(plan.step_names, seconds):
            profile[name] = profile.get(name, 0.0) + s
    memo = model._memo
    _report(model, plan)
    memo["last_native"] = (x.shape, state, plan)
    if plan.last_kernel is not None:
        _dispatch.set_last_kernel(plan.last_kernel)
    return out


def _report(model, plan):
    """What the nodes report (Model.layers/summary): the output shapes and kernels of ``plan``."""
    memo = model._memo
    if memo.get("reported") is not plan:
        for n in model.nodes:
            n.out_shape = plan.shapes[n.name]
        for name, kernel in plan.kernels.items():
            model._by_name[name].kernel = kernel
        memo["reported"] = plan


def trace(model, x) -> dict:
    """Model.trace on the native executor: {node name: value} of one run of ``x`` (float32 NCHW,
    checked by Model._check_input) on a plan that keeps every buffer (the same steps, kernels
    and bytes as the plan Model.run uses; only the arena offsets differ). Values as the
    reference executor's: float32 arrays, or CodeTensors (NHWC or (B, F)); the input node's
    is the NHWC view of ``x``."""
    from .model import CodeTensor

    x = np.ascontiguousarray(x, dtype=np.float32)
    plan = plan_for(model, x.shape, keep_all=True)
    out = np.empty(plan.out_shape, np.float32)
    ids = sorted({v.buf for v in plan.values.values() if v.buf != plan.output_buf})
    data = dict(zip(ids, plan.core.run(x, out, False, False, ids)))
    _report(model, plan)
    if plan.last_kernel is not None:
        _dispatch.set_last_kernel(plan.last_kernel)
    values = {model.nodes[0].name: x.transpose(0, 2, 3, 1)}
    for name, v in plan.values.items():  # (values that share a buffer share its array)
        raw = out if v.buf == plan.output_buf else data[v.buf].view(np.uint8 if v.kind == "codes" else np.float32)
        value = raw.reshape(-1)[:v.size].reshape(v.shape)
        values[name] = CodeTensor(value, v.bits, v.levels, v.step) if v.kind == "codes" else value
    return values
