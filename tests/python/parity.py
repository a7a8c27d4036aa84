"""The one rule for parity between lowbit and a float reference (qonnx's executor, or
the PyTorch fake-quant model a Model was converted from), sample by sample
(test_qonnx.py, test_brevitas_zoo.py and test_model.py use it; no test tolerates
arbitrary logits):

* codes: lowbit's integer sums are exact, the reference's float32 ones are rounded,
  so a code may differ only where the reference's value before the quantizer lies within
  float rounding of a rounding boundary (k + 1/2 for ROUND, an integer for FLOOR/CEIL,
  0 for BipolarQuant). End to end, only the first quantizer where a sample differs
  is held to that (the flipped code changes every later layer's inputs); with
  ``isolate`` (qonnx only: each layer continues from qonnx's codes) every quantizer is.
* logits: every sample whose codes all agree has every logit within float rounding
  of the reference's (``rel``: a different summation order), none excepted. Samples with a
  flipped code are returned (``tie_samples``) for the test to bound.
"""
import numpy as np

# float32 rounding of a value about |v| quantizer steps, in steps
TIE_REL = 1e-5


def boundary_distance(v, rounding_mode: str):
    """Distance (in steps) of v = value / step from the nearest rounding boundary."""
    frac = v - np.floor(v)
    if rounding_mode == "ROUND":
        return np.abs(frac - 0.5)
    return np.minimum(frac, 1.0 - frac)  # FLOOR / CEIL flip at integers


def _quantizer_input(graph, tensor, ctx, shape):
    """(qonnx's float value before the quantizer producing ``tensor``, its rounding mode). A
    ``tensor`` made by a MaxPool of a quantizer's output (lowbit pools before quantizing: max
    commutes with a monotone quantizer) has the max-pooled value before that quantizer."""
    producer = next(n for n in graph.node if tensor in n.output)
    if producer.op_type == "MaxPool":
        from onnx import helper

        from lowbit.runtime.model import maxpool, pad_nhwc

        pre, mode = _quantizer_input(graph, producer.input[0], ctx, None)
        a = {at.name: helper.get_attribute_value(at) for at in producer.attribute}
        t, l, b, r = a.get("pads", [0, 0, 0, 0])
        x = pad_nhwc(pre.transpose(0, 2, 3, 1), [t, l, b, r], "-inf")
        y = maxpool(x, {"kernel": list(a["kernel_shape"]), "stride": list(a.get("strides", [1, 1])),
                        "padding": [0, 0], "dilation": list(a.get("dilations", [1, 1]))})
        return y.transpose(0, 3, 1, 2).reshape(shape), mode
    mode = next((a.s.decode() for a in producer.attribute if a.name == "rounding_mode"), "ROUND")
    if producer.op_type == "BipolarQuant":
        mode = "SIGN"
    pre = np.asarray(ctx[producer.input[0]], np.float64)
    return (pre if shape is None else pre.reshape(shape)), mode


def _check_codes(records, n: int, isolate: bool) -> np.ndarray:
    """Assert the codes rule on one batch of ``n`` samples. ``records``: in the lowbit model's
    node order, (tensor, lowbit codes or levels, reference's, value_over_step()) with the
    sample axis first; value_over_step() returns (the reference's value before the quantizer
    / its step, rounding mode: ROUND, FLOOR, CEIL or SIGN, where the value is the input itself).
    Returns the (n,) mask of samples with a differing code."""
    flipped_samples = np.zeros(n, bool)
    for tensor, ours, theirs, value_over_step in records:
        flipped = ours != theirs
        if not flipped.any():
            continue
        # end to end, a sample is held to the rule at its first differing quantizer only
        held = flipped if isolate else flipped & ~flipped_samples.reshape((-1,) + (1,) * (ours.ndim - 1))
        if held.any():
            v, mode = value_over_step()
            v = v[held]
            dist = np.abs(v) if mode == "SIGN" else boundary_distance(v, mode)
            bad = dist > TIE_REL * np.maximum(np.abs(v), 1.0)
            assert not bad.any(), (f"{tensor}: codes differ away from a rounding tie ({mode}): value / step "
                                   f"{v[bad][:4]}, lowbit {ours[held][bad][:4]}, reference {theirs[held][bad][:4]}")
        flipped_samples |= flipped.reshape(n, -1).any(axis=1)
    return flipped_samples


def _check_logits(out, ref, tie_samples, rel: float) -> float:
    """Assert that every logit of every sample outside ``tie_samples`` is within ``rel`` float
    rounding of the reference; returns the top-1 agreement over all samples."""
    agree = np.ones(len(out), bool)
    agree[tie_samples] = False
    a, b = out[agree].astype(np.float64), ref[agree].astype(np.float64)
    far = np.abs(a - b) > rel * (1 + np.abs(b))
    assert not far.any(), (f"logits differ beyond float rounding (rel {rel}) on samples whose codes all agree: "
                           f"max |diff| {np.abs(a - b).max()}")
    flat_out, flat_ref = out.reshape(len(out), -1), ref.reshape(len(ref), -1)
    return float(np.mean(flat_out.argmax(1) == flat_ref.argmax(1)))


