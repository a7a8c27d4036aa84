"""Depthwise convolution: lowbit vs torch int8 (x86, qnnpack) and onnxruntime int8, 1 thread.

1. The small depthwise-separable CNN (lowbit.models.DWSeparableNet: 32x32 input,
   stem + three depthwise-separable residual blocks of 32-128 channels), batch 1:
   lowbit W2A2 with 8-bit first/last layers (qat.prepare + convert; input
   quantization included, it is part of the model), before (depthwise layers
   group by group, the path lowbit took until now and still takes under a forced
   GEMM kernel) and after (one native call per layer); torch int8 FX-quantized
   float model (x86, qnnpack); onnxruntime QOperator int8 (quantize_static).
2. The 13 depthwise layers of MobileNet-v1 at 224x224, batch 1: lowbit W2A2
   conv2d from codes to requantized codes (epilogue fused); torch
   quantized.conv2d (groups=C, quint8 in/out, channels_last); onnxruntime
   QLinearConv (group=C, uint8 in/out).

All contenders run interleaved in one process (bench/common.time_interleaved:
round robin, median of rounds).

    python bench/bench_dwconv.py [--rounds 9] [--out bench/results/dwconv.md]
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import baselines  # noqa: E402
import common  # noqa: E402

import lowbit  # noqa: E402
from lowbit import models, qat  # noqa: E402
import lowbit.conv as lconv  # noqa: E402

# (H=W input, C, stride) of MobileNet-v1's depthwise 3x3 layers at 224x224
MOBILENET_V1_DW = [(112, 32, 1), (112, 64, 2), (56, 128, 1), (56, 128, 2), (28, 256, 1), (28, 256, 2)] + \
    [(14, 512, 1)] * 5 + [(14, 512, 2), (7, 1024, 1)]


def calibrated(net, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    net.train()
    with torch.no_grad():
        for _ in range(4):
            net(torch.randn(*shape, generator=g))
    return net.eval()


def lowbit_model(x):
    torch.manual_seed(0)
    q = calibrated(qat.prepare(models.DWSeparableNet(), 2, 2, first_last_bits=8), (16, 3, 32, 32))
    m = lowbit.convert(q, torch.from_numpy(x))
    m.run(x)
    return m


class _GroupByGroup:
    """Context: lowbit's depthwise layers run group by group (the old path)."""

    def __enter__(self):
        self.saved = lconv._native_grouping_allowed
        lconv._native_grouping_allowed = lambda depthwise: False

    def __exit__(self, *exc):
        lconv._native_grouping_allowed = self.saved


def torch_int8_model(engine, x):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    torch.backends.quantized.engine = engine
    torch.manual_seed(0)
    net = calibrated(models.DWSeparableNet(), (16, 3, 32, 32))
    xt = torch.from_numpy(x)
    p = prepare_fx(net, get_default_qconfig_mapping(engine), (xt,))
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for _ in range(8):
            p(torch.randn(4, 3, 32, 32, generator=g))
    qm = convert_fx(p)

    def run():
        torch.backends.quantized.engine = engine
        with torch.no_grad():
            return qm(xt)
    return run


def ort_int8_model(x):
    torch.manual_seed(0)
    net = calibrated(models.DWSeparableNet(), (16, 3, 32, 32))
    g = np.random.default_rng(1)
    return baselines.ort_int8_static(net, x, [g.standard_normal((1, 3, 32, 32)).astype(np.float32)
                                              for _ in range(16)])


def lowbit_dw_layer(h, c, stride, rng):
    x = rng.integers(0, 4, (1, h, h, c), dtype=np.uint8)
    cw = lowbit.ConvWeights(rng.integers(0, 4, (c, 1, 3, 3), dtype=np.uint8), 2, [-2, -1, 0, 1], c)
    ep = lowbit.Epilogue(np.full(c, 0.05, np.float32), np.zeros(c, np.float32), "relu",
                         requant=lowbit.Requant(2, 0.25))
    return lambda: lowbit.conv2d(x, cw, stride, 1, epilogue=ep)


def torch_dw_layer(engine, h, c, stride, rng):
    torch.backends.quantized.engine = engine
    w = torch.quantize_per_tensor(torch.from_numpy(rng.integers(-64, 64, (c, 1, 3, 3)).astype(np.float32)) * 0.01,
                                  0.01, 0, torch.qint8)
    packed = torch.ops.quantized.conv2d_prepack(w, None, [stride] * 2, [1, 1], [1, 1], c)
    x = torch.quantize_per_tensor(torch.rand(1, c, h, h), 1 / 255, 0, torch.quint8).contiguous(
        memory_format=torch.channels_last)
    op = torch.ops.quantized.conv2d

    def run():
        torch.backends.quantized.engine = engine
        return op(x, packed, 0.5, 128)
    return run


