"""Families grouplut and grouplut6: activation-selected product-sum tables,
lanes along N.

Layouts: csrc/kernels/grouplut/grouplut.h and csrc/kernels/grouplut6/grouplut6.h.
The two differ only in the table width (16 entries for vpshufb, 64 for
vpermb), hence in how many weight codes one index holds, and in the number
of channels per weight block.
"""
from __future__ import annotations

import numpy as np

from ._common import Family, Packing, Plan
from .dot8 import Dot8


class Grouplut(Family):
    name = "grouplut"
    LANES = 32          # output channels per weight block
    INDEX_BITS = 4      # a table has 2**INDEX_BITS entries
    TABLE_COPIES = 2    # each table stored twice in a row: one 32-byte load serves both 128-bit lanes
    # codes per group to try, most MACs per lookup first; powers of two keep
    # the activation packer on its vector path
    GW_CHOICES = (4, 2, 1)

    @classmethod
    def _table(cls, cb_w, cb_a, bw, ba, gw):
        """(256, 2**INDEX_BITS) exact sums of gw products for every activation group code."""
        tab = np.zeros((256, 1 << cls.INDEX_BITS), np.int64)
        acodes = np.arange(1 << (ba * gw))
        widx = np.arange(1 << (bw * gw))
        for j in range(gw):
            av = cb_a[(acodes >> (ba * j)) & ((1 << ba) - 1)].astype(np.int64)
            wv = cb_w[(widx >> (bw * j)) & ((1 << bw) - 1)].astype(np.int64)
            tab[: len(acodes), : len(widx)] += np.multiply.outer(av, wv)
        return tab

    @classmethod
    def plan(cls, bw, ba, cb_w, cb_a):
        for gw in cls.GW_CHOICES:
            if bw * gw <= cls.INDEX_BITS and ba * gw <= 8:
                tmax = int(np.abs(cls._table(cb_w, cb_a, bw, ba, gw)).max())
                if tmax <= 127:
                    # one MAC per lookup, or entries > 31 (> 63), measured slower than dot8 (dotgemm):
                    # docs/kernels.md, the dispatch rule; explain() says so, dispatch keeps the tables
                    slow = ""
                    if (gw == 1 or tmax > 31) and Dot8.plan(bw, ba, cb_w, cb_a)[0] is not None:
                        slow = "dot8"
                    elif gw == 1 or tmax > 63:
                        slow = "dotgemm"
                    return Plan(cls.name, "i8", (bw, ba, gw),
                                f"{gw} MAC(s) per lookup: table of {1 << (ba * gw)} x {1 << (bw * gw)} "
                                f"product sums ({1 << cls.INDEX_BITS}-entry tables), max |entry| {tmax} <= 127"
                                + (f" (measured slower than {slow})" if slow else ""), slow=slow), None
        return None, f"{cls.name} needs product sums that fit int8 (max |cbA x cbW| <= 127)"

    @staticmethod
    def step(plan):
        return plan.params[2]  # one packed byte = gw codes

    @classmethod
    def weight_layout(cls, codes, plan, kernel):
        bw, _, gw = plan.params
        g = cls.k_steps(codes.shape[1], plan)
        lanes = cls.LANES
        c = cls.pad_to_tiles(codes, plan, lanes).reshape(-1, g, gw)
        idx = np.zeros(c.shape[:2], np.uint8)
        for j in range(gw):
            idx |= c[:, :, j] << (bw * j)
        # blocks of LANES channels, group-major inside a block: [block][g][lane]
        return np.ascontiguousarray(idx.reshape(-1, lanes, g).transpose(0, 2, 1)).reshape(-1)

    @classmethod
    def code_shift(cls, plan):
        """Packed activation bytes hold code << 2 when codes are < 64 and the
        tables are 32 bytes apart: the kernel's table address is then
        tables + byte * 8, one addressing mode (csrc/kernels/grouplut/grouplut.h)."""
        _, ba, gw = plan.params
        return 2 if cls.INDEX_BITS == 4 and ba * gw <= 6 else 0

    indirect_step = step  # one packed byte = gw codes

    @classmethod
    def packing(cls, plan, k):
        """One byte per group of gw codes: G = k_steps bytes a row."""
        _, ba, gw = plan.params
        return Packing("groups", ba, cls.k_steps(k, plan), group=gw, code_shift=cls.code_shift(plan))

    @classmethod
    def tables(cls, cb_w, cb_a, plan):
        """(tables, flush8, flush16, step_bias). The entries are centred: the
        constant step_bias is added to all of them so that max|entry| (and thus
        how often the int8 lanes must be widened) is smallest; each K step then
        adds step_bias, which the driver's correction removes."""
        bw, ba, gw = plan.params
        tab = cls._table(cb_w, cb_a, bw, ba, gw)
        n_act, n_idx = 1 << (ba * gw), 1 << (bw * gw)
        live = tab[:n_act, :n_idx]  # entries a kernel can index; the rest stay 0 (never read)
        lo, hi = int(live.min()), int(live.max())
        step_bias = -((lo + hi) // 2)
        tab[:n_act, :n_idx] += step_bias
        tmax = max(hi + step_bias, -(lo + step_bias), 1)
        flush8 = 127 // tmax  # bounds: see the family header
        tab = np.concatenate([tab] * cls.TABLE_COPIES, axis=1)
        return tab.reshape(-1).astype(np.int8), flush8, 32767 // (flush8 * tmax), step_bias


class Grouplut6(Grouplut):
    """64-entry tables looked up with vpermb (AVX-512 VBMI): 6 index bits."""
    name = "grouplut6"
    LANES = 64
    INDEX_BITS = 6
    TABLE_COPIES = 1
    GW_CHOICES = (6, 4, 3, 2, 1)
