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

Then the lowbit model (which runs on the native executor, lowbit.executor: one native call per
forward pass) runs again with its per-step timers on, to say where the time goes: GEMM/conv steps
(kernels with their fused epilogue; a GEMM whose output codes the next layer packs also packs them,
tile by tile, inside its step: docs/runtime.md), packing, graph ops, the time between steps, and
entering and leaving the call (Python). At 1 thread the step timers read the calling thread's CPU
time (as the timings), at more threads the wall clock. Its share outside the GEMM/conv steps is given
twice: from the per-step medians summed by kind (a sum of medians, below the median of the sums on a
noisy machine: the difference lands in "between steps"), and paired within each repeat (the kernel
steps' sum of one profiled run over the m(x) time measured just before it; median over repeats).
Per node: each node's steps summed within a profiled run (what ``m.run(x, profile=d)`` reports per
node), split by step kind, medians over ``--breakdown-repeats`` runs. ``--lowbit-only`` times just lowbit.
The JSON keeps the per-node rows under ``lowbit_native_breakdown.per_node``; ``--report`` renders
result files of this version and older ones (whose Python-executor breakdown, ``lowbit_breakdown``, and
"lowbit_w2a2_python" timings it ignores; they have no per-node table).
Outputs (default): bench/results/e2e_resnet18.{json,md}
and, where matplotlib is installed, e2e_resnet18_layers.png (per-node time, stacked by step kind).
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
         "ort_int8": "onnxruntime int8 (QDQ)", "lowbit_w2a2": "lowbit W2A2 (8-bit first/last)"}


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
# The native plan's step kinds, grouped for the breakdown; a kind no group names lands in OTHER.
STEP_GROUPS = {"kernels": ("GEMM and convolution kernels with their fused epilogue (native)",
                           ("gemm", "dwconv", "conv_grouped")),
               "packing": ("activation packing, im2col, channel slices (native)", ("pack", "im2col", "channel_slice")),
               "graph_ops": ("graph ops: quantize, pools, adds, layout (native)",
                             ("quantize", "dequantize", "layout", "add", "clamp", "affine", "pool"))}
OTHER = ("other", "other native steps")


def step_group(kind):
    """The STEP_GROUPS key of a native step kind (OTHER[0] when no group names it)."""
    return next((g for g, (_, members) in STEP_GROUPS.items() if kind in members), OTHER[0])


