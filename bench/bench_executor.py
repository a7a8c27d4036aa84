#!/usr/bin/env python3
"""Small models end to end, one thread: lowbit's native executor (one native call per
forward pass, lowbit.executor: what ``m(x)`` runs) against torch int8 (x86 engine) and
onnxruntime int8.

Workloads:

1. the shipped Fashion-MNIST demo model (W2A2, 8-bit first/last layers; 28x28x1), batch 1
   and batch 64: lowbit = ``lowbit.convert(models.load_fmnist("w2a2_qat"))``; torch int8 =
   the shipped float model (``load_fmnist("fp32")``) FX-quantized for the x86 engine and
   calibrated on 256 test images; onnxruntime int8 = that float model exported to ONNX and
   quantized statically (QOperator, uint8 activations, int8 weights) on the same images;
2. the small depthwise-separable CNN of bench/bench_dwconv.py (32x32x3 input, stem + three
   depthwise-separable residual blocks), batch 1, with bench_dwconv's own contenders.

Every contender takes the float32 NCHW batch and returns float32 logits (input
quantization timed everywhere). Before timing, lowbit's output on the timed batch is checked
byte-identical to the NumPy reference executor's (``m.run_reference(x)``, the oracle). All
run interleaved in one process
(bench_resnet18.time_interleaved2: round robin, rotating start, median of rounds), and the
figure compared is the calling thread's CPU time: at one thread every contender computes on
the calling thread, and CPU time is what other work on a shared machine disturbs least (wall
medians are listed too).

"lowbit core run alone" (batch 1) is the native plan's run call without Model.__call__ around
it: the difference to "lowbit native" is the Python boundary of a call.

``--baseline DIR`` adds "lowbit native (baseline)": the same model, saved and loaded into another
build of lowbit (DIR: a checkout's built package folder, e.g. /work/main/python/lowbit, imported
as ``lowbit_baseline``), interleaved with the rest, for before/after comparisons in one process;
its outputs must be byte-identical to this checkout's.

    python bench/bench_executor.py [--rounds 15] [--out bench/results/executor.md] [--baseline DIR]
"""
import argparse
import os
import sys
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import baselines  # noqa: E402
import bench_dwconv  # noqa: E402
import common  # noqa: E402
from bench_resnet18 import time_interleaved2  # noqa: E402

import lowbit  # noqa: E402
from lowbit import datasets, models  # noqa: E402


def fmnist_images(n):
    images, _ = datasets.load_fashion_mnist("test")
    return np.ascontiguousarray(datasets.normalize(images[:n]))


def torch_int8_x86(net, x, calib):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = prepare_fx(net, get_default_qconfig_mapping("x86"), (torch.from_numpy(calib[:1]),))
        with torch.no_grad():
            for i in range(0, len(calib), 32):
                p(torch.from_numpy(calib[i:i + 32]))
        qm = convert_fx(p)
    xt = torch.from_numpy(x)

    def run():
        torch.backends.quantized.engine = "x86"
        with torch.no_grad():
            return qm(xt)
    return run


def ort_int8(net, x, calib):
    return baselines.ort_int8_static(net, x, [calib[i:i + 1] for i in range(len(calib))])


def lowbit_native(m, x):
    """lowbit's contender: ``m.run(x)`` (the native executor), its output first checked
    byte-identical to the NumPy reference executor's on the same batch."""
    if m.run(x).tobytes() != m.run_reference(x).tobytes():
        raise AssertionError("the native executor and the NumPy reference disagree on the timed batch")
    return {"lowbit native": lambda: m.run(x)}


def baseline_package(path):
    """Another build of lowbit (a package folder with its _core built), imported as lowbit_baseline."""
    import importlib
    import shutil
    import tempfile

    root = tempfile.mkdtemp(prefix="lowbit_baseline_")
    shutil.copytree(path, os.path.join(root, "lowbit_baseline"), ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, root)
    lb = importlib.import_module("lowbit_baseline")
    lb.set_num_threads(1)
    return lb


def core_alone(m, x):
    """The native plan's run call alone (no Model.__call__ around it)."""
    plan = lowbit.executor.plan_for(m, x.shape)
    out = np.empty(plan.out_shape, np.float32)
    return lambda: plan.core.run(x, out, False)


