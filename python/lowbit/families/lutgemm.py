"""Family lutgemm: the paper-faithful DeepGEMM product LUT (W2A2).

Layouts: csrc/kernels/lutgemm/lutgemm.h.
"""
from __future__ import annotations

import numpy as np

from .. import codebook as cbmod
from ._common import Family, Packing, Plan


class Lutgemm(Family):
    name = "lutgemm"
    STEP = 64  # one 16-byte step of packed 2-bit codes

    @staticmethod
    def plan(bw, ba, cb_w, cb_a):
        if (bw, ba) != (2, 2):
            return None, f"lutgemm implements W2A2 only (got W{bw}A{ba})"
        pmax = int(np.abs(cbmod.products(cb_a, cb_w)).max())
        if 4 * pmax <= 127:
            return Plan("lutgemm", "i8", (), f"int8 product table (4 x max|product| = {4 * pmax} <= 127)"), None
        return Plan("lutgemm", "split", (), f"products up to {pmax} need int16: lo/hi byte tables"), None

    @staticmethod
    def weight_layout(codes, plan, kernel):
        steps = Lutgemm.k_steps(codes.shape[1], plan)
        c = Lutgemm.pad_to_tiles(codes, plan, kernel["nr"])
        c = c.reshape(c.shape[0], -1, 4)
        # nibble-swapped: w1 at [1:0], w0 at [3:2], w3 at [5:4], w2 at [7:6]
        packed = (c[:, :, 1] | (c[:, :, 0] << 2) | (c[:, :, 3] << 4) | (c[:, :, 2] << 6)).astype(np.uint8)
        if kernel["layout"] == 1:
            packed = Lutgemm._masked_planes(packed, steps)
        return np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1)

    @staticmethod
    def _masked_planes(packed, steps):
        """Layout 1: per pair of 16-byte steps (or the odd last step), the planes
        W & 0x03, W & 0x0C, (W >> 4) & 0x03, (W >> 4) & 0x0C."""
        hi = packed >> 4
        planes = [packed & 0x03, packed & 0x0C, hi & 0x03, hi & 0x0C]
        # a slice past the row's end stops there: the odd last step is 16 bytes wide
        return np.concatenate([p[:, 16 * s:16 * s + 32] for s in range(0, steps, 2) for p in planes], axis=1)

    @staticmethod
    def packing(plan, k):
        return Packing("groups", 2, Lutgemm.k_steps(k, plan) * 16, group=4)

    @staticmethod
    def tables(cb_w, cb_a, plan):
        p = cbmod.products(cb_a, cb_w)              # p[a, w]
        t = p.reshape(16)                           # index a<<2 | w
        tt = p.T.reshape(16)                        # index w<<2 | a
        if plan.table_kind == "i8":
            pmax = max(int(np.abs(p).max()), 1)
            flush8 = 127 // (4 * pmax)          # bounds: csrc/kernels/lutgemm/lutgemm.h
            return np.concatenate([t, tt]).astype(np.int8), flush8, 32767 // (8 * pmax * flush8), 0
        lo_t, hi_t = t & 0xFF, t >> 8
        lo_tt, hi_tt = tt & 0xFF, tt >> 8
        tab = np.concatenate([lo_t, hi_t, lo_tt, hi_tt]).astype(np.int64)
        return tab.astype(np.uint8).view(np.int8), 1, 16, 0
