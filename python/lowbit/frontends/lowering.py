"""The lowering pipeline shared by lowbit's front ends (:mod:`lowbit.convert`, :mod:`lowbit.qonnx`).

A front end only translates its source graph into a plain, **unfused** list of
:class:`lowbit.runtime.Node` (the IR below); :func:`lower` runs the passes, each
a function below with its contract (docs/pipeline.md, section 1, summarises).

The IR: runtime nodes and attributes (see :mod:`lowbit.runtime`), except that

* ``conv``/``linear`` (:func:`layer_node`) have an open epilogue (clamp
  ``[None, None]``, no requant, no residual) and **float64**
  ``arrays['scale']``/``['bias']``: the exact values before their one
  rounding to float32; ``affine`` arrays are float64 too;
* ``quantize`` may carry ``channel_steps`` (per-channel steps: it quantizes
  ``x / channel_steps[c]``; :func:`place_requant` folds that division into the
  epilogue or puts an ``affine`` in front);
* IR-only attributes (:data:`IR_ATTRS`, removed by :func:`finalize`): ``bn``
  on an affine (a BatchNorm; the layer it folds into gets ``bn``), ``origin``
  (the source op's name for the layer's ``fused`` list; default: the node's
  name) and ``keep`` on an affine/quantize that must stay its own node
  (folding it would change its arithmetic: a QONNX Trunc offset, a quantizer
  whose input has other readers in the source graph).

Runtime nodes rather than a separate IR type: the IR *is* the runtime graph
before fusion (every op already exists), so the passes rewrite the objects the
Model runs and no translation layer is needed.
"""
from __future__ import annotations

import heapq

import numpy as np

from ..quant import UniformGrid
from ..runtime.model import Node

__all__ = ["lower", "Graph", "batchnorm_affine", "unique_name", "layer_node", "quantize_node", "remove_identities",
           "fold_affines", "fuse_residuals", "fold_clamps", "remove_dead", "requant_before_maxpool", "place_requant",
           "order", "finalize", "IR_ATTRS", "mark_exact_float_quantizers"]

_LAYERS = ("conv", "linear")
IR_ATTRS = ("keep", "bn", "origin")   # lowering-only attributes (``bn`` only on affine nodes), removed by finalize


def unique_name(base, taken: set) -> str:
    """A node name made from ``base`` (``:`` -> ``_``, ``/`` -> ``.``; then ``_2``, ``_3``... until it is
    not in ``taken``), added to ``taken``: how both front ends name their nodes."""
    base = (base or "node").replace(":", "_").replace("/", ".")
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def batchnorm_affine(gamma, beta, mean, var, eps):
    """(scale, bias) of an inference BatchNorm as a per-channel affine map, in float64 (the one formula
    both front ends fold): ``g = gamma / sqrt(var + eps)``, ``(g, beta - mean * g)``."""
    g = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    return g, np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * g


def layer_node(name, op, src, a_bits, a_levels, a_step, w_bits, w_levels, w_codes, scale, bias, **attrs) -> Node:
    """An IR ``conv``/``linear`` reading ``src``: codes of levels ``a_levels`` (binary: [-1, 1] at 1 bit)
    with step ``a_step``, weight codes of ``w_levels``, an open epilogue with float64 ``scale``/``bias``;
    ``attrs``: its geometry, ``module``, ``source``."""
    lv = [int(v) for v in a_levels]
    return Node(name, op, [src], {"w_bits": int(w_bits), "w_codebook": [int(v) for v in w_levels],
                                  "a_bits": int(a_bits), "a_codebook": lv, "a_step": float(a_step),
                                  "a_signed": min(lv) < 0, "a_binary": a_bits == 1 and lv == [-1, 1],
                                  "a_qn": min(lv), "a_qp": max(lv), "clamp": [None, None], "requant": None,
                                  "residual": False, "bn": False, **attrs},
                {"w_codes": w_codes, "scale": np.asarray(scale, np.float64), "bias": np.asarray(bias, np.float64)})


