"""Per-family plans: eligibility, kernel layouts, tables and bounds.

Each family documents its byte layouts in its C++ header
(csrc/kernels/<family>/<family>.h); the builders here produce exactly those.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _core
from . import codebook as cbmod


@dataclass(frozen=True)
class Plan:
    family: str
    table_kind: str       # "i8" or "split"
    params: tuple         # family-specific, hashable (layout/table cache key)
    why: str              # one line for explain()


def _pad_rows(codes: np.ndarray, rows: int, cols: int) -> np.ndarray:
    out = np.zeros((rows, cols), np.uint8)
    out[: codes.shape[0], : codes.shape[1]] = codes
    return out


# ---- lutgemm: DeepGEMM product LUT, W2A2 --------------------------------------------------
class Lutgemm:
    name = "lutgemm"
    STEP_CODES = 128  # one 32-byte step of packed 2-bit codes

    @staticmethod
    def plan(bw, ba, cb_w, cb_a):
        if (bw, ba) != (2, 2):
            return None, f"lutgemm implements W2A2 only (got W{bw}A{ba})"
        pmax = int(np.abs(cbmod.products(cb_a, cb_w)).max())
        if 4 * pmax <= 127:
            return Plan("lutgemm", "i8", (), f"int8 product table (4 x max|product| = {4 * pmax} <= 127)"), None
        return Plan("lutgemm", "split", (), f"products up to {pmax} need int16: lo/hi byte tables"), None

    @staticmethod
    def k_steps(k, plan):
        return -(-k // Lutgemm.STEP_CODES)

    @staticmethod
    def weight_layout(codes, plan, kernel):
        n, k = codes.shape
        steps = Lutgemm.k_steps(k, plan)
        c = _pad_rows(codes, -(-n // kernel["nr"]) * kernel["nr"], steps * Lutgemm.STEP_CODES)
        c = c.reshape(c.shape[0], -1, 4)
        # nibble-swapped: w1 at [1:0], w0 at [3:2], w3 at [5:4], w2 at [7:6]
        packed = c[:, :, 1] | (c[:, :, 0] << 2) | (c[:, :, 3] << 4) | (c[:, :, 2] << 6)
        return np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1)

    @staticmethod
    def pack_activations(codes, plan, tier_rank):
        steps = Lutgemm.k_steps(codes.shape[1], plan)
        return _core.pack_groups(codes, 2, 4, steps * 32, tier_rank)

    @staticmethod
    def tables(cb_w, cb_a, plan):
        p = cbmod.products(cb_a, cb_w)              # p[a, w]
        t = p.reshape(16)                           # index a<<2 | w
        tt = p.T.reshape(16)                        # index w<<2 | a
        if plan.table_kind == "i8":
            pmax = max(int(np.abs(p).max()), 1)
            return np.concatenate([t, tt]).astype(np.int8), 1, 32767 // (8 * pmax)
        lo_t, hi_t = t & 0xFF, t >> 8
        lo_tt, hi_tt = tt & 0xFF, tt >> 8
        tab = np.concatenate([lo_t, hi_t, lo_tt, hi_tt]).astype(np.int64)
        return tab.astype(np.uint8).view(np.int8), 1, 16

    @staticmethod
    def padded_k(k, plan):
        return Lutgemm.k_steps(k, plan) * Lutgemm.STEP_CODES


# ---- grouplut: activation-selected product-sum tables, lanes along N ---------------------
class Grouplut:
    name = "grouplut"
    LANES = 32

    @staticmethod
    def _table(cb_w, cb_a, bw, ba, gw):
        tab = np.zeros((256, 16), np.int64)
        acodes = np.arange(1 << (ba * gw))
        widx = np.arange(1 << (bw * gw))
        for j in range(gw):
            av = cb_a[(acodes >> (ba * j)) & ((1 << ba) - 1)].astype(np.int64)
            wv = cb_w[(widx >> (bw * j)) & ((1 << bw) - 1)].astype(np.int64)
            tab[: len(acodes), : len(widx)] += np.multiply.outer(av, wv)
        return tab

    @staticmethod
    def plan(bw, ba, cb_w, cb_a):
        gw = 4 // bw
        while gw >= 1:
            if ba * gw <= 8:
                tmax = int(np.abs(Grouplut._table(cb_w, cb_a, bw, ba, gw)).max())
                if tmax <= 127:
                    return Plan("grouplut", "i8", (bw, ba, gw),
                                f"{gw} MAC(s) per lookup: table of {1 << (ba * gw)} x {1 << (bw * gw)} "
                                f"product sums, max |entry| {tmax} <= 127"), None
            gw //= 2
        return None, "grouplut needs product sums that fit int8 (max |cbA x cbW| <= 127)"

    @staticmethod
    def k_steps(k, plan):
        return -(-k // plan.params[2])

    @staticmethod
    def weight_layout(codes, plan, kernel):
        bw, _, gw = plan.params
        n, k = codes.shape
        g = Grouplut.k_steps(k, plan)
        lanes = Grouplut.LANES
        c = _pad_rows(codes, -(-n // lanes) * lanes, g * gw).reshape(-1, g, gw).astype(np.uint8)
        idx = np.zeros(c.shape[:2], np.uint8)
        for j in range(gw):
            idx |= c[:, :, j] << (bw * j)
        # blocks of 32 channels, group-major inside a block: [block][g][lane]
        return np.ascontiguousarray(idx.reshape(-1, lanes, g).transpose(0, 2, 1)).reshape(-1)

    @staticmethod
    def pack_activations(codes, plan, tier_rank):
        _, ba, gw = plan.params
        g = -(-codes.shape[1] // gw)
        return _core.pack_groups(codes, ba, gw, g, tier_rank)

    @staticmethod
    def tables(cb_w, cb_a, plan):
        bw, ba, gw = plan.params
        tab = Grouplut._table(cb_w, cb_a, bw, ba, gw)
        tmax = max(int(np.abs(tab).max()), 1)
        flush8 = 127 // tmax
        return tab.reshape(-1).astype(np.int8), flush8, 32767 // (flush8 * tmax)

    @staticmethod
    def padded_k(k, plan):
        return Grouplut.k_steps(k, plan) * plan.params[2]


FAMILIES = {"lutgemm": Lutgemm, "grouplut": Grouplut}
# Automatic choice, fastest first (measured: bench/results, docs/kernels.md).
PREFERENCE = ("grouplut", "lutgemm")
