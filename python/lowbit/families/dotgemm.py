"""Family dotgemm: the exact general path (no tables; docs/kernels.md): int16 levels,
int16 x int16 -> int32 pair dot products, every bit width with every integer codebook in
[-128, 255], hence dispatch's last resort.

Layouts and the accumulator bound: csrc/kernels/dotgemm/dotgemm.h.
"""
from __future__ import annotations

from .. import _core
from ._common import DotFamily, Plan


class Dotgemm(DotFamily):
    name = "dotgemm"
    STEP = 2  # one k step = one pair of int16 levels
    W_DTYPE = A_DTYPE = "<i2"
    NATIVE_PACKER = _core.dotgemm_pack_activations

    @staticmethod
    def plan(bw, ba, cb_w, cb_a):
        lo = min(int(cb_w.min()), int(cb_a.min()))
        hi = max(int(cb_w.max()), int(cb_a.max()))
        if lo < -128 or hi > 255:
            return None, f"dotgemm needs levels in [-128, 255], got [{lo}, {hi}]"
        # Both codebooks travel in params: the weight layout and the packed
        # activations hold decoded levels (and are cached by plan).
        params = (bw, ba, cb_w.astype("<i2").tobytes(), cb_a.astype("<i2").tobytes())
        return Plan("dotgemm", "i8", params,
                    "exact int16 x int16 -> int32 dot products (no tables; any codebook in [-128, 255])"), None