def baseline_contender(lb, m, x):
    """The model saved and loaded into the baseline build; its output checked byte-identical."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        m.save(os.path.join(d, "m.lowbit"))
        mb = lb.load(os.path.join(d, "m.lowbit"))
    assert mb.run(x).tobytes() == m.run(x).tobytes(), \
        "the baseline build computes other bytes"
    # the loaded model and its native plan are the baseline build's own (not this checkout's)
    core = lb.executor.plan_for(mb, x.shape).core
    assert type(mb).__module__.startswith("lowbit_baseline.") and isinstance(core, lb._core.ExecutorPlan) \
        and not isinstance(core, lowbit._core.ExecutorPlan), "the baseline model does not run on the baseline build"
    return {"lowbit native (baseline)": lambda: mb.run(x)}


def table(title, stats, ref="lowbit native"):
    base = stats[ref]["cpu_median_ms"]
    lines = [f"### {title}", "", "| contender | thread CPU time (median) | wall (median) | vs lowbit native |",
             "|---|---:|---:|---:|"]
    for name, s in stats.items():
        if "error" in s:
            lines.append(f"| {name} | {s['error']} | | |")
            continue
        lines.append(f"| {name} | {s['cpu_median_ms']:.3f} ms | {s['wall_median_ms']:.3f} ms | "
                     f"{s['cpu_median_ms'] / base:.2f}x |")
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--min-time", type=float, default=0.05)
    p.add_argument("--out", default=None, help="also write the Markdown tables here")
    p.add_argument("--baseline", default=None, help="another build's lowbit package folder to compare with")
    args = p.parse_args()
    lb = baseline_package(args.baseline) if args.baseline else None
    torch.set_num_threads(1)
    lowbit.set_num_threads(1)
    fp = common.fingerprint()
    lines = ["## Small models end to end (1 thread)", "",
             f"Machine: {fp.get('cpu_model')} ({fp.get('cpu_count')} CPUs, shared), commit "
             f"`{str(fp.get('git_commit'))[:10]}`{' (dirty tree)' if fp.get('git_dirty') else ''}, "
             f"torch {fp.get('torch')}, onnxruntime {fp.get('onnxruntime')}. Medians of {args.rounds} interleaved "
             "rounds; the last column is each contender's thread CPU time over lowbit native's (> 1: lowbit "
             "native is faster). Before timing, lowbit native's output on each timed batch was checked "
             "byte-identical to the NumPy reference executor's (`m.run_reference(x)`). "
             "`python bench/bench_executor.py`.", "",
             "CPU flags (`lowbit info`): " + "  ".join(f"{k}{'+' if v else '-'}" for k, v in fp["isa"].items())
             + f"; lowbit dispatch tier cap: {lowbit.info()['tier_cap']}.", ""]

    # 1. the shipped demo model
    calib = fmnist_images(256)
    q = models.load_fmnist("w2a2_qat")
    m = lowbit.convert(q, torch.zeros(1, 1, 28, 28))
    fp32 = models.load_fmnist("fp32")
    for batch in (1, 64):
        x = np.ascontiguousarray(calib[:batch])
        contenders = lowbit_native(m, x)
        if lb is not None:
            contenders.update(baseline_contender(lb, m, x))
        if batch == 1:
            contenders["lowbit core run alone"] = core_alone(m, x)
        import copy

        contenders["torch int8 x86"] = torch_int8_x86(copy.deepcopy(fp32), x, calib)
        contenders["onnxruntime int8"] = ort_int8(fp32, x, calib)
        stats = time_interleaved2(contenders, rounds=args.rounds, warmup=2, min_time=args.min_time)
        lines += table(f"Fashion-MNIST demo model (W2A2, 8-bit first/last), batch {batch}", stats) + [""]
        print("\n".join(lines[-len(stats) - 6:]), flush=True)

    # 2. the depthwise-separable CNN of bench_dwconv.py
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    mdw = bench_dwconv.lowbit_model(x)
    contenders = lowbit_native(mdw, x)
    if lb is not None:
        contenders.update(baseline_contender(lb, mdw, x))
    contenders["lowbit core run alone"] = core_alone(mdw, x)
    contenders["torch int8 x86"] = bench_dwconv.torch_int8_model("x86", x)
    contenders["onnxruntime int8"] = bench_dwconv.ort_int8_model(x)
    stats = time_interleaved2(contenders, rounds=args.rounds, warmup=2, min_time=args.min_time)
    lines += table("Depthwise-separable CNN (bench_dwconv.py; W2A2, 8-bit first/last), batch 1", stats) + [""]
    print("\n".join(lines[-len(stats) - 6:]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
