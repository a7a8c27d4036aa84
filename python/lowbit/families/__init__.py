"""Kernel families as seen from Python: one module per family.

Each family class answers: can it compute (w_bits, a_bits, codebooks) exactly
(``plan``), and how to build its weight layout, packed activations and
tables. Adding a family = a module here + an entry in FAMILIES + its C++
folder and registry lines.
"""
from ._common import Plan
from .bitserial import Bitserial
from .dot8 import Dot8
from .dotgemm import Dotgemm
from .grouplut import Grouplut
from .grouplut import Grouplut6
from .lutgemm import Lutgemm

FAMILIES = {"lutgemm": Lutgemm, "grouplut": Grouplut, "grouplut6": Grouplut6, "bitserial": Bitserial,
            "dot8": Dot8, "dotgemm": Dotgemm}

# Automatic choice, fastest first as measured (bench/results, docs/kernels.md):
# the first (family, table kind) here that can compute the GEMM exactly wins,
# with its best kernel at or below the tier cap; a family that only has its
# scalar twin at the cap yields to one with SIMD kernels. None matches any
# table kind. grouplut6 (AVX-512 VBMI) comes after grouplut: on the one
# AVX-512 machine measured (Xeon, bench/results/device-*), grouplut's AVX2
# kernel was faster end to end. dotgemm computes everything exactly; lutgemm's
# int16 (split) tables are slower than dotgemm's int16 multiply-adds.
PREFERENCE = (("grouplut", "i8"), ("grouplut6", "i8"), ("lutgemm", "i8"), ("bitserial", "i8"), ("dot8", None),
              ("dotgemm", None),
              ("lutgemm", "split"))

__all__ = ["FAMILIES", "PREFERENCE", "Plan"]
