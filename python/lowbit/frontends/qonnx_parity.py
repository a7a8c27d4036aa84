"""Parity of lowbit with qonnx's own executor (needs the ``qonnx`` package): :func:`qonnx_execute`,
:func:`compare_qonnx` and :func:`trace_divergence` (importable from ``lowbit.qonnx`` too),
:func:`compare_precisions` and :func:`float64_graph`.

qonnx's executor (``execute_onnx``) runs the graph node by node, every standard ONNX node on
onnxruntime and the QONNX quantizers in NumPy, in the graph's precision: float32 for a
Brevitas export. ``precision="float64"`` runs :func:`float64_graph` of the same graph through
the same executor (see :func:`_float64_execution`): the yardstick for rounding ties
(docs/brevitas.md, "The float64 yardstick").
"""
from __future__ import annotations

import contextlib
from collections import Counter

import numpy as np

from .pytorch import agreement
from .qonnx import _load, from_qonnx
from ..runtime.model import Model

__all__ = ["qonnx_execute", "compare_qonnx", "compare_precisions", "trace_divergence", "float64_graph"]

PRECISIONS = ("float32", "float64")


def _check_precision(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")


def _qonnx_executor(model, batch):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.util.cleanup import cleanup_model

    mw = ModelWrapper(_load(model))
    if any(not o.type.tensor_type.shape.dim for o in mw.graph.output):
        mw = mw.transform(InferShapes())  # ChangeBatchSize needs the output shape
    return cleanup_model(mw, override_inpsize=int(batch))


def float64_graph(model):
    """A copy of a (cleaned) QONNX graph that computes in float64: every float32 initializer
    (weights, biases, BatchNorm parameters, and the scales, zero points and bit widths that
    ``Quant``, ``Trunc`` and ``BipolarQuant`` read), ``Constant`` value, graph input, output and
    value info becomes float64 holding the same numbers, and a ``Cast`` to float32 casts to
    float64. Returns an ``onnx.ModelProto``."""
    from onnx import TensorProto, numpy_helper

    m = _load(model)
    g = m.graph

    def widen(t):
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))

    for t in g.initializer:
        widen(t)
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Constant" and a.name == "value":
                widen(a.t)
            elif node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.DOUBLE
            elif a.type == a.GRAPH:
                raise ValueError(f"model: node {node.name!r} ({node.op_type}) has a subgraph; float64_graph "
                                 "does not rewrite subgraphs")
    return m