def quantize_node(name, src, grid: UniformGrid, **attrs) -> Node:
    """An IR ``quantize`` of float value ``src`` onto ``grid`` (its per-channel steps become
    ``channel_steps``); ``attrs`` add to or override the grid's (e.g. ``keep``, ``origin``, a
    Trunc's ``levels``)."""
    a = {"bits": grid.bits, "signed": grid.signed, "binary": grid.binary, "qn": grid.qn, "qp": grid.qp,
         "step": grid.step, "levels": grid.levels()}
    if grid.chan is not None:
        a["channel_steps"] = [float(v) for v in grid.chan]   # the values are level * channel_steps[c]
    return Node(name, "quantize", [src], {**a, **attrs})


class Graph:
    """What the passes rewrite: ``nodes`` (IR, in order), the name of the model ``output`` and
    ``replaced`` (folded node -> the node that now computes its value; :func:`lower` resolves
    chains)."""

    def __init__(self, nodes, output):
        self.nodes, self.output, self.replaced = list(nodes), output, {}
        self.moved = {}   # quantize node moved in front of a max pool -> the pool, which now outputs its codes

    def readers(self, name):
        """Nodes reading ``name`` (once per input slot); the output counts as one more reader."""
        return [n for n in self.nodes for i in n.inputs if i == name] + ([None] if name == self.output else [])

    def replace(self, old: Node, new_name: str):
        """Remove ``old``; its readers (and the output) read ``new_name`` instead."""
        self.nodes.remove(old)
        for n in self.nodes:
            n.inputs = [new_name if i == old.name else i for i in n.inputs]
        self.output = new_name if self.output == old.name else self.output
        self.replaced[old.name] = new_name

    def sole_reader_layer(self, value, reader: Node):
        """The conv/linear node computing ``value`` when ``reader`` is its only reader, else None."""
        p = next((n for n in self.nodes if n.name == value), None)
        return p if p is not None and p.op in _LAYERS and self.readers(value) == [reader] else None


# The epilogue computes these in this order; a fold may add a stage only while nothing at or
# after it is there yet (affine maps compose, so an affine may follow an affine).
_STAGES = ("affine", "residual", "clamp", "requant")


def _open_for(layer: Node, stage: str) -> bool:
    a = layer.attrs
    done = {"affine": False, "residual": bool(a.get("residual")), "requant": bool(a.get("requant")),
            "clamp": list(a.get("clamp", [None, None])) != [None, None]}
    return not any(done[s] for s in _STAGES[_STAGES.index(stage):])


def _fold(g: Graph, n: Node, layer: Node):
    """n's value is now computed by layer's epilogue: record it and remove n."""
    layer.attrs.setdefault("fused", []).append(n.attrs.get("origin", n.name))
    g.replace(n, layer.name)


def remove_identities(g: Graph):
    """Contract: every ``clamp`` node with bounds ``[None, None]`` (the identity) is removed and its
    readers read its input. Nothing else changes."""
    for n in [n for n in g.nodes if n.op == "clamp" and list(n.attrs["clamp"]) == [None, None]]:
        g.replace(n, n.inputs[0])


def fold_affines(g: Graph):
    """Contract: an ``affine`` node (not ``keep``) whose input is a conv/linear read by it alone
    (and not the model output), whose epilogue has no residual, clamp or requantization yet,
    folds into that epilogue: ``scale = scale * a``, ``bias = bias * a + b`` in float64 (one
    rounding to float32 later, in :func:`finalize`). Consecutive affine maps compose. Any other
    affine node stays a node."""
    for n in [n for n in g.nodes if n.op == "affine" and not n.attrs.get("keep")]:
        layer = g.sole_reader_layer(n.inputs[0], n)
        if layer is not None and _open_for(layer, "affine"):
            a, b = (np.asarray(n.arrays[k], np.float64) for k in ("scale", "bias"))
            layer.arrays["scale"], layer.arrays["bias"] = layer.arrays["scale"] * a, layer.arrays["bias"] * a + b
            layer.attrs["bn"] = bool(layer.attrs.get("bn")) or bool(n.attrs.get("bn"))
            _fold(g, n, layer)


