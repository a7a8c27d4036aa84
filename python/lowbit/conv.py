"""Convolution and linear layers on packed low-bit codes.

Activations are NHWC codes. A convolution is an implicit GEMM with
M = B*OH*OW output pixels, N = Cout, K = kh*kw*Cin in (ky, kx, cin) order.
When the chosen kernel takes indirect activations (grouplut) and Cin is a
multiple of its group size, the input is packed once and each output row reads
its kh*kw input pixels through an indirection buffer (as QNNPACK does): no
im2col copy. Otherwise an im2col copy of the codes is made (documented
fallback; still exact). Grouped/depthwise convolutions run group by group.

Padding inserts the value 0. If the activation codebook has a code for 0, the
padding reads that code; if not (e.g. bipolar {-1, +1}), padding reads code 0
and the exact correction cbA[0] * sum(weights under the padded taps) is
subtracted from the int32 sums before the epilogue.
"""
from __future__ import annotations

import numpy as np

from . import _core
from . import codebook as cbmod
from .epilogue import Epilogue
from .ops import _prepare
from .packing import PackedActivations, PackedWeights, check_elements


def _pair(v, name):
    if isinstance(v, (int, np.integer)):
        v = (int(v), int(v))
    v = tuple(int(x) for x in v)
    if len(v) != 2:
        raise ValueError(f"{name}: expected an int or a pair of ints, got {v}")
    return v


class ConvWeights:
    """Packed convolution weights: (Cout, Cin/groups, kh, kw) codes, stored as
    ``groups`` PackedWeights of shape (Cout/groups, kh*kw*Cin/groups) in
    (ky, kx, cin) order."""

    def __init__(self, w_codes, bits: int, codebook=None, groups: int = 1):
        if not isinstance(w_codes, np.ndarray) or w_codes.dtype != np.uint8 or w_codes.ndim != 4:
            raise TypeError("w_codes: expected a (Cout, Cin/groups, kh, kw) uint8 numpy array")
        cout, cg, kh, kw = w_codes.shape
        if groups < 1 or cout % groups:
            raise ValueError(f"groups: expected a divisor of Cout={cout}, got {groups}")
        self.cout, self.cin_per_group, self.kh, self.kw, self.groups = cout, cg, kh, kw, groups
        self.bits = bits
        opg = cout // groups
        self.parts = [PackedWeights.from_codes(
            np.ascontiguousarray(w_codes[g * opg:(g + 1) * opg].transpose(0, 2, 3, 1).reshape(opg, kh * kw * cg)),
            bits, codebook) for g in range(groups)]
        self.codebook = self.parts[0].codebook

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    def column_sums(self, g: int) -> np.ndarray:
        """(kh*kw, Cout/groups) sums of weight levels per tap (for padding corrections)."""
        p = self.parts[g]
        vals = self.codebook.astype(np.int64)[p.codes()].reshape(p.N, self.kh * self.kw, self.cin_per_group)
        return vals.sum(axis=2).T


def _as_nhwc(x, a_bits, a_codebook):
    if isinstance(x, PackedActivations):
        if x.shape is None or len(x.shape) != 4:
            raise ValueError("x: expected NHWC PackedActivations (from conv2d or pack_activations_nhwc)")
        return x
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4:
        raise TypeError("x: expected NHWC uint8 codes (B, H, W, C) or PackedActivations")
    check_elements(x.shape, "x")
    b, h, w, c = x.shape
    pa = PackedActivations.from_codes(np.ascontiguousarray(x).reshape(b * h * w, c), a_bits, a_codebook)
    pa.shape = (b, h, w, c)
    return pa


def pack_activations_nhwc(x, bits: int, codebook=None) -> PackedActivations:
    """Validate NHWC (B, H, W, C) uint8 codes for :func:`conv2d`."""
    return _as_nhwc(x, bits, codebook)


_OFFSET_CACHE = {}
_INDIRECT_CACHE = {}  # byte offsets of the indirection buffer, per (conv geometry, input pixels, segment)


def _output_size(h, w, kh, kw, stride, padding, dilation):
    """(OH, OW) of a convolution; raises when the input is too small."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"x: input {h}x{w} is too small for a {kh}x{kw} kernel with this padding/dilation")
    return oh, ow


def _tap_rows(b, h, w, kh, kw, stride, padding, dilation):
    """(M, kh*kw) input pixel index of each output pixel's taps, -1 for padding."""
    key = (b, h, w, kh, kw, stride, padding, dilation)
    hit = _OFFSET_CACHE.get(key)
    if hit is not None:
        return hit
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh, ow = _output_size(h, w, kh, kw, stride, padding, dilation)
    iy = (np.arange(oh) * sh - ph)[:, None] + (np.arange(kh) * dh)[None, :]  # (oh, kh)
    ix = (np.arange(ow) * sw - pw)[:, None] + (np.arange(kw) * dw)[None, :]  # (ow, kw)
    vy = (iy >= 0) & (iy < h)
    vx = (ix >= 0) & (ix < w)
    pix = (iy[:, None, :, None] * w + ix[None, :, None, :])  # (oh, ow, kh, kw)
    valid = vy[:, None, :, None] & vx[None, :, None, :]
    pix = np.where(valid, pix, -1)
    rows = (pix[None] + np.where(valid, np.arange(b)[:, None, None, None, None] * h * w, 0))
    rows = np.where(valid[None], rows, -1).reshape(b * oh * ow, kh * kw).astype(np.int64)
    if len(_OFFSET_CACHE) > 64:
        _OFFSET_CACHE.clear()
    _OFFSET_CACHE[key] = (rows, oh, ow)
    return rows, oh, ow


