"""Exact codes of a quantizer fed by a float layer (the first convolution of a model that
reads the raw image, then BatchNorm, ReLU and the activation quantizer).

Such a ``quantize`` node reads float32 ``y = clamp(affine(conv_f32(x)))`` and rounds
``y / step``; y carries the float32 roundings of the layer's long sums, so at a near tie
its code can differ from what a float64 run of the source model decides.
:func:`lowbit.lowering.mark_exact_float_quantizers` marks the node (``attrs['exact_float']``:
the layer, the affine or None, the clamp; the layer's input becomes the node's second input)
and the node's codes are then those of the float64 formula (csrc/ops/float_gemm.h)::

    z = (((0 + x_0 * w_0) + x_1 * w_1) + ... + x_{K-1} * w_{K-1}) + conv_bias[c]   (float64,
        the layer's chain order, a padded tap reads 0; w: the layer's exact float64 weights
        ``w64`` where it has them, e.g. a QONNX import's ``level * scale``, else its float32 ones)
    v = z * scale64[c] + bias64[c]   (the affine's float64 values; none: v = z)
    v = min(max(v, clamp_lo), clamp_hi)
    code = min(max(rint(v / d[c]), qn), qp) - qn   (NaN: code 0)

with ``d[c]`` the node's step, or its per-channel step ``channel_steps[c]`` (the node then
reads y times float32(1 / channel_steps[c]), an affine :func:`lowbit.lowering.place_requant`
put in front, and has step 1).

The native executor quantizes y as before and recomputes in float64 only the outputs within
a proven bound of a rounding boundary (its ``exact_float_fix`` step, with the node's
:func:`spec`); :func:`reference_codes` is the formula for every output, in NumPy.
"""
from __future__ import annotations

import numpy as np

from . import _core
from .runtime import floatops

__all__ = ["spec", "reference_codes", "geometry"]


def _parts(model, node):
    """(layer, affine or None, clamp (lo, hi) as float64) of marked quantize ``node``."""
    e = node.attrs["exact_float"]
    layer = model._by_name[e["layer"]]
    affine = model._by_name[e["affine"]] if e.get("affine") else None
    lo, hi = e.get("clamp", [None, None])
    return layer, affine, (-np.inf if lo is None else float(np.float32(lo)),
                           np.inf if hi is None else float(np.float32(hi)))


def _weights(layer):
    """The layer's weights as (cout, cg, kh, kw) float32, their exact float64 values (``w64``,
    e.g. a QONNX import's ``level * scale``; else the float32 ones) and its groups (a linear: 1x1)."""
    w = np.ascontiguousarray(layer.arrays["w"], np.float32)
    w64 = layer.arrays.get("w64")
    w64 = w.astype(np.float64) if w64 is None else np.ascontiguousarray(w64, np.float64).reshape(w.shape)
    if layer.op == "linear_f32":
        return w.reshape(w.shape + (1, 1)), w64.reshape(w.shape + (1, 1)), 1
    return w, w64, int(layer.attrs.get("groups", 1))


def _affine64(affine):
    if affine is None:
        return None, None, None, None
    s32, b32 = (np.ascontiguousarray(affine.arrays[k], np.float32) for k in ("scale", "bias"))
    s64, b64 = (np.ascontiguousarray(v32 if affine.arrays.get(k) is None else affine.arrays[k], np.float64)
                for k, v32 in (("scale64", s32), ("bias64", b32)))  # the float32 values where none are given
    return s32, b32, s64, b64


def spec(model, node):
    """The node's checked native parameters (``_core.ExactFloatSpec``), built once."""
    s = node._cache.get("exact_float")
    if s is None:
        layer, affine, (lo, hi) = _parts(model, node)
        w, w64, groups = _weights(layer)
        a = node.attrs
        s = node._cache["exact_float"] = _core.ExactFloatSpec(
            w, np.ascontiguousarray(layer.arrays["bias"], np.float32), *_affine64(affine), lo, hi,
            float(np.float32(a["step"])), int(a["qn"]), int(a["qp"]), groups, _divisors(node), w64)
    return s


def _divisors(node):
    """The per-channel steps (float64 of their float32 values) or None."""
    chan = node.attrs.get("channel_steps")
    return None if chan is None else np.asarray(chan, np.float32).astype(np.float64)


def geometry(model, node, x_shape):
    """The layer's 14-number geometry (B, H, W, C, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW) on
    NHWC input of ``x_shape`` (a linear layer's (B, K): a 1x1 map)."""
    return floatops.layer_geometry(_parts(model, node)[0], x_shape)


def reference_codes(model, node, x: np.ndarray) -> np.ndarray:
    """The formula for every output in NumPy, step by step: (B, OH, OW, cout) uint8 (a linear
    layer: (B, cout))."""
    layer, affine, (lo, hi) = _parts(model, node)
    w, w64, groups = _weights(layer)
    x = np.asarray(x, np.float32)
    g = geometry(model, node, x.shape)
    b, kw, oh, ow, (cout, cg) = g[0], g[5], g[12], g[13], w.shape[:2]
    opg = cout // groups
    z = np.zeros((b, oh, ow, cout), np.float64)
    for t, patch in enumerate(floatops.taps(x.reshape(g[:4]).astype(np.float64), g)):  # a padded tap reads 0.0
        ky, kx = divmod(t, kw)
        for ci in range(cg):
            for gi in range(groups):
                cols = slice(gi * opg, (gi + 1) * opg)
                z[..., cols] = z[..., cols] + patch[..., gi * cg + ci: gi * cg + ci + 1] * w64[cols, ci, ky, kx]
    z = z + layer.arrays["bias"].astype(np.float64)  # a float layer has one (Model checks it)
    s64, b64 = _affine64(affine)[2:]
    v = z if affine is None else z * s64 + b64
    v = np.where(v < lo, lo, v)
    v = np.where(v > hi, hi, v)
    a = node.attrs
    d = _divisors(node)
    q = np.rint(np.divide(v, float(np.float32(a["step"])) if d is None else d))
    q = np.where(np.isnan(q), a["qn"], np.clip(q, a["qn"], a["qp"]))
    out = (q - a["qn"]).astype(np.uint8)
    return out.reshape(b, cout) if layer.op == "linear_f32" else out
