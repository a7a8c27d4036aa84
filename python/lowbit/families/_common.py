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

    @classmethod
    def pad_to_tiles(cls, values, plan, nr):
        """(N, K) codes or levels, zero-padded (same dtype) to whole tiles of nr rows and whole k steps."""
        n, k = values.shape
        out = np.zeros((-(-n // nr) * nr, cls.k_steps(k, plan) * cls.step(plan)), values.dtype)
        out[:n, :k] = values
        return out


class DotFamily(Family):
    """The dot families (dot8, dotgemm): no tables. Weight and activation codes are
    decoded to levels (``plan.params[2]``/``[3]``: the codebooks as bytes of W_DTYPE/A_DTYPE)
    and summed in dot products of STEP levels; padding holds level 0. Subclasses set
    W_DTYPE, A_DTYPE and NATIVE_PACKER (their ``_core.<family>_pack_activations``)."""

    @classmethod
    def weight_layout(cls, codes, plan, kernel):
        """Tiles of NR channels: [tile][k step][channel][STEP] weight levels, zero padded in N and K,
        as bytes."""
        nr = int(kernel["nr"])
        lv = cls.pad_to_tiles(np.frombuffer(plan.params[2], cls.W_DTYPE)[codes], plan, nr)
        lv = lv.reshape(-1, nr, lv.shape[1] // cls.STEP, cls.STEP).transpose(0, 2, 1, 3)
        return np.ascontiguousarray(lv).view(np.uint8).reshape(-1)

    @classmethod
    def packing(cls, plan, k):
        """Activation levels, k_steps steps of STEP levels a row."""
        levels = np.frombuffer(plan.params[3], cls.A_DTYPE)
        # positional (group 0, code_shift 0, elem = bytes a level): a NamedTuple's keywords cost on every call
        return Packing(cls.name, plan.params[1], cls.STEP * cls.k_steps(k, plan), 0, 0, levels.itemsize, levels)

    @classmethod
    def pack_activations(cls, codes, plan, tier_rank, pad_rows=0, pad_code=0):
        """(M + pad_rows, cols * elem) bytes of activation levels (native, multi-threaded); the
        pad rows (a convolution's all-padding pixel) hold the level of pad_code for k < K, as if
        K copies of pad_code had been packed. Out-of-range codes are reported against a_codes."""
        k = np.shape(codes)[1]
        p = cls.packing(plan, k)
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        try:
            out = cls.NATIVE_PACKER(codes, p.bits, np.ascontiguousarray(p.levels), p.cols, int(tier_rank),
                                    int(pad_rows))
        except ValueError as exc:
            if "codes:" in str(exc):
                raise ValueError(f"a_codes: expected every code in [0, {1 << p.bits}) for bits={p.bits}, "
                                 f"got max {int(codes.max())}") from None
            raise
        if pad_rows:
            out[-pad_rows:, :k] = p.levels[pad_code]
        return out if p.elem == 1 else out.view(np.uint8)  # levels wider than a byte as their bytes

    @staticmethod
    def padded_k(k, plan):
        return k  # padding holds level 0 (not the level of code 0): nothing to correct

    @staticmethod
    def tables(cb_w, cb_a, plan):
        # No tables; flush8/flush16 are unused (no narrow accumulators).
        return np.zeros(1, np.int8), 1, 1, 0