def _run_on_reference_evaluator(node, context, opset_version):
    """One standard ONNX node on onnx's NumPy reference implementation, inputs and outputs
    in ``context`` (as qonnx's ``execute_node`` does with onnxruntime)."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    names = [i for i in node.input if i]
    inputs = [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(np.asarray(context[i]).dtype), None)
              for i in names]
    outputs = [helper.make_tensor_value_info(o, 0, None) for o in node.output if o]
    graph = helper.make_graph([node], "single-node-reference", inputs, outputs)
    single = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset_version)])
    results = ReferenceEvaluator(single).run(None, {i: context[i] for i in names})
    for o, v in zip([o for o in node.output if o], results):
        context[o] = v


def _run_quant_in_float64(node, context, constants):
    """A QONNX ``Quant`` node in float64 on qonnx's own ``int_quant`` function (the one its
    ``Quant`` op calls, without the op's final cast of the result to float32): the output is
    ``(level - zero point) * scale`` in float64.

    On a constant (a name in ``constants``: weights, biases) the levels are those of the float32
    graph, ``int_quant`` on the float32 values: they are part of the model (Brevitas computes
    them in float32 when it trains and exports, lowbit reads them the same way), and a weight
    within float32 rounding of a tie (``w / scale = k + 1/2``) would otherwise get another level
    in float64. On an activation everything is float64."""
    from qonnx.custom_op.general.intquant import int_quant
    from qonnx.custom_op.registry import getCustomOp

    op = getCustomOp(node)
    attrs = (op.get_nodeattr("signed"), op.get_nodeattr("narrow"), op.get_nodeattr("rounding_mode"))
    args = [np.asarray(context[i], np.float64) for i in node.input[:4]]
    if node.input[0] in constants:
        out32 = np.asarray(int_quant(*(a.astype(np.float32) for a in args), *attrs), np.float64)
        out = np.rint(out32 / args[1]) * args[1]   # (level - zero point) is exact: |out32| has 24 bits
    else:
        out = np.asarray(int_quant(*args, *attrs), np.float64)
    context[node.output[0]] = out


@contextlib.contextmanager
def _float64_execution(used: Counter):
    """Within this block, qonnx's ``execute_onnx`` runs a :func:`float64_graph` in float64 throughout:

    * a ``Quant`` node: :func:`_run_quant_in_float64` (qonnx's ``Quant`` op casts its output to
      float32 whatever its input's type; weights keep the float32 graph's integer levels);
    * a standard node that onnxruntime has no kernel for (its NOT_IMPLEMENTED error, e.g.
      ``Conv`` in float64): onnx's reference evaluator, counting the op types in ``used``;
    * everything else as qonnx runs it (onnxruntime, or qonnx's NumPy ops for ``Trunc`` and
      ``BipolarQuant``, which keep their input's type).

    A node that still produces float32 raises (the run would silently mix precisions).
    qonnx's executor looks ``execute_node`` up in its module for every node, so that is where
    this goes; it is restored on exit."""
    from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented
    from qonnx.core import onnx_exec
    from qonnx.custom_op.registry import is_custom_op

    original = onnx_exec.execute_node
    no_ort_kernel = set()
    constants = {}   # id(graph) -> names of its initializers

    def execute_node(node, context, graph, opset_version, return_full_exec_context=False):
        key = (node.domain, node.op_type)
        if node.op_type == "Quant" and is_custom_op(node.domain, node.op_type):
            names = constants.setdefault(id(graph), {t.name for t in graph.initializer})
            _run_quant_in_float64(node, context, names)
        elif key not in no_ort_kernel:
            try:
                original(node, context, graph, opset_version, return_full_exec_context)
            except OrtNotImplemented:
                no_ort_kernel.add(key)
        if key in no_ort_kernel:
            used[node.op_type] += 1
            _run_on_reference_evaluator(node, context, opset_version)
        for o in node.output:
            if o and np.asarray(context[o]).dtype == np.float32:
                raise RuntimeError(f"float64 run: node {node.name!r} ({node.op_type}) produced float32 {o!r}")

    onnx_exec.execute_node = execute_node
    try:
        yield used
    finally:
        onnx_exec.execute_node = original


def _qonnx_batches(model, x, batch_size, precision, used: Counter):
    """qonnx's executor on float32 NCHW ``x`` in batches of ``batch_size`` after ``cleanup_model``,
    in ``precision``: yields (start index, output, full execution context) per batch. Op types
    run on onnx's reference evaluator (float64 only) are counted in ``used``."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    _check_precision(precision)
    dtype = np.float64 if precision == "float64" else np.float32
    wrappers = {}
    for start in range(0, len(x), batch_size):
        xb = np.asarray(x[start:start + batch_size], np.float32).astype(dtype)
        mw = wrappers.get(len(xb))
        if mw is None:
            mw = _qonnx_executor(model, len(xb))
            if precision == "float64":
                mw = ModelWrapper(float64_graph(mw.model))
            wrappers[len(xb)] = mw
        with _float64_execution(used) if precision == "float64" else contextlib.nullcontext():
            ctx = execute_onnx(mw, {mw.graph.input[0].name: xb}, return_full_exec_context=True)
        yield start, np.asarray(ctx[mw.graph.output[0].name], dtype), ctx


def qonnx_execute(model, x, batch_size: int = 250, full: bool = False, precision: str = "float32"):
    """Run float32 NCHW ``x`` through qonnx's own executor (``execute_onnx``) after
    ``cleanup_model``; returns the output (or, with ``full``, (output, list of
    per-batch execution contexts)). ``precision="float64"``: on :func:`float64_graph` of the
    cleaned graph (the output and contexts are then float64; see :func:`_float64_execution`)."""
    outs, ctxs = [], []
    for _, out, ctx in _qonnx_batches(model, np.asarray(x, np.float32), batch_size, precision, Counter()):
        outs.append(out)
        if full:
            ctxs.append(ctx)
    out = np.concatenate(outs)
    return (out, ctxs) if full else out


def _levels(value, shape, step):
    """The integer levels of a quantizer output ``value`` (qonnx's float tensor) at ``step``."""
    return np.rint(np.asarray(value, np.float64).reshape(shape) / step).astype(np.int64)


def compare_qonnx(model, x, lowbit_model: Model | None = None, batch_size: int = 250, codes: bool = True,
                  reference=None, requant_in_epilogue: bool = True, isolate: bool = False,
                  precision: str = "float32") -> dict:
    """Parity of lowbit with the qonnx executor on float32 NCHW ``x``.

    The QONNX model is first passed through qonnx's ``cleanup_model`` (both
    sides then see the same graph and tensor names). Returns top-1 agreement,
    max / mean / p99 of |logit difference|, the logits' std, and with ``codes``
    the fraction of activation levels that differ at every quantizer the
    lowbit model materializes (``code_diff``: per ONNX tensor; ``code_diff_fraction``).
    ``reference``: precomputed reference logits (e.g. Brevitas' PyTorch output)
    to compare against instead of the qonnx executor's (codes are then skipped).
    ``lowbit_model``: compare this model instead of ``from_qonnx(cleaned graph,
    requant_in_epilogue)``; its codes are matched by ONNX tensor name, so only
    those of a model converted from the cleaned graph are compared
    (``code_tensors`` says how many quantizers were).

    ``isolate``: layer by layer. After each quantizer whose codes are compared, the
    lowbit run continues from qonnx's codes instead of its own (where the codes
    determine the levels), so every quantizer and the logits are compared on
    identical quantized inputs. In a deep network a code that differs at a
    rounding tie changes the inputs of many later codes, and those differences
    grow from layer to layer (qonnx's own executor does the same when its input
    moves by one float ulp); ``isolate`` measures each layer without that cascade. Codes come
    from the native executor's trace (:meth:`Model.trace`); with ``isolate`` lowbit runs node by
    node on its NumPy reference executor (bit for bit the kernels' results, slower).

    ``precision``: ``"float32"`` (the graph as exported) or ``"float64"``: qonnx's executor
    runs :func:`float64_graph` of the cleaned graph (``reference_logits`` are then float64;
    ``reference_evaluator_ops`` counts the nodes onnx's reference evaluator ran, see
    :func:`_float64_execution`).
    """
    _check_precision(precision)
    x = np.asarray(x, np.float32)
    cleaned = _qonnx_executor(model, batch_size).model
    lb = lowbit_model if lowbit_model is not None else from_qonnx(cleaned, requant_in_epilogue)
    if isolate and (not codes or reference is not None):
        raise ValueError("isolate: needs codes=True and no reference")
    used = Counter()
    if reference is not None:
        ref, codes = np.asarray(reference, np.float32), False
        mine = [lb(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    else:
        refs, mine = [], []
        qmap = lb.meta.get("qonnx_codes", {})
        diff = {}
        for start, out, ctx in _qonnx_batches(cleaned, x, batch_size, precision, used):
            refs.append(out)
            xb = x[start:start + batch_size]
            mine.append(_run_against(lb, xb, ctx, qmap, diff, isolate) if codes else lb(xb))
        ref = np.concatenate(refs)
    lo = np.concatenate(mine)
    if lo.shape != ref.shape:
        lo = lo.reshape(ref.shape)
    out = agreement(ref, lo, diff if codes else None)
    out.update(reference_logits=ref, lowbit_logits=lo, model=lb, precision=precision,
               reference_evaluator_ops=dict(used))
    if codes:
        out["code_tensors"] = len(diff)
    return out


PAIRS = ("lowbit_vs_float32", "lowbit_vs_float64", "float32_vs_float64")


def compare_precisions(model, x, lowbit_model: Model | None = None, batch_size: int = 32) -> dict:
    """End to end on float32 NCHW ``x``: lowbit, qonnx's executor in float32 (the graph as
    exported) and qonnx's executor in float64 (:func:`float64_graph`, the yardstick for
    rounding ties), compared pairwise (``PAIRS``: lowbit vs float32, lowbit vs float64,
    float32 vs float64).

    Returns ``top1`` ({pair: top-1 agreement}); ``codes`` ({ONNX tensor: {pair: codes that
    differ, "total": codes}}, at every quantizer lowbit materializes, in lowbit's node order);
    ``codes_differ`` ({pair: sum}) and ``codes_total``; for every pair, where each sample's
    codes first differ (a flip there changes every later layer's inputs, so only the first is
    telling): ``first_differing`` ({pair: {tensor: samples that first differ there}}) and
    ``tie_distance`` ({pair: the largest |frac(v) - 1/2| over those first differing codes,
    where v is the float64 run's value before the quantizer divided by its step: how far from
    a rounding tie the exact value lies, in steps; None where no sample differs; first
    differences at other quantizers than a ``Quant`` with ``ROUND`` are listed but not measured});
    the logits
    (``lowbit_logits``, ``float32_logits``, ``float64_logits``), ``model`` and
    ``reference_evaluator_ops``. ``lowbit_model``: as in :func:`compare_qonnx`."""
    x = np.asarray(x, np.float32)
    cleaned = _qonnx_executor(model, batch_size).model
    lb = lowbit_model if lowbit_model is not None else from_qonnx(cleaned)
    qmap = lb.meta.get("qonnx_codes", {})
    used = Counter()
    codes, logits = {}, {"lowbit": [], "float32": [], "float64": []}
    first_differing = {p: Counter() for p in PAIRS}
    tie_distance = dict.fromkeys(PAIRS)
    runs = zip(_qonnx_batches(cleaned, x, batch_size, "float32", used),
               _qonnx_batches(cleaned, x, batch_size, "float64", used))
    for (start, out32, ctx32), (_, out64, ctx64) in runs:
        record = {}
        logits["lowbit"].append(_run_against(lb, x[start:start + batch_size], ctx32, qmap, {}, False, record))
        logits["float32"].append(out32)
        logits["float64"].append(out64)
        n = len(out32)
        flipped = {p: np.zeros(n, bool) for p in PAIRS}   # samples whose codes differed at an earlier tensor
        for tensor, (ours, theirs32, step) in record.items():   # lowbit's node order
            theirs64 = _levels(ctx64[tensor], ours.shape, step)
            row = codes.setdefault(tensor, dict.fromkeys(PAIRS + ("total",), 0))
            row["total"] += int(ours.size)
            for pair, (a, b) in zip(PAIRS, ((ours, theirs32), (ours, theirs64), (theirs32, theirs64))):
                differ = a != b
                row[pair] += int(np.count_nonzero(differ))
                held = differ & ~flipped[pair].reshape((-1,) + (1,) * (differ.ndim - 1))
                if held.any():
                    first_differing[pair][tensor] += int(held.reshape(n, -1).any(1).sum())
                    over = _quant_input_over_step(cleaned.graph, tensor, ctx64, ours.shape, step)
                    if over is not None:
                        dist = float(np.max(np.abs(over[held] - np.floor(over[held]) - 0.5)))
                        tie_distance[pair] = max(dist, tie_distance[pair] or 0.0)
                flipped[pair] |= differ.reshape(n, -1).any(1)
    lo, l32, l64 = (np.concatenate(logits[k]) for k in ("lowbit", "float32", "float64"))
    lo = lo.reshape(l32.shape)
    top1 = {p: agreement(b, a)["top1_agreement"] for p, (a, b) in zip(PAIRS, ((lo, l32), (lo, l64), (l32, l64)))}
    return {"top1": top1,
            "codes": codes, "codes_differ": {p: sum(r[p] for r in codes.values()) for p in PAIRS},
            "codes_total": sum(r["total"] for r in codes.values()),
            "first_differing": {p: dict(c) for p, c in first_differing.items()}, "tie_distance": tie_distance,
            "lowbit_logits": lo, "float32_logits": l32, "float64_logits": l64, "model": lb,
            "reference_evaluator_ops": dict(used)}


def _quant_input_over_step(graph, tensor, ctx, shape, step):
    """qonnx's value before the ``Quant`` (rounding ``ROUND``) that produced ``tensor``, divided by
    its step (float64, ``shape``); None for any other producer (``BipolarQuant``, ``Trunc``, a
    ``MaxPool`` after the quantizer...)."""
    producer = next(n for n in graph.node if tensor in n.output)
    mode = next((a.s.decode() for a in producer.attribute if a.name == "rounding_mode"), "ROUND")
    if producer.op_type != "Quant" or mode.upper() not in ("ROUND", "HALF_EVEN"):
        return None
    return np.asarray(ctx[producer.input[0]], np.float64).reshape(shape) / step


def _run_against(lb: Model, x, ctx, qmap, diff, isolate, record=None):
    """Run ``lb`` on x: the native executor's trace, or with ``isolate`` node by node on the
    reference executor (the kernels' results bit for bit); at every node whose codes stand for a qonnx tensor in
    ``ctx``, count the levels that differ (into ``diff[tensor] = [differ, total]``) and, with
    ``isolate``, continue from qonnx's codes where they determine the levels. With a dict
    ``record``, also store ``record[tensor] = (lowbit's levels, qonnx's levels, step)`` (NCHW
    int64 levels; step float64, broadcastable). Returns the float32 output."""
    from ..runtime import executor as _executor
    from ..runtime.model import CodeTensor, output_array

    vals, traced = {}, None if isolate else _executor.trace(lb, lb._check_input(x))
    for n in lb.nodes:
        if n.op == "input":
            out = x.transpose(0, 2, 3, 1)
        else:
            out = traced[n.name] if traced is not None else lb._run_node(n, [vals[s] for s in n.inputs])
        tensor = qmap.get(n.name)
        if tensor is not None and tensor in ctx:
            # the grid: a quantize node's, a requantizing layer's, or for a max pool of codes (lowering
            # moved its quantizer in front of it) that of the node whose codes it pools
            src = lb.node(n.inputs[0]) if n.op == "maxpool" else n
            q = src.attrs if src.op == "quantize" else src.attrs["requant"]
            lv = out.levels.astype(np.int64)
            step = np.asarray(q.get("channel_steps", q["step"]), np.float32).astype(np.float64)
            c = out.codes
            nhwc = c.ndim == 4
            ours = lv[c.transpose(0, 3, 1, 2) if nhwc else c]
            if step.size > 1:   # per-channel steps, axis 1
                step = step.reshape((1, -1) + (1,) * (ours.ndim - 2))
            theirs = _levels(ctx[tensor], ours.shape, step)
            d = diff.setdefault(tensor, [0, 0])
            d[0] += int(np.count_nonzero(ours != theirs))
            if record is not None:
                record[tensor] = (ours, theirs, step)
            d[1] += int(ours.size)
            # the first code of each level (readers see levels only, so any code of a level will do)
            levels, first = np.unique(lv, return_index=True)
            at = np.clip(np.searchsorted(levels, theirs), 0, len(levels) - 1)
            if isolate and np.array_equal(levels[at], theirs):
                cd = first[at].astype(np.uint8)
                out = CodeTensor(np.ascontiguousarray(cd.transpose(0, 2, 3, 1) if nhwc else cd), out.bits,
                                 out.levels, out.step)
        vals[n.name] = out
    return output_array(vals[lb.nodes[-1].name])


def trace_divergence(model, x, continue_for: int = 10, lowbit_model: Model | None = None) -> dict | None:
    """Where lowbit and qonnx's executor first part ways end to end on float32 NCHW ``x``
    (one batch), and whether it is a rounding tie. None when every compared code agrees.

    Returns ``tensor`` (the first quantizer, in lowbit's node order, whose codes differ),
    ``positions`` (NCHW indices of its differing codes), ``qonnx_over_step`` (qonnx's float
    value before that quantizer divided by its step, float64, at those positions: a tie is
    k + 1/2), ``tie_distance`` (the largest |frac(value / step) - 1/2| among them, in steps),
    ``lowbit_codes`` / ``qonnx_codes`` there, and ``continued``: qonnx's executor rerun from
    the node after ``tensor`` with lowbit's codes fed in there, compared with lowbit's codes at
    the next ``continue_for`` quantizers, ``{tensor: [differ from lowbit, differ from qonnx's
    own run, total]}``. If lowbit computes what qonnx computes, the first differing codes sit
    at ties and the continued run matches lowbit where qonnx's own run does not (until another
    independent tie). ``lowbit_model``: as in :func:`compare_qonnx`."""
    from qonnx.core.onnx_exec import execute_onnx

    if isinstance(continue_for, bool) or not isinstance(continue_for, int) or continue_for < 1:
        raise ValueError(f"continue_for: expected an int >= 1, got {continue_for!r}")
    x = np.asarray(x, np.float32)
    mw = _qonnx_executor(model, len(x))
    lb = lowbit_model if lowbit_model is not None else from_qonnx(mw.model)
    _, ctxs = qonnx_execute(mw.model, x, len(x), full=True)
    ctx, record = ctxs[0], {}
    _run_against(lb, x, ctx, lb.meta.get("qonnx_codes", {}), {}, False, record)
    order = list(record)
    first = next((t for t in order if np.any(record[t][0] != record[t][1])), None)
    if first is None:
        return None
    ours, theirs, step = record[first]
    positions = np.argwhere(ours != theirs)
    producer = next(n for n in mw.graph.node if first in n.output)
    pre = np.asarray(ctx[producer.input[0]], np.float64).reshape(ours.shape)
    over = (pre / step)[tuple(positions.T)]
    # qonnx from the first node that reads `first`, with lowbit's levels there
    feed = {k: v for k, v in ctx.items() if v is not None}
    feed[first] = (ours * step).astype(np.float32).reshape(np.shape(ctx[first]))
    start = next(n for n in mw.graph.node if first in n.input)
    ctx2 = execute_onnx(mw, feed, return_full_exec_context=True, start_node=start)
    continued = {}
    for t in order[order.index(first) + 1:order.index(first) + 1 + continue_for]:
        o, q, st = record[t]
        c = _levels(ctx2[t], o.shape, st)
        continued[t] = [int(np.count_nonzero(o != c)), int(np.count_nonzero(o != q)), int(o.size)]
    return {"tensor": first, "positions": positions, "qonnx_over_step": over,
            "tie_distance": float(np.max(np.abs(over - np.floor(over) - 0.5))),
            "lowbit_codes": ours[tuple(positions.T)], "qonnx_codes": theirs[tuple(positions.T)],
            "continued": continued}