def check_qonnx_parity(model, x, batch_size: int = 250, isolate: bool = False, rel: float = 1e-5,
                       requant_in_epilogue: bool = True, lowbit_model=None) -> dict:
    """Run lowbit and qonnx's executor on float32 NCHW ``x`` and assert the rule above at
    every quantizer lowbit materializes. Returns ``lowbit_logits``, ``reference_logits``,
    ``model``, ``tie_samples`` (indices of samples with a code flipped at a tie),
    ``top1_agreement``, ``codes_differ``, ``codes_total`` and ``code_tensors``."""
    import lowbit.qonnx as lbq
    from lowbit.qonnx_parity import _run_against

    x = np.asarray(x, np.float32)
    mw = lbq._qonnx_executor(model, batch_size)
    lb = lowbit_model if lowbit_model is not None else lbq.from_qonnx(mw.model, requant_in_epilogue)
    qmap = lb.meta.get("qonnx_codes", {})
    ref, ctxs = lbq.qonnx_execute(mw.model, x, batch_size, full=True)
    outs, tie_samples, differ, total, tensors = [], [], 0, 0, set()
    for bi, start in enumerate(range(0, len(x), batch_size)):
        xb, ctx, record = x[start:start + batch_size], ctxs[bi], {}
        outs.append(_run_against(lb, xb, ctx, qmap, {}, isolate, record))
        records = []
        for tensor, (ours, theirs, step) in record.items():  # lowbit's node order
            tensors.add(tensor)
            total += ours.size
            differ += int(np.count_nonzero(ours != theirs))

            def value_over_step(tensor=tensor, shape=ours.shape, step=step):
                pre, mode = _quantizer_input(mw.graph, tensor, ctx, shape)
                return (pre if mode == "SIGN" else pre / step), mode
            records.append((tensor, ours, theirs, value_over_step))
        tie_samples += (start + np.flatnonzero(_check_codes(records, len(xb), isolate))).tolist()
    out = np.concatenate(outs).reshape(ref.shape)
    return {"lowbit_logits": out, "reference_logits": ref, "model": lb, "tie_samples": tie_samples,
            "top1_agreement": _check_logits(out, ref, tie_samples, rel),
            "codes_differ": differ, "codes_total": total, "code_tensors": len(tensors)}


def check_torch_parity(qat, model, x, batch_size: int = 250, rel: float = 1e-5, reference: bool = False) -> dict:
    """The same rule between ``model`` and the PyTorch fake-quant ``qat`` it was converted
    from, end to end, at the input of every quantized layer (torch's codes:
    ``act_quant.codes(input)``, its value ``input / step`` computed by torch in float32).
    ``reference``: lowbit's NumPy reference executor instead of its kernels. Returns
    ``lowbit_logits``, ``torch_logits``, ``tie_samples``, ``top1_agreement``, ``codes_differ``
    and ``codes_total``."""
    import torch

    mods = dict(qat.named_modules())
    layers = [n for n in model.nodes if n.op in ("conv", "linear") and hasattr(mods.get(n.attrs.get("module")),
                                                                              "act_quant")]
    # per module, what its calls quantized, in call order: a module called twice (shared) is two
    # layers of the model, in the same (execution) order
    captured, handles = {}, []

    def nhwc(t):
        return (t.permute(0, 2, 3, 1) if t.dim() == 4 else t).contiguous().cpu().numpy()

    for name in dict.fromkeys(nd.attrs["module"] for nd in layers):
        def hook(module, inputs, name=name):
            aq, xin = module.act_quant, inputs[0]

            def value_over_step():  # computed only where codes differ
                if aq.binary_signed:
                    return nhwc(xin).astype(np.float64), "SIGN"
                return nhwc(xin / aq.effective_step(xin)).astype(np.float64), "ROUND"
            captured.setdefault(name, []).append((nhwc(aq.codes(xin)[0]), value_over_step))
        handles.append(mods[name].register_forward_pre_hook(hook))
    x = np.asarray(x, np.float32)
    outs, refs, tie_samples, differ, total = [], [], [], 0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                xb = x[start:start + batch_size]
                captured.clear()
                refs.append(qat(torch.from_numpy(xb)).float().numpy())
                trace = model.trace(xb, reference=reference)
                outs.append(model.run(xb, reference=reference))
                records, calls = [], {}
                for nd in layers:
                    module = nd.attrs["module"]
                    theirs, value_over_step = captured[module][calls.setdefault(module, 0)]
                    calls[module] += 1
                    ours = trace[nd.inputs[0]]
                    total += ours.size
                    differ += int(np.count_nonzero(ours != theirs))
                    records.append((nd.name, ours, theirs, value_over_step))
                tie_samples += (start + np.flatnonzero(_check_codes(records, len(xb), False))).tolist()
    finally:
        for h in handles:
            h.remove()
    out, ref = np.concatenate(outs), np.concatenate(refs)
    return {"lowbit_logits": out, "torch_logits": ref, "tie_samples": tie_samples,
            "top1_agreement": _check_logits(out, ref, tie_samples, rel),
            "codes_differ": differ, "codes_total": total}
