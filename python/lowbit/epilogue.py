"""The fused GEMM epilogue (exact spec: csrc/ops/epilogue.h).

For output (m, n) with exact int32 sum acc, exactly as :func:`lowbit.reference.epilogue`
computes it, every step rounded (no FMA). A float output, in float32::

    v = float32(acc) * scale[n] + bias[n] (+ residual[m, n])
    v = min(max(v, clamp_lo), clamp_hi)

A code output, decided in float64 from the float64 parameters (``scale64``/``bias64``: the
values ``scale``/``bias`` were rounded from, when the layer has them; else the float32
ones) and the requantization step ``Requant.step64``::

    v = float64(acc) * scale64[n] + bias64[n] (+ float64(residual[m, n]))
    v = min(max(v, clamp_lo), clamp_hi)
    q = round_half_even(v / step64) (NaN: qmin) clamped to [qmin, qmax], code = q - qmin

The kernels compute the float32 value and fall back to this float64 formula only where the
float32 value lies within a proven bound of a rounding boundary (csrc/ops/epilogue.cc), so
their codes equal the formula's everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _core
from .quant import grid_levels, int_range, inv_step

_ACTIVATIONS = {"none": (-np.inf, np.inf), "relu": (0.0, np.inf), "relu6": (0.0, 6.0)}


@dataclass
class Requant:
    """Requantize into ``bits``-bit codes of a uniform grid qmin..qmax with step ``step``.

    By default the full range of ``bits``: ``signed``: qmin = -2**(bits-1), qmax = 2**(bits-1) - 1;
    else 0 .. 2**bits - 1. ``qmin``/``qmax`` may narrow it to any integer range of at most
    2**bits levels (a 5-bit grid 0..31 in 8-bit codes, a narrow-range -7..7 in 4-bit codes).
    Code c stands for level qmin + c; the codebook (:meth:`codebook`) pads the codes no output
    takes, like :func:`lowbit.quant.grid_levels`.
    """
    bits: int
    step: float
    signed: bool = False
    qmin: int | None = None
    qmax: int | None = None

    def __post_init__(self):
        if self.bits not in (1, 2, 3, 4, 8):
            raise ValueError(f"bits: expected 1, 2, 3, 4 or 8, got {self.bits}")
        if self.signed and self.bits == 1 and self.qmin is None:
            raise NotImplementedError("signed 1-bit requantization ({-s, +s}) is not a uniform grid; "
                                      "use unsigned 1-bit ({0, s}) or 2+ bits")
        if not (np.isfinite(self.step) and self.step > 0):
            raise ValueError(f"step: expected a finite value > 0, got {self.step}")
        for name, full in zip(("qmin", "qmax"), int_range(self.bits, self.signed)):  # None: the full range
            v = full if getattr(self, name) is None else getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"{name}: expected an int, got {v!r}")
            setattr(self, name, int(v))
        if not (-128 <= self.qmin < self.qmax <= 255 and self.qmax - self.qmin < (1 << self.bits)):
            raise ValueError(f"qmin/qmax: expected -128 <= qmin < qmax <= 255 with at most {1 << self.bits} levels "
                             f"for {self.bits}-bit codes, got {self.qmin}..{self.qmax}")

    @property
    def inv_step(self) -> np.float32:
        return inv_step(self.step)

    @property
    def step64(self) -> float:
        """The step the codes are decided with (float64 holding float32(step), as inv_step uses)."""
        return float(np.float32(self.step))

    def codebook(self) -> np.ndarray:
        return np.asarray(grid_levels(range(self.qmin, self.qmax + 1), self.bits), dtype=np.int32)


class Epilogue:
    """Per-output-channel scale and bias, optional residual, clamp, then float32
    output or requantization into the next layer's codes."""

    def __init__(self, scale, bias=None, activation="none", requant: Requant | None = None, residual=None,
                 scale64=None, bias64=None):
        self.scale = np.ascontiguousarray(scale, dtype=np.float32).reshape(-1)
        n = self.scale.shape[0]
        self.bias = (np.zeros(n, np.float32) if bias is None
                     else np.ascontiguousarray(bias, dtype=np.float32).reshape(-1))
        if self.bias.shape[0] != n:
            raise ValueError(f"bias: expected {n} values (one per output channel), got {self.bias.shape[0]}")
        if not (np.all(np.isfinite(self.scale)) and np.all(np.isfinite(self.bias))):
            raise ValueError("scale/bias: expected finite values")
        if isinstance(activation, str):
            if activation not in _ACTIVATIONS:
                raise ValueError(f"activation: expected one of {sorted(_ACTIVATIONS)} or (lo, hi), got {activation!r}")
            lo, hi = _ACTIVATIONS[activation]
        else:
            lo, hi = activation
        if np.isnan(lo) or np.isnan(hi) or lo > hi:
            raise ValueError(f"activation: expected clamp bounds lo <= hi, got ({lo}, {hi})")
        self.clamp_lo, self.clamp_hi = np.float32(lo), np.float32(hi)
        self.requant = requant
        self.residual = None if residual is None else np.ascontiguousarray(residual, dtype=np.float32)
        self.scale64 = _exact_values(scale64, self.scale, "scale64")
        self.bias64 = _exact_values(bias64, self.bias, "bias64")

    def slice(self, n0: int, n1: int) -> "Epilogue":
        """The epilogue of output channels [n0, n1) (grouped convolution)."""
        return Epilogue(self.scale[n0:n1], self.bias[n0:n1], (self.clamp_lo, self.clamp_hi), self.requant,
                        None if self.residual is None else self.residual[:, n0:n1],
                        None if self.scale64 is None else self.scale64[n0:n1],
                        None if self.bias64 is None else self.bias64[n0:n1])

    def check(self, n: int, m: int) -> None:
        if self.scale.shape[0] != n:
            raise ValueError(f"epilogue: scale has {self.scale.shape[0]} values but the layer has {n} outputs")
        if self.residual is not None and self.residual.shape != (m, n):
            raise ValueError(f"epilogue: residual shape {self.residual.shape}, expected {(m, n)}")

    # Fields the native form (native()) is built from: setting one drops it.
    _NATIVE_FIELDS = frozenset(("scale", "bias", "clamp_lo", "clamp_hi", "requant", "scale64", "bias64"))

    def __setattr__(self, name, value):
        if name in self._NATIVE_FIELDS:
            self.__dict__.pop("_native", None)
        object.__setattr__(self, name, value)

    def __copy__(self):
        """A shallow copy that keeps the native form (the runtime copies an epilogue to set a residual)."""
        e = object.__new__(Epilogue)
        e.__dict__.update(self.__dict__)
        return e

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_native", None)  # native objects do not pickle; rebuilt on first use
        return state

    def native(self):
        """The checked native form (``_core.GemmEpilogue``) of everything but the
        residual, built once: the prepared GEMM call (ops.Bound.native) takes it
        and the residual, so a call converts and checks nothing again."""
        spec = self.__dict__.get("_native")
        if spec is None:
            kind, scale, bias, _residual, *rest = self.native_args()
            spec = self._native = _core.GemmEpilogue(kind, scale, bias, *rest)
        return spec

    def native_args(self) -> tuple:
        """The epilogue arguments of the one-shot bindings (_core.gemm, dwconv,
        conv_grouped), in their positional order
        (out_kind, scale, bias, residual, clamp_lo, clamp_hi, inv_step, qmin, qmax,
        step64, scale64, bias64); the last six only for a code output."""
        if self.requant is None:
            return ("float32", self.scale, self.bias, self.residual, float(self.clamp_lo), float(self.clamp_hi))
        return ("codes", self.scale, self.bias, self.residual, float(self.clamp_lo), float(self.clamp_hi),
                float(self.requant.inv_step), self.requant.qmin, self.requant.qmax, self.requant.step64,
                self.scale64, self.bias64)

    def kwargs(self) -> dict:
        """native_args() by name (the keywords of ``_core.epilogue``)."""
        return dict(zip(("out_kind", "scale", "bias", "residual", "clamp_lo", "clamp_hi", "inv_step", "qmin", "qmax",
                         "step64", "scale64", "bias64"), self.native_args()))


def _exact_values(values, rounded: np.ndarray, name: str):
    """None, or ``values`` as a finite float64 array whose float32 rounding is ``rounded``
    (the fast path's bound relies on it)."""
    if values is None:
        return None
    v = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    if v.shape != rounded.shape:
        raise ValueError(f"{name}: expected {rounded.shape[0]} values (one per output channel), got {v.shape[0]}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name}: expected finite values")
    with np.errstate(over="ignore"):
        if not np.array_equal(v.astype(np.float32), rounded):
            raise ValueError(f"{name}: expected the float64 values the float32 parameters were rounded from")
    return v
