"""Float32 convolution and linear layers (the ``conv_f32`` / ``linear_f32`` nodes of
:class:`lowbit.Model`): layers whose input (or weights) are not quantized, e.g. the
first convolution of a Brevitas model that reads the raw image.

One summation order, everywhere (docs/runtime.md)::

    out[m, n] = (((0 + a[m, 0] * w[0, n]) + a[m, 1] * w[1, n]) + ... + a[m, K-1] * w[K-1, n]) + bias[n]

every product and sum rounded to float32 (no fused multiply-add), ``k`` over the im2col row of
output pixel ``m`` in (ky, kx, c) order over the group's channels, padding reading 0.0.
``native=True`` runs the native kernel (``_core.FloatConv``: weights packed once, an AVX2
tier and its scalar twin); ``native=False`` is the NumPy reference, the same chain
vectorized over the outputs, one ``k`` at a time. The two agree bit for bit; any other
float32 convolution (BLAS, onnxruntime, torch) sums in another order and agrees to float
rounding only. :func:`geometry` and :func:`taps` (a window op's geometry and tap views) serve
the pools and :mod:`lowbit.exact_float` too.
"""
from __future__ import annotations

import numpy as np

from .. import _core, _dispatch
from ..conv import _output_size

__all__ = ["conv2d_f32", "geometry", "layer", "layer_geometry", "linear_f32", "simd", "taps"]


def simd() -> bool:
    """Whether the float kernels may use their SIMD tier (False under a forced scalar tier;
    the results are the same)."""
    return _dispatch.tier_rank(_dispatch.tier_cap()) > 0


def layer(node):
    """The node's prepared native layer (``_core.FloatConv``), built on first use: a
    ``linear_f32`` is the 1x1 convolution of a 1x1 map."""
    conv = node._cache.get("float_conv")
    if conv is None:
        w = np.ascontiguousarray(node.arrays["w"], np.float32)
        if node.op == "linear_f32":
            w = w.reshape(w.shape + (1, 1))
        conv = node._cache["float_conv"] = _core.FloatConv(w, np.ascontiguousarray(node.arrays["bias"], np.float32),
                                                           int(node.attrs.get("groups", 1)))
    return conv


def conv2d_f32(x, w, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, native=True,
               prepared=None) -> np.ndarray:
    """float32 NHWC convolution: ``x`` (B, H, W, C), ``w`` (Cout, C // groups, kh, kw) (ONNX
    layout), zero padding; returns (B, OH, OW, Cout) float32 in the order above.
    ``prepared``: the layer's ``_core.FloatConv`` (else built for this call)."""
    x = np.asarray(x, np.float32)
    w = np.asarray(w, np.float32)
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d_f32: expected NHWC x and (Cout, Cin / groups, kh, kw) w, got {x.shape} and {w.shape}")
    if groups < 1 or w.shape[1] * groups != x.shape[3] or w.shape[0] % groups:
        raise ValueError(f"conv2d_f32: weights {w.shape} with groups={groups} do not fit {x.shape[3]} input channels")
    stride, padding, dilation = (tuple(int(v) for v in p) for p in (stride, padding, dilation))
    if native:
        conv = prepared if prepared is not None else _core.FloatConv(
            np.ascontiguousarray(w), None if bias is None else np.ascontiguousarray(bias, np.float32), groups)
        try:
            return conv(np.ascontiguousarray(x), stride, padding, dilation, simd())
        except ValueError as exc:
            raise ValueError(f"conv2d_f32: {exc}") from None
    return _reference_conv(x, w, bias, stride, padding, dilation, groups)


def linear_f32(x, w, bias=None, native=True, prepared=None) -> np.ndarray:
    """float32 ``x @ w.T (+ bias)`` for ``x`` (B, K), ``w`` (N, K), in the order above."""
    x = np.asarray(x, np.float32)
    w = np.asarray(w, np.float32)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"linear_f32: expected x (B, K) and w (N, K), got {x.shape} and {w.shape}")
    return conv2d_f32(x.reshape(x.shape[0], 1, 1, x.shape[1]), w.reshape(w.shape + (1, 1)), bias, native=native,
                      prepared=prepared).reshape(x.shape[0], w.shape[0])


def geometry(shape, kernel, stride=(1, 1), padding=(0, 0), dilation=(1, 1), what="x"):
    """The 14-number geometry (B, H, W, C, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW) of a window op
    (a convolution, a pooling) on NHWC ``shape``; ValueError naming ``what`` when the input is too small."""
    b, h, w, c = (int(v) for v in shape)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (tuple(int(v) for v in p) for p in (kernel, stride, padding, dilation))
    oh, ow = _output_size(h, w, kh, kw, (sh, sw), (ph, pw), (dh, dw), what)
    return (b, h, w, c, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)


def layer_geometry(node, x_shape):
    """The :func:`geometry` of float layer ``node`` on NHWC input of ``x_shape`` (a linear layer's
    (B, K): the 1x1 convolution of a 1x1 map)."""
    if node.op == "linear_f32":
        return geometry((x_shape[0], 1, 1, x_shape[1]), (1, 1))
    a = node.attrs
    return geometry(x_shape, node.arrays["w"].shape[2:], a["stride"], a["padding"], a["dilation"])


def taps(x, g, pad_value=0.0) -> list:
    """The (B, OH, OW, C) strided views of each kernel tap (row-major over ky, kx) of NHWC ``x``
    padded with ``pad_value``, for the :func:`geometry` ``g`` of its shape."""
    b, h, w, c, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = g
    if ph or pw:
        xp = np.full((b, h + 2 * ph, w + 2 * pw, c), pad_value, x.dtype)
        xp[:, ph:ph + h, pw:pw + w] = x
    else:
        xp = x
    return [xp[:, ky * dh:ky * dh + sh * (oh - 1) + 1:sh, kx * dw:kx * dw + sw * (ow - 1) + 1:sw]
            for ky in range(kh) for kx in range(kw)]


# ---- the NumPy reference ---------------------------------------------------------------------

def _reference_conv(x, w, bias, stride, padding, dilation, groups):
    cout, cg, kh, kw = w.shape
    geo = geometry(x.shape, (kh, kw), stride, padding, dilation, "conv2d_f32: x")
    views = taps(x, geo)
    out = np.zeros((geo[0], geo[12], geo[13], cout), np.float32)
    if cg == 1 and cout == groups:      # depthwise: the chain over the taps, all channels at once
        wt = w.reshape(cout, kh * kw)
        for t, v in enumerate(views):
            out += v * wt[:, t]
    else:
        opg = cout // groups
        for g in range(groups):
            acc = out[..., g * opg:(g + 1) * opg]
            wg = w[g * opg:(g + 1) * opg].transpose(2, 3, 1, 0).reshape(kh * kw * cg, opg)  # k = (ky, kx, c)
            for t, v in enumerate(views):
                for ci in range(cg):
                    acc += v[..., g * cg + ci, None] * wg[t * cg + ci]
    if bias is not None:
        out += np.asarray(bias, np.float32)
    return out