def fuse_residuals(g: Graph):
    """Contract: an ``add`` of two different values, one of which is the output of a conv/linear
    read by the add alone (not the model output) with no residual, clamp or requantization in
    its epilogue yet, becomes that layer's residual input (``attrs['residual']``, a second
    input; the other value cannot depend on the layer, which nothing else reads: :func:`order`
    puts the layer after it). When both sides qualify, the later layer in the node order takes
    the residual (a ResNet block's second conv or its shortcut conv: the sum is the same float32
    add either way). Any other add stays a float ``add`` node."""
    for n in [n for n in g.nodes if n.op == "add" and n.inputs[0] != n.inputs[1]]:
        pos = {m.name: i for i, m in enumerate(g.nodes)}
        sides = [(g.sole_reader_layer(v, n), other) for v, other in (n.inputs, n.inputs[::-1])]
        sides = [(layer, other) for layer, other in sides if layer is not None and _open_for(layer, "residual")]
        if sides:
            layer, other = max(sides, key=lambda side: pos[side[0].name])
            layer.inputs.append(other)
            layer.attrs["residual"] = True
            _fold(g, n, layer)


def fold_clamps(g: Graph):
    """Contract: a ``clamp`` node whose input is a conv/linear read by it alone (not the model
    output), with no clamp or requantization in its epilogue yet, becomes the epilogue clamp.
    Any other clamp stays a node."""
    for n in [n for n in g.nodes if n.op == "clamp"]:
        layer = g.sole_reader_layer(n.inputs[0], n)
        if layer is not None and _open_for(layer, "clamp"):
            layer.attrs["clamp"] = list(n.attrs["clamp"])
            _fold(g, n, layer)


def remove_dead(g: Graph):
    """Contract: only the nodes the output is computed from remain (their order unchanged). The
    order need not be topological: a fused residual input may be defined after its layer (until
    :func:`order`)."""
    by_name = {n.name: n for n in g.nodes}
    need, todo = set(), [g.output]
    while todo:
        name = todo.pop()
        if name not in need:
            need.add(name)
            todo.extend(by_name[name].inputs if name in by_name else ())
    g.nodes = [n for n in g.nodes if n.name in need]


def _plain_rule(q: Node) -> bool:
    """Whether quantize node q divides, rounds and clamps (not binary, no Trunc pre-rounding)."""
    return not q.attrs.get("binary") and q.attrs.get("pre_step") is None


def _epilogue_grid(q: Node):
    """The grid of quantize node q when a requantizing epilogue can emit exactly its codes
    (a uniform integer range, :meth:`UniformGrid.requant`; the plain codebook; no Trunc
    pre-rounding), else None."""
    a = q.attrs
    if not _plain_rule(q):
        return None
    grid = UniformGrid(a["step"], a["qn"], a["qp"], chan=a.get("channel_steps"))
    if grid.requant() is None or list(a["levels"]) != grid.levels():
        return None
    return grid


def _divisible(layer: Node) -> bool:
    """Whether the epilogue's output may be divided by per-channel steps through its scale and
    bias: the clamp commutes with the division (bounds 0 or none) and there is no residual."""
    lo, hi = layer.attrs["clamp"]
    return lo in (None, 0.0) and hi is None and not layer.attrs["residual"]


