#!/usr/bin/env python3
"""End-to-end ResNet-18 at 224x224, batch 1: lowbit W2A2 vs torch fp32 / int8 and onnxruntime int8.

    python bench/bench_resnet18.py                 # threads 1 and all cores (one process each), then report
    python bench/bench_resnet18.py --threads 1 --out /tmp/r18.json     # one process, one thread count
    python bench/bench_resnet18.py --report bench/results/e2e_resnet18.json   # re-render Markdown/PNG

Models (same architecture, torchvision-style ResNet-18 defined here: torchvision is not needed):

* torch fp32: random weights (seeded); BatchNorm statistics calibrated on a few random batches.
* torch int8 ``x86`` and ``qnnpack``: post-training static quantization of that fp32 model
  (FX graph mode, default qconfig mapping of each engine, calibrated on the same batches).
* onnxruntime int8: the fp32 model exported to ONNX (TorchScript exporter), quantized statically
  (QDQ, per-channel weights, uint8 activations), CPU execution provider.
* lowbit W2A2: ``lowbit.qat.prepare(fp32, 2, 2, first_last_bits=8)`` (LSQ convention: first conv
  and fc at 8 bits), LSQ steps initialised on one calibration batch, ``lowbit.convert``.

Timing (the protocol of bench/README.md): one process per thread count; within it every contender runs
round-robin (``bench/common.time_interleaved``), warm, median of ``--rounds``. Every contender
takes the float32 NCHW image and returns float32 logits, so input quantization is timed on
every side (lowbit: quantize + pack; torch/onnxruntime int8: QuantizeLinear).

Then the lowbit model runs again with instrumentation to say where the time goes: native
kernels (GEMM with its fused epilogue), the epilogue's share (the same epilogue run on its own
over the layer's int32 sums), native activation packing and im2col gathers, NumPy graph ops (input quantization, pooling, adds),
and the rest = Python/NumPy glue. That breakdown is of the Python executor (node by node); the
native executor (lowbit.executor, one native call per forward pass, the default) gets its own from
its per-step timers: GEMM/conv steps (kernels with their fused epilogue; a GEMM whose output codes
the next layer packs also packs them, tile by tile, inside its step: docs/runtime.md), packing, graph
ops, and the rest (entering and leaving the call); its share outside the GEMM/conv steps is given twice:
from the per-step medians summed by kind (a sum of medians, below the median of the sums on a
noisy machine: the difference lands in "between steps"), and paired within each repeat (the
kernel steps' sum of one profiled run over the m(x) time measured just before it; median over
repeats). ``--lowbit-only`` times just the two lowbit executors.
Outputs (default): bench/results/e2e_resnet18.{json,md}
and e2e_resnet18_layers.png (per-layer time, stacked by component).
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import REPO, fingerprint, time_interleaved  # noqa: E402

RESULTS = HERE / "results"
NAMES = {"torch_fp32": "torch fp32", "torch_int8_x86": "torch int8 x86", "torch_int8_qnnpack": "torch int8 qnnpack",
         "ort_int8": "onnxruntime int8 (QDQ)", "lowbit_w2a2": "lowbit W2A2 (8-bit first/last)",
         "lowbit_w2a2_python": "lowbit W2A2, Python executor (node by node)"}


# ------------------------------------------------------------------------------------- models
def resnet18(num_classes=1000):
    import torch
    from torch import nn

    from lowbit.models import BasicBlock

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cfg, cin, layers = [(64, 1), (128, 2), (256, 2), (512, 2)], 64, []
            for cout, stride in cfg:
                layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
                cin = cout
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet18()


def build_models(threads, calib, want_ort=True, log=print, want_int8=True):
    import torch

    import lowbit
    from lowbit import qat

    torch.manual_seed(0)
    fp32 = resnet18()
    with torch.no_grad():
        fp32.train()
        for xb in calib:
            fp32(xb)
    fp32.eval()
    models, info = {"torch_fp32": fp32}, {}

    t0 = time.time()
    q = qat.prepare(fp32, w_bits=2, a_bits=2, first_last_bits=8)
    q.train()
    with torch.no_grad():
        q(calib[0])  # LSQ activation steps from the first batch (BN statistics move a little too)
    q.eval()
    m = lowbit.convert(q, calib[0][:1])
    models["lowbit_w2a2"], models["_qat"] = m, q
    info["lowbit_convert_s"] = round(time.time() - t0, 2)
    log(f"  lowbit: converted in {info['lowbit_convert_s']}s ({m!r})")

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    for engine in ("x86", "qnnpack") if want_int8 else ():
        if engine not in torch.backends.quantized.supported_engines:
            continue
        torch.backends.quantized.engine = engine
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = prepare_fx(copy.deepcopy(fp32), get_default_qconfig_mapping(engine), example_inputs=(calib[0],))
            with torch.no_grad():
                for xb in calib:
                    p(xb)
            models[f"torch_int8_{engine}"] = convert_fx(p)
    if want_ort:
        try:
            models["ort_int8"] = ort_int8(fp32, calib, threads)
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            info["ort_int8_error"] = f"{type(exc).__name__}: {exc}"
            log(f"  onnxruntime int8 unavailable: {info['ort_int8_error']}")
    return models, info


def ort_int8(fp32, calib, threads):
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    tmp = Path(tempfile.mkdtemp(prefix="lowbit_r18_"))
    f32, i8 = tmp / "r18.onnx", tmp / "r18_int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(fp32, calib[0][:1], str(f32), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": xb[i:i + 1].numpy()} for xb in calib for i in range(len(xb))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(f32), str(i8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(i8), so, providers=["CPUExecutionProvider"])
    sess._lowbit_bytes = i8.stat().st_size
    return sess


def callables(models, x):
    import torch

    xt = torch.from_numpy(x)
    out = {}
    for name, m in models.items():
        if name.startswith("_"):
            continue
        if name == "lowbit_w2a2":
            out[name] = (lambda m=m: m(x))
            out[name + "_python"] = (lambda m=m: m.run(x, executor="python"))
        elif name == "ort_int8":
            out[name] = (lambda s=m: s.run(None, {"x": x}))
        else:
            engine = name.rsplit("_", 1)[1] if name.startswith("torch_int8") else None

            def f(m=m, engine=engine):
                if engine:
                    torch.backends.quantized.engine = engine
                with torch.no_grad():
                    return m(xt)
            out[name] = f
    return out


def time_interleaved2(fns, rounds, warmup, min_time):
    """bench/common.time_interleaved (round-robin, rotating start, batches >= min_time, median) in
    milliseconds: wall time and this thread's CPU time per call. At one thread every contender
    computes on the calling thread (checked: thread/wall ~ 1 on an idle machine), so CPU time is
    the figure that other work on a shared machine disturbs least."""
    out = {}
    for name, st in time_interleaved(fns, rounds, warmup, min_time).items():
        out[name] = st if "error" in st else {"wall_median_ms": 1e3 * st["median_s"], "wall_min_ms": 1e3 * st["min_s"],
                                              "cpu_median_ms": 1e3 * st["cpu_median_s"], "reps": st["reps"]}
    return out


# ------------------------------------------------------------------------------ breakdown
def breakdown(m, x, repeats, thread_cpu=False):
    """Where lowbit's time goes: per node and per component (see the module docstring).

    The model runs node by node ``repeats`` times with perf_counter around every node and
    around the native calls (lowbit._core.gemm and the activation packers, wrapped for the
    occasion); per-node figures are medians. The fused epilogue's share of a conv/linear is
    estimated by the same epilogue run on its own (lowbit._core.epilogue, the code the kernels
    call per tile) over that layer's int32 sums, capped at the layer's native time.
    ``thread_cpu`` (one thread): the calling thread's CPU time instead of wall time."""
    from lowbit import _core
    from lowbit.conv import conv2d, linear

    clock = time.thread_time if thread_cpu else time.perf_counter
    native = {"gemm": 0.0, "pack": 0.0}
    originals = {}

    def wrap(name, kind):
        fn = getattr(_core, name)
        originals[name] = fn

        def w(*a, **k):
            t0 = clock()
            try:
                return fn(*a, **k)
            finally:
                native[kind] += clock() - t0
        setattr(_core, name, w)

    prepared = getattr(_core, "PreparedGemm", None)  # ops.Bound.native: the GEMM call of the prepared path
    prepared_originals = {}
    for name in ("run", "codes", "conv_codes") if prepared is not None else ():
        fn = prepared_originals[name] = getattr(prepared, name)

        def method(self, *a, _fn=fn, **k):
            t0 = clock()
            try:
                return _fn(self, *a, **k)
            finally:
                native["gemm"] += clock() - t0
        setattr(prepared, name, method)
    for name in dir(_core):
        if name in ("gemm", "epilogue", "dwconv", "conv_grouped"):
            wrap(name, "gemm")
        elif ("pack" in name or "gather" in name or "im2col" in name) and callable(getattr(_core, name)):
            wrap(name, "pack")
    samples = {n.name: {"t": [], "gemm": [], "pack": []} for n in m.nodes}
    totals, epi = [], {n.name: [] for n in m.nodes if n.op in ("conv", "linear")}
    try:
        m(x)
        for _ in range(repeats):
            values = {}
            t_run = clock()
            for n in m.nodes:
                g0, p0 = native["gemm"], native["pack"]
                t0 = clock()
                if n.op == "input":
                    values[n.name] = x.transpose(0, 2, 3, 1)
                else:
                    values[n.name] = m._run_node(n, [values[s] for s in n.inputs], False)
                s = samples[n.name]
                s["t"].append(clock() - t0)
                s["gemm"].append(native["gemm"] - g0)
                s["pack"].append(native["pack"] - p0)
            totals.append(clock() - t_run)
            for n in m.nodes:  # fused epilogue vs int32 output, same packed input
                if n.op not in ("conv", "linear"):
                    continue
                xin, w, ep, a = values[n.inputs[0]].as_packed(), m._weights(n), m._epilogue(n), n.attrs
                if a.get("residual"):
                    ep = copy.copy(ep)
                    ep.residual = np.ascontiguousarray(values[n.inputs[1]].reshape(-1, len(ep.scale)), np.float32)
                if n.op == "conv":
                    acc = conv2d(xin, w, a["stride"], a["padding"], a["dilation"])
                else:
                    acc = linear(xin, w)
                acc = np.ascontiguousarray(acc.reshape(-1, len(ep.scale)))
                t0 = clock()
                originals["epilogue"](acc, **ep.kwargs())
                epi[n.name].append(clock() - t0)
    finally:
        for name, fn in originals.items():
            setattr(_core, name, fn)
        for name, fn in prepared_originals.items():
            setattr(prepared, name, fn)
    med = lambda v: float(np.median(v)) if v else 0.0  # noqa: E731
    per_node = []
    for n in m.nodes:
        s = samples[n.name]
        t, g, p = med(s["t"]), med(s["gemm"]), med(s["pack"])
        row = {"name": n.name, "op": n.op, "ms": 1e3 * t, "kernel": n.kernel,
               "bits": (f"W{n.attrs['w_bits']}A{n.attrs['a_bits']}" if n.op in ("conv", "linear") else ""),
               "out_shape": list(n.out_shape) if n.out_shape else None}
        if n.op in ("conv", "linear"):
            e = min(max(med(epi[n.name]), 0.0), g)
            row.update(gemm_ms=1e3 * (g - e), epilogue_ms=1e3 * e, pack_ms=1e3 * p,
                       glue_ms=1e3 * max(0.0, t - g - p))
        else:
            row.update(numpy_ms=1e3 * t)
        per_node.append(row)
    tot_ms = 1e3 * med(totals)
    comp = {"kernels (native GEMM, excluding epilogue)": sum(r.get("gemm_ms", 0) for r in per_node),
            "fused epilogue (scale/bias/residual/clamp/requant)": sum(r.get("epilogue_ms", 0) for r in per_node),
            "activation packing and im2col gathers (native)": sum(r.get("pack_ms", 0) for r in per_node),
            "Python/NumPy glue in conv2d/linear (plans, checks, copies)":
                sum(r.get("glue_ms", 0) for r in per_node),
            "NumPy graph ops (input quantization, pooling, flatten)":
                sum(r.get("numpy_ms", 0) for r in per_node if r["op"] != "input")}
    comp["runtime loop and the rest"] = max(0.0, tot_ms - sum(comp.values()))
    return {"total_ms": tot_ms, "components_ms": comp, "per_node": per_node, "repeats": repeats}


