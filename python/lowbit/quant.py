"""Quantization arithmetic: uniform integer grids, and float codebooks -> integer codebooks.

Uniform integer grids (the one place for these formulas)
--------------------------------------------------------
A b-bit quantizer with step s maps x to a level q in :func:`int_range` and
represents q * s; its uint8 code is q - qn (the **binary** quantizer: levels
``BINARY_LEVELS`` (-1, +1), code ``x >= 0``). QAT, both front ends, the
epilogue, the runtime and the reference all use the functions below.

Float codebooks -> exact integer codebooks plus a scale
-------------------------------------------------------

lowbit's kernels are exact on *integer* levels. A float codebook (learned
levels such as ``[-1.3, -0.4, 0.4, 1.3]``, power-of-two levels, k-means
centroids, or an LSQ step times integers) is mapped once, explicitly, to

    int_level[i] = round_half_even(level[i] / scale),
    scale        = max_i |level[i]| / max_abs        (1.0 when all levels are 0)

so the largest |level| maps to exactly ``max_abs``. The rounding bound is

    |level[i] - int_level[i] * scale| <= scale / 2          for every i,

which :func:`integer_codebook` verifies before returning (it is exact when a
level is already an integer multiple of ``scale``, e.g. uniform LSQ levels).

For a GEMM with float weight levels ``w`` (scale ``s_w``) and activation levels
``a`` (scale ``s_a``), ``lowbit.gemm`` on the integer codebooks returns the exact
integer sum ``Y`` and

    y_float[m, n] = sum_k a[m, k] * w[n, k]  ~=  Y[m, n] * s_a * s_w

with, per output, using |a - a_int*s_a| <= s_a/2, |w - w_int*s_w| <= s_w/2,
|a_int*s_a| <= max|a| and |w_int*s_w| <= max|w|:

    |y_float - Y * s_a * s_w| <= K * (s_a/2 * max|w| + s_w/2 * max|a| + s_a*s_w/4)

(:meth:`GemmCodebooks.error_bound`; exact arithmetic, the float64 evaluation of
the right-hand side adds only its own rounding).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import codebook as cbmod

__all__ = ["GemmCodebooks", "gemm_codebooks", "integer_codebook", "rounding_error", "BINARY_LEVELS", "int_range",
           "bits_for", "grid_levels", "quantize_codes", "inv_step", "requantize", "dequantize", "UniformGrid"]

BINARY_LEVELS = (-1, 1)


def int_range(bits: int, signed: bool, narrow: bool = False) -> tuple:
    """(qn, qp) of a ``bits``-bit integer grid: signed ``-2^(bits-1) + narrow .. 2^(bits-1) - 1``,
    unsigned ``0 .. 2^bits - 1 - narrow``."""
    bits = int(bits)
    if signed:
        return -(1 << (bits - 1)) + int(bool(narrow)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1 - int(bool(narrow))


def bits_for(n: int):
    """The narrowest supported code width (1, 2, 3, 4, 8) with 2^bits >= n levels; None if none."""
    return next((b for b in cbmod.SUPPORTED_BITS if n <= (1 << b)), None)


def grid_levels(levels, bits: int) -> list:
    """``levels`` (ints, e.g. ``range(qn, qp + 1)``) extended to the 2^bits entries of a codebook with 0
    (or the first level when 0 is not a level): the extra codes are never produced."""
    levels = [int(v) for v in levels]
    pad = 0 if 0 in levels else levels[0]
    return levels + [pad] * ((1 << bits) - len(levels))


# QONNX rounding modes -> NumPy (ROUND is round half to even, like torch.round and np.rint)
ROUNDING = {"ROUND": np.round, "HALF_EVEN": np.round, "FLOOR": np.floor, "CEIL": np.ceil, "DOWN": np.fix,
            "UP": lambda v: np.sign(v) * np.ceil(np.abs(v)),
            "HALF_UP": lambda v: np.sign(v) * np.floor(np.abs(v) + 0.5),
            "HALF_DOWN": lambda v: np.sign(v) * np.ceil(np.abs(v) - 0.5)}


def quantize_codes(x: np.ndarray, step, qn: int, qp: int, binary: bool = False) -> np.ndarray:
    """uint8 codes ``round_half_even(clamp(x / step, qn, qp)) - qn`` of float32 ``x``, computed in
    float32 with a true division, step by step (the definition the native kernel matches);
    binary: ``x >= 0``."""
    if binary:
        return (x >= 0).astype(np.uint8)
    q = np.divide(x, np.float32(step), dtype=np.float32)
    np.clip(q, np.float32(qn), np.float32(qp), out=q)
    np.rint(q, out=q)
    if qn:
        np.subtract(q, np.float32(qn), out=q)
    return q.astype(np.uint8)


def inv_step(step) -> np.float32:
    """The multiplier a requantizing epilogue uses in place of a division by ``step``."""
    return np.float32(1.0) / np.float32(step)


def requantize(v: np.ndarray, step64: float, qmin: int, qmax: int) -> np.ndarray:
    """Epilogue requantization of float64 ``v`` (csrc/ops/epilogue.h): ``q = rint(v / step64)``
    (a float64 true division, round half to even; NaN -> qmin), clamped to [qmin, qmax], code
    ``q - qmin`` (uint8)."""
    q = np.rint(np.divide(np.asarray(v, np.float64), np.float64(step64), dtype=np.float64))
    q = np.clip(np.where(np.isnan(q), np.float64(qmin), q), np.float64(qmin), np.float64(qmax))
    return (q.astype(np.int32) - qmin).astype(np.uint8)


def dequantize(levels, codes: np.ndarray, step) -> np.ndarray:
    """float32 ``level[code] * step`` (both rounded to float32 first)."""
    return np.asarray(levels).astype(np.float32)[codes] * np.float32(step)


class UniformGrid:
    """Values ``level * step`` for integer levels qn..qp, or ``+-step`` (``binary``).

    ``chan`` (float32 (C,), optional): per-channel steps along axis 1; the levels
    are then held with ``step`` 1 and channel c's values are ``level * chan[c]``."""

    __slots__ = ("step", "qn", "qp", "binary", "signed", "chan")

    def __init__(self, step, qn, qp, binary=False, signed=None, chan=None):
        self.step = float(np.float32(step))
        self.qn, self.qp, self.binary = int(qn), int(qp), bool(binary)
        self.signed = (self.qn < 0) if signed is None else bool(signed)
        self.chan = None if chan is None else np.asarray(chan, np.float32).reshape(-1)

    @property
    def n(self) -> int:
        """Number of distinct levels."""
        return 2 if self.binary else self.qp - self.qn + 1

    @property
    def bits(self):
        """Code width (None when the levels do not fit 8-bit codes)."""
        return 1 if self.binary else bits_for(self.n)

    def levels(self) -> list:
        """The codebook: level of each code."""
        if self.binary:
            return list(BINARY_LEVELS)
        return grid_levels(range(self.qn, self.qp + 1), self.bits)

    def requant(self):
        """The ``requant`` attribute of an epilogue that emits this grid's codes ({bits, step,
        signed}, plus ``qmin``/``qmax`` when the levels are not the full signed or unsigned range
        of ``bits``: see :class:`lowbit.Requant`), or None when no epilogue can (binary grids)."""
        b = self.bits
        if self.binary or b is None:
            return None
        for signed in (False, True):
            if (self.qn, self.qp) == int_range(b, signed) and not (signed and b == 1):
                return {"bits": b, "step": self.step, "signed": signed}
        if self.n < 2:
            return None
        return {"bits": b, "step": self.step, "signed": self.qn < 0, "qmin": self.qn, "qmax": self.qp}