def requant_before_maxpool(g: Graph):
    """Contract: a ``maxpool`` node P read by one ``quantize`` node Q alone (not ``keep``; P is
    not the model output) is reordered -- Q reads P's input, P reads Q, and Q's readers (and the
    output) read P, so P pools 1-byte codes instead of float32 values -- in two cases:

    * P's input is a conv/linear L read by P alone (not the model output) with no residual and
      still open for a requantization, and an epilogue can emit Q's grid (:func:`_epilogue_grid`;
      per-channel steps also :func:`_divisible`): :func:`place_requant` then folds Q into L's
      epilogue;
    * P's input is a float layer's output, ``L``, ``affine(L)``, ``clamp(L)`` or
      ``clamp(affine(L))`` for a ``conv_f32``/``linear_f32`` L (:func:`_float_layer_of`), and Q
      uses the plain rule (not binary, no Trunc pre-rounding): :func:`mark_exact_float_quantizers`
      then decides Q's codes in float64, as for any quantizer of a float layer.

    Any other maxpool stays. Exact: a quantizer's code is a non-decreasing function of its input
    (a division by a positive step, rounding, clamping; per-channel steps act per channel, as
    pooling does), so the code of a window's maximum is the largest code of the window; padding
    (-inf, never the maximum) stands for the lowest code. A NaN, whose code (0) would not be the
    largest code of a window holding it, does not occur: an integer layer's output is its exact
    sums times a finite scale plus a finite bias, and a float layer's output from a finite input
    (the executor refuses any other) is NaN only where its float32 sums overflow (inputs near
    float32's largest values), where a pooled NaN has no defined code either."""
    for pool in [n for n in g.nodes if n.op == "maxpool"]:
        readers = g.readers(pool.name)
        q = readers[0] if len(readers) == 1 else None
        if q is None or q.op != "quantize" or q.attrs.get("keep"):
            continue
        layer = g.sole_reader_layer(pool.inputs[0], pool)
        on_layer = layer is not None and not layer.attrs["residual"] and _open_for(layer, "requant") and \
            _epilogue_grid(q) is not None and (q.attrs.get("channel_steps") is None or _divisible(layer))
        on_float_layer = _plain_rule(q) and _float_layer_of(g, pool.inputs[0])[0] is not None
        if not (on_layer or on_float_layer):
            continue
        for n in g.nodes:
            n.inputs = [pool.name if i == q.name else i for i in n.inputs]
        g.output = pool.name if g.output == q.name else g.output
        q.inputs, pool.inputs = [pool.inputs[0]], [q.name]
        g.nodes.remove(q)
        g.nodes.insert(g.nodes.index(pool), q)
        g.moved[q.name] = pool.name


def place_requant(g: Graph, requant_in_epilogue: bool = True):
    """Contract: a ``quantize`` node (not ``keep``) whose input is a conv/linear read by it alone
    (not the model output) and whose grid an epilogue can emit (:func:`_epilogue_grid`; with
    per-channel steps also :func:`_divisible`) is folded away: the layer gets
    ``attrs['requant'] = {bits, step, signed}`` and emits those codes (per-channel steps: scale
    and bias are divided by them in float64 and ``requant['channel_steps']`` records them). With
    ``requant_in_epilogue=False`` nothing folds. Every quantize with ``channel_steps`` that stays
    a node gets an ``affine`` in front multiplying by ``float32(1 / step[c])``; any other that
    stays a node may be named by the layer it reads (:func:`_mark_quantize_output`)."""
    for q in [n for n in g.nodes if n.op == "quantize"]:
        chan = q.attrs.get("channel_steps")
        layer = g.sole_reader_layer(q.inputs[0], q)
        grid = _epilogue_grid(q)
        if requant_in_epilogue and layer is not None and grid is not None and _open_for(layer, "requant") \
                and not q.attrs.get("keep") and (chan is None or _divisible(layer)):
            rq = grid.requant()
            if chan is not None:
                steps = np.asarray(chan, np.float64)
                layer.arrays["scale"] = layer.arrays["scale"] / steps
                layer.arrays["bias"] = layer.arrays["bias"] / steps
                rq["channel_steps"] = [float(v) for v in chan]
            layer.attrs["requant"] = rq
            _fold(g, q, layer)
        elif chan is not None:
            steps = np.asarray(chan, np.float32)
            name = unique_name(f"{q.name}.per_channel_scale", {n.name for n in g.nodes})
            pre = Node(name, "affine", [q.inputs[0]], {"source": q.attrs.get("source", q.name)},
                       {"scale": (1.0 / steps.astype(np.float64)).astype(np.float32),
                        "bias": np.zeros_like(steps)})
            g.nodes.insert(g.nodes.index(q), pre)
            q.inputs[0] = name
        else:
            _mark_quantize_output(g, q)


