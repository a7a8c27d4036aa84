"""``lowbit demo``: the shipped W2A2 Fashion-MNIST CNN on the LUT kernels, next to fp32 and int8.

Steps: load the test set (Debian ``dataset-fashion-mnist``; sklearn digits as
a fallback), load the fp32 and W2A2 LSQ checkpoints shipped in
``lowbit/data/`` (or retrain them with ``--train``), convert the QAT model
with :func:`lowbit.convert`, build torch int8 models of the fp32 network by
post-training static quantization (FX graph mode, ``x86`` and ``qnnpack``
engines, calibrated on training images), then report

* accuracy: fp32, W2A2 fake-quant (PyTorch), lowbit runtime, int8 x86/qnnpack;
* how closely lowbit reproduces the fake-quant model (top-1 agreement, logits);
* latency at batch 1 and images/s at batch 64 (interleaved rounds, median);
* model sizes.

Everything runs on ``--threads`` threads (default 1) in this one process.
torch is needed here (baselines and conversion); the lowbit runtime is not.
"""
from __future__ import annotations

import argparse
import copy
import io as _io
import os
import sys
import time
import warnings

import numpy as np

from .timing import time_interleaved


def _p(*a):
    print(*a, flush=True)


def _find_train_script():
    here = os.path.dirname(os.path.abspath(__file__))
    cands = [os.environ.get("LOWBIT_TRAIN_SCRIPT"),
             os.path.join(here, "..", "..", "..", "scripts", "train_fmnist.py"),
             os.path.join(os.getcwd(), "scripts", "train_fmnist.py")]
    for c in cands:
        if c and os.path.isfile(c):
            return os.path.abspath(c)
    raise FileNotFoundError("lowbit demo --train needs scripts/train_fmnist.py from the lowbit source tree: run it "
                            "from the repository root or set LOWBIT_TRAIN_SCRIPT=/path/to/train_fmnist.py")


def train(out_dir: str, extra_args) -> None:
    """Retrain fp32 + W2A2 with scripts/train_fmnist.py (imported, not copied) into out_dir."""
    import importlib.util

    path = _find_train_script()
    spec = importlib.util.spec_from_file_location("lowbit_train_fmnist", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    os.makedirs(out_dir, exist_ok=True)
    _p(f"Training with {path} (progress below; outputs in {out_dir})")
    mod.main(list(extra_args) + ["--out-dir", out_dir])


def _eval_torch(model, x, bs=500):
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, len(x), bs):
            outs.append(model(torch.from_numpy(x[i:i + bs])).float().numpy())
    return np.concatenate(outs)


def _int8_model(fp32, engine, calib):
    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(fp32).eval(), get_default_qconfig_mapping(engine),
                              example_inputs=(torch.from_numpy(calib[:1]),))
        with torch.no_grad():
            for i in range(0, len(calib), 256):
                prepared(torch.from_numpy(calib[i:i + 256]))
        return convert_fx(prepared)


def _torch_call(model, engine=None):
    """model(xt) without gradients (on quantized ``engine``, set before each call: the two
    int8 models use different ones)."""
    import torch

    def f(xt):
        if engine is not None:
            torch.backends.quantized.engine = engine
        with torch.no_grad():
            return model(xt)
    return f


