"""Slow, readable NumPy oracles. Never optimized; the kernels must match them."""
from __future__ import annotations

import numpy as np

from . import codebook as cbmod


def gemm(a_codes, w_codes, a_bits=2, w_bits=2, a_codebook=None, w_codebook=None) -> np.ndarray:
    """y[m, n] = sum_k a_codebook[a[m, k]] * w_codebook[w[n, k]], exact, as int32.

    Raises OverflowError when a sum does not fit int32.
    """
    cb_a = cbmod.normalize(a_codebook, a_bits, "a_codebook").astype(np.int64)
    cb_w = cbmod.normalize(w_codebook, w_bits, "w_codebook").astype(np.int64)
    a = cb_a[np.asarray(a_codes)]
    w = cb_w[np.asarray(w_codes)]
    y = a @ w.T
    if y.size and (y.max() > 2**31 - 1 or y.min() < -(2**31)):
        raise OverflowError("reference gemm: result does not fit int32")
    return y.astype(np.int32)