def native_breakdown(m, x, repeats, thread_cpu):
    """Where the native executor's time goes, in total and per node. Each repeat times ``m(x)``
    whole, the plan's native call alone, and the plan's per-step timers inside the native call
    (what ``m.run(x, profile=d)`` reports per node, on the wall clock); the figures are medians
    over repeats (per step, then summed by step kind; per node: the node's steps summed within a
    repeat, then the median), so one disturbed step on this shared machine does not move them.
    ``thread_cpu`` (one thread: every step computes on the caller): the calling thread's CPU time
    instead of wall time, as the timings above."""
    from lowbit import executor

    m(x)
    plan = executor.plan_for(m, x.shape)
    out = np.empty(plan.out_shape, np.float32)
    kinds = plan.core.step_kinds
    groups = [step_group(kind) for kind in kinds]
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
    labels = {g: label for g, (label, _) in STEP_GROUPS.items()}
    labels[OTHER[0]] = OTHER[1]
    comp = {label: sum(t for t, grp in zip(per_step, groups) if grp == g) for g, label in labels.items()}
    if not comp[OTHER[1]]:
        del comp[OTHER[1]]
    comp["between steps inside the native call"] = max(0.0, native_call - sum(per_step))
    comp["entering and leaving the native call (Python: checks, plan lookup, output array)"] = max(
        0.0, tot - native_call)
    kernels = comp[STEP_GROUPS["kernels"][0]]
    # The same share paired within each repeat: the kernel steps' sum of its profiled run over its
    # m(x) time (unprofiled, so the step timers' own cost counts nowhere). The figure above compares
    # a sum of per-step medians with a median total, which a noisy machine biases (a sum of medians
    # runs below the median of sums: the gap shows up as "between steps").
    paired = [1 - sum(t for t, grp in zip(s, groups) if grp == "kernels") / w for s, w in zip(steps, whole)]
    # Per node: its steps' seconds summed within each repeat (by the plan's step -> node names, as
    # Model.run's profile= sums them), split by step group; medians over repeats, in ms.
    per_node, stepless = [], []
    for n in m.nodes:
        mine = [i for i, name in enumerate(plan.step_names) if name == n.name]
        if not mine:  # the input node, and nodes the plan folds into another node's steps
            stepless.append(n.name)
            continue
        row = {"name": n.name, "op": n.op, "kernel": n.kernel, "steps": len(mine),
               "bits": f"W{n.attrs['w_bits']}A{n.attrs['a_bits']}" if n.op in ("conv", "linear") else "",
               "out_shape": list(n.out_shape) if n.out_shape else None,
               "ms": med([sum(s[i] for i in mine) for s in steps])}
        for g in labels:
            if any(groups[i] == g for i in mine):
                row[f"{g}_ms"] = med([sum(s[i] for i in mine if groups[i] == g) for s in steps])
        per_node.append(row)
    return {"total_ms": tot, "components_ms": comp, "outside_kernels_share": 1 - kernels / tot,
            "outside_kernels_share_paired": float(np.median(paired)), "per_node": per_node,
            "nodes_without_steps": stepless,
            "steps": len(kinds), "step_kinds": sorted(set(kinds)), "arena_bytes": plan.core.arena_bytes,
            "buffer_bytes": plan.core.buffer_bytes, "repeats": repeats,
            "clock": "thread CPU time" if thread_cpu else "wall time"}


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
    log("lowbit breakdown (native step timers) ...")
    nbd = native_breakdown(m, x, breakdown_repeats, threads == 1)
    log(f"  native executor: {nbd['total_ms']:.2f} ms, {100 * nbd['outside_kernels_share']:.1f}% outside the GEMM/conv "
        f"kernels and their fused epilogue ({nbd['steps']} steps, arena {nbd['arena_bytes']:,d} B for "
        f"{nbd['buffer_bytes']:,d} B of buffers); paired per repeat: {100 * nbd['outside_kernels_share_paired']:.1f}% "
        "outside")
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
              "lowbit_native_breakdown": nbd, "sizes_bytes": sizes, "rounds": rounds, "min_time_s": min_time,
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
                  f"{nbd['total_ms']:.2f} ms per image, {nbd.get('clock', 'wall time')}; "
                  f"{100 * nbd['outside_kernels_share']:.1f}% outside the GEMM/conv kernels and their fused "
                  f"epilogue, paired per repeat {100 * nbd.get('outside_kernels_share_paired', float('nan')):.1f}%)",
                  "", "| component | ms | share |", "|---|---:|---:|"]
        for k, v in nbd["components_ms"].items():
            lines.append(f"| {k} | {v:.2f} | {100 * v / nbd['total_ms']:.1f}% |")
        lines.append("")
    nbd = r1.get("lowbit_native_breakdown") or {}
    if "per_node" in nbd:  # result files from before the per-node native breakdown have none
        lines += [f"## Per node (native executor, {r1['threads']} thread, {nbd['clock']})", "",
                  "Each node's native steps (the per-node seconds `m.run(x, profile=d)` reports), medians over "
                  f"{nbd['repeats']} profiled runs, split by step kind (each column its own median). Nodes with no "
                  "step of their own (the input, and nodes whose work another node's step does, such as a "
                  "quantize that the GEMM before it fuses by storing its output as codes): "
                  + (", ".join(f"`{name}`" for name in nbd.get("nodes_without_steps", [])) or "none") + ".", "",
                  "| node | op | bits | kernel | out | steps | ms | GEMM/conv + epilogue | packing | graph op |",
                  "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
        cell = lambda row, g: f"{row[g + '_ms']:.3f}" if g + "_ms" in row else ""  # noqa: E731
        for row in nbd["per_node"]:
            shp = "x".join(map(str, row["out_shape"][1:])) if row.get("out_shape") else ""
            lines.append(f"| {row['name']} | {row['op']} | {row['bits']} | {row['kernel'] or ''} | {shp} | "
                         f"{row['steps']} | {row['ms']:.3f} | {cell(row, 'kernels')} | {cell(row, 'packing')} | "
                         f"{cell(row, 'graph_ops')} |")
    info = r1["info"]
    lines += ["", "Load average (1, 5, 15 min) around the timing: " + "; ".join(
        f"{r['threads']} thread(s): {r['info'].get('loadavg_before_timing')} -> {r['info'].get('loadavg_after_timing')}"
        for r in runs) + " (other work shares this machine; multi-thread figures suffer most).",
        "", f"Sanity: lowbit vs its PyTorch fake-quant twin on the timed image: "
                  f"{info.get('lowbit_vs_fakequant')}.", ""]
    try:  # the Markdown shows the plot only when this run drew it
        plot(doc, out_dir / "e2e_resnet18_layers.png")
        lines += ["![per-node time](e2e_resnet18_layers.png)", ""]
    except Exception as exc:  # noqa: BLE001 - matplotlib is optional
        print(f"plot skipped: {exc}")
    (out_dir / "e2e_resnet18.md").write_text("\n".join(lines))


def plot(doc, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r1 = doc["runs"][0]
    nbd = r1["lowbit_native_breakdown"]
    rows = [r for r in nbd["per_node"] if r["ms"] > 0.005]
    names = [r["name"] for r in rows]
    comps = [("kernels_ms", "GEMM/conv kernel + fused epilogue", "#1f77b4"),
             ("packing_ms", "packing / im2col / channel slice", "#2ca02c"),
             ("graph_ops_ms", "graph op (quantize, pool, add, layout)", "#9467bd"),
             ("other_ms", "other native step", "#7f7f7f")]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(15, max(6, 0.28 * len(rows))),
                                  gridspec_kw={"width_ratios": [3, 1.3]})
    left = np.zeros(len(rows))
    for key, label, color in comps:
        vals = np.array([r.get(key, 0.0) for r in rows])
        if not vals.any():
            continue
        ax.barh(range(len(rows)), vals, left=left, label=label, color=color)
        left += vals
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{n} ({r['bits'] or r['op']})" for n, r in zip(names, rows)], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"ms per image (batch 1, {nbd['clock']}, median per node)")
    ax.set_title(f"lowbit W2A2 ResNet-18, native executor per node, {r1['threads']} thread: "
                 f"{nbd['total_ms']:.1f} ms")
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
    p.add_argument("--breakdown-repeats", type=int, default=30, help="profiled native runs (medians)")
    p.add_argument("--no-ort", action="store_true", help="skip onnxruntime")
    p.add_argument("--lowbit-only", action="store_true", help="time only lowbit (no torch, no onnxruntime)")
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
    print(f"wrote {out_dir / 'e2e_resnet18.json'} and e2e_resnet18.md (and the plot, unless skipped above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
