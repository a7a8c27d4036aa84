#!/usr/bin/env python3
"""The Brevitas model zoo on lowbit: bit widths, kernels, agreement with qonnx, batch-1 latency.

    python bench/bench_brevitas_zoo.py                       # every model of tests/python/brevitas_zoo.py
    python bench/bench_brevitas_zoo.py --models cnv_2w2a tfc_2w2a --inputs 32
    python bench/bench_brevitas_zoo.py --models quant_mobilenet_v1_4b --no-latency   # parity columns only
    python bench/bench_brevitas_zoo.py --report bench/results/brevitas_zoo.json   # re-render the table

For each model (built, calibrated and exported like the tests do: random weights, BatchNorm
statistics moved by 3 train-mode passes, ``export_qonnx(..., dynamo=False)``, into a temporary
directory): ``lowbit.from_qonnx``; the kernel each conv/linear ran; top-1 agreement on
``--inputs`` random inputs, end to end, of lowbit with qonnx's executor in float32 (the graph as
exported) and in float64 (``lowbit.qonnx_parity.compare_precisions``: the yardstick for rounding
ties), and of qonnx's float32 run with its float64 run; the codes that differ end to end from the
float64 run (lowbit's, qonnx float32's); agreement layer by layer (``compare_qonnx(isolate=True)``);
and ``lowbit.qonnx.bench_qonnx`` (batch 1, one thread, lowbit and onnxruntime on the same file's
float lowering interleaved, median of ``--repeats``).
Writes bench/results/brevitas_zoo.{json,md}: the rows of the models measured replace theirs in an
existing JSON file, the others stay (each row records when it was measured, ``measured``; with
``--no-latency`` only the parity columns are replaced and the row's latency and ``measured`` stay,
``parity_measured`` says when). The models of ``brevitas_zoo.HEAVY`` (the 416x416 VGGs: minutes
each on 2 cores) run only when named with ``--models``; they use 2 inputs.
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


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
from common import fingerprint  # noqa: E402  (bench/ is on the path when a script here runs)


def stamp():
    """When a column was measured, and on which commit (``+`` when the tree had changes)."""
    fp = fingerprint()
    commit = (fp["git_commit"] or "unknown")[:7] + ("+" if fp["git_dirty"] else "")
    return f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {commit}"


def measure(name, n_inputs, repeats, latency=True, parity=True):
    import brevitas_zoo as bz
    import lowbit.qonnx as lbq
    from lowbit.qonnx_parity import compare_precisions

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{name}.onnx")
        t0 = time.perf_counter()
        bz.export(name, path)
        t_export = time.perf_counter() - t0
        x = bz.inputs(name, n_inputs, seed=1)
        h = bz.ZOO[name][2]   # batches that keep qonnx's float32 and float64 contexts to a few GB
        bs = min(n_inputs, 8) if h <= 32 else 4 if h <= 224 else 1
        if parity:
            p = compare_precisions(path, x, batch_size=bs)
            iso = lbq.compare_qonnx(path, x, batch_size=bs, isolate=True)
            m = p["model"]
        else:
            m = lbq.from_qonnx(path)
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
        row = {"model": name, "export_s": t_export, "layers": dict(bits), "kernels": dict(kernels),
               "measured": stamp()}
        if parity:
            row.update({"inputs": n_inputs, "top1_end_to_end": p["top1"]["lowbit_vs_float32"],
               "top1_vs_float64": p["top1"]["lowbit_vs_float64"],
               "top1_float32_vs_float64": p["top1"]["float32_vs_float64"],
               "codes_differ_end_to_end": p["codes_differ"]["lowbit_vs_float32"],
               "codes_differ_vs_float64": p["codes_differ"]["lowbit_vs_float64"],
               "codes_differ_float32_vs_float64": p["codes_differ"]["float32_vs_float64"],
               "first_differing_vs_float64": p["first_differing"]["lowbit_vs_float64"],
               "first_differing_float32_vs_float64": p["first_differing"]["float32_vs_float64"],
               "tie_distance_vs_float64": p["tie_distance"]["lowbit_vs_float64"],
               "reference_evaluator_ops": p["reference_evaluator_ops"],
               "top1_isolated": iso["top1_agreement"], "codes_differ_isolated": iso["codes_differ"],
               "codes_total": iso["codes_total"],
               "parity_measured": row.pop("measured")})
        if latency:
            b = lbq.bench_qonnx(path, threads=1, batch=1, repeats=repeats, fastest=True, print_fn=None)
            row.update(lowbit_ms=b["lowbit_ms"], onnxruntime_float_ms=b["onnxruntime_float_ms"],
                       speedup_vs_float=b["speedup_vs_float"], lowbit_fastest_ms=b["lowbit_fastest_ms"],
                       speedup_fastest_vs_float=b["speedup_fastest_vs_float"], measured=row.get("parity_measured", row.get("measured")),
                       repeats=repeats)
    return row


def describe(meta):
    """The header line of the table: the machine (bench/common.py fingerprint, ``lowbit info``)
    the rows were measured on. An old file's meta was a free-text string."""
    if isinstance(meta, str):
        return meta
    isa = " ".join(f for f, on in meta["isa"].items() if on)
    return (f"{meta['cpu_model']} ({isa}), lowbit ISA tier {meta['tier_cap']}; latency at batch 1, 1 thread, "
            f"lowbit and onnxruntime interleaved, the median of the rounds each row names")