def _mark_quantize_output(g: Graph, q: Node):
    """Quantize node q stays a node: when it reads a conv/linear's float output (which other nodes read
    too) with the plain rule (not binary, no Trunc pre-rounding), and that layer names no quantizer yet,
    the layer gets ``attrs['quantize_output'] = q.name``: the native executor then writes q's codes from
    the layer's epilogue, with q's own division rule (the same bytes, one pass over the output)."""
    a = q.attrs
    layer = next((n for n in g.nodes if n.name == q.inputs[0]), None)
    if layer is None or layer.op not in _LAYERS or layer.attrs.get("requant") or \
            layer.attrs.get("quantize_output") is not None or not _plain_rule(q) \
            or a.get("channel_steps") is not None:
        return
    layer.attrs["quantize_output"] = q.name


def _float_layer_of(g: Graph, value):
    """(L, affine node or None, clamp bounds) when ``value`` is ``L``, ``affine(L)``,
    ``clamp(L)`` or ``clamp(affine(L))`` for a ``conv_f32``/``linear_f32`` node L, else
    (None, None, None)."""
    by_name = {n.name: n for n in g.nodes}
    src, clamp, affine = by_name.get(value), [None, None], None
    if src is not None and src.op == "clamp":
        clamp, src = list(src.attrs["clamp"]), by_name.get(src.inputs[0])
    if src is not None and src.op == "affine":
        affine, src = src, by_name.get(src.inputs[0])
    if src is None or src.op not in ("conv_f32", "linear_f32"):
        return None, None, None
    return src, affine, clamp


def mark_exact_float_quantizers(g: Graph):
    """Contract: a plain ``quantize`` node Q (:func:`_plain_rule`) whose input is a float layer's
    output (:func:`_float_layer_of`: ``clamp(affine(L))``, ``affine(L)``, ``clamp(L)`` or ``L`` for
    a ``conv_f32``/``linear_f32`` node L; with per-channel steps: behind the affine
    :func:`place_requant` puts in front) gets ``attrs['exact_float'] = {layer, affine, clamp}``
    (the names of L and of the affine or None, the clamp bounds) and L's input as its second
    input: its codes are then decided by the float64 formula of :mod:`lowbit.exact_float` (the
    values the nodes compute are unchanged; :func:`finalize` keeps that affine's float64
    ``scale64``/``bias64``). Nothing else changes."""
    by_name = {n.name: n for n in g.nodes}
    for q in [n for n in g.nodes if n.op == "quantize"]:
        if not _plain_rule(q) or len(q.inputs) != 1:
            continue
        value = q.inputs[0]
        if q.attrs.get("channel_steps") is not None:   # the division by the steps: place_requant's affine
            src = by_name.get(value)
            if not (src is not None and src.op == "affine" and src.name.startswith(f"{q.name}.per_channel_scale")):
                continue
            value = src.inputs[0]
        layer, affine, clamp = _float_layer_of(g, value)
        if layer is None:
            continue
        q.inputs.append(layer.inputs[0])
        q.attrs["exact_float"] = {"layer": layer.name, "affine": None if affine is None else affine.name,
                                  "clamp": clamp}


