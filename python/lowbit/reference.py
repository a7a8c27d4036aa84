"""Slow, readable NumPy oracles. Never optimized; the kernels must match them."""
from __future__ import annotations

import numpy as np

from . import codebook as cbmod
from . import quant


def _levels(codes, bits, codebook, name):
    """The int64 levels the codes stand for."""
    return cbmod.normalize(codebook, bits, name).astype(np.int64)[np.asarray(codes)]


def _int32(y, what):
    if y.size and (y.max() > 2**31 - 1 or y.min() < -(2**31)):
        raise OverflowError(f"reference {what}: result does not fit int32")
    return y.astype(np.int32)


def gemm(a_codes, w_codes, a_bits, w_bits, a_codebook=None, w_codebook=None) -> np.ndarray:
    """y[m, n] = sum_k a_codebook[a[m, k]] * w_codebook[w[n, k]], exact, as int32.

    Raises OverflowError when a sum does not fit int32.
    """
    return _int32(_levels(a_codes, a_bits, a_codebook, "a_codebook") @ _levels(w_codes, w_bits, w_codebook,
                                                                              "w_codebook").T, "gemm")


def epilogue(acc, scale, bias, residual=None, clamp_lo=-np.inf, clamp_hi=np.inf, requant=None, scale64=None,
             bias64=None):
    """The epilogue of csrc/ops/epilogue.h in NumPy, step by step: a float output in float32; a
    code output (``requant``) in float64 from ``scale64``/``bias64`` (None: the float32
    ``scale``/``bias``) and ``requant.step64``."""
    ftype = np.float64 if requant is not None else np.float32  # every step below in this precision
    if requant is None:
        scale64 = bias64 = None  # a float output uses the float32 parameters only
    scale = np.asarray(scale, np.float32).astype(ftype) if scale64 is None else np.asarray(scale64, np.float64)
    bias = np.asarray(bias, np.float32).astype(ftype) if bias64 is None else np.asarray(bias64, np.float64)
    lo, hi = ftype(np.float32(clamp_lo)), ftype(np.float32(clamp_hi))
    v = np.asarray(acc, np.int32).astype(ftype)
    v = v * scale[None, :]
    v = v + bias[None, :]
    if residual is not None:
        v = v + np.asarray(residual, np.float32).astype(ftype)
    v = np.where(v < lo, lo, v)
    v = np.where(v > hi, hi, v)
    return v if requant is None else quant.requantize(v, requant.step64, requant.qmin, requant.qmax)


def conv2d(x_codes, w_codes, a_bits, w_bits, a_codebook=None, w_codebook=None, stride=1, padding=0, dilation=1,
           groups=1, a_pad_value=0):
    """Exact integer convolution on decoded levels.

    x_codes: (B, H, W, C) NHWC codes; w_codes: (Cout, C // groups, kh, kw).
    Padding inserts the value ``a_pad_value`` (0: zero padding, whatever the
    codebook). Returns (B, OH, OW, Cout) int32.
    """
    x = _levels(x_codes, a_bits, a_codebook, "a_codebook")
    w = _levels(w_codes, w_bits, w_codebook, "w_codebook")
    b, h, wd, c = x.shape
    cout, cg, kh, kw = w.shape
    sh, sw = (stride, stride) if np.isscalar(stride) else stride
    ph, pw = (padding, padding) if np.isscalar(padding) else padding
    dh, dw = (dilation, dilation) if np.isscalar(dilation) else dilation
    xp = np.full((b, h + 2 * ph, wd + 2 * pw, c), a_pad_value, np.int64)
    xp[:, ph:ph + h, pw:pw + wd, :] = x
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((b, oh, ow, cout), np.int64)
    opg = cout // groups
    for ky in range(kh):
        for kx in range(kw):
            patch = xp[:, ky * dh: ky * dh + sh * (oh - 1) + 1: sh, kx * dw: kx * dw + sw * (ow - 1) + 1: sw, :]
            for gi in range(groups):
                xs = patch[..., gi * cg:(gi + 1) * cg]
                ws = w[gi * opg:(gi + 1) * opg, :, ky, kx]
                out[..., gi * opg:(gi + 1) * opg] += xs @ ws.T
    return _int32(out, "conv2d")