def _state_bytes(model) -> int:
    import torch

    buf = _io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def run(args) -> dict:
    try:
        import torch
    except ImportError:
        sys.exit("lowbit demo needs PyTorch for the fp32/int8 baselines and the conversion "
                 "(pip install torch); the lowbit runtime itself does not.")
    import lowbit
    from lowbit import datasets, models
    from lowbit.convert import compare

    t_start = time.time()
    torch.set_num_threads(args.threads)
    lowbit.set_num_threads(args.threads)
    data_dir = args.data_dir
    if args.train:
        data_dir = data_dir or os.path.join(os.path.expanduser("~"), ".cache", "lowbit", "fmnist")
        train(data_dir, args.train_args)
    data_dir = data_dir or models.DATA_DIR

    _p(f"lowbit {lowbit.__version__} demo: W2A2 ResNet-style CNN on Fashion-MNIST, {args.threads} thread(s)")
    feats = [k for k, v in lowbit.cpu_features().items() if v]
    _p(f"CPU features: {', '.join(feats)}; dispatch tiers: {', '.join(lowbit.supported_tiers())}")

    try:
        images, labels = datasets.load_fashion_mnist("test")
    except RuntimeError as exc:
        sys.exit(f"lowbit demo: {exc}")
    fmnist_ok = images.shape[0] == 10000  # the sklearn-digits fallback has 360 test images
    train_images, _ = datasets.load_fashion_mnist("train")
    if not fmnist_ok:
        _p("NOTE: Fashion-MNIST was not found (install the Debian package 'dataset-fashion-mnist'); using "
           "scikit-learn's digits instead. The shipped models were trained on Fashion-MNIST, so their "
           "accuracies below are not meaningful; run `lowbit demo --train` to train on what is available.")
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    x = datasets.normalize(images)
    calib = datasets.normalize(train_images[np.random.default_rng(0).permutation(len(train_images))[:512]])
    _p(f"test images: {len(x)}; checkpoints: {data_dir}")

    fp32 = models.load_fmnist("fp32", data_dir)
    qat_model = models.load_fmnist("w2a2_qat", data_dir)
    t0 = time.time()
    m = lowbit.convert(qat_model, torch.from_numpy(x[:1]))
    _p(f"converted in {time.time() - t0:.2f}s:")
    m.summary(print_fn=_p)

    engines = [e for e in ("x86", "qnnpack") if e in torch.backends.quantized.supported_engines]
    int8 = {e: _int8_model(fp32, e, calib) for e in engines}

    # ---- accuracy -------------------------------------------------------------------------
    _p("\nAccuracy on the test set:")
    acc = {}
    t0 = time.time()
    logits_fp32 = _eval_torch(fp32, x)
    acc["torch fp32"] = float(np.mean(logits_fp32.argmax(1) == labels))
    for e in engines:
        lg = _eval_torch(_torch_call(int8[e], e), x)
        acc[f"torch int8 {e}"] = float(np.mean(lg.argmax(1) == labels))
    cmp = compare(qat_model, m, x, codes=args.codes)
    acc["W2A2 fake-quant (torch)"] = float(np.mean(cmp["torch_logits"].argmax(1) == labels))
    acc["W2A2 lowbit runtime"] = float(np.mean(cmp["lowbit_logits"].argmax(1) == labels))
    for k, v in acc.items():
        _p(f"  {k:<26} {100 * v:6.2f}%")
    _p(f"  fp32 - W2A2 gap: {100 * (acc['torch fp32'] - acc['W2A2 lowbit runtime']):.2f} points "
       f"(evaluated in {time.time() - t0:.0f}s)")
    _p(f"lowbit vs fake-quant: top-1 agreement {100 * cmp['top1_agreement']:.2f}% of {cmp['n']} images; "
       f"|logit diff| max {cmp['logit_absdiff_max']:.3g}, mean {cmp['logit_absdiff_mean']:.3g}, "
       f"p99 {cmp['logit_absdiff_p99']:.3g} (logit std {cmp['logit_std']:.3g})")
    if args.codes:
        _p(f"  activation codes that differ from torch's: {cmp['code_diff_fraction']:.2e} of all "
           "(float rounding at requantization boundaries)")

    # ---- speed --------------------------------------------------------------------------
    stat = "cpu_median_s" if args.threads == 1 else "median_s"  # timing.time_interleaved's figures
    _p(f"\nSpeed ({args.threads} thread(s); interleaved rounds, median "
       f"{'thread CPU time' if args.threads == 1 else 'wall time'}; lowbit includes input quantization "
       "and packing, torch int8 includes input quantization):")
    fns = {"torch fp32": _torch_call(fp32)}
    for e in engines:
        fns[f"torch int8 {e}"] = _torch_call(int8[e], e)
    fns["lowbit W2A2"] = lambda xt: m(xt)
    speed = {}
    for bs in (1, 64):
        xt = torch.from_numpy(np.ascontiguousarray(x[:bs]))
        stats = time_interleaved({k: (lambda f=f: f(xt)) for k, f in fns.items()}, args.rounds, 1, args.min_time)
        failed = {k: st["error"] for k, st in stats.items() if "error" in st}
        if failed:
            sys.exit(f"lowbit demo: timing failed: {failed}")
        speed[bs] = {k: st[stat] for k, st in stats.items()}
    base = speed[1]["torch fp32"]
    _p(f"  {'model':<18} {'batch 1 latency':>16} {'batch 64 images/s':>18} {'vs fp32 (b1)':>13} "
       f"{'vs qnnpack (b1)':>16}")
    for k in fns:
        qn = speed[1].get("torch int8 qnnpack")
        _p(f"  {k:<18} {1e3 * speed[1][k]:>13.3f} ms {64 / speed[64][k]:>18.0f} {base / speed[1][k]:>12.2f}x "
           f"{(qn / speed[1][k]) if qn else float('nan'):>15.2f}x")

    # ---- sizes --------------------------------------------------------------------------
    from lowbit import io as lio

    sizes = {"torch fp32 (state_dict)": _state_bytes(fp32)}
    for e in engines:
        sizes[f"torch int8 {e} (state_dict)"] = _state_bytes(int8[e])
    sizes["lowbit file (m.save)"] = len(lio.to_bytes(m))
    sizes["lowbit weights+epilogue (m.nbytes)"] = m.nbytes
    _p("\nModel size:")
    for k, v in sizes.items():
        _p(f"  {k:<36} {v:>10,d} bytes")
    _p(f"\ndemo finished in {time.time() - t_start:.0f}s")
    return {"accuracy": acc, "agreement": {k: v for k, v in cmp.items() if not k.endswith("logits")},
            "speed_s": speed, "sizes": sizes}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1, help="threads for torch and lowbit (default 1)")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N test images")
    p.add_argument("--rounds", type=int, default=7, help="timing rounds (median)")
    p.add_argument("--min-time", type=float, default=0.1, help="seconds per timed batch of calls")
    p.add_argument("--data-dir", default=None, help="directory with fmnist_{fp32,w2a2_qat}.pt + fmnist_train.json "
                   "(default: the shipped ones; with --train: ~/.cache/lowbit/fmnist)")
    p.add_argument("--no-codes", dest="codes", action="store_false",
                   help="skip counting activation codes that differ from torch's")
    p.add_argument("--train", action="store_true",
                   help="retrain fp32 + W2A2 first with scripts/train_fmnist.py; arguments after --train that "
                        "lowbit demo does not know go to that script (e.g. --epochs 5 --width 16)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="lowbit demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args, rest = p.parse_known_args(argv)
    if rest and not args.train:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    args.train_args = rest
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