def _levels(levels, bits, name: str):
    arr = np.asarray(levels, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of levels, got shape {arr.shape}")
    if bits is None:
        bits = bits_for(arr.shape[0])
        if bits is None or arr.shape[0] != 1 << bits:
            raise ValueError(f"{name}: expected {', '.join(str(1 << b) for b in cbmod.SUPPORTED_BITS)} levels, "
                             f"got {arr.shape[0]}")
    else:
        bits = cbmod.check_bits(bits, "bits")
        if arr.shape[0] != 1 << bits:
            raise ValueError(f"{name}: expected {1 << bits} levels for {bits}-bit codes, got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: levels must be finite")
    return arr, bits


def rounding_error(levels, int_codebook, scale: float) -> float:
    """max_i |levels[i] - int_codebook[i] * scale| (float64)."""
    lv = np.asarray(levels, dtype=np.float64)
    return float(np.max(np.abs(lv - np.asarray(int_codebook, dtype=np.float64) * float(scale)))) if lv.size else 0.0


def integer_codebook(levels, bits: int | None = None, max_abs: int = 127):
    """Map float levels to ``(int_codebook, scale)`` with ``levels ~= int_codebook * scale``.

    ``levels``: 2**bits finite floats (``bits`` inferred from the count when None:
    2, 4, 8, 16 or 256 levels). ``max_abs``: the integer the largest |level|
    maps to, 1..127; 128 when the largest |level| belongs to negative levels only
    (e.g. uniform signed levels -128..127 times a step); up to 255 for 8-bit
    codebooks whose levels are all >= 0 (8-bit codebooks span [-128, 255]).
    A result outside the codebook range raises ValueError. Smaller ``max_abs`` gives
    smaller products, which lets the lookup-table kernels (products must fit
    int8 table entries) run instead of the exact int16 path, at the price of a
    coarser grid.

    Returns an int32 array accepted as a lowbit codebook and a float ``scale``
    > 0 (levels so small that the scale would be subnormal raise ValueError). Guarantees (checked): ``|levels[i] - int_codebook[i] * scale| <= scale / 2``
    and ``max |int_codebook| == max_abs`` unless every level is 0 (then scale is 1).
    """
    lv, bits = _levels(levels, bits, "levels")
    if isinstance(max_abs, bool) or not isinstance(max_abs, (int, np.integer)):
        raise TypeError(f"max_abs: expected an int, got {type(max_abs).__name__}")
    limit = 255 if (bits == 8 and lv.min() >= 0) else 128  # +128 itself is rejected by normalize below
    if not 1 <= int(max_abs) <= limit:
        raise ValueError(f"max_abs: expected 1..{limit} for these levels, got {max_abs}")
    peak = float(np.max(np.abs(lv)))
    scale = peak / int(max_abs) if peak > 0 else 1.0
    if not scale >= np.finfo(np.float64).tiny:  # a subnormal step cannot hold the bound
        raise ValueError(f"levels: max |level| = {peak!r} is too small to scale to integers; rescale the levels")
    ints = np.rint(lv / scale)                       # round half to even
    ints = np.clip(ints, -int(max_abs), int(max_abs))  # only guards the last ulp of lv/scale
    cb = cbmod.normalize(ints.astype(np.int64), bits, "int_codebook")
    err = rounding_error(lv, cb, scale)
    # scale/2 plus the float64 rounding of the check itself
    if err > scale / 2 * (1 + 1e-12) + 4 * np.finfo(np.float64).eps * peak:
        raise AssertionError(f"integer_codebook: rounding bound violated ({err} > {scale / 2})")
    return cb, float(scale)


@dataclass(frozen=True)
class GemmCodebooks:
    """Integer codebooks and scales for one float-codebook GEMM (see the module doc)."""
    w_codebook: np.ndarray
    a_codebook: np.ndarray
    w_scale: float
    a_scale: float
    w_bits: int
    a_bits: int
    w_peak: float  # max |w level|
    a_peak: float  # max |a level|

    @property
    def out_scale(self) -> float:
        """Multiply ``lowbit.gemm``'s int32 result by this to get the float GEMM."""
        return self.a_scale * self.w_scale

    def error_bound(self, k: int) -> float:
        """Upper bound of |y_float - gemm * out_scale| for one output of depth k."""
        sa, sw = self.a_scale, self.w_scale
        return float(k) * (sa / 2 * self.w_peak + sw / 2 * self.a_peak + sa * sw / 4)


def gemm_codebooks(w_levels, a_levels, w_bits: int | None = None, a_bits: int | None = None,
                   w_max_abs: int = 127, a_max_abs: int = 127) -> GemmCodebooks:
    """Exact-integer codebooks for float weight and activation levels, and the
    combined output scale::

        cbs = lowbit.quant.gemm_codebooks([-1.3, -0.4, 0.4, 1.3], a_levels)
        packed = lowbit.pack_weights(w_codes, 2, cbs.w_codebook)
        y = lowbit.gemm(a_codes, packed, 2, cbs.a_codebook) * cbs.out_scale
        # |y - y_float| <= cbs.error_bound(K)
    """
    w_lv, w_bits = _levels(w_levels, w_bits, "w_levels")
    a_lv, a_bits = _levels(a_levels, a_bits, "a_levels")
    w_cb, w_scale = integer_codebook(w_lv, w_bits, w_max_abs)
    a_cb, a_scale = integer_codebook(a_lv, a_bits, a_max_abs)
    return GemmCodebooks(w_cb, a_cb, w_scale, a_scale, w_bits, a_bits, float(np.max(np.abs(w_lv))),
                         float(np.max(np.abs(a_lv))))
