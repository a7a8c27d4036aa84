"""GEMM on packed low-bit codes.

    y[m, n] = sum_k a_codebook[a[m, k]] * w_codebook[w[n, k]]      (exact int32)
"""
from __future__ import annotations

import dataclasses

import numpy as np

from . import _core, _dispatch, autotune
from . import codebook as cbmod
from .families import FAMILIES, PREFERENCE
from .packing import MAX_ELEMENTS, PackedActivations, PackedWeights, _as_code_matrix, check_elements


_PLAN_CACHE = {}


def _plan_for(bw, ba, cb_w, cb_a, shape=None):
    """(plan, family class, kernel dict, reasons, K_max) honouring
    use(kernel=/strategy=/autotune=).

    Planning (cached per bits, codebooks and dispatch state: it builds tables)
    finds the fixed-order choice and the candidates worth measuring. With
    ``shape`` = (M, N, K) and autotune on, the measured fastest candidate of
    that shape class replaces the fixed choice (lowbit.autotune)."""
    forced_kernel, forced_family = _dispatch.forced_kernel()
    key = (bw, ba, cb_w.tobytes(), cb_a.tobytes(), forced_kernel, forced_family, _dispatch.tier_cap())
    hit = _PLAN_CACHE.get(key)
    if hit is None:
        hit = _PLAN_CACHE[key] = _plan_uncached(bw, ba, cb_w, cb_a, forced_kernel, forced_family) + (
            cbmod.k_max(cb_a, cb_w),)
    plan, fam, kern, reasons, measured, kmax = hit
    if shape is None or len(measured) < 2 or not _dispatch.autotune_enabled():
        return plan, fam, kern, reasons, kmax
    by_name = {o[2]["name"]: o for o in measured}
    rec = autotune.choose(tuple(by_name), bw, ba, cb_w, cb_a, *shape)
    plan, fam, kern = by_name[rec["kernel"]]
    figures = ", ".join(f"{n} {us:.1f} us" for n, us in sorted(rec["us"].items(), key=lambda t: t[1]))
    m, n, k = rec["trial"]
    cls = autotune.shape_class(*shape)
    reasons = [r for r in reasons if not r.startswith("chosen:")] + [
        f"measured here for shape class M<={cls[0]} N<={cls[1]} K<={cls[2]} (trial {m}x{n}x{k}, fastest of "
        f"{autotune.TRIAL_RUNS} interleaved runs, lowbit.autotune): {figures}",
        f"chosen: {kern['name']} (fastest measured)"]
    return plan, fam, kern, reasons, kmax


# Families whose kernels look products up in tables. By default a 1-4-bit
# GEMM runs on one of them whenever one is exact; the dot-product families
# (dot8, dotgemm) take the rest, or everything under use(strategy="fastest").
LOOKUP_FAMILIES = ("lutgemm", "grouplut", "grouplut6", "bitserial")


