"""QONNX -> standard float ONNX (``lowbit.qonnx.to_float_onnx``): every quantizer
lowered to float ops, so that onnxruntime runs the model (the baseline
:func:`lowbit.qonnx.bench_qonnx` times lowbit against)."""
from __future__ import annotations

import numpy as np

from .qonnx import QonnxConversionError, _attrs, _desc, _is_qop, _load, _onnx, quant_numpy
from ..quant import int_range

__all__ = ["to_float_onnx"]


def _first(v) -> float:
    """The first (for a scalar: the) value of a quantizer parameter."""
    return float(np.asarray(v).reshape(-1)[0])


def to_float_onnx(model, dynamic_batch: bool = True):
    """The QONNX model with every ``Quant``/``BipolarQuant``/``Trunc`` replaced by
    standard float ONNX ops (Div, Add, Clip, Round, Sub, Mul; Where for bipolar)
    and quantized constants (weights) folded into float initializers, so that
    onnxruntime runs it. Signed 1-bit ``Quant`` follows the QONNX definition
    (levels -1..0, as lowbit). ``dynamic_batch``: make the batch dimension free
    (Reshape targets whose first entry is the export batch become -1)."""
    onnx, nh = _onnx()
    from onnx import helper

    m = _load(model)
    g = m.graph
    consts = {i.name: nh.to_array(i) for i in g.initializer}
    orig_inits = set(consts)
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = nh.to_array(n.attribute[0].t)
    new_nodes, new_inits = [], []
    counter = [0]

    def cname(base):
        counter[0] += 1
        return f"{base}__lb{counter[0]}"

    def const_input(v):
        name = cname("c")
        new_inits.append(nh.from_array(np.asarray(v, np.float32), name))
        return name

    def emit(op, ins, out=None):
        out = out or cname(op.lower())
        new_nodes.append(helper.make_node(op, ins, [out]))
        return out

    for n in g.node:
        if not _is_qop(n):
            new_nodes.append(n)
            continue
        where = _desc(n)
        a = _attrs(n)
        ins = list(n.input)
        if not all(i in consts for i in ins[1:]):
            raise QonnxConversionError(f"{where}: quantizer parameters must be constants")
        p = [consts[i] for i in ins[1:]]
        out = n.output[0]
        if ins[0] in consts:  # a quantized constant: fold
            if n.op_type == "Quant":
                y, _ = quant_numpy(consts[ins[0]], p[0], p[1], p[2], bool(a.get("signed", 1)),
                                   bool(a.get("narrow", 0)), a.get("rounding_mode", "ROUND"))
            elif n.op_type == "BipolarQuant":
                y = (np.where(consts[ins[0]] >= 0, 1.0, -1.0) * p[0]).astype(np.float32)
            else:
                raise QonnxConversionError(f"{where}: Trunc of a constant is not supported")
            consts[out] = y
            new_inits.append(nh.from_array(y.astype(np.float32), out))
            continue
        x = ins[0]
        if n.op_type == "BipolarQuant":
            s = np.asarray(p[0], np.float32)
            cond = emit("GreaterOrEqual", [x, const_input(np.float32(0))])
            emit("Where", [cond, const_input(s), const_input(-s)], out)
            continue
        if len(p) not in ((3,) if n.op_type == "Quant" else (4, 5)):
            raise QonnxConversionError(f"{where}: unexpected number of inputs ({len(ins)})")
        signed, narrow = bool(a.get("signed", 1)), bool(a.get("narrow", 0))
        s, zp = p[0], p[1]
        shifted = np.any(np.asarray(zp) != 0)  # a zero point: added after the division, subtracted at the end
        y = emit("Div", [x, const_input(s)])
        if shifted:
            y = emit("Add", [y, const_input(zp)])
        if n.op_type == "Quant":
            clip_bits, mode, zp_out, out_s = round(_first(p[2])), a.get("rounding_mode", "ROUND"), zp, s
        else:  # Trunc: v2 has an output scale and clips, v1 rescales by the scale
            v2 = len(p) == 5
            out_s, out_b = (p[3] if v2 else s), p[-1]
            t = float(2.0 ** np.round(np.log2(np.float64(_first(out_s)) / np.float64(_first(s))))) if v2 \
                else 2.0 ** (_first(p[2]) - _first(out_b))
            y = emit("Round", [y])
            y = emit("Div", [y, const_input(np.float32(t))])
            clip_bits, mode = (round(_first(out_b)) if v2 else None), a.get("rounding_mode", "FLOOR")
            zp_out = np.asarray(zp, np.float32) / np.float32(t)
        if clip_bits is not None:
            y = emit("Clip", [y] + [const_input(np.float32(v)) for v in int_range(clip_bits, signed, narrow)])
        round_op = {"ROUND": "Round", "HALF_EVEN": "Round", "FLOOR": "Floor", "CEIL": "Ceil"}.get(
            (mode or "ROUND").upper())
        if round_op is None:
            raise QonnxConversionError(f"{where}: rounding_mode {mode} has no float ONNX lowering here")
        y = emit(round_op, [y])
        if shifted:
            y = emit("Sub", [y, const_input(zp_out)])
        emit("Mul", [y, const_input(out_s)], out)
    # keep initializers that something still reads
    used = {i for n in new_nodes for i in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used and i.name not in {x.name for x in new_inits}]
    del g.node[:]
    g.node.extend(new_nodes)
    del g.initializer[:]
    g.initializer.extend(keep + [i for i in new_inits if i.name in used])
    ins = [i for i in g.input if i.name not in orig_inits]   # the real inputs only
    del g.input[:]
    g.input.extend(ins)
    del g.value_info[:]
    if dynamic_batch and g.input:
        batch = g.input[0].type.tensor_type.shape.dim[0]
        export_batch = batch.dim_value if batch.HasField("dim_value") else None
        batch.dim_param = "N"
        for o in g.output:
            if o.type.tensor_type.shape.dim:
                o.type.tensor_type.shape.dim[0].dim_param = "N"
        for n in g.node:
            if n.op_type == "Reshape" and n.input[1] in consts:
                t = np.asarray(consts[n.input[1]]).astype(np.int64).reshape(-1)
                if t.size and t[0] == export_batch and 0 not in t[1:]:
                    t = t.copy()
                    t[0] = 0  # copy the batch dimension of the input
                    nm = cname("shape")
                    g.initializer.append(nh.from_array(t, nm))
                    n.input[1] = nm
                    for at in n.attribute:
                        if at.name == "allowzero":
                            at.i = 0
    opset = [o for o in m.opset_import if o.domain in ("", "ai.onnx")]
    del m.opset_import[:]
    m.opset_import.extend(opset)
    return m
