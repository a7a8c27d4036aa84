"""ISA tiers, the kernel registry as seen from Python, forcing and reporting.

The registry itself lives in C++ (csrc/kernels/registry.cc); this module reads
it once and answers: which tiers this CPU supports, which tier cap is in force
(``LOWBIT_ISA`` or :func:`use`), which kernel a call may use, and which kernel
ran last on this thread.
"""
from __future__ import annotations

import contextlib
import os
import threading

from . import _core

TIERS = tuple(t["name"] for t in _core.tiers())  # chain order, scalar first
_TIER_RANK = {name: i for i, name in enumerate(TIERS)}
_SUPPORTED = {t["name"]: t["supported"] for t in _core.tiers()}
KERNELS = tuple(_core.kernels())
_BY_NAME = {k["name"]: k for k in KERNELS}
FAMILIES = tuple(sorted({k["family"] for k in KERNELS}))

_BEST_TIER = [t for t in TIERS if _SUPPORTED[t]][-1]
# use(strategy=FASTEST): measured order, but a slow table plan yields to the
# dot-product family it names (families.Plan.slow)
FASTEST = "fastest"
# LOWBIT_ISA is read once, when lowbit is imported (checked when a kernel is
# first selected); lowbit.use(isa=...) changes the cap at run time.
_ENV_ISA = os.environ.get("LOWBIT_ISA") or None
# LOWBIT_AUTOTUNE=0 (read at import) turns measured kernel choice off
# (lowbit.autotune); lowbit.use(autotune=...) overrides it per thread.
_ENV_AUTOTUNE = os.environ.get("LOWBIT_AUTOTUNE", "1").strip().lower() not in ("0", "false", "no", "off")

_local = threading.local()


def cpu_features() -> dict:
    """CPU features: cpuid + xgetbv (OS-enabled state) on x86-64, HWCAP on Arm64."""
    return dict(_core.cpu_features())


def supported_tiers() -> list:
    """Tier names this CPU (and OS) can run, in chain order."""
    return [t for t in TIERS if _SUPPORTED[t]]


def _check_tier_name(tier: str, what: str) -> str:
    if tier not in _TIER_RANK:
        raise ValueError(f"{what}: unknown ISA tier {tier!r}; expected one of {', '.join(TIERS)}")
    return tier


def state() -> tuple:
    """(tier cap, forced kernel, forced strategy, autotune): what kernel choice
    depends on besides the problem itself (a cache key)."""
    d = _local.__dict__
    return tier_cap(), d.get("kernel"), d.get("strategy"), autotune_enabled()


def autotune_enabled() -> bool:
    """Whether dispatch measures candidate kernels (lowbit.autotune)."""
    v = _local.__dict__.get("autotune")
    return _ENV_AUTOTUNE if v is None else v


def tier_cap() -> str:
    """The highest tier dispatch may use now.

    ``lowbit.use(isa=...)`` wins over the ``LOWBIT_ISA`` environment variable.
    Asking for a tier this CPU lacks raises here, i.e. when a kernel is first
    selected, never at import.
    """
    forced = _local.__dict__.get("isa")
    source = "lowbit.use(isa=...)"
    if forced is None:
        forced = _ENV_ISA
        source = "LOWBIT_ISA"
    if forced is None:
        return _BEST_TIER
    _check_tier_name(forced, source)
    if not _SUPPORTED[forced]:
        raise RuntimeError(
            f"{source}={forced!r}: this CPU does not support the {forced} tier "
            f"(supported here: {', '.join(supported_tiers())})")
    return forced


def tier_rank(tier: str) -> int:
    return _TIER_RANK[tier]


def forced_kernel():
    """(kernel name or None, strategy/family name or None) forced by use()."""
    d = _local.__dict__
    return d.get("kernel"), d.get("strategy")


@contextlib.contextmanager
def use(isa: str | None = None, kernel: str | None = None, strategy: str | None = None,
        autotune: bool | None = None):
    """Cap dispatch at an ISA tier and/or force a kernel or a kernel family.

    ``isa``: a tier name (x86-64: ``scalar``, ``avx2``, ``avx512``, ``avx512icl``;
    Arm64: ``scalar``, ``neon``, ``neondot``, ``neoni8mm``).
    ``kernel``: a registry name (see :func:`lowbit.kernels`). A call the kernel
    cannot compute exactly raises instead of silently using another kernel.
    ``strategy``: a family name (``lutgemm`` = DeepGEMM product LUT,
    ``grouplut``, ...): the best kernel of that family at or below the cap.
    ``strategy="fastest"``: the automatic choice, except that where the
    lookup tables are exact but measured slower than a dot-product family
    (3-4-bit weights, W2A4: ``lowbit.explain`` names it), that family runs;
    by default 1-4-bit layers stay on the lookup tables whenever exact.
    ``autotune``: measure the candidate kernels of each shape class on this
    machine and run the fastest (default: on unless ``LOWBIT_AUTOTUNE=0``;
    see :mod:`lowbit.autotune`), or use the fixed order when False.
    Settings are per thread and restored on exit.
    """
    if isa is not None:
        _check_tier_name(isa, "isa")
    if kernel is not None and kernel not in _BY_NAME:
        raise ValueError(f"kernel: unknown kernel {kernel!r}; see lowbit.kernels() for the registry")
    if strategy is not None and strategy not in FAMILIES and strategy != FASTEST:
        raise ValueError(f"strategy: unknown strategy {strategy!r}; expected one of {', '.join(FAMILIES)} "
                         f"or {FASTEST!r}")
    if autotune is not None and not isinstance(autotune, bool):
        raise TypeError(f"autotune: expected True, False or None, got {autotune!r}")
    d = _local.__dict__
    asked = {"isa": isa, "kernel": kernel, "strategy": strategy, "autotune": autotune}
    saved = {k: d.get(k) for k in asked}
    d.update({k: v for k, v in asked.items() if v is not None})  # None keeps the setting in force
    try:
        yield
    finally:
        d.update(saved)


def kernel_info(name: str) -> dict:
    return dict(_BY_NAME[name])


def kernels() -> list:
    """The registry: one dict per kernel, with ``available`` for this CPU."""
    return [dict(k, available=_SUPPORTED[k["tier"]]) for k in KERNELS]


def candidates(family: str, table_kind: str) -> list:
    """Kernels of a family/table kind usable under the current cap, best tier
    first; within one tier, registry order (csrc/kernels/registry.cc lists a
    family's preferred kernel of a tier first), so dispatch takes the first.
    A kernel of table kind "i32" (no table, no narrow accumulator) computes
    every plan of its family, so it is a candidate for each kind."""
    cap = tier_rank(tier_cap())
    found = [k for k in KERNELS if k["family"] == family and k["table_kind"] in (table_kind, "i32")
             and k["tier_rank"] <= cap and _SUPPORTED[k["tier"]]]
    return sorted(found, key=lambda k: (-k["tier_rank"], k["index"]))


def set_last_kernel(name: str) -> None:
    _local.last_kernel = name


def last_kernel():
    """Registry name of the kernel that ran this thread's last lowbit call (or None)."""
    return getattr(_local, "last_kernel", None)