def _plan_uncached(bw, ba, cb_w, cb_a, forced_kernel, forced_family):
    """(plan, fam, kernel, reasons, measured): the fixed-order choice, and the
    exact (plan, fam, kernel) candidates autotuning may measure instead."""
    if forced_kernel is not None:
        info = _dispatch.kernel_info(forced_kernel)
        fam = FAMILIES[info["family"]]
        plan, why_not = fam.plan(bw, ba, cb_w, cb_a)
        if plan is None:
            raise ValueError(f"kernel {forced_kernel!r} cannot compute this GEMM exactly: {why_not}")
        if plan.table_kind == "i8" and info["table_kind"] == "split":
            plan = dataclasses.replace(plan, table_kind="split", why="int16 lo/hi byte tables (forced)")
        if plan.table_kind != info["table_kind"] and info["table_kind"] != "i32":
            raise ValueError(f"kernel {forced_kernel!r} uses {info['table_kind']} tables but these codebooks "
                             f"need {plan.table_kind} ({plan.why})")
        if info["w_bits"] not in (0, bw) or info["a_bits"] not in (0, ba):
            raise ValueError(f"kernel {forced_kernel!r} is for W{info['w_bits']}A{info['a_bits']}, got W{bw}A{ba}")
        cap = _dispatch.tier_cap()
        if _dispatch.tier_rank(info["tier"]) > _dispatch.tier_rank(cap):
            raise RuntimeError(f"kernel {forced_kernel!r} needs tier {info['tier']} but dispatch is capped at {cap}")
        return plan, fam, info, [f"forced by lowbit.use(kernel={forced_kernel!r})"], ()
    fastest = forced_family == _dispatch.FASTEST
    if fastest:
        forced_family = None
    names = [forced_family] if forced_family is not None else list(dict.fromkeys(f for f, _ in PREFERENCE))
    reasons, options = [], []
    for name in names:
        fam = FAMILIES[name]
        plan, why_not = fam.plan(bw, ba, cb_w, cb_a)
        if plan is None:
            reasons.append(f"{name}: {why_not}")
            continue
        found = _dispatch.candidates(name, plan.table_kind)
        if not found:
            reasons.append(f"{name}: no {plan.table_kind} kernel at or below tier {_dispatch.tier_cap()}")
            continue
        order = next(i for i, (f, kind) in enumerate(PREFERENCE) if f == name and kind in (None, plan.table_kind))
        # plan.slow (a dot family measured faster) never reorders the fixed order (docs/kernels.md)
        reasons.append(f"{name}: {plan.why} (best kernel {found[0]['name']})")
        options += [(k["tier_rank"] == 0, order, -k["tier_rank"], plan, fam, k) for k in found]
    if not options:
        raise NotImplementedError(f"no kernel can compute W{bw}A{ba} with these codebooks: " + "; ".join(reasons))
    options.sort(key=lambda o: o[:3])
    *_, plan, fam, kern = options[0]
    faster = [o for o in options if fastest and plan.slow and o[4].name == plan.slow and not o[0]]
    if faster:
        *_, plan, fam, kern = faster[0]
        reasons.append(f"chosen: {kern['name']} (lowbit.use(strategy='fastest'): measured faster than the "
                       "exact lookup tables here)")
    else:
        reasons.append(f"chosen: {kern['name']} (first exact family in the measured order; SIMD before scalar-only)")
    if plan.slow:
        reasons.append(f"note: with these bit widths/codebooks {plan.slow} measured faster on the reference "
                       f"machine: autotuning times it too, or lowbit.use(strategy={plan.slow!r})")
    # What autotuning may measure (docs/kernels.md): SIMD kernels (scalar twins only where none
    # qualifies) of the lookup families plus plan.slow when a lookup family is exact and neither a
    # family nor "fastest" was asked for; of every family otherwise.
    pool = [o for o in options if not o[0]] or options
    if forced_family is None and not fastest and any(o[4].name in LOOKUP_FAMILIES for o in pool):
        pool = [o for o in pool if o[4].name in LOOKUP_FAMILIES or o[4].name == plan.slow]
    measured = tuple(o[3:] for o in pool)
    return plan, fam, kern, reasons, measured


_FUSED_PACK_FAMILIES = ("grouplut", "grouplut6")  # their GEMM packs (M, K) codes itself


@dataclasses.dataclass(frozen=True)
class Bound:
    """Everything a GEMM of one PackedWeights with one activation setting
    (bits, codebook) needs under the current dispatch state: built once and
    cached on the PackedWeights, so a call only packs activations and runs.
    ``native`` (a ``_core.PreparedGemm``) holds the same kernel, layout, tables
    and geometry on the native side, checked once: a call passes it only the
    activations and the epilogue (docs/architecture.md, "One GEMM call")."""
    plan: object
    fam: type
    kern: dict
    w_layout: np.ndarray
    tables: np.ndarray
    flush8: int
    flush16: int
    step_bias: int       # added by every K step (centred tables); removed by correction()
    code_shift: int      # packed activation bytes hold code << code_shift
    kmax: int
    pad_product: int     # cbA[0] * cbW[0]: what each padded k adds
    _direct: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)
    # int32 (N,) subtracted per output channel by the driver, or None (dot8 signed 8-bit activations)
    col_correction: object = dataclasses.field(default=None, compare=False, repr=False)
    native: object = dataclasses.field(default=None, compare=False, repr=False)
    # whether native.codes() runs this GEMM straight from (M, K) codes (grouplut families)
    fused_codes: bool = dataclasses.field(default=False, compare=False, repr=False)

    def correction(self, k_steps: int, padded_terms: int) -> int:
        """What the driver subtracts (mod 2**32) from every output: the padding
        terms plus step_bias for each of the k_steps lookups."""
        c = padded_terms + self.step_bias * k_steps
        return (c + 2**31) % 2**32 - 2**31

    def direct(self, k: int) -> tuple:
        """(k_steps, correction) of a plain (M, k) x (N, k) GEMM, cached per k."""
        hit = self._direct.get(k)
        if hit is None:
            k_steps = self.fam.k_steps(k, self.plan)
            hit = self._direct[k] = (
                k_steps, self.correction(k_steps, (self.fam.padded_k(k, self.plan) - k) * self.pad_product))
        return hit

    def pack(self, codes: np.ndarray) -> np.ndarray:
        return self.fam.pack_activations(codes, self.plan, self.kern["tier_rank"])

    def run(self, a, m: int, n: int, k_steps: int, correction: int, epilogue=None, a_offsets=None,
            seg_steps: int = 0):
        """The native GEMM on packed activations ``a`` (direct, or indirect with ``a_offsets``)."""
        if n != self.native.N:
            raise ValueError(f"n: expected the weights' N={self.native.N}, got {n}")
        ep, residual = _native_epilogue(epilogue)  # (no *-unpacking in the call: slower on this hot path)
        y = self.native.run(a, m, k_steps, correction, ep, residual, a_offsets, seg_steps)
        _dispatch.set_last_kernel(self.kern["name"])
        return y

    def run_codes(self, codes: np.ndarray, n: int, k_steps: int, correction: int, epilogue=None):
        """grouplut only: the native GEMM straight from (M, K) codes, packed inside
        the GEMM's tasks (each block of rows by the thread that then uses it).
        k_steps/correction must be the direct GEMM's (checked)."""
        if n != self.native.N or (k_steps, correction) != self.direct(self.native.K):
            raise ValueError("run_codes: n, k_steps and correction must be the direct GEMM's "
                             f"({self.native.N}, {self.direct(self.native.K)}), got ({n}, ({k_steps}, {correction}))")
        y = self.native.codes(codes, *_native_epilogue(epilogue))
        _dispatch.set_last_kernel(self.kern["name"])
        return y