def native_breakdown(m, x, repeats, thread_cpu):
    """Where the native executor's time goes. Each repeat times ``m(x)`` whole, the plan's
    native call alone, and the plan's per-step timers inside the native call; the figures
    are medians (per step, then summed by step kind), so one disturbed step on this shared
    machine does not move them. ``thread_cpu`` (one thread: every step computes on the
    caller): the calling thread's CPU time instead of wall time, as the timings above."""
    from lowbit import executor

    m(x)
    plan = executor.plan_for(m, x.shape)
    out = np.empty(plan.out_shape, np.float32)
    kinds = plan.core.step_kinds
    groups = {"GEMM and convolution kernels with their fused epilogue (native)": ("gemm", "dwconv", "conv_grouped"),
              "activation packing, im2col, channel slices (native)": ("pack", "im2col", "channel_slice"),
              "graph ops: quantize, pools, adds, layout (native)":
                  ("quantize", "dequantize", "layout", "add", "clamp", "affine", "pool")}
    clock = time.thread_time if thread_cpu else time.perf_counter
    whole, call, steps = [], [], []
    for _ in range(repeats):
        t0 = clock()
        m(x)
        t1 = clock()
        plan.core.run(x, out, False)
        t2 = clock()
        whole.append(t1 - t0)
        call.append(t2 - t1)
        steps.append(plan.core.run(x, out, "thread_cpu" if thread_cpu else True))
    med = lambda v: 1e3 * float(np.median(v))  # noqa: E731
    per_step = [med(col) for col in zip(*steps)]
    tot, native_call = med(whole), med(call)
    comp = {k: sum(t for t, kind in zip(per_step, kinds) if kind in members) for k, members in groups.items()}
    comp["between steps inside the native call"] = max(0.0, native_call - sum(per_step))
    comp["entering and leaving the native call (Python: checks, plan lookup, output array)"] = max(
        0.0, tot - native_call)
    kernels = comp["GEMM and convolution kernels with their fused epilogue (native)"]
    # The same share paired within each repeat: the kernel steps' sum of its profiled run over its
    # m(x) time (unprofiled, so the step timers' own cost counts nowhere). The figure above compares
    # a sum of per-step medians with a median total, which a noisy machine biases (a sum of medians
    # runs below the median of sums: the gap shows up as "between steps").
    inside = {kind for k, members in groups.items() if k.startswith("GEMM") for kind in members}
    paired = [1 - sum(t for t, kind in zip(s, kinds) if kind in inside) / w for s, w in zip(steps, whole)]
    return {"total_ms": tot, "components_ms": comp, "outside_kernels_share": 1 - kernels / tot,
            "outside_kernels_share_paired": float(np.median(paired)),
            "steps": len(kinds), "arena_bytes": plan.core.arena_bytes, "buffer_bytes": plan.core.buffer_bytes,
            "repeats": repeats, "clock": "thread CPU time" if thread_cpu else "wall time"}


