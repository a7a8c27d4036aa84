"""Convolution and linear layers on packed low-bit codes (design: docs/architecture.md,
"Convolution", and docs/depthwise.md).

Activations are NHWC codes. A convolution is an implicit GEMM with
M = B*OH*OW output pixels, N = Cout, K = kh*kw*Cin in (ky, kx, cin) order: read
through an indirection buffer when the kernel takes one (``Family.indirect_step``),
else from an im2col copy of the codes (documented fallback; still exact). Grouped
and depthwise layers are one native call (:func:`_native_call`), or one GEMM per
group under a forced kernel or family (:func:`_native_grouping_allowed`).
Everything that does not depend on the activation values is prepared on the first
call and cached on the ConvWeights (:class:`_PreparedConv`).

Padding inserts the value 0. If the activation codebook has a code for 0, the
padding reads that code; if not (e.g. bipolar {-1, +1}), padding reads code 0
and the exact correction cbA[0] * sum(weights under the padded taps) is
subtracted from the int32 sums before the epilogue.
"""
from __future__ import annotations

import functools

import numpy as np

from . import _core, _dispatch
from . import codebook as cbmod
from .epilogue import Epilogue
from .families import FAMILIES
from .ops import _activation_setting, _prepare, gemm
from .packing import MAX_ELEMENTS, PackedActivations, PackedWeights, check_elements, unpack_dense


def _pair(v, name):
    if type(v) is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int:
        return v  # already a pair of ints (the runtime's attributes): the common case, kept cheap
    if isinstance(v, (int, np.integer)):
        v = (int(v), int(v))
    v = tuple(int(x) for x in v)
    if len(v) != 2:
        raise ValueError(f"{name}: expected an int or a pair of ints, got {v}")
    return v