def _native_epilogue(epilogue) -> tuple:
    """(checked native epilogue or None, residual or None) of a lowbit.Epilogue or None."""
    return (None, None) if epilogue is None else (epilogue.native(), epilogue.residual)


def _bind(packed: PackedWeights, a_bits: int, cb_a: np.ndarray, shape=None) -> Bound:
    cb_w = packed.codebook
    plan, fam, kern, _, kmax = _plan_for(packed.bits, a_bits, cb_w, cb_a, shape)
    w_layout = packed.layout(("w", plan, kern["nr"], kern["layout"]),
                             lambda codes: fam.weight_layout(codes, plan, kern))
    tables, flush8, flush16, step_bias = packed.tables(
        (plan, cb_a.tobytes()), lambda: fam.tables(cb_w, cb_a, plan))
    col = None
    if plan.family == "dot8" and plan.params[5]:  # signed 8-bit activations stored as level + offset
        col = packed.layout(("col_correction", plan), lambda codes: fam.channel_correction(codes, plan))
    bound = Bound(plan, fam, kern, w_layout, tables, flush8, flush16, step_bias, fam.code_shift(plan), kmax,
                  int(cb_a[0]) * int(cb_w[0]), col_correction=col)
    k_steps, correction = bound.direct(packed.K)
    fused = plan.family in _FUSED_PACK_FAMILIES
    group = plan.params[2] if fused else 0  # grouplut plans: (w_bits, a_bits, codes per byte)
    native = _core.PreparedGemm(kern["index"], w_layout, tables, packed.N, flush8, flush16, bound.code_shift, col,
                                packed.K, k_steps, correction, a_bits if fused else 0, group)
    return dataclasses.replace(bound, native=native, fused_codes=fused)


def _prepare(pa: PackedActivations, packed: PackedWeights, m: int, k: int) -> Bound:
    """The cached Bound for these activations' bits/codebook and an (m, N, k)
    GEMM (its shape class, when autotuning); checks K_max for depth k."""
    return _prepare_setting(pa.bits, pa.codebook, pa.codebook_key, packed, m, k)


def _prepare_setting(bits: int, codebook: np.ndarray, codebook_key: bytes, packed: PackedWeights, m: int,
                     k: int) -> Bound:
    state = _dispatch.state()
    cls = None
    if state[3]:  # autotuning: the shape class (as autotune.shape_class, inline: a call's hot path) is in the key
        cls = ((m - 1).bit_length() if m > 0 else 0, (k - 1).bit_length() if k > 0 else 0)
    key = (bits, codebook_key, state, cls)
    bound = packed._bound.get(key)
    if bound is None:
        bound = packed._bound[key] = _bind(packed, bits, codebook, (m, packed.N, k))
    if k > bound.kmax:
        raise ValueError(f"K={k} exceeds K_max={bound.kmax} for these codebooks "
                         "(int32 sums could overflow); split K and add the partial results in int64")
    return bound


_SETTINGS = {}  # a_bits (int) -> (bits, default codebook, its bytes): gemm() with a_codebook=None