def python_outside_share(bd):
    """Share of the Python executor's time outside the GEMM kernels and their fused epilogue."""
    c = bd["components_ms"]
    inside = c["kernels (native GEMM, excluding epilogue)"] + c["fused epilogue (scale/bias/residual/clamp/requant)"]
    return 1 - inside / bd["total_ms"]


# ----------------------------------------------------------------------------------- one run
def run_one(threads, rounds, min_time, want_ort, out_path, breakdown_repeats, lowbit_only=False):
    import torch

    torch.set_num_threads(threads)  # before any qnnpack use: it fixes its thread count at first use
    import lowbit

    lowbit.set_num_threads(threads)
    log = lambda *a: print(f"[threads={threads}]", *a, flush=True)  # noqa: E731
    rng = np.random.default_rng(0)
    calib = [torch.from_numpy(rng.normal(size=(4, 3, 224, 224)).astype(np.float32)) for _ in range(2)]
    log("building models ...")
    models, info = build_models(threads, calib, want_ort and not lowbit_only, log, want_int8=not lowbit_only)
    if lowbit_only:
        models.pop("torch_fp32")
    x = np.ascontiguousarray(calib[0][:1].numpy())

    # sanity: the lowbit model reproduces its fake-quant twin
    q, m = models["_qat"], models["lowbit_w2a2"]
    with torch.no_grad():
        ref = q(torch.from_numpy(x)).numpy()
    y = m(x)
    info["lowbit_vs_fakequant"] = {"max_abs_logit_diff": float(np.abs(y - ref).max()),
                                   "logit_std": float(ref.std()), "top1_same": bool(y.argmax() == ref.argmax())}
    log(f"  lowbit vs fake-quant on the input: {info['lowbit_vs_fakequant']}")

    fns = callables(models, x)
    info["loadavg_before_timing"] = list(os.getloadavg())
    log(f"timing {', '.join(fns)} interleaved ({rounds} rounds) ...")
    timings = time_interleaved2(fns, rounds=rounds, warmup=2, min_time=min_time)
    clock = "cpu" if threads == 1 else "wall"
    for v in timings.values():
        if "error" not in v:
            v["median_ms"] = v[f"{clock}_median_ms"]
            v["clock"] = "thread CPU time" if clock == "cpu" else "wall time"
    for k, v in timings.items():
        log(f"  {NAMES.get(k, k):<34} " + (f"{v['median_ms']:9.2f} ms ({v['clock']}; wall {v['wall_median_ms']:.2f})"
                                             if "median_ms" in v else v["error"]))
    info["loadavg_after_timing"] = list(os.getloadavg())
    log("lowbit breakdown ...")
    bd = breakdown(m, x, breakdown_repeats, threads == 1)
    bd["outside_kernels_share"] = python_outside_share(bd)
    nbd = native_breakdown(m, x, max(breakdown_repeats, 15), threads == 1)
    log(f"  Python executor: {bd['total_ms']:.2f} ms, {100 * bd['outside_kernels_share']:.1f}% outside GEMM kernels "
        f"+ fused epilogue; native executor: {nbd['total_ms']:.2f} ms, {100 * nbd['outside_kernels_share']:.1f}% "
        f"outside ({nbd['steps']} steps, arena {nbd['arena_bytes']:,d} B for {nbd['buffer_bytes']:,d} B of buffers); "
        f"paired per repeat: {100 * nbd['outside_kernels_share_paired']:.1f}% outside")
    for k, v in nbd["components_ms"].items():
        log(f"    {k:<72} {v:8.3f} ms")
    sizes = {}
    if "torch_fp32" in models:
        buf = io.BytesIO()
        torch.save(models["torch_fp32"].state_dict(), buf)
        sizes["torch_fp32"] = buf.getbuffer().nbytes
    for e in ("x86", "qnnpack"):
        if f"torch_int8_{e}" in models:
            buf = io.BytesIO()
            torch.save(models[f"torch_int8_{e}"].state_dict(), buf)
            sizes[f"torch_int8_{e}"] = buf.getbuffer().nbytes
    if "ort_int8" in models:
        sizes["ort_int8"] = models["ort_int8"]._lowbit_bytes
    from lowbit import io as lio

    sizes["lowbit_w2a2"] = len(lio.to_bytes(m))
    result = {"threads": threads, "batch": 1, "input": [1, 3, 224, 224], "timings": timings, "info": info,
              "lowbit_breakdown": bd, "lowbit_native_breakdown": nbd, "sizes_bytes": sizes, "rounds": rounds, "min_time_s": min_time,
              "lowbit_layers": m.layers(),
              "timed": "float32 NCHW image in, float32 logits out, on every side (input quantization included)"}
    for row in result["lowbit_layers"]:
        row["out_shape"] = list(row["out_shape"]) if row["out_shape"] else None
    Path(out_path).write_text(json.dumps(result, indent=1, default=str))
    return result


