"""Kernel families as seen from Python: one module per family.

Each family class answers: can it compute (w_bits, a_bits, codebooks) exactly
(``plan``), and how to build its weight layout, packed activations and
tables. Adding a family = a module here + an entry in FAMILIES + its C++
folder and registry lines.
"""
from ._common import Plan
from .bitserial import Bitserial
from .dotgemm import Dotgemm
from .grouplut import Grouplut
from .grouplut6 import Grouplut6
from .lutgemm import Lutgemm

FAMILIES = {"lutgemm": Lutgemm, "grouplut": Grouplut, "grouplut6": Grouplut6, "bitserial": Bitserial,
            "dotgemm": Dotgemm}

# Automatic choice: among the (family, table kind) plans that are exact, the
# kernel of the highest ISA tier wins; ties go to the earlier entry here
# (fastest first, measured: bench/results, docs/kernels.md). None matches any
# table kind. dotgemm computes everything exactly; lutgemm's int16 (split)
# tables are slower than dotgemm's int16 multiply-adds.
PREFERENCE = (("grouplut6", "i8"), ("grouplut", "i8"), ("lutgemm", "i8"), ("bitserial", "i8"), ("dotgemm", None),
              ("lutgemm", "split"))

__all__ = ["FAMILIES", "PREFERENCE", "Plan"]