def _activation_setting(a_bits, a_codebook) -> tuple:
    """(bits, int32 codebook, codebook bytes) of gemm()'s a_bits/a_codebook, checked."""
    cacheable = a_codebook is None and type(a_bits) is int
    hit = _SETTINGS.get(a_bits) if cacheable else None
    if hit is None:
        bits = cbmod.check_bits(a_bits, "bits")
        cb = cbmod.normalize(a_codebook, bits, "codebook")
        hit = (bits, cb, cb.tobytes())
        if cacheable:
            _SETTINGS[a_bits] = hit
    return hit


def gemm(a, packed: PackedWeights, a_bits: int | None = None, a_codebook=None, epilogue=None) -> np.ndarray:
    """Exact low-bit GEMM: (M, K) activation codes x packed (N, K) weights -> (M, N) int32.

    ``a`` is a uint8 array of codes in [0, 2**a_bits) or a :class:`PackedActivations`
    (then ``a_bits``/``a_codebook`` come from it). ``a_codebook`` is a sequence of
    2**a_bits integers in [-128, 127] (None: 0 .. 2**a_bits - 1).
    ``epilogue`` (a :class:`lowbit.Epilogue`) fuses scale, bias, clamp and
    float or requantized-code output; without it the result is int32.
    """
    if not isinstance(packed, PackedWeights):
        raise TypeError(f"packed: expected lowbit.PackedWeights (from lowbit.pack_weights), "
                        f"got {type(packed).__name__}")
    bound = None
    if isinstance(a, PackedActivations):
        if a_bits is not None and int(a_bits) != a.bits:
            raise ValueError(f"a_bits: {a_bits} does not match the PackedActivations ({a.bits} bits)")
        if a_codebook is not None:
            raise ValueError("a_codebook: already set by the PackedActivations; pass None")
        pa = a
    else:
        if a_bits is None:
            raise TypeError("a_bits: required when a holds raw codes (a PackedActivations carries its own)")
        m = a.shape[0] if isinstance(a, np.ndarray) and a.ndim == 2 else -1
        # (sizes past the limit take the checked path below, refused before the weights are prepared)
        if 0 <= m and m * packed.K <= MAX_ELEMENTS and m * packed.N <= MAX_ELEMENTS:
            bits, cb, cb_key = _activation_setting(a_bits, a_codebook)
            bound = _prepare_setting(bits, cb, cb_key, packed, m, packed.K)
            if bound.fused_codes:
                # plain codes, used once: packed inside the GEMM (not cached); the native
                # side checks a (dtype, K, code range) and the epilogue
                y = bound.native.codes(a, *_native_epilogue(epilogue))
                _dispatch.set_last_kernel(bound.kern["name"])
                return y
            # the other families pack first: a is checked here, its codes by the native packer
            pa = PackedActivations(_as_code_matrix(a, "a_codes"), bits, cb)
        else:
            pa = PackedActivations.from_codes(a, a_bits, a_codebook, validate=False)  # (raises the errors)
    if pa.K != packed.K:
        raise ValueError(f"a: K mismatch: activations have K={pa.K}, weights have K={packed.K}")
    check_elements((pa.M, packed.N), "output")
    if bound is None:
        bound = _prepare(pa, packed, pa.M, pa.K)
    k_steps, correction = bound.direct(pa.K)
    a_packed = pa.packed((bound.plan.family, bound.plan.params, bound.kern["tier_rank"] > 0), bound.pack)
    return bound.run(a_packed, pa.M, packed.N, k_steps, correction, epilogue)


def explain(M: int, N: int, K: int, *, a_bits: int, w_bits: int, a_codebook=None, w_codebook=None) -> str:
    """Which kernel :func:`gemm` would run for an (M, K) x (N, K) problem, and
    why. Bits and codebooks are keywords (activations, then weights, as in
    every lowbit signature), so they cannot be swapped by position."""
    bw = cbmod.check_bits(w_bits, "w_bits")
    ba = cbmod.check_bits(a_bits, "a_bits")
    cb_w = cbmod.normalize(w_codebook, bw, "w_codebook")
    cb_a = cbmod.normalize(a_codebook, ba, "a_codebook")
    _, _, kern, reasons, kmax = _plan_for(bw, ba, cb_w, cb_a, (int(M), int(N), int(K)))
    lines = [f"GEMM M={M} N={N} K={K} W{bw}A{ba}: kernel {kern['name']} (tier cap {_dispatch.tier_cap()})"]
    lines += [f"  - {r}" for r in reasons]
    lines.append(f"  - K_max for these codebooks: {kmax}")
    return "\n".join(lines)