# ------------------------------------------------------------------------------------ report
def ratios(t):
    lb = t.get("lowbit_w2a2", {}).get("median_ms")
    out = {}
    for k, v in t.items():
        if k != "lowbit_w2a2" and lb and "median_ms" in v:
            out[k] = v["median_ms"] / lb
    return out


def report(doc, out_dir):
    runs = doc["runs"]
    lines = ["# ResNet-18 end to end, 224x224, batch 1", "",
             f"Machine: {doc['fingerprint'].get('cpu_model')} ({doc['fingerprint'].get('cpu_count')} CPUs), "
             f"commit `{str(doc['fingerprint'].get('git_commit'))[:10]}`"
             f"{' (dirty tree)' if doc['fingerprint'].get('git_dirty') else ''}, "
             f"torch {doc['fingerprint'].get('torch')}, onnxruntime {doc['fingerprint'].get('onnxruntime')}.", "",
             "Median latency (ms) of interleaved rounds; each model takes the float32 image and returns "
             "float32 logits (input quantization timed everywhere). At 1 thread the figure is the calling "
             "thread's CPU time (every contender computes on it; wall time in parentheses), which other work "
             "on this shared 2-core machine disturbs least; at more threads it is wall time. "
             "`lowbit speedup` = that model's time / lowbit's. Produced by `python bench/bench_resnet18.py`.", "",
             "| model | " + " | ".join(f"{r['threads']} thread{'s' if r['threads'] > 1 else ''} (ms)"
                                      f" | lowbit speedup" for r in runs) + " |",
             "|---|" + "---:|---:|" * len(runs)]
    for k in NAMES:
        if not any(k in r["timings"] for r in runs):
            continue
        cells = []
        for r in runs:
            v = r["timings"].get(k, {})
            rt = ratios(r["timings"]).get(k)
            if "median_ms" not in v:
                cells.append(v.get("error", "n/a"))
            elif v.get("clock") == "thread CPU time":
                cells.append(f"{v['median_ms']:.2f} (wall {v['wall_median_ms']:.2f})")
            else:
                cells.append(f"{v['median_ms']:.2f}")
            cells.append("1.00x" if k == "lowbit_w2a2" else (f"{rt:.2f}x" if rt else ""))
        lines.append(f"| {NAMES[k]} | " + " | ".join(cells) + " |")
    r1 = runs[0]
    sz = r1["sizes_bytes"]
    lines += ["", "Model sizes (bytes): " + ", ".join(f"{NAMES.get(k, k)} {v:,d}" for k, v in sz.items()), ""]
    for r in runs:
        nbd = r.get("lowbit_native_breakdown")
        if not nbd:
            continue
        lines += [f"## Native executor ({r['threads']} thread{'s' if r['threads'] > 1 else ''}, "
                  f"{nbd['total_ms']:.2f} ms per image; {100 * nbd['outside_kernels_share']:.1f}% outside the "
                  f"GEMM/conv kernels and their fused epilogue, paired per repeat "
                  f"{100 * nbd.get('outside_kernels_share_paired', float('nan')):.1f}%; Python executor "
                  f"{100 * r['lowbit_breakdown'].get('outside_kernels_share', float('nan')):.1f}%)", "",
                  "| component | ms | share |", "|---|---:|---:|"]
        for k, v in nbd["components_ms"].items():
            lines.append(f"| {k} | {v:.2f} | {100 * v / nbd['total_ms']:.1f}% |")
        lines.append("")
    for r in runs:
        bd = r["lowbit_breakdown"]
        lines += [f"## Where lowbit's time goes (Python executor, {r['threads']} thread{'s' if r['threads'] > 1 else ''}, "
                  f"{bd['total_ms']:.2f} ms per image)", "", "| component | ms | share |", "|---|---:|---:|"]
        for k, v in bd["components_ms"].items():
            lines.append(f"| {k} | {v:.2f} | {100 * v / bd['total_ms']:.1f}% |")
        lines.append("")
    bd = r1["lowbit_breakdown"]
    lines += [f"## Per layer ({r1['threads']} thread)", "",
              "| node | op | bits | kernel | out | ms | GEMM | epilogue | packing | glue |",
              "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    for row in bd["per_node"]:
        if row["op"] == "input":
            continue
        shp = "x".join(map(str, row["out_shape"][1:])) if row.get("out_shape") else ""
        if row["op"] in ("conv", "linear"):
            lines.append(f"| {row['name']} | {row['op']} | {row['bits']} | {row['kernel']} | {shp} | "
                         f"{row['ms']:.3f} | {row['gemm_ms']:.3f} | {row['epilogue_ms']:.3f} | "
                         f"{row['pack_ms']:.3f} | {row['glue_ms']:.3f} |")
        else:
            lines.append(f"| {row['name']} | {row['op']} |  |  | {shp} | {row['ms']:.3f} |  |  |  |  |")
    info = r1["info"]
    lines += ["", "Load average (1, 5, 15 min) around the timing: " + "; ".join(
        f"{r['threads']} thread(s): {r['info'].get('loadavg_before_timing')} -> {r['info'].get('loadavg_after_timing')}"
        for r in runs) + " (other work shares this machine; multi-thread figures suffer most).",
        "", f"Sanity: lowbit vs its PyTorch fake-quant twin on the timed image: "
                  f"{info.get('lowbit_vs_fakequant')}.", "",
              "![per-layer time](e2e_resnet18_layers.png)", ""]
    (out_dir / "e2e_resnet18.md").write_text("\n".join(lines))
    try:
        plot(doc, out_dir / "e2e_resnet18_layers.png")
    except Exception as exc:  # noqa: BLE001
        print(f"plot skipped: {exc}")


def plot(doc, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r1 = doc["runs"][0]
    rows = [r for r in r1["lowbit_breakdown"]["per_node"] if r["op"] != "input" and r["ms"] > 0.005]
    names = [r["name"] for r in rows]
    comps = [("gemm_ms", "GEMM kernel", "#1f77b4"), ("epilogue_ms", "fused epilogue", "#ff7f0e"),
             ("pack_ms", "packing / im2col", "#2ca02c"), ("glue_ms", "Python/NumPy glue", "#d62728"),
             ("numpy_ms", "NumPy graph op", "#9467bd")]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(15, max(6, 0.28 * len(rows))),
                                  gridspec_kw={"width_ratios": [3, 1.3]})
    left = np.zeros(len(rows))
    for key, label, color in comps:
        vals = np.array([r.get(key, 0.0) for r in rows])
        ax.barh(range(len(rows)), vals, left=left, label=label, color=color)
        left += vals
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{n} ({r['bits'] or r['op']})" for n, r in zip(names, rows)], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms per image (batch 1)")
    ax.set_title(f"lowbit W2A2 ResNet-18, per node, {r1['threads']} thread: "
                 f"{r1['lowbit_breakdown']['total_ms']:.1f} ms")
    ax.legend(loc="lower right", fontsize=8)
    # end-to-end latency per contender and thread count
    keys = [k for k in NAMES if any(k in r["timings"] and "median_ms" in r["timings"][k] for r in doc["runs"])]
    width = 0.8 / len(doc["runs"])
    for j, r in enumerate(doc["runs"]):
        vals = [r["timings"].get(k, {}).get("median_ms", 0) for k in keys]
        ax2.barh(np.arange(len(keys)) + j * width, vals, height=width, label=f"{r['threads']} thread(s)")
    ax2.set_yticks(np.arange(len(keys)) + width * (len(doc["runs"]) - 1) / 2)
    ax2.set_yticklabels([NAMES[k].replace(" (", "\n(") for k in keys], fontsize=7)
    ax2.invert_yaxis()
    ax2.set_xscale("log")
    ax2.set_xlabel("ms per image (median, log scale)")
    ax2.set_title("end to end, batch 1")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None, help="run one process at this thread count")
    p.add_argument("--thread-counts", default=None, help="driver: comma list (default: 1 and all cores)")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--min-time", type=float, default=0.3, help="seconds per timed batch of calls")
    p.add_argument("--breakdown-repeats", type=int, default=5)
    p.add_argument("--no-ort", action="store_true", help="skip onnxruntime")
    p.add_argument("--lowbit-only", action="store_true", help="time only lowbit's native and Python executors")
    p.add_argument("--out", default=None, help="one-process mode: result JSON path")
    p.add_argument("--out-dir", default=str(RESULTS), help="driver: where the JSON/Markdown/PNG go")
    p.add_argument("--report", default=None, help="re-render Markdown and PNG from a result JSON")
    args = p.parse_args(argv)
    if args.report:
        doc = json.loads(Path(args.report).read_text())
        report(doc, Path(args.report).parent)
        return 0
    if args.threads is not None:
        out = args.out or os.path.join(tempfile.gettempdir(), f"lowbit_r18_t{args.threads}.json")
        run_one(args.threads, args.rounds, args.min_time, not args.no_ort, out, args.breakdown_repeats,
                args.lowbit_only)
        return 0
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    counts = ([int(c) for c in args.thread_counts.split(",")] if args.thread_counts
              else sorted({1, ncpu}))
    runs = []
    for t in counts:
        out = os.path.join(tempfile.gettempdir(), f"lowbit_r18_t{t}_{os.getpid()}.json")
        cmd = [sys.executable, __file__, "--threads", str(t), "--rounds", str(args.rounds), "--min-time",
               str(args.min_time), "--breakdown-repeats", str(args.breakdown_repeats), "--out", out]
        if args.no_ort:
            cmd.append("--no-ort")
        if args.lowbit_only:
            cmd.append("--lowbit-only")
        subprocess.run(cmd, check=True, cwd=REPO)
        runs.append(json.loads(Path(out).read_text()))
    doc = {"benchmark": "resnet18_e2e", "fingerprint": fingerprint(), "runs": runs}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "e2e_resnet18.json").write_text(json.dumps(doc, indent=1, default=str))
    report(doc, out_dir)
    print(f"wrote {out_dir / 'e2e_resnet18.json'}, e2e_resnet18.md, e2e_resnet18_layers.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