def conv2d(x, weights: ConvWeights, stride=1, padding=0, dilation=1, epilogue: Epilogue | None = None,
           a_bits: int | None = None, a_codebook=None):
    """Convolution of NHWC activation codes with packed weights.

    Returns NHWC int32 sums (no epilogue), float32 (epilogue without requant)
    or :class:`PackedActivations` holding the next layer's codes (requant).
    """
    if not isinstance(weights, ConvWeights):
        raise TypeError(f"weights: expected lowbit.ConvWeights, got {type(weights).__name__}")
    pa = _as_nhwc(x, 2 if a_bits is None else a_bits, a_codebook)
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
    m = rows.shape[0]
    if epilogue is not None:
        epilogue.check(weights.cout, m)
    cg, opg = weights.cin_per_group, weights.cout // weights.groups
    outs = []
    for g in range(weights.groups):
        xg = pa if weights.groups == 1 else _channel_slice(pa, g * cg, (g + 1) * cg)
        ep = epilogue if epilogue is None or weights.groups == 1 else epilogue.slice(g * opg, (g + 1) * opg)
        outs.append(_conv_group(xg, weights, g, rows, ep, geometry))
    y = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)
    y = y.reshape(b, oh, ow, weights.cout)
    if epilogue is not None and epilogue.requant is not None:
        out = PackedActivations(y.reshape(m, weights.cout), epilogue.requant.bits, epilogue.requant.codebook())
        out.shape = (b, oh, ow, weights.cout)
        return out
    return y


def _channel_slice(pa, c0, c1):
    codes = np.ascontiguousarray(pa.codes[:, c0:c1])
    out = PackedActivations(codes, pa.bits, pa.codebook)
    out.shape = pa.shape[:3] + (c1 - c0,)
    return out


def _conv_group(pa, weights, g, rows, epilogue, geometry):
    packed = weights.parts[g]
    taps, cg = weights.kh * weights.kw, weights.cin_per_group
    k = taps * cg
    bound = _prepare(pa, packed, rows.shape[0], k)
    plan, fam, kern = bound.plan, bound.fam, bound.kern
    cb_a = pa.codebook
    zero = np.flatnonzero(cb_a == 0)
    pad_code = int(zero[0]) if zero.size else 0
    fused = zero.size > 0
    m = rows.shape[0]
    step = fam.indirect_step(plan)  # k per step (grouplut: gw codes a byte; dot8: a quad of 4 bytes)
    indirect = kern["indirect"] and step is not None and cg % step == 0
    if indirect:
        seg = cg // step
        tier_rank = kern["tier_rank"]

        def pack_input(codes):
            # packed input pixels followed by one all-padding pixel
            return fam.pack_activations(codes, plan, tier_rank, pad_rows=1, pad_code=pad_code).reshape(-1)

        buf = pa.packed(("conv", plan.family, plan.params, tier_rank > 0, pad_code), pack_input)
        npix = pa.codes.shape[0]
        pixel_bytes = buf.size // (npix + 1)
        okey = (geometry, npix, pixel_bytes)
        offsets = _INDIRECT_CACHE.get(okey)
        if offsets is None:
            if len(_INDIRECT_CACHE) > 64:
                _INDIRECT_CACHE.clear()
            # byte offsets: pixel index (the pad pixel for -1) x the bytes a packed pixel takes
            offsets = _INDIRECT_CACHE[okey] = np.where(rows >= 0, rows, npix) * pixel_bytes
        y = bound.run(buf, m, packed.N, taps * seg, bound.correction(taps * seg, 0), epilogue if fused else None,
                      a_offsets=offsets, seg_steps=seg)
    else:
        # documented fallback: im2col copy of the codes, then the plain GEMM
        b, h, w, kh, kw, (sh, sw), (ph, pw), (dh, dw) = geometry
        check_elements((m, k), "x (im2col copy)")
        cols = _core.im2col_nhwc(pa.codes, b, h, w, kh, kw, sh, sw, ph, pw, dh, dw, pad_code)  # (M, taps * Cin)
        k_steps, correction = bound.direct(k)
        y = bound.run(bound.pack(cols), m, packed.N, k_steps, correction, epilogue if fused else None)
    if fused:
        return y
    # No code stands for 0: padding read cbA[0]; remove it exactly.
    corr = (rows < 0).astype(np.int64) @ weights.column_sums(g) * int(cb_a[pad_code])
    y = (y.astype(np.int64) - corr).astype(np.int32)
    if epilogue is None:
        return y
    return _core.epilogue(y, **epilogue.kwargs())


def linear(x, weights: PackedWeights, epilogue: Epilogue | None = None, a_bits: int | None = None,
           a_codebook=None):
    """(M, K) activation codes x (N, K) packed weights with an optional fused epilogue."""
    from .ops import gemm

    y = gemm(x, weights, a_bits, a_codebook, epilogue=epilogue)
    if epilogue is not None and epilogue.requant is not None:
        return PackedActivations(y, epilogue.requant.bits, epilogue.requant.codebook())
    return y
