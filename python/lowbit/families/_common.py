"""Shared pieces of the per-family plans."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Plan:
    family: str
    table_kind: str       # "i8", "split", or "i32" (only int32-accumulating kernels, e.g. dot8 VNNI)
    params: tuple         # family-specific, hashable (layout/table cache key)
    why: str              # one line for explain()
    # "" or the family measured faster for this GEMM ("dot8", "dotgemm"):
    # dispatch keeps the plan (1-4-bit layers stay on lookup tables when
    # exact) and explain() suggests lowbit.use(strategy=<that family>)
    slow: str = ""


class Family:
    """Defaults shared by the family classes."""

    @staticmethod
    def code_shift(plan):
        """Left shift the packed activation bytes carry (UKernelArgs::a_code_shift)."""
        return 0

    @staticmethod
    def indirect_step(plan):
        """k per step of a family whose kernels take an indirection buffer
        (convolution without im2col: every segment is Cin / step steps of
        one pixel), or None."""
        return None


def tile_levels(levels: np.ndarray, nr: int, step: int) -> np.ndarray:
    """The dot families' kernel-layout weights: (N, K) levels -> tiles of nr
    channels, [tile][k step][channel][step levels], zero padded in N and K,
    as bytes."""
    n, k = levels.shape
    s = -(-k // step)
    lv = np.zeros((-(-n // nr) * nr, step * s), levels.dtype)
    lv[:n, :k] = levels
    lv = lv.reshape(-1, nr, s, step).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(lv).view(np.uint8).reshape(-1)


def pack_levels(native, codes, bits, levels, cols, tier_rank, pad_rows=0):
    """The dot families' native level packers (``_core.dotgemm_pack_activations``,
    ``_core.dot8_pack_activations``): (M, K) codes -> (M + pad_rows, cols)
    levels (the pad rows hold level 0), with out-of-range codes reported
    against the caller's argument name."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    try:
        return native(codes, bits, np.ascontiguousarray(levels), cols, int(tier_rank), int(pad_rows))
    except ValueError as exc:
        if "codes:" in str(exc):
            raise ValueError(f"a_codes: expected every code in [0, {1 << bits}) for bits={bits}, "
                             f"got max {int(codes.max())}") from None
        raise


def pad_codes(codes: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Zero-pad an (R, K) code matrix to (rows, cols)."""
    out = np.zeros((rows, cols), np.uint8)
    out[: codes.shape[0], : codes.shape[1]] = codes
    return out
