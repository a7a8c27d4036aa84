"""Kernel families as seen from Python: one module per family.

Each family class answers: can it compute (w_bits, a_bits, codebooks) exactly
(``plan``), and how to build its weight layout, packed activations and
tables. Adding a family = a module here + an entry in FAMILIES + its C++
folder and registry lines.
"""
from ._common import Plan
from .dotgemm import Dotgemm
from .grouplut import Grouplut
from .lutgemm import Lutgemm

FAMILIES = {"lutgemm": Lutgemm, "grouplut": Grouplut, "dotgemm": Dotgemm}

# Automatic choice, fastest first (measured: bench/results, docs/kernels.md);
# dotgemm computes everything exactly and is the last resort.
PREFERENCE = ("grouplut", "lutgemm", "dotgemm")

__all__ = ["FAMILIES", "PREFERENCE", "Plan"]