class ConvWeights:
    """Packed convolution weights: (Cout, Cin/groups, kh, kw) codes.

    The codes are kept bit-packed once, as rows of (Cin/groups, kh, kw) in C
    order (:attr:`packed`: the model file's form, ceil(K*bits/8) bytes a row),
    never unpacked for good. The GEMM path uses ``groups`` PackedWeights of
    shape (Cout/groups, kh*kw*Cin/groups) in (ky, kx, cin) order (:attr:`parts`,
    built on first use): row blocks of the same payload when the two orders
    agree (1x1 kernels, one input channel per group), otherwise derived weights
    re-ordered from it each time a kernel builds its layout (once per kernel).
    The native grouped and depthwise paths use decoded levels built from the
    same codes (cached here)."""

    def __init__(self, w_codes, bits: int, codebook=None, groups: int = 1):
        if not isinstance(w_codes, np.ndarray) or w_codes.dtype != np.uint8 or w_codes.ndim != 4:
            raise TypeError("w_codes: expected a (Cout, Cin/groups, kh, kw) uint8 numpy array")
        self._set_groups(w_codes.shape, groups)
        if min(w_codes.shape) < 1:
            raise ValueError(f"w_codes: expected every dimension >= 1, got shape {w_codes.shape}")
        # validates bits, the code range and the codebook
        self._set_packed(PackedWeights.from_codes(w_codes.reshape(w_codes.shape[0], -1), bits, codebook))

    @classmethod
    def from_packed(cls, packed: PackedWeights, shape, groups: int = 1) -> "ConvWeights":
        """ConvWeights over codes already packed and validated: ``packed`` holds
        (Cout, Cin/groups*kh*kw) rows in the order of ``shape`` = (Cout, Cin/groups,
        kh, kw) (as :attr:`packed`); its payload and codebook are used as they are (shared)."""
        if not isinstance(packed, PackedWeights):
            raise TypeError(f"packed: expected lowbit.PackedWeights, got {type(packed).__name__}")
        shape = tuple(int(s) for s in shape)
        if len(shape) != 4 or min(shape) < 1 or (packed.N, packed.K) != (shape[0], shape[1] * shape[2] * shape[3]):
            raise ValueError(f"shape: expected (Cout, Cin/groups, kh, kw) >= 1 matching the packed "
                             f"({packed.N}, {packed.K}) codes, got {shape}")
        cw = cls.__new__(cls)
        cw._set_groups(shape, groups)
        cw._set_packed(packed)
        return cw

    def _set_packed(self, packed: PackedWeights) -> None:
        self._packed, self.bits, self.codebook = packed, packed.bits, packed.codebook
        self._parts = None
        self._native = {}  # decoded levels / layouts of the native paths, per key

    def _set_groups(self, shape, groups) -> None:
        cout, cg, kh, kw = shape
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)):
            raise TypeError(f"groups: expected an int, got {type(groups).__name__}")
        groups = int(groups)
        if groups < 1 or cout % groups:
            raise ValueError(f"groups: expected a divisor of Cout={cout}, got {groups}")
        self.cout, self.cin_per_group, self.kh, self.kw, self.groups = cout, cg, kh, kw, groups

    @property
    def packed(self) -> PackedWeights:
        """The bit-packed codes: (Cout, Cin/groups*kh*kw) rows in (cin, ky, kx) order."""
        return self._packed

    def codes(self) -> np.ndarray:
        """The (Cout, Cin/groups, kh, kw) uint8 codes, unpacked anew (not kept)."""
        return self._packed.codes().reshape(self.cout, self.cin_per_group, self.kh, self.kw)

    def _kernel_rows(self, g: int) -> np.ndarray:
        """(Cout/groups, kh*kw*Cin/groups) codes of group ``g`` in (ky, kx, cin) order, unpacked anew
        (not kept)."""
        opg = self.cout // self.groups
        codes = unpack_dense(self._packed.payload[g * opg:(g + 1) * opg], self._packed.K, self.bits)
        n = codes.shape[0]
        return np.ascontiguousarray(codes.reshape(n, self.cin_per_group, self.kh, self.kw).transpose(0, 2, 3, 1)
                                    .reshape(n, self.kh * self.kw * self.cin_per_group))

    @property
    def depthwise(self) -> bool:
        """groups == Cin == Cout (channel multiplier 1): the dwconv kernels' case."""
        return self.cin_per_group == 1 and self.groups == self.cout

    @property
    def parts(self) -> list:
        """The per-group PackedWeights of the GEMM path (built on first use; no copy of the codes)."""
        if self._parts is None:
            opg, k = self.cout // self.groups, self._packed.K
            if self.cin_per_group == 1 or self.kh * self.kw == 1:  # (cin, ky, kx) == (ky, kx, cin) order
                payload = self._packed.payload
                self._parts = [PackedWeights(payload[g * opg:(g + 1) * opg], opg, k, self.bits, self.codebook)
                               for g in range(self.groups)]
            else:
                self._parts = [PackedWeights.derived(functools.partial(self._kernel_rows, g), opg, k, self.bits,
                                                     self.codebook) for g in range(self.groups)]
        return self._parts

    @property
    def nbytes(self) -> int:
        """Bytes of the packed codes: Cout rows of ceil(kh*kw*Cin/groups * bits / 8) (as PackedWeights.nbytes)."""
        return self._packed.nbytes

    def column_sums(self, g: int) -> np.ndarray:
        """(kh*kw, Cout/groups) sums of weight levels per tap (for padding corrections), built once."""
        sums = self.__dict__.setdefault("_column_sums", {})
        if g not in sums:
            vals = self.codebook.astype(np.int64)[self._kernel_rows(g)]
            sums[g] = vals.reshape(-1, self.kh * self.kw, self.cin_per_group).sum(axis=2).T
        return sums[g]

    def dw_levels(self) -> np.ndarray:
        """Depthwise weight levels, (kh*kw, Cp) int16 with Cp = Cout rounded up to 16, zero padded
        (the dwconv kernels' layout, csrc/kernels/dwconv/dwconv.h); depthwise weights only."""
        hit = self._native.get("dw")
        if hit is None:
            cp = -(-self.cout // 16) * 16
            hit = np.zeros((self.kh * self.kw, cp), np.int16)
            hit[:, :self.cout] = self.codebook[self._packed.codes()].T  # one channel a row: (ky, kx) order
            self._native["dw"] = hit
        return hit

    def grouped_layout(self, plan, kern) -> np.ndarray:
        """The ``groups`` dotgemm weight layouts of kernel ``kern``, back to back (one uint8 array)."""
        key = ("grouped", kern["name"])
        hit = self._native.get(key)
        if hit is None:
            fam = FAMILIES["dotgemm"]
            hit = self._native[key] = np.concatenate(
                [fam.weight_layout(self._kernel_rows(g), plan, kern) for g in range(self.groups)])
        return hit


def pack_activations_nhwc(x, bits: int, codebook=None) -> PackedActivations:
    """Validate NHWC (B, H, W, C) uint8 codes for :func:`conv2d` (NHWC PackedActivations,
    e.g. a requantizing conv2d's output, are returned as they are)."""
    if isinstance(x, PackedActivations):
        if x.shape is None or len(x.shape) != 4:
            raise ValueError("x: expected NHWC PackedActivations (from conv2d or pack_activations_nhwc)")
        return x
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4:
        raise TypeError("x: expected NHWC uint8 codes (B, H, W, C) or PackedActivations")
    bits, cb, cb_key = _activation_setting(bits, codebook)  # checked (cached for codebook=None)
    if x.size > MAX_ELEMENTS:
        check_elements(x.shape, "x")  # raises
    b, h, w, c = x.shape
    codes = np.ascontiguousarray(x).reshape(b * h * w, c)
    _core.check_codes(codes, bits, "a_codes", "bits")  # as PackedActivations.from_codes checks the range
    return PackedActivations(codes, bits, cb, (b, h, w, c), cb_key)


def _output_size(h, w, kh, kw, stride, padding, dilation, what="x"):
    """(OH, OW) of a window op (a convolution, a pooling) with symmetric padding, the one place
    of this formula; ValueError naming ``what`` when the input is too small."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"{what}: input {h}x{w} is too small for a {kh}x{kw} window with this padding/dilation")
    return oh, ow


@functools.lru_cache(maxsize=64)
def _tap_rows(b, h, w, kh, kw, stride, padding, dilation):
    """((M, kh*kw) input pixel index of each output pixel's taps, -1 for padding; OH; OW), cached
    (shared: read only)."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh, ow = _output_size(h, w, kh, kw, stride, padding, dilation)
    iy = (np.arange(oh) * sh - ph)[:, None] + (np.arange(kh) * dh)[None, :]  # (oh, kh)
    ix = (np.arange(ow) * sw - pw)[:, None] + (np.arange(kw) * dw)[None, :]  # (ow, kw)
    vy = (iy >= 0) & (iy < h)
    vx = (ix >= 0) & (ix < w)
    pix = iy[:, None, :, None] * w + ix[None, :, None, :]  # (oh, ow, kh, kw)
    valid = vy[:, None, :, None] & vx[None, :, None, :]
    rows = np.where(valid, pix + np.arange(b)[:, None, None, None, None] * (h * w), -1)  # (b, oh, ow, kh, kw)
    return rows.reshape(b * oh * ow, kh * kw).astype(np.int64), oh, ow


def conv2d(x, weights: ConvWeights, stride=1, padding=0, dilation=1, epilogue: Epilogue | None = None,
           a_bits: int | None = None, a_codebook=None):
    """Convolution of NHWC activation codes with packed weights.

    Returns NHWC int32 sums (no epilogue), float32 (epilogue without requant)
    or :class:`PackedActivations` holding the next layer's codes (requant).
    """
    if not isinstance(weights, ConvWeights):
        raise TypeError(f"weights: expected lowbit.ConvWeights, got {type(weights).__name__}")
    pa = pack_activations_nhwc(x, 2 if a_bits is None else a_bits, a_codebook)
    prepared = _prepared_conv(pa, weights, stride, padding, dilation)
    if epilogue is not None:
        epilogue.check(weights.cout, prepared.m)
    y = prepared.run(pa, weights, epilogue)
    if epilogue is not None and epilogue.requant is not None:
        return PackedActivations(y.reshape(prepared.m, weights.cout), epilogue.requant.bits,
                                 epilogue.requant.codebook(), prepared.out_shape)
    return y.reshape(prepared.out_shape)


_PREPARED_LIMIT = 64  # prepared calls kept per ConvWeights (input shapes x settings); then started afresh


def _prepared_conv(pa, weights, stride, padding, dilation) -> "_PreparedConv":
    """The cached _PreparedConv of this call (every argument checked when it is built). Arguments
    are keyed as passed; only ints and tuples are (anything else is checked and prepared anew
    each call, as a float must keep raising)."""
    native = (weights.groups > 1 or weights.depthwise) and _native_grouping_allowed(weights.depthwise)
    key = None
    if type(stride) in _KEYABLE and type(padding) in _KEYABLE and type(dilation) in _KEYABLE:
        key = (pa.shape, stride, padding, dilation, pa.bits, pa.codebook_key, _dispatch.state(), native)
        calls = weights.__dict__.get("_prepared_calls")
        if calls is None:  # (not setdefault: that builds a dict on every call)
            calls = weights.__dict__["_prepared_calls"] = {}
        try:
            hit = calls.get(key)
        except TypeError:  # e.g. a tuple holding a list: unhashable, never cached
            hit = key = None
        if hit is not None:
            return hit
    prepared = _PreparedConv(pa, weights, stride, padding, dilation, native)
    if key is not None:
        if len(calls) >= _PREPARED_LIMIT:
            calls.clear()
        calls[key] = prepared
    return prepared


_KEYABLE = (int, tuple)


class _PreparedConv:
    """Everything a conv2d call needs that does not depend on the activation
    values, for one (ConvWeights, input shape, stride/padding/dilation,
    activation bits/codebook, dispatch state): the checked geometry, the tap
    table and either the native grouped/depthwise call or one prepared GEMM
    per group. Holds no reference to the weights (it is cached on them)."""

    def __init__(self, pa, weights, stride, padding, dilation, native: bool):
        stride, padding, dilation = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
        if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
            raise ValueError("stride/dilation: expected >= 1; padding: expected >= 0")
        b, h, w, c = pa.shape
        if c != weights.cin_per_group * weights.groups:
            raise ValueError(f"x: expected {weights.cin_per_group * weights.groups} input channels, got {c}")
        geometry = (b, h, w, weights.kh, weights.kw, stride, padding, dilation)
        oh, ow = _output_size(h, w, weights.kh, weights.kw, stride, padding, dilation)
        # the arrays every call makes, before any is allocated (the im2col fallback checks its copy itself)
        check_elements((b * oh * ow, weights.cout), "output")
        check_elements((b * oh * ow, weights.kh * weights.kw), "x (tap table)")
        rows, oh, ow = _tap_rows(*geometry)
        self.m = rows.shape[0]
        self.out_shape = (b, oh, ow, weights.cout)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups = None if native else [_GroupGemm(pa, weights, g, rows, geometry) for g in range(weights.groups)]
        if native:
            _native_call(pa, weights)  # plans now: checks K_max before any call

    def run(self, pa, weights, epilogue):
        """(M, Cout) int32, float32 or codes."""
        if self.groups is None:  # grouped or depthwise in one native call
            fn, (index, bits, a_levels, w), extra, name = _native_call(pa, weights)
            # the epilogue arguments in the bindings' positional order (padded for int32/float32 output)
            ep = _INT32_OUTPUT if epilogue is None else epilogue.native_args()
            ep = ep + _NO_REQUANT[len(ep) - 6:]
            # bad codes raise ValueError natively ("x: expected every code in [0, 2**a_bits) ...")
            y = fn(index, pa.codes.reshape(pa.shape), bits, a_levels, w, *extra, weights.kh, weights.kw, *self.stride,
                   *self.padding, *self.dilation, *ep)
            _dispatch.set_last_kernel(name)
            return y
        if len(self.groups) == 1:
            return self.groups[0].run(pa, weights, epilogue)
        cg, opg = weights.cin_per_group, weights.cout // weights.groups
        outs = [group.run(_channel_slice(pa, g * cg, (g + 1) * cg), weights,
                          None if epilogue is None else epilogue.slice(g * opg, (g + 1) * opg))
                for g, group in enumerate(self.groups)]
        return np.concatenate(outs, axis=1)


def dwconv_kernels() -> list:
    """The depthwise-convolution kernels (their own small table, csrc/ops/conv.cc),
    with ``available`` for this CPU, scalar first."""
    supported = set(_dispatch.supported_tiers())
    return [dict(k, available=k["tier"] in supported) for k in _DWCONV_KERNELS]


_DWCONV_KERNELS = tuple(_core.dwconv_kernels())
_INT32_OUTPUT = ("int32", None, None, None, float("-inf"), float("inf"))
_NO_REQUANT = (1.0, 0, 0)  # inv_step, qmin, qmax when the output is not codes


def _native_grouping_allowed(depthwise: bool) -> bool:
    """Whether a grouped layer runs natively (one call) rather than group by group: not when a
    GEMM kernel or family is forced; under use(strategy="fastest") only depthwise layers (why:
    docs/depthwise.md)."""
    kernel, strategy = _dispatch.forced_kernel()
    return kernel is None and (strategy is None or (depthwise and strategy == _dispatch.FASTEST))


def _native_call(pa, weights) -> tuple:
    """(native function, leading arguments, kernel name) of a grouped or depthwise
    layer for these activations under the current dispatch state; planned once
    and cached on the ConvWeights (checks K_max)."""
    key = ("call", pa.bits, pa.codebook_key, _dispatch.state())
    hit = weights._native.get(key)
    if hit is not None:
        return hit
    cb_a = pa.codebook
    k = weights.kh * weights.kw * weights.cin_per_group
    kmax = cbmod.k_max(cb_a, weights.codebook)
    if k > kmax:
        raise ValueError(f"weights: a sum of K={k} products exceeds K_max={kmax} for these codebooks "
                         "(int32 sums could overflow)")
    a_levels = cb_a.astype(np.int16)
    if weights.depthwise:
        cap = _dispatch.tier_rank(_dispatch.tier_cap())  # the best dwconv kernel at or below the cap
        kern = [k for k in dwconv_kernels() if k["available"] and k["tier_rank"] <= cap][-1]
        hit = (_core.dwconv, (kern["index"], pa.bits, a_levels, weights.dw_levels()), ())
    else:
        plan, why_not = FAMILIES["dotgemm"].plan(weights.bits, pa.bits, weights.codebook, cb_a)
        if plan is None:  # not reachable with validated codebooks; kept as a clear error
            raise NotImplementedError(f"grouped convolution: {why_not}")
        kern = _dispatch.candidates("dotgemm", "i8")[0]
        hit = (_core.conv_grouped, (kern["index"], pa.bits, a_levels, weights.grouped_layout(plan, kern)),
               (weights.groups, weights.cout))
    hit = weights._native[key] = hit + (kern["name"],)
    return hit


def _channel_slice(pa, c0, c1):
    return PackedActivations(np.ascontiguousarray(pa.codes[:, c0:c1]), pa.bits, pa.codebook, pa.shape[:3] + (c1 - c0,))


def pad_code(a_codebook) -> tuple:
    """(code, exact): the activation code a convolution's padding reads, the first
    code whose level is 0, and True; or code 0 and False when no level is 0 (then
    padding adds cbA[0] times the weights under the padded taps, which the caller
    must subtract before the epilogue)."""
    zero = np.flatnonzero(np.asarray(a_codebook) == 0)
    return (int(zero[0]), True) if zero.size else (0, False)


class _GroupGemm:
    """Group ``g``'s implicit GEMM, prepared: the cached ops.Bound, the padding
    code, and either the indirect form (pack key, segment steps, k_steps,
    correction, byte offsets) or the im2col fallback's (k_steps, correction)."""

    def __init__(self, pa, weights, g, rows, geometry):
        packed = weights.parts[g]
        taps, cg = weights.kh * weights.kw, weights.cin_per_group
        k = taps * cg
        self.g, self.rows, self.geometry, self.m, self.n = g, rows, geometry, rows.shape[0], packed.N
        self.bound = bound = _prepare(pa, packed, self.m, k)
        plan, fam, kern = bound.plan, bound.fam, bound.kern
        self.pad_code, self.fused = pad_code(pa.codebook)
        step = fam.indirect_step(plan)  # k per step (grouplut: gw codes a byte; dot8: a quad of 4 bytes)
        self.indirect = kern["indirect"] and step is not None and cg % step == 0
        if self.indirect:
            self.seg = cg // step
            self.k_steps = taps * self.seg
            self.correction = bound.correction(self.k_steps, 0)
            # grouplut families pack inside the native call, reading the tap table itself
            self.packs_natively = bound.fused_codes
            self.pack_key = ("conv", plan.family, plan.params, kern["tier_rank"] > 0, self.pad_code)
            self.offsets = None  # byte offsets into the packed input (other families), built on the first run
        else:
            check_elements((self.m, k), "x (im2col copy)")
            self.k_steps, self.correction = bound.direct(k)

    def _pack_input(self, codes):
        """The packed input pixels followed by one all-padding pixel (one 1-D buffer)."""
        bound = self.bound
        return bound.fam.pack_activations(codes, bound.plan, bound.kern["tier_rank"], pad_rows=1,
                                          pad_code=self.pad_code).reshape(-1)

    def run(self, pa, weights, epilogue):
        bound, m, fused = self.bound, self.m, self.fused
        ep = epilogue if fused else None  # else applied below, after the padding correction
        if self.indirect and self.packs_natively:
            y = bound.native.conv_codes(pa.codes, self.rows, self.seg, self.k_steps, self.correction, self.pad_code,
                                        None if ep is None else ep.native(), None if ep is None else ep.residual)
            _dispatch.set_last_kernel(bound.kern["name"])
        elif self.indirect:
            buf = pa.packed(self.pack_key, self._pack_input)
            npix = pa.codes.shape[0]
            offsets = self.offsets
            if offsets is None:
                # pixel index (the pad pixel for -1) x the bytes a packed pixel takes
                offsets = self.offsets = np.where(self.rows >= 0, self.rows, npix) * (buf.size // (npix + 1))
            y = bound.run(buf, m, self.n, self.k_steps, self.correction, ep, a_offsets=offsets, seg_steps=self.seg)
        else:
            # documented fallback: im2col copy of the codes, then the plain GEMM
            b, h, w, kh, kw, (sh, sw), (ph, pw), (dh, dw) = self.geometry
            cols = _core.im2col_nhwc(pa.codes, b, h, w, kh, kw, sh, sw, ph, pw, dh, dw, self.pad_code)
            y = bound.run(bound.pack(cols), m, self.n, self.k_steps, self.correction, ep)
        if fused:
            return y
        # No code stands for 0: padding read cbA[0]; remove it exactly.
        corr = (self.rows < 0).astype(np.int64) @ weights.column_sums(self.g) * int(pa.codebook[self.pad_code])
        y = (y.astype(np.int64) - corr).astype(np.int32)
        if epilogue is None:
            return y
        return _core.epilogue(y, **epilogue.kwargs())


def linear(x, weights: PackedWeights, epilogue: Epilogue | None = None, a_bits: int | None = None,
           a_codebook=None):
    """(M, K) activation codes x (N, K) packed weights with an optional fused epilogue."""
    y = gemm(x, weights, a_bits, a_codebook, epilogue=epilogue)
    if epilogue is not None and epilogue.requant is not None:
        return PackedActivations(y, epilogue.requant.bits, epilogue.requant.codebook())
    return y
