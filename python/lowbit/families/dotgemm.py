"""Family dotgemm: the exact general path (no tables).

Codes are decoded to int16 levels (weights here, once per layout; activations
per call by the native packer) and multiplied with int16 x int16 -> int32 pair
dot products (vpmaddwd on AVX2, vpdpwssd on AVX-512 VNNI). It computes every
bit width (1-4 and 8) with every integer codebook in [-128, 255] exactly, so
it is dispatch's last resort: 8-bit layers, and 1-4-bit pairs whose products
are too large for the table families.

Layouts and the accumulator bound: csrc/kernels/dotgemm/dotgemm.h.
"""
from __future__ import annotations

import numpy as np

from .. import _core
from ._common import Family, Packing, Plan, pack_levels, tile_levels


class Dotgemm(Family):
    name = "dotgemm"
    STEP = 2  # one k step = one pair of int16 levels

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

    @staticmethod
    def weight_layout(codes, plan, kernel):
        """Tiles of NR channels: [tile][k pair][channel][2] int16 levels, zero padded."""
        return tile_levels(np.frombuffer(plan.params[2], "<i2")[codes], int(kernel["nr"]), Dotgemm.STEP)

    @staticmethod
    def packing(plan, k):
        """Int16 levels, k_steps pairs a row."""
        return Packing("dotgemm", plan.params[1], Dotgemm.STEP * Dotgemm.k_steps(k, plan), elem=2,
                       levels=np.frombuffer(plan.params[3], "<i2"))

    @staticmethod
    def pack_activations(codes, plan, tier_rank):
        """(M, K) codes -> (M, 4 * k_steps) bytes of int16 levels (native, multi-threaded)."""
        p = Dotgemm.packing(plan, np.shape(codes)[1])
        return pack_levels(_core.dotgemm_pack_activations, codes, p, tier_rank).view(np.uint8)

    @staticmethod
    def tables(cb_w, cb_a, plan):
        # No tables; flush8/flush16 are unused (no narrow accumulators).
        return np.zeros(1, np.int8), 1, 1, 0

    @staticmethod
    def padded_k(k, plan):
        return k  # padding holds level 0 (not the level of code 0): nothing to correct
