"""Float32 convolution and linear layers (NumPy; the matrix products run on NumPy's BLAS).

Used for layers whose input (or weights) are not quantized, e.g. the first
convolution of a Brevitas model that reads the raw image: ``conv_f32`` /
``linear_f32`` nodes of :class:`lowbit.Model`. Results agree with any other
float32 convolution (onnxruntime, torch) to float rounding only: the sums run
in a different order.
"""
from __future__ import annotations

import numpy as np

__all__ = ["conv2d_f32", "linear_f32"]


def _taps(x, kh, kw, stride, padding, dilation):
    """Zero-padded NHWC ``x`` -> list of the (B, OH, OW, C) strided views of each kernel tap
    (row-major over ky, kx) and the output size."""
    b, h, w, c = x.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"conv2d_f32: input {h}x{w} is too small for a {kh}x{kw} kernel")
    if ph or pw:
        xp = np.zeros((b, h + 2 * ph, w + 2 * pw, c), np.float32)
        xp[:, ph:ph + h, pw:pw + w] = x
    else:
        xp = x
    taps = [xp[:, ky * dh:ky * dh + sh * (oh - 1) + 1:sh, kx * dw:kx * dw + sw * (ow - 1) + 1:sw]
            for ky in range(kh) for kx in range(kw)]
    return taps, oh, ow


def conv2d_f32(x, w, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1) -> np.ndarray:
    """float32 NHWC convolution: ``x`` (B, H, W, C), ``w`` (Cout, C // groups, kh, kw) (ONNX
    layout), zero padding; returns (B, OH, OW, Cout) float32. Dense and grouped convolutions
    use im2col and one BLAS matrix product per group; depthwise ones (one input channel per
    group) a multiply-add per kernel tap."""
    x = np.asarray(x, np.float32)
    w = np.asarray(w, np.float32)
    b, _, _, c = x.shape
    cout, cg, kh, kw = w.shape
    if cg * groups != c or cout % groups:
        raise ValueError(f"conv2d_f32: weights {w.shape} with groups={groups} do not fit {c} input channels")
    taps, oh, ow = _taps(x, kh, kw, stride, padding, dilation)
    if cg == 1 and cout == groups:      # depthwise
        out = np.zeros((b, oh, ow, cout), np.float32)
        wt = w.reshape(cout, kh * kw)
        for t, v in enumerate(taps):
            out += v * wt[:, t]
    else:
        opg = cout // groups
        out = np.empty((b, oh, ow, cout), np.float32)
        for g in range(groups):
            cols = np.stack([v[..., g * cg:(g + 1) * cg] for v in taps], axis=3).reshape(b * oh * ow, kh * kw * cg)
            wg = w[g * opg:(g + 1) * opg].transpose(2, 3, 1, 0).reshape(kh * kw * cg, opg)
            out[..., g * opg:(g + 1) * opg] = (cols @ wg).reshape(b, oh, ow, opg)
    if bias is not None:
        out += np.asarray(bias, np.float32)
    return out


def linear_f32(x, w, bias=None) -> np.ndarray:
    """float32 ``x @ w.T (+ bias)`` for ``x`` (B, K), ``w`` (N, K)."""
    out = np.asarray(x, np.float32) @ np.asarray(w, np.float32).T
    if bias is not None:
        out += np.asarray(bias, np.float32)
    return out
