"""The one rule for parity between lowbit and qonnx's executor, sample by sample
(test_qonnx.py and test_brevitas_zoo.py use it; no test tolerates arbitrary logits):

* codes: lowbit's integer sums are exact, qonnx's float32 ones are rounded, so a
  code may differ only where qonnx's value before the quantizer lies within float
  rounding of a rounding boundary (k + 1/2 for ROUND, an integer for FLOOR/CEIL,
  0 for BipolarQuant). End to end, only the first quantizer where a sample differs
  is held to that (the flipped code changes every later layer's inputs); with
  ``isolate`` (each layer continues from qonnx's codes) every quantizer is.
* logits: every sample whose codes all agree has every logit within float rounding
  of qonnx's (``rel``: a different summation order), none excepted. Samples with a
  flipped code are returned (``tie_samples``) for the test to bound.
"""
import numpy as np

import lowbit.qonnx as lbq

# float32 rounding of a value about |v| quantizer steps, in steps
TIE_REL = 1e-5


def boundary_distance(v, rounding_mode: str):
    """Distance (in steps) of v = value / step from the nearest rounding boundary."""
    frac = v - np.floor(v)
    if rounding_mode == "ROUND":
        return np.abs(frac - 0.5)
    return np.minimum(frac, 1.0 - frac)  # FLOOR / CEIL flip at integers


def _quantizer_input(graph, tensor, ctx, shape):
    """(qonnx's float value before the quantizer producing ``tensor``, its rounding mode)."""
    producer = next(n for n in graph.node if tensor in n.output)
    mode = next((a.s.decode() for a in producer.attribute if a.name == "rounding_mode"), "ROUND")
    if producer.op_type == "BipolarQuant":
        mode = "SIGN"
    return np.asarray(ctx[producer.input[0]], np.float64).reshape(shape), mode


def check_qonnx_parity(model, x, batch_size: int = 250, isolate: bool = False, rel: float = 1e-5,
                       requant_in_epilogue: bool = True, lowbit_model=None) -> dict:
    """Run lowbit and qonnx's executor on float32 NCHW ``x`` and assert the rule above.
    Returns ``lowbit_logits``, ``reference_logits``, ``model``, ``tie_samples`` (indices of
    samples with a code flipped at a tie), ``top1_agreement``, ``codes_differ``, ``codes_total``
    and ``code_tensors``."""
    x = np.asarray(x, np.float32)
    mw = lbq._qonnx_executor(model, batch_size)
    lb = lowbit_model if lowbit_model is not None else lbq.from_qonnx(mw.model, requant_in_epilogue)
    qmap = lb.meta.get("qonnx_codes", {})
    ref, ctxs = lbq.qonnx_execute(mw.model, x, batch_size, full=True)
    outs, tie_samples, differ, total, tensors = [], [], 0, 0, set()
    for bi, start in enumerate(range(0, len(x), batch_size)):
        xb, ctx, record = x[start:start + batch_size], ctxs[bi], {}
        outs.append(lbq._run_against(lb, xb, ctx, qmap, {}, isolate, record))
        checked = np.zeros(len(xb), bool)  # end to end: samples whose first differing quantizer was checked
        for tensor, (ours, theirs, step) in record.items():  # lowbit's node order
            tensors.add(tensor)
            total += ours.size
            flipped = ours != theirs
            if not flipped.any():
                continue
            differ += int(flipped.sum())
            held = flipped if isolate else flipped & ~checked.reshape((-1,) + (1,) * (ours.ndim - 1))
            if held.any():
                pre, mode = _quantizer_input(mw.graph, tensor, ctx, ours.shape)
                v = (pre / step)[held] if mode != "SIGN" else pre[held]
                dist = np.abs(v) if mode == "SIGN" else boundary_distance(v, mode)
                bad = dist > TIE_REL * np.maximum(np.abs(v), 1.0)
                assert not bad.any(), (f"{tensor}: codes differ away from a rounding tie ({mode}): value / step "
                                       f"{v[bad][:4]}, lowbit {ours[held][bad][:4]}, qonnx {theirs[held][bad][:4]}")
            checked |= flipped.reshape(len(xb), -1).any(axis=1)
        tie_samples += (start + np.flatnonzero(checked)).tolist()
    out = np.concatenate(outs).reshape(ref.shape)
    agree = np.ones(len(x), bool)
    agree[tie_samples] = False
    far = np.abs(out[agree].astype(np.float64) - ref[agree]) > rel * (1 + np.abs(ref[agree].astype(np.float64)))
    assert not far.any(), (f"logits differ beyond float rounding (rel {rel}) on samples whose codes all agree: "
                           f"max |diff| {np.abs(out[agree] - ref[agree]).max()}")
    flat_out, flat_ref = out.reshape(len(out), -1), ref.reshape(len(ref), -1)
    return {"lowbit_logits": out, "reference_logits": ref, "model": lb, "tie_samples": tie_samples,
            "top1_agreement": float(np.mean(flat_out.argmax(1) == flat_ref.argmax(1))),
            "codes_differ": differ, "codes_total": total, "code_tensors": len(tensors)}
