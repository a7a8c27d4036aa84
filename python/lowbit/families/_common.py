"""Shared pieces of the per-family plans."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Plan:
    family: str
    table_kind: str       # "i8" or "split"
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


def pad_codes(codes: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Zero-pad an (R, K) code matrix to (rows, cols)."""
    out = np.zeros((rows, cols), np.uint8)
    out[: codes.shape[0], : codes.shape[1]] = codes
    return out