def ort_dw_layer(h, c, stride, rng):
    from onnx import TensorProto as T, helper, numpy_helper as nh
    from baselines import _ort_session
    f32 = lambda v, n: nh.from_array(np.array(v, np.float32), n)  # noqa: E731
    shape = [1, c, h, h]
    inits = [f32(1 / 255, "xs"), nh.from_array(np.array(0, np.uint8), "xz"),
             nh.from_array(rng.integers(-64, 64, (c, 1, 3, 3)).astype(np.int8), "w"), f32(0.01, "ws"),
             nh.from_array(np.array(0, np.int8), "wz"), f32(0.5, "ys"), nh.from_array(np.array(128, np.uint8), "yz")]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"],
                            kernel_shape=[3, 3], strides=[stride] * 2, pads=[1] * 4, group=c)
    return _ort_session([node], [helper.make_tensor_value_info("x", T.UINT8, shape)],
                        [helper.make_tensor_value_info("y", T.UINT8, None)], inits, 1,
                        {"x": rng.integers(0, 256, shape, dtype=np.uint8)})


def paired_ratio(stats, ref):
    """Median over rounds of this contender's time / the reference's time in the
    same round (rounds are interleaved, so both saw the same machine load)."""
    if "samples" not in stats or "samples" not in ref:
        return ""
    return f"{np.median(np.array(stats['samples']) / np.array(ref['samples'])):.2f}x"


def fmt_us(stats):
    """median (fastest round) in microseconds."""
    if "error" in stats:
        return "error: " + stats["error"][:40]
    return f"{stats['median_s'] * 1e6:.1f} ({stats['min_s'] * 1e6:.1f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out", default=None, help="write the Markdown report here")
    args = ap.parse_args()
    lowbit.set_num_threads(1)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)

    m = lowbit_model(x)
    with _GroupByGroup():  # the same model object: results identical, path differs
        before = m.run(x)
    after = m.run(x)
    assert np.array_equal(before, after), "group-by-group and native paths disagree"
    contenders = {"lowbit W2A2 (before: group by group)": (lambda: m.run(x), _GroupByGroup),
                  "lowbit W2A2 (after: one native call per layer)": lambda: m.run(x)}
    for engine in ("x86", "qnnpack"):
        try:
            contenders[f"torch int8 {engine}"] = torch_int8_model(engine, x)
        except Exception as exc:  # recorded in the report, not hidden
            contenders[f"torch int8 {engine}"] = (lambda e=exc: (_ for _ in ()).throw(e))
    try:
        contenders["onnxruntime int8 (QOperator)"] = ort_int8_model(x)
    except Exception as exc:
        contenders["onnxruntime int8 (QOperator)"] = (lambda e=exc: (_ for _ in ()).throw(e))
    model_stats = common.time_interleaved(contenders, rounds=args.rounds)
    dw_kernels = sorted({n.kernel for n in m.nodes if n.op == "conv" and n.attrs["groups"] > 1})

    layer_rows = []
    for h, c, s in MOBILENET_V1_DW:
        cont = {"lowbit": lowbit_dw_layer(h, c, s, rng), "torch x86": torch_dw_layer("x86", h, c, s, rng),
                "torch qnnpack": torch_dw_layer("qnnpack", h, c, s, rng), "ort": ort_dw_layer(h, c, s, rng)}
        st = common.time_interleaved(cont, rounds=args.rounds)
        layer_rows.append(((h, c, s), st))

    fp = common.fingerprint()
    cpu = fp.get("cpu_model") or fp.get("cpu") or str(fp)[:80]
    lines = ["# Depthwise convolution, 1 thread", "",
             f"CPU: {cpu}; lowbit tiers {', '.join(lowbit.supported_tiers())}; depthwise kernel(s): "
             f"{', '.join(dw_kernels)}; torch {torch.__version__}.", "",
             "Command: `PYTHONPATH=python python3 bench/bench_dwconv.py --out bench/results/dwconv.md` "
             f"(rounds {args.rounds}, interleaved; load average at the start {os.getloadavg()[0]:.1f} on "
             f"{os.cpu_count()} CPUs).", "",
             "## DWSeparableNet (32x32, three depthwise-separable residual blocks, 32-128 channels), batch 1", "",
             "| contender | us: median (fastest round) | time / lowbit after (median of per-round ratios) |",
             "|---|---:|---:|"]
    ref = model_stats["lowbit W2A2 (after: one native call per layer)"]
    for name, st in model_stats.items():
        lines.append(f"| {name} | {fmt_us(st)} | {paired_ratio(st, ref)} |")
    lines += ["", "lowbit includes input quantization and every graph op (it runs `Model.run` on float input); "
              "torch and onnxruntime run their whole quantized graph on float input too.", "",
              "## MobileNet-v1 depthwise 3x3 layers at 224x224, batch 1 (us: median (fastest round))", "",
              "| H=W | C | stride | lowbit W2A2 | torch x86 | torch qnnpack | ort int8 | torch x86 / lowbit | "
              "ort / lowbit |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    tot = {k: 0.0 for k in ("lowbit", "torch x86", "torch qnnpack", "ort")}
    for (h, c, s), st in layer_rows:
        lines.append(f"| {h} | {c} | {s} | " + " | ".join(fmt_us(st[k]) for k in tot) +
                     f" | {paired_ratio(st['torch x86'], st['lowbit'])} | {paired_ratio(st['ort'], st['lowbit'])} |")
        for k in tot:
            tot[k] += st[k].get("median_s", float("nan"))
    lines.append("| total of medians | | | " + " | ".join(f"{v * 1e6:.1f}" for v in tot.values()) + " | | |")
    lines += ["", "Ratios above 1 mean lowbit is faster. On a loaded machine the absolute times swing several "
              "fold between rounds; the paired per-round ratios are the steadier figure."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
