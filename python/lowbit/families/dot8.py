"""Family dot8: exact uint8 x int8 byte dot products with int16 accumulators (no tables;
the family's idea and reach: docs/kernels.md). Wider products and signed 8-bit activations
are "i32" plans, which only the int32-accumulating kernels run (VNNI, the scalar twin).

Layouts and the accumulator bound: csrc/kernels/dot8/dot8.h.
"""
from __future__ import annotations

import numpy as np

from .. import _core
from ._common import DotFamily, Plan

INT16_MAX = 32767


class Dot8(DotFamily):
    name = "dot8"
    STEP = 4  # one k step = one quad of byte levels
    W_DTYPE, A_DTYPE = np.int8, np.uint8
    NATIVE_PACKER = _core.dot8_pack_activations

    # Signed 8-bit activations (levels in [-128, 127], e.g. a network's input
    # image): stored as level + 128 (uint8), and the driver subtracts
    # 128 * sum_k w[n][k] per output channel (Bound.col_correction): exact,
    # since sum (a + 128) w - 128 sum w = sum a w in wrapping int32. Such plans
    # are "i32" plans (run by the VNNI kernel; elsewhere dotgemm, as before).
    SIGNED_A8_OFFSET = 128

    @staticmethod
    def plan(bw, ba, cb_w, cb_a):
        a_lo, a_hi = int(cb_a.min()), int(cb_a.max())
        w_lo, w_hi = int(cb_w.min()), int(cb_w.max())
        offset = 0
        if ba == 8 and a_lo < 0 and a_lo >= -128 and a_hi <= 127:
            offset = Dot8.SIGNED_A8_OFFSET
            a_lo, a_hi = a_lo + offset, a_hi + offset
        if a_lo < 0 or a_hi > 255:
            return None, (f"dot8 needs activation levels in [0, 255] (or 8-bit levels in [-128, 127]), "
                          f"got [{a_lo}, {a_hi}]")
        if w_lo < -128 or w_hi > 127:
            return None, f"dot8 needs weight levels in [-128, 127], got [{w_lo}, {w_hi}]"
        pair = 2 * a_hi * max(-w_lo, w_hi)  # largest |a0*w0 + a1*w1| of one vpmaddubsw lane
        a_levels = (cb_a.astype(np.int64) + offset).astype(np.uint8).tobytes()
        if pair > INT16_MAX or offset:
            # only the int32-accumulating kernels (table kind "i32": VNNI vpdpbusd, scalar twin)
            params = (bw, ba, cb_w.astype(np.int8).tobytes(), a_levels, 1, offset)
            why = (f"signed activations as level + {offset}, minus {offset} x the channel's weight sum" if offset
                   else f"pair sums reach {pair} > {INT16_MAX}, too wide for the int16 kernels")
            return Plan("dot8", "i32", params, f"exact uint8 x int8 byte dot products into int32 (vpdpbusd; {why})"), \
                None
        flush16 = INT16_MAX // max(pair, 1)  # steps an int16 lane takes before widening
        params = (bw, ba, cb_w.astype(np.int8).tobytes(), a_levels, flush16, 0)
        return Plan("dot8", "i8", params,
                    f"exact uint8 x int8 byte dot products, int16 accumulators widened every {flush16} k quads"), None

    @staticmethod
    def indirect_step(plan):
        return Dot8.STEP

    @staticmethod
    def tables(cb_w, cb_a, plan):
        # No tables; flush16 = k quads an int16 lane may take before widening.
        return np.zeros(1, np.int8), 1, plan.params[4], 0

    @staticmethod
    def channel_correction(codes, plan):
        """None, or the int32 (N,) term the driver subtracts per output channel:
        offset * sum_k cbW[w[n, k]] (signed 8-bit activations, wrapping like int32)."""
        offset = plan.params[5]
        if not offset:
            return None
        sums = np.frombuffer(plan.params[2], np.int8).astype(np.int64)[codes].sum(axis=1) * offset
        return ((sums + 2**31) % 2**32 - 2**31).astype(np.int32)
