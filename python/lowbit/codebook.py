"""Codebooks: the value each code stands for.

An integer codebook for ``bits`` in 1..4 is a sequence of ``2**bits`` integers
in [-128, 127]; ``None`` means ``0 .. 2**bits - 1``. For ``bits == 8`` the
values may be in [-128, 255] (uint8 or int8 data); ``None`` means 0..255.
"""
from __future__ import annotations

import functools

import numpy as np

SUPPORTED_BITS = (1, 2, 3, 4, 8)


def check_bits(bits, name: str = "bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"{name}: expected an int in {SUPPORTED_BITS}, got {type(bits).__name__}")
    if int(bits) not in SUPPORTED_BITS:
        if int(bits) in (5, 6, 7):
            raise NotImplementedError(f"{name}={int(bits)}: supported bit widths are {SUPPORTED_BITS}")
        raise ValueError(f"{name}: expected one of {SUPPORTED_BITS}, got {bits}")
    return int(bits)


@functools.lru_cache(maxsize=None)
def _default(bits: int) -> np.ndarray:
    """The default codebook 0 .. 2**bits - 1 (shared, read-only)."""
    cb = np.arange(1 << bits, dtype=np.int32)
    cb.flags.writeable = False
    return cb


def normalize(codebook, bits: int, name: str = "codebook") -> np.ndarray:
    """Validated integer codebook as an int32 array of length 2**bits."""
    n = 1 << bits
    if codebook is None:
        return _default(bits)
    arr = np.asarray(codebook)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name}: expected {n} values for {bits}-bit codes, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(
                f"{name}: expected integer levels; map float levels with "
                "lowbit.quant.integer_codebook(levels) first")
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integers, got dtype {arr.dtype}")
    lo, hi = (-128, 255) if bits == 8 else (-128, 127)
    if arr.min() < lo or arr.max() > hi:  # before any cast, which could wrap
        raise ValueError(f"{name}: expected values in [{lo}, {hi}], got [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int32)


def products(cb_a: np.ndarray, cb_w: np.ndarray) -> np.ndarray:
    """P[a, w] = cb_a[a] * cb_w[w] (int64)."""
    return np.multiply.outer(cb_a.astype(np.int64), cb_w.astype(np.int64))


def k_max(cb_a: np.ndarray, cb_w: np.ndarray) -> int:
    """Largest K whose sums are exact in int32: floor((2**31 - 1) / max|product|)."""
    pmax = max(abs(int(cb_a.min())), abs(int(cb_a.max()))) * max(abs(int(cb_w.min())), abs(int(cb_w.max())))
    return (2**31 - 1) // max(pmax, 1)
