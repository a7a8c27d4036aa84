"""Family grouplut6: grouplut with 64-entry tables (AVX-512 VBMI vpermb).

Layouts: csrc/kernels/grouplut6/grouplut6.h.
"""
from __future__ import annotations

import numpy as np

from .. import _core
from ._common import Plan, pad_codes
from .grouplut import Grouplut


class Grouplut6:
    name = "grouplut6"
    LANES = 64
    INDEX_BITS = 6

    @staticmethod
    def _table(cb_w, cb_a, bw, ba, gw):
        tab = np.zeros((256, 64), np.int64)
        t16 = Grouplut._table(cb_w, cb_a, bw, ba, gw) if bw * gw <= 4 else None
        if t16 is not None:
            tab[:, :16] = t16
            return tab
        acodes = np.arange(1 << (ba * gw))
        widx = np.arange(1 << (bw * gw))
        for j in range(gw):
            av = cb_a[(acodes >> (ba * j)) & ((1 << ba) - 1)].astype(np.int64)
            wv = cb_w[(widx >> (bw * j)) & ((1 << bw) - 1)].astype(np.int64)
            tab[: len(acodes), : len(widx)] += np.multiply.outer(av, wv)
        return tab

    @staticmethod
    def plan(bw, ba, cb_w, cb_a):
        gw = Grouplut6.INDEX_BITS // bw
        while gw >= 1:
            if ba * gw <= 8:
                tmax = int(np.abs(Grouplut6._table(cb_w, cb_a, bw, ba, gw)).max())
                if tmax <= 127:
                    return Plan("grouplut6", "i8", (bw, ba, gw),
                                f"{gw} MAC(s) per lookup: table of {1 << (ba * gw)} x {1 << (bw * gw)} "
                                f"product sums (64-entry vpermb tables), max |entry| {tmax} <= 127"), None
            gw -= 1
        return None, "grouplut6 needs product sums that fit int8 (max |cbA x cbW| <= 127)"

    @staticmethod
    def k_steps(k, plan):
        return -(-k // plan.params[2])

    @staticmethod
    def weight_layout(codes, plan, kernel):
        bw, _, gw = plan.params
        n, k = codes.shape
        g = Grouplut6.k_steps(k, plan)
        lanes = Grouplut6.LANES
        c = pad_codes(codes, -(-n // lanes) * lanes, g * gw).reshape(-1, g, gw).astype(np.uint8)
        idx = np.zeros(c.shape[:2], np.uint8)
        for j in range(gw):
            idx |= c[:, :, j] << (bw * j)
        return np.ascontiguousarray(idx.reshape(-1, lanes, g).transpose(0, 2, 1)).reshape(-1)

    @staticmethod
    def pack_activations(codes, plan, tier_rank):
        _, ba, gw = plan.params
        g = -(-codes.shape[1] // gw)
        return _core.pack_groups(codes, ba, gw, g, tier_rank)

    @staticmethod
    def tables(cb_w, cb_a, plan):
        bw, ba, gw = plan.params
        tab = Grouplut6._table(cb_w, cb_a, bw, ba, gw)
        tmax = max(int(np.abs(tab).max()), 1)
        flush8 = 127 // tmax
        return tab.reshape(-1).astype(np.int8), flush8, 32767 // (flush8 * tmax)

    @staticmethod
    def padded_k(k, plan):
        return Grouplut6.k_steps(k, plan) * plan.params[2]
