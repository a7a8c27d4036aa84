"""The ``lowbit`` command line: ``lowbit info|demo|bench|convert|run`` (also ``python -m lowbit``).

    lowbit info [--json]                 CPU features, tiers, kernel registry, what each op would run
    lowbit demo [--threads N] [--train]  the shipped W2A2 Fashion-MNIST model vs fp32 / int8
    lowbit convert -o model.lowbit       convert the shipped W2A2 checkpoint (or --model pkg.mod:factory)
    lowbit run model.lowbit --input x.npy [--output y.npy] | --fmnist N   run a saved model
    lowbit run model.lowbit --input x.npy|x.parquet|folder --output y.parquet [--ray [ADDRESS]]
                                         score a dataset (locally, or on a Ray cluster: docs/scale-out.md)
    lowbit bench [model.lowbit] [--batch 1,64] [--threads N]   latency and per-layer time of a model

Only ``demo`` and ``convert`` need torch.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _print_info(as_json: bool) -> None:
    import lowbit

    info = lowbit.info()
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return
    print(f"lowbit {info['version']}")
    feats = info["features"]
    print("CPU features: " + "  ".join(f"{k}{'+' if v else '-'}" for k, v in feats.items()))
    print(f"dispatch tiers: {', '.join(info['tiers'])} (cap: {info['tier_cap']}); threads: {info['num_threads']}")
    if info["avx512_emulated"]:
        print("NOTE: SIMDe test build: the AVX-512 tiers are emulated on AVX2 (exactness checks only, not speed)")
    print(f"\nkernel registry ({len(info['kernels'])} kernels; * = runs here):")
    print(f"  {'':2}{'name':<34} {'family':<10} {'W/A':<6} {'tier':<10} {'tile':<7} {'tables':<7} description")
    for k in info["kernels"]:
        wa = "any" if k["w_bits"] == 0 else f"W{k['w_bits']}A{k['a_bits']}"
        mark = "*" if k["available"] else " "
        tile = f"{k.get('mr', '?')}x{k.get('nr', '?')}"
        print(f"  {mark} {k['name']:<34} {k['family']:<10} {wa:<6} {k['tier']:<10} {tile:<7} "
              f"{k.get('table_kind', ''):<7} {k.get('description', '')}")
    dw = lowbit.dwconv_kernels()
    print(f"\ndepthwise-convolution kernels ({len(dw)}; * = runs here; one native call per layer):")
    for k in dw:
        print(f"  {'*' if k['available'] else ' '} {k['name']:<34} {k['tier']:<10} {k.get('description', '')}")
    print("\nkernel each GEMM/conv would use here (M=3136 N=64 K=576, default codebooks):")
    for bw, ba in ((1, 1), (2, 2), (3, 3), (4, 4), (2, 4), (8, 8)):
        try:
            line = lowbit.explain(3136, 64, 576, a_bits=ba, w_bits=bw).splitlines()[0]
            kern = line.split("kernel ", 1)[1].split(" (", 1)[0]
        except Exception as exc:  # noqa: BLE001 - report, do not fail
            kern = f"none ({type(exc).__name__}: {str(exc).splitlines()[0][:70]})"
        print(f"  W{bw}A{ba}: {kern}")


def _cmd_convert(args) -> int:
    import importlib

    import lowbit

    if args.source:  # a QONNX / Brevitas export
        if not args.source.endswith(".onnx"):
            sys.exit("lowbit convert: SOURCE must be a .onnx (QONNX) file; use --model for PyTorch models")
        t0 = time.time()
        m = lowbit.from_qonnx(args.source)
    else:
        import torch

        from lowbit import models

        if args.model:
            mod_name, _, attr = args.model.partition(":")
            qat_model = getattr(importlib.import_module(mod_name), attr or "model")()
            if args.state_dict:
                qat_model.load_state_dict(torch.load(args.state_dict, map_location="cpu", weights_only=True))
            shape = tuple(int(v) for v in args.input_shape.split(","))
        else:
            qat_model = models.load_fmnist("w2a2_qat", args.data_dir)
            shape = (1, 1, 28, 28)
        qat_model.eval()
        t0 = time.time()
        m = lowbit.convert(qat_model, torch.zeros(shape), requant_in_epilogue=not args.no_requant)
    m.save(args.output)
    print(f"converted {args.source or args.model or 'the demo model'} in {time.time() - t0:.2f}s -> {args.output}")
    m.summary(example=True)
    return 0


def _read_input(args):
    if args.input:
        x = np.load(args.input)
        return x, None
    from lowbit import datasets

    images, labels = datasets.load_fashion_mnist("test")
    n = args.fmnist
    return datasets.normalize(images[:n]), labels[:n]


def _floats(text: str, name: str):
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        sys.exit(f"lowbit run: {name} expects numbers separated by commas, got {text!r}")
    return vals[0] if len(vals) == 1 else vals


def _cmd_score(args) -> int:
    """run --output x.parquet: every row of a .npy / .parquet / image folder, streamed, with a progress bar."""
    if not args.input:
        sys.exit("lowbit run: --output *.parquet needs --input (a .npy file, a .parquet file or a folder of images)")
    if not args.output or not args.output.endswith(".parquet"):
        sys.exit("lowbit run: a .parquet input, a folder of images or --ray needs --output ending in .parquet")
    mean, std = _floats(args.mean, "--mean"), _floats(args.std, "--std")
    try:
        rows, dt, how = _score(args, mean, std)
    except (ValueError, TypeError, OSError) as exc:  # bad input or model file (LowbitFormatError is a ValueError)
        sys.exit(f"lowbit run: {exc}")
    print(f"{rows} rows in {dt:.2f}s ({rows / max(dt, 1e-9):.1f} images/s, {how}) -> {args.output}")
    return 0


def _score(args, mean, std):
    import lowbit
    from lowbit import scoring

    if args.ray is not None:
        try:
            from lowbit import ray as lowbit_ray
        except ImportError as exc:
            sys.exit(f"lowbit run --ray: {exc}")
        where = "a local Ray cluster" if args.ray == "local" else f"the Ray cluster at {args.ray}"
        print(f"scoring {args.input} on {where} ({args.cpus_per_actor} CPU(s) per actor)", file=sys.stderr)
        res = lowbit_ray.run_job(args.model, args.input, args.output, address=args.ray, column=args.column,
                                 batch_size=args.batch_size, concurrency=args.concurrency,
                                 num_cpus=args.cpus_per_actor, mean=mean, std=std, progress=not args.no_progress)
        rows, dt = res["rows"], res["seconds"]
        how = "on Ray"
    else:
        lowbit.set_num_threads(args.threads)
        m = lowbit.load(args.model)
        source = scoring.open_source(args.input, m.input_shape, args.column)
        writer = scoring.PredictionWriter(args.output)
        bar = scoring.Progress(source.total, enabled=not args.no_progress)
        try:
            rows = scoring.run_local(m, source, writer, args.batch_size, mean, std, bar)
            dt = bar.close()
            writer.close()
        except BaseException:
            writer.discard()
            raise
        how = f"{lowbit.get_num_threads()} thread(s)"
    return rows, dt, how


def _cmd_run(args) -> int:
    import lowbit

    if args.ray is not None or (args.output or "").endswith(".parquet") or (
            args.input and not args.input.endswith(".npy")):
        return _cmd_score(args)
    if not args.input and not args.fmnist:
        sys.exit("lowbit run: give --input x.npy (float32 NCHW) or --fmnist N")
    lowbit.set_num_threads(args.threads)
    m = lowbit.load(args.model)
    x, labels = _read_input(args)
    t0 = time.perf_counter()
    y = m(x, batch_size=args.batch_size)
    dt = time.perf_counter() - t0
    m.summary()
    print(f"{len(x)} inputs in {dt:.3f}s ({len(x) / dt:.1f} images/s, {lowbit.get_num_threads()} thread(s))")
    if labels is not None:
        print(f"top-1 accuracy: {100 * np.mean(y.argmax(1) == labels):.2f}% on the first {len(x)} test images")
    else:
        for i, row in enumerate(y[:10]):
            print(f"  [{i}] top-1 class {int(row.argmax())}  logits {np.array2string(row, precision=3)}")
    if args.output:
        np.save(args.output, y)
        print(f"logits -> {args.output}")
    return 0


def _cmd_bench(args) -> int:
    import lowbit

    lowbit.set_num_threads(args.threads)
    if args.model and args.model.endswith(".onnx"):  # QONNX model: lowbit vs onnxruntime on the float lowering
        from lowbit.qonnx import bench_qonnx

        for bs in (int(b) for b in args.batch.split(",")):
            bench_qonnx(args.model, threads=args.threads, batch=bs, repeats=args.repeats)
        return 0
    if args.model:
        m = lowbit.load(args.model)
    else:
        try:
            import torch  # noqa: F401
        except ImportError:
            sys.exit("lowbit bench: give a saved model (lowbit convert -o m.lowbit makes one) or install torch")
        from lowbit import models

        m = lowbit.convert(models.load_fmnist("w2a2_qat"), np.zeros((1, 1, 28, 28), np.float32))
    c, h, w = m.input_shape
    rng = np.random.default_rng(0)
    print(f"{m!r}; {args.threads} thread(s)")
    for bs in (int(b) for b in args.batch.split(",")):
        x = rng.normal(size=(bs, c, h, w)).astype(np.float32)
        m(x)
        times, prof = [], {}
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            m.run(x, batch_size=bs, profile=prof)
            times.append(time.perf_counter() - t0)
        med = float(np.median(times))
        print(f"\nbatch {bs}: median {1e3 * med:.3f} ms ({bs / med:.1f} images/s) over {args.repeats} runs")
        total = sum(prof.values())
        for name, t in sorted(prof.items(), key=lambda kv: -kv[1])[:args.top]:
            n = m.node(name)
            print(f"  {name:<28} {n.op:<16} {1e3 * t / args.repeats:8.3f} ms  {100 * t / total:5.1f}%  "
                  f"{n.kernel or ''}")
    print("\n(full comparisons against torch/onnxruntime: python bench/bench_resnet18.py, bench/README.md)")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="lowbit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", metavar="{info,demo,bench,convert,run}")
    pi = sub.add_parser("info", help="CPU features and the kernel registry")
    pi.add_argument("--json", action="store_true")
    sub.add_parser("demo", help="the Fashion-MNIST W2A2 demo (lowbit demo --help)", add_help=False)
    pc = sub.add_parser("convert", help="convert a QONNX (.onnx) or PyTorch QAT model to a .lowbit file")
    pc.add_argument("source", nargs="?", help="a QONNX model (.onnx, e.g. a Brevitas export); default: the "
                    "shipped demo QAT model, or --model")
    pc.add_argument("-o", "--output", required=True)
    pc.add_argument("--data-dir", default=None, help="checkpoint directory of the demo model (default: shipped)")
    pc.add_argument("--model", help="pkg.module:factory returning a prepared, calibrated QAT nn.Module")
    pc.add_argument("--state-dict", help="state_dict to load into --model's module")
    pc.add_argument("--input-shape", default="1,3,224,224", help="example input NCHW shape for --model")
    pc.add_argument("--no-requant", action="store_true", help="float + quantize between all layers")
    pr = sub.add_parser("run", help="run a saved model")
    pr.add_argument("model")
    pr.add_argument("--input", help=".npy float32 NCHW batch (or uint8 NHWC images); with --output *.parquet also "
                    "a .parquet file (see --column) or a folder of image files")
    pr.add_argument("--fmnist", type=int, default=0, help="evaluate on the first N Fashion-MNIST test images")
    pr.add_argument("--output", help="save logits to this .npy, or stream predictions (ids, logits, top1) to "
                    "this .parquet with a progress bar")
    pr.add_argument("--batch-size", type=int, default=256)
    pr.add_argument("--threads", type=int, default=0, help="0: all cores (local runs; on Ray: --cpus-per-actor)")
    pr.add_argument("--column", default="image", help="image column of a .parquet input (default: image)")
    pr.add_argument("--mean", default="0", help="uint8 images become (pixel/255 - mean)/std; one number or one per "
                    "channel, comma-separated (default 0)")
    pr.add_argument("--std", default="1", help="see --mean (default 1)")
    pr.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                    help="run on Ray: a local cluster started for the job (or the one RAY_ADDRESS names), "
                    "or the running cluster at ADDRESS; needs pip install 'lowbit[ray]'")
    pr.add_argument("--concurrency", type=int, default=None, help="Ray actors (default: as many as the cluster fits)")
    pr.add_argument("--cpus-per-actor", type=float, default=1, help="CPUs per Ray actor = its lowbit threads "
                    "(default 1)")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    pr.add_argument("--summary", action="store_true", help="(kept for compatibility; the summary always prints)")
    pb = sub.add_parser("bench", help="latency and per-layer time of a saved model (default: the demo model); "
                        "for a .onnx QONNX model, lowbit against onnxruntime running its float lowering")
    pb.add_argument("model", nargs="?")
    pb.add_argument("--batch", default="1,64")
    pb.add_argument("--threads", type=int, default=1)
    pb.add_argument("--repeats", type=int, default=20)
    pb.add_argument("--top", type=int, default=12, help="nodes to list")
    if argv and argv[0] == "demo":
        from . import demo

        return demo.main(argv[1:])
    args = p.parse_args(argv)
    if args.cmd is None:
        p.print_help()
        return 2
    if args.cmd == "info":
        _print_info(args.json)
        return 0
    return {"convert": _cmd_convert, "run": _cmd_run, "bench": _cmd_bench}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
