"""Family bitserial: AND + popcount over bit planes, W1 x A1/A2.

Layouts and the affine decomposition: csrc/kernels/bitserial/bitserial.h.
"""
from __future__ import annotations

import numpy as np

from .. import _core
from ._common import Family, Packing, Plan


class Bitserial(Family):
    name = "bitserial"
    STEP = 256

    @staticmethod
    def plan(bw, ba, cb_w, cb_a):
        if bw != 1 or ba not in (1, 2):
            return None, f"bitserial implements W1 x A1/A2 (got W{bw}A{ba})"
        if ba == 2 and int(cb_a[3]) != int(cb_a[1]) + int(cb_a[2]) - int(cb_a[0]):
            return None, "bitserial needs a 2-bit activation codebook affine in its code bits (a uniform grid)"
        coef = [int(cb_w[0]), int(cb_w[1]) - int(cb_w[0]), int(cb_a[0]), int(cb_a[1]) - int(cb_a[0]),
                int(cb_a[2]) - int(cb_a[0]) if ba == 2 else 0]
        return Plan("bitserial", "i8", (bw, ba, tuple(coef)),
                    f"{ba} AND+popcount plane(s) of 256 codes per step, affine codebooks"), None

    @staticmethod
    def weight_layout(codes, plan, kernel):
        c = Bitserial.pad_to_tiles(codes, plan, kernel["nr"])
        bits = np.packbits(c, axis=1, bitorder="little")                     # (rows, 32*steps)
        trailer = np.zeros((c.shape[0], 32), np.uint8)
        trailer[:, :4] = c.sum(axis=1, dtype=np.uint32)[:, None].view(np.uint8)  # popc(W[n]), little-endian
        return np.ascontiguousarray(np.concatenate([bits, trailer], axis=1)).reshape(-1)

    @staticmethod
    def packing(plan, k):
        """Two bit planes of k_steps * 32 bytes a row (the second unused at A1)."""
        return Packing("bitplanes", plan.params[1], 2 * Bitserial.k_steps(k, plan) * 32, pad_rows=False)

    @staticmethod
    def pack_activations(codes, plan, tier_rank):
        ba = plan.params[1]
        plane = Bitserial.packing(plan, codes.shape[1]).cols // 2
        out = np.zeros((codes.shape[0], 2 * plane), np.uint8)
        for b in range(ba):
            bitplane = codes if ba == 1 else np.ascontiguousarray((codes >> b) & 1)
            out[:, b * plane:(b + 1) * plane] = _core.pack_groups(bitplane, 1, 8, plane, tier_rank)
        return out

    @staticmethod
    def tables(cb_w, cb_a, plan):
        _, ba, coef = plan.params
        vals = np.array(list(coef) + [0, ba, 0], dtype=np.int32)
        return vals.view(np.int8), 1, 1, 0
