"""Shared pieces of the per-family plans."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .. import _core


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


class Packing(NamedTuple):
    """How a plan's (M, K) activation codes are packed: the one description that the
    family's Python packer and the executor's native pack step (``_core.ExecutorPlan.pack``)
    both follow. ``kind``: the native packer ("groups": ``group`` codes of ``bits`` bits a
    byte, shifted left by ``code_shift``; "dotgemm"/"dot8": decoded ``levels``;
    "bitplanes"); a packed row is ``cols`` elements of ``elem`` bytes; ``pad_rows``:
    whether the packer can append all-padding rows (a convolution's padding pixel)."""
    kind: str
    bits: int
    cols: int
    group: int = 0
    code_shift: int = 0
    elem: int = 1
    levels: object = None
    pad_rows: bool = True


class Family:
    """Defaults shared by the family classes."""

    @classmethod
    def step(cls, plan):
        """Codes per k step: the family's STEP (grouplut: the plan's group width)."""
        return cls.STEP

    @classmethod
    def k_steps(cls, k, plan):
        return -(-k // cls.step(plan))

    @classmethod
    def padded_k(cls, k, plan):
        """The depth the kernels sum over: k rounded up to whole steps of padding code 0,
        whose products the driver's correction removes (the dot families pad with level 0
        and return k: nothing to correct)."""
        return cls.k_steps(k, plan) * cls.step(plan)

    @classmethod
    def pack_activations(cls, codes, plan, tier_rank, pad_rows=0, pad_code=0):
        """(M + pad_rows, cols) packed bytes of a "groups" packing; the pad rows pack K
        copies of pad_code."""
        p = cls.packing(plan, codes.shape[1])
        return _core.pack_groups(codes, p.bits, p.group, p.cols, tier_rank, p.code_shift, pad_rows, pad_code)

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


def pack_levels(native, codes, p: Packing, tier_rank, pad_rows=0):
    """The dot families' native level packers (``_core.dotgemm_pack_activations``,
    ``_core.dot8_pack_activations``) of Packing ``p``: (M, K) codes -> (M + pad_rows,
    cols) levels (the pad rows hold level 0), with out-of-range codes reported
    against the caller's argument name."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    bits = p.bits
    try:
        return native(codes, bits, np.ascontiguousarray(p.levels), p.cols, int(tier_rank), int(pad_rows))
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