def render(rows, meta):
    lines = ["# Brevitas zoo on lowbit", "", f"Machine: {describe(meta)}.", "",
             "Each row says when (and at which commit) its parity columns and its latency were measured.", "",
             "| model | layers (bits) | kernels | top-1 vs qonnx float32, end to end | top-1 vs qonnx float64, "
             "end to end | top-1 qonnx float32 vs float64 | codes differing from float64 (lowbit / qonnx float32) | "
             "top-1, layer by layer | codes differing (layer by layer) | lowbit ms | onnxruntime float ms | speedup | "
             "lowbit `fastest` ms (speedup) | parity measured | latency measured |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]

    def latency_measured(r):
        if "lowbit_ms" not in r:
            return "-"
        rounds = f", median of {r['repeats']}" if r.get("repeats") else ""
        return f"{r.get('measured', 'first run')}{rounds}"

    def fastest(r):   # lowbit under lowbit.use(strategy="fastest"), when measured
        if r.get("lowbit_fastest_ms") is None:
            return "-"
        return f"{r['lowbit_fastest_ms']:.2f} ({r['speedup_fastest_vs_float']:.2f}x)"

    def opt(r, key, fmt="{:.3f}"):
        return fmt.format(r[key]) if r.get(key) is not None else "-"

    for r in rows:
        layers = ", ".join(f"{k} x{v}" for k, v in sorted(r["layers"].items()))
        kernels = ", ".join(f"{k} x{v}" for k, v in sorted(r["kernels"].items()))
        f64_codes = (f"{r['codes_differ_vs_float64']} / {r['codes_differ_float32_vs_float64']} of {r['codes_total']}"
                     if "codes_differ_vs_float64" in r else "-")
        lines.append(f"| {r['model']} | {layers} | {kernels} | {r['top1_end_to_end']:.3f} ({r['inputs']}) | "
                     f"{opt(r, 'top1_vs_float64')} | {opt(r, 'top1_float32_vs_float64')} | {f64_codes} | "
                     f"{r['top1_isolated']:.3f} | {r['codes_differ_isolated']} of {r['codes_total']} | "
                     f"{opt(r, 'lowbit_ms', '{:.2f}')} | {opt(r, 'onnxruntime_float_ms', '{:.2f}')} | "
                     f"{opt(r, 'speedup_vs_float', '{:.2f}x')} | {fastest(r)} | {r.get('parity_measured', '-')} | "
                     f"{latency_measured(r)} |")
    return "\n".join(lines) + "\n"


def main():
    import brevitas_zoo as bz

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=[k for k in bz.ZOO if k not in bz.NOT_RUN | bz.HEAVY])
    ap.add_argument("--inputs", type=int, default=32, help="random inputs for the parity columns (224x224: 8)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--no-latency", action="store_true",
                    help="measure only the parity columns; keep the rows' latency (and 'measured') as they are")
    ap.add_argument("--latency-only", action="store_true",
                    help="measure only the latency (and the kernels each layer runs); keep the rows' parity columns")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "brevitas_zoo.json"))
    ap.add_argument("--report", help="re-render the Markdown table of this JSON file")
    args = ap.parse_args()
    if args.no_latency and args.latency_only:
        ap.error("--no-latency and --latency-only exclude each other: together they measure nothing")
    if args.report:
        data = json.load(open(args.report))
    else:
        warnings.filterwarnings("ignore")
        rows = []
        for name in args.models:
            h = bz.ZOO[name][2]
            n = args.inputs if h <= 32 else min(args.inputs, 8 if h <= 224 else 2)
            print(f"{name} ...", flush=True)
            rows.append(measure(name, n, args.repeats, latency=not args.no_latency, parity=not args.latency_only))
            print(json.dumps(rows[-1]), flush=True)
        import lowbit

        fp = fingerprint()
        meta = {"cpu_model": fp["cpu_model"], "isa": fp["isa"], "tier_cap": lowbit.info()["tier_cap"]}
        if os.path.exists(args.out):   # keep the rows of the models not measured now
            old = json.load(open(args.out))
            if isinstance(old["meta"], dict) and (old["meta"]["cpu_model"], old["meta"]["tier_cap"]) != \
                    (meta["cpu_model"], meta["tier_cap"]):
                sys.exit(f"{args.out} holds rows measured on {describe(old['meta'])}; this machine is "
                         f"{describe(meta)}: write to another --out")
            new = {r["model"] for r in rows}
            if args.no_latency or args.latency_only:   # the columns not measured now stay
                before = {r["model"]: r for r in old["rows"]}
                rows = [{**before.get(r["model"], {}), **r} for r in rows]
            rows = [r for r in old["rows"] if r["model"] not in new] + rows
            order = list(bz.ZOO)
            rows.sort(key=lambda r: order.index(r["model"]) if r["model"] in order else len(order))
        data = {"meta": meta, "rows": rows}
        with open(args.out, "w") as f:
            json.dump(data, f, indent=1)
    md = render(data["rows"], data["meta"])
    with open(os.path.splitext(args.report or args.out)[0] + ".md", "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
