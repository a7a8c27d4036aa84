"""Parity of lowbit with qonnx's own executor (needs the ``qonnx`` package): :func:`qonnx_execute`,
:func:`compare_qonnx` and :func:`trace_divergence`, all importable from ``lowbit.qonnx``."""
from __future__ import annotations

import numpy as np

from .pytorch import agreement
from .qonnx import _load, from_qonnx
from ..runtime.model import Model

__all__ = ["qonnx_execute", "compare_qonnx", "trace_divergence"]


def _qonnx_executor(model, batch):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.util.cleanup import cleanup_model

    mw = ModelWrapper(_load(model))
    if any(not o.type.tensor_type.shape.dim for o in mw.graph.output):
        mw = mw.transform(InferShapes())  # ChangeBatchSize needs the output shape
    return cleanup_model(mw, override_inpsize=int(batch))


def qonnx_execute(model, x, batch_size: int = 250, full: bool = False):
    """Run float32 NCHW ``x`` through qonnx's own executor (``execute_onnx``) after
    ``cleanup_model``; returns the output (or, with ``full``, (output, list of
    per-batch execution contexts))."""
    from qonnx.core.onnx_exec import execute_onnx

    x = np.asarray(x, np.float32)
    outs, ctxs, wrappers = [], [], {}
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        mw = wrappers.get(len(xb))
        if mw is None:
            mw = wrappers[len(xb)] = _qonnx_executor(model, len(xb))
        ctx = execute_onnx(mw, {mw.graph.input[0].name: xb}, return_full_exec_context=full)
        outs.append(np.asarray(ctx[mw.graph.output[0].name], np.float32))
        if full:
            ctxs.append(ctx)
    out = np.concatenate(outs)
    return (out, ctxs) if full else out


def compare_qonnx(model, x, lowbit_model: Model | None = None, batch_size: int = 250, codes: bool = True,
                  reference=None, requant_in_epilogue: bool = True, isolate: bool = False) -> dict:
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
    moves by one float ulp); ``isolate`` measures each layer without that cascade.
    """
    x = np.asarray(x, np.float32)
    cleaned = _qonnx_executor(model, batch_size).model
    lb = lowbit_model if lowbit_model is not None else from_qonnx(cleaned, requant_in_epilogue)
    if reference is not None:
        ref, ctxs, codes = np.asarray(reference, np.float32), [], False
    elif codes:
        ref, ctxs = qonnx_execute(cleaned, x, batch_size, full=True)
    else:
        ref, ctxs = qonnx_execute(cleaned, x, batch_size), []
    mine, diff = [], {}
    qmap = lb.meta.get("qonnx_codes", {})
    if isolate and not codes:
        raise ValueError("isolate: needs codes=True and no reference")
    for bi, i in enumerate(range(0, len(x), batch_size)):
        xb = x[i:i + batch_size]
        if codes:
            mine.append(_run_against(lb, xb, ctxs[bi], qmap, diff, isolate))
        else:
            mine.append(lb(xb))
    lo = np.concatenate(mine)
    if lo.shape != ref.shape:
        lo = lo.reshape(ref.shape)
    out = agreement(ref, lo, diff if codes else None)
    out.update(reference_logits=ref, lowbit_logits=lo, model=lb)
    if codes:
        out["code_tensors"] = len(diff)
    return out


def _run_against(lb: Model, x, ctx, qmap, diff, isolate, record=None):
    """Run ``lb`` on x node by node; at every node whose codes stand for a qonnx tensor in
    ``ctx``, count the levels that differ (into ``diff[tensor] = [differ, total]``) and, with
    ``isolate``, continue from qonnx's codes where they determine the levels. With a dict
    ``record``, also store ``record[tensor] = (lowbit's levels, qonnx's levels, step)`` (NCHW
    int64 levels; step float64, broadcastable). Returns the float32 output."""
    from ..runtime.model import CodeTensor

    vals = {}
    for n in lb.nodes:
        if n.op == "input":
            out = x.transpose(0, 2, 3, 1)
        else:
            out = lb._run_node(n, [vals[s] for s in n.inputs], False)
        tensor = qmap.get(n.name)
        if tensor is not None and tensor in ctx:
            q = n.attrs if n.op == "quantize" else n.attrs["requant"]
            lv = out.levels.astype(np.int64)
            step = np.asarray(q.get("channel_steps", q["step"]), np.float32).astype(np.float64)
            c = out.codes
            nhwc = c.ndim == 4
            ours = lv[c.transpose(0, 3, 1, 2) if nhwc else c]
            if step.size > 1:   # per-channel steps, axis 1
                step = step.reshape((1, -1) + (1,) * (ours.ndim - 2))
            theirs = np.rint(np.asarray(ctx[tensor], np.float64).reshape(ours.shape) / step).astype(np.int64)
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
    out = vals[lb.nodes[-1].name]
    if isinstance(out, CodeTensor):
        from ..runtime.model import dequantize

        out = dequantize(out)
    if out.ndim == 4:
        out = out.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out, np.float32)


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
        c = np.rint(np.asarray(ctx2[t], np.float64).reshape(o.shape) / st).astype(np.int64)
        continued[t] = [int(np.count_nonzero(o != c)), int(np.count_nonzero(o != q)), int(o.size)]
    return {"tensor": first, "positions": positions, "qonnx_over_step": over,
            "tie_distance": float(np.max(np.abs(over - np.floor(over) - 0.5))),
            "lowbit_codes": ours[tuple(positions.T)], "qonnx_codes": theirs[tuple(positions.T)],
            "continued": continued}
