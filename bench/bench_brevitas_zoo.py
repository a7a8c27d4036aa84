#!/usr/bin/env python3
"""The Brevitas model zoo on lowbit: bit widths, kernels, agreement with qonnx, batch-1 latency.

    python bench/bench_brevitas_zoo.py                       # every model of tests/python/brevitas_zoo.py
    python bench/bench_brevitas_zoo.py --models cnv_2w2a tfc_2w2a --inputs 32
    python bench/bench_brevitas_zoo.py --report bench/results/brevitas_zoo.json   # re-render the table

For each model (built, calibrated and exported like the tests do: random weights, BatchNorm
statistics moved by 3 train-mode passes, ``export_qonnx(..., dynamo=False)``, into a temporary
directory): ``lowbit.from_qonnx``; the kernel each conv/linear ran; top-1 agreement with
qonnx's executor on ``--inputs`` random inputs end to end and layer by layer
(``compare_qonnx(isolate=True)``); and ``lowbit.qonnx.bench_qonnx`` (batch 1, one thread,
lowbit and onnxruntime on the same file's float lowering interleaved, median of ``--repeats``).
Writes bench/results/brevitas_zoo.{json,md}: the rows of the models measured replace theirs in an
existing JSON file, the others stay (each row records when it was measured, ``measured``).
The models of ``brevitas_zoo.HEAVY`` (the 416x416 VGGs: minutes each on 2 cores) run only when
named with ``--models``; they use 2 inputs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from collections import Counter

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))


def measure(name, n_inputs, repeats):
    import brevitas_zoo as bz
    import lowbit.qonnx as lbq

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{name}.onnx")
        t0 = time.perf_counter()
        bz.export(name, path)
        t_export = time.perf_counter() - t0
        x = bz.inputs(name, n_inputs, seed=1)
        bs = min(n_inputs, 32)
        r = lbq.compare_qonnx(path, x, batch_size=bs)
        iso = lbq.compare_qonnx(path, x, batch_size=bs, isolate=True)
        m = r["model"]
        m.run(x[:1])
        kernels = Counter()
        bits = Counter()
        for nd in m.nodes:
            if nd.op in ("conv", "linear"):
                kernels[nd.kernel.split("__")[0]] += 1
                bits[f"W{nd.attrs['w_bits']}A{nd.attrs['a_bits']}"] += 1
            elif nd.op in ("conv_f32", "linear_f32"):
                kernels[nd.kernel] += 1
                bits["F32"] += 1
        b = lbq.bench_qonnx(path, threads=1, batch=1, repeats=repeats, print_fn=None)
    return {"model": name, "inputs": n_inputs, "export_s": t_export, "layers": dict(bits), "kernels": dict(kernels),
            "top1_end_to_end": r["top1_agreement"], "top1_isolated": iso["top1_agreement"],
            "codes_differ_isolated": iso["codes_differ"], "codes_total": iso["codes_total"],
            "codes_differ_end_to_end": r["codes_differ"], "lowbit_ms": b["lowbit_ms"],
            "onnxruntime_float_ms": b["onnxruntime_float_ms"], "speedup_vs_float": b["speedup_vs_float"],
            "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "repeats": repeats}


def render(rows, meta):
    lines = [f"# Brevitas zoo on lowbit ({meta})", "",
             "| model | layers (bits) | kernels | top-1 vs qonnx, end to end | top-1, layer by layer | codes differing "
             "(layer by layer) | lowbit ms | onnxruntime float ms | speedup | measured |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        layers = ", ".join(f"{k} x{v}" for k, v in sorted(r["layers"].items()))
        kernels = ", ".join(f"{k} x{v}" for k, v in sorted(r["kernels"].items()))
        lines.append(f"| {r['model']} | {layers} | {kernels} | {r['top1_end_to_end']:.3f} ({r['inputs']}) | "
                     f"{r['top1_isolated']:.3f} | {r['codes_differ_isolated']} of {r['codes_total']} | "
                     f"{r['lowbit_ms']:.2f} | {r['onnxruntime_float_ms']:.2f} | {r['speedup_vs_float']:.2f}x | "
                     f"{r.get('measured', 'first run')} |")
    return "\n".join(lines) + "\n"


def main():
    import brevitas_zoo as bz

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=[k for k in bz.ZOO if k not in bz.NOT_RUN | bz.HEAVY])
    ap.add_argument("--inputs", type=int, default=32, help="random inputs for the parity columns (224x224: 8)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "brevitas_zoo.json"))
    ap.add_argument("--report", help="re-render the Markdown table of this JSON file")
    args = ap.parse_args()
    if args.report:
        data = json.load(open(args.report))
    else:
        warnings.filterwarnings("ignore")
        rows = []
        for name in args.models:
            h = bz.ZOO[name][2]
            n = args.inputs if h <= 32 else min(args.inputs, 8 if h <= 224 else 2)
            print(f"{name} ...", flush=True)
            rows.append(measure(name, n, args.repeats))
            print(json.dumps(rows[-1]), flush=True)
        import platform

        import lowbit

        meta = f"{platform.machine()} {platform.processor() or ''}, ISA tier {lowbit.info()['tier_cap']}, batch 1, " \
               f"1 thread, median of {args.repeats}"
        if os.path.exists(args.out):   # keep the rows of the models not measured now
            old = json.load(open(args.out))
            new = {r["model"] for r in rows}
            rows = [r for r in old["rows"] if r["model"] not in new] + rows
            order = list(bz.ZOO)
            rows.sort(key=lambda r: order.index(r["model"]) if r["model"] in order else len(order))
            meta = old["meta"] + f"; rows measured {time.strftime('%Y-%m-%d', time.gmtime())}: {', '.join(sorted(new))}"
        data = {"meta": meta, "rows": rows}
        with open(args.out, "w") as f:
            json.dump(data, f, indent=1)
    md = render(data["rows"], data["meta"])
    with open(os.path.splitext(args.report or args.out)[0] + ".md", "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
