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

# The dispatch rule's fixed order, fastest first as measured (docs/kernels.md): the first
# (family, table kind) here that can compute the GEMM exactly wins. None matches any table kind.
PREFERENCE = (("grouplut", "i8"), ("grouplut6", "i8"), ("lutgemm", "i8"), ("bitserial", "i8"), ("dot8", None),
              ("dotgemm", None),
              ("lutgemm", "split"))

__all__ = ["FAMILIES", "PREFERENCE", "Plan"]