def order(g: Graph):
    """Contract: the nodes in a topological order that keeps the given order wherever it is
    already valid (a node moves later only to follow an input defined after it); the output is
    the last node. ValueError for an input no node defines or a cycle."""
    index = {n.name: i for i, n in enumerate(g.nodes)}
    users = {}
    for n in g.nodes:
        for i in set(n.inputs):
            if i not in index:
                raise ValueError(f"lowering: node {n.name!r} reads {i!r}, which no node defines")
            users.setdefault(i, []).append(n.name)
    pending = {n.name: len(set(n.inputs)) for n in g.nodes}
    ready = [index[n] for n, k in pending.items() if k == 0]   # a heap of node positions
    out = []
    while ready:
        out.append(g.nodes[heapq.heappop(ready)])
        for u in users.get(out[-1].name, ()):
            pending[u] -= 1
            if pending[u] == 0:
                heapq.heappush(ready, index[u])
    if len(out) != len(g.nodes):
        raise ValueError("lowering: the graph has a cycle")
    if out[-1].name != g.output:
        raise ValueError(f"lowering: the output {g.output!r} is not the last node (unused nodes remain?)")
    g.nodes = out


def finalize(g: Graph, error=ValueError):
    """Contract: conv/linear ``scale``/``bias`` and affine arrays become float32 (rounded once);
    a conv/linear that requantizes keeps the float64 values too, as ``scale64``/``bias64``
    (its epilogue decides codes from them: lowbit.Epilogue); a non-finite epilogue value
    raises ``error`` naming the node; IR-only attributes (:data:`IR_ATTRS`) are removed. An
    affine that an exact float quantizer names (:func:`mark_exact_float_quantizers`) keeps its
    float64 values too."""
    exact_affines = {n.attrs["exact_float"]["affine"] for n in g.nodes if n.attrs.get("exact_float")}
    for n in g.nodes:
        if n.op in _LAYERS or n.op == "affine":
            with np.errstate(over="ignore"):   # an overflow to inf is reported below
                for k in ("scale", "bias"):
                    exact = np.asarray(n.arrays[k], np.float64)
                    n.arrays[k] = exact.astype(np.float32)
                    keep64 = (n.op in _LAYERS and n.attrs.get("requant")) or n.name in exact_affines
                    if keep64 and np.all(np.isfinite(n.arrays[k])):
                        n.arrays[k + "64"] = exact
            if n.op in _LAYERS and not (np.all(np.isfinite(n.arrays["scale"]))
                                        and np.all(np.isfinite(n.arrays["bias"]))):
                raise error(f"node {n.name!r}: non-finite folded scale/bias (a BatchNorm with running_var + "
                            "eps <= 0, or a scale that overflows float32?)")
        for k in IR_ATTRS:
            if k != "bn" or n.op == "affine":
                n.attrs.pop(k, None)


def lower(nodes, output: str, requant_in_epilogue: bool = True, error=ValueError, pool_codes: bool = True) -> Graph:
    """Run the whole pipeline (see the module docstring) on IR ``nodes`` whose model output is
    the value ``output``; the nodes are modified in place. Returns the :class:`Graph`: ``nodes``
    in execution order, and ``replaced`` mapping every node folded away to the node that now
    computes its value. ``error``: the exception type to raise (a front end's ConversionError).
    ``pool_codes=False`` skips :func:`requant_before_maxpool` (for comparisons: the pass changes no
    value, but the quantizer it moves may then fold into an epilogue, which multiplies by
    ``float32(1 / step)`` where the ``quantize`` node divides, as every such fold does)."""
    g = Graph(nodes, output)
    for run_pass in (remove_identities, fold_affines, fuse_residuals, fold_clamps, remove_dead):
        run_pass(g)
    if pool_codes:
        requant_before_maxpool(g)
    place_requant(g, requant_in_epilogue)
    mark_exact_float_quantizers(g)
    try:
        order(g)
    except ValueError as exc:
        raise error(f"internal error: {exc}") from None
    finalize(g, error)
    for old, new in g.replaced.items():
        while new in g.replaced:
            new = g.replaced[new]
        g.replaced[old] = new
    return g
