"""The float32 layers of imported models (conv_f32 / linear_f32): lowbit's native kernel
(_core.FloatConv, weights packed once) against the NumPy BLAS path those layers used before
(im2col + one matrix product per group; depthwise: a multiply-add per tap), on the Brevitas
zoo's first layers.

Contenders are interleaved call by call in one process; each figure is the median over
``--rounds`` of the calling thread's CPU time (``--threads 1``, the default: BLAS is limited
to one thread through the environment before NumPy loads) or of wall time (``--threads N``).

    python3 bench/bench_float_conv.py
    python3 bench/bench_float_conv.py --threads 2 --rounds 15
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ARGS = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ARGS.add_argument("--threads", type=int, default=1)
ARGS.add_argument("--rounds", type=int, default=11)
ARGS.add_argument("--batch", type=int, default=1)
OPTS = ARGS.parse_args()
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(OPTS.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import lowbit  # noqa: E402
from lowbit import _core  # noqa: E402

# name, (H, W, Cin), (Cout, k, stride, pad, groups); a linear layer: H = W = k = 1
CASES = [
    ("3->32 3x3 s2 @224 (MobileNet-V1 stem)", (224, 224, 3), (32, 3, 2, 1, 1)),
    ("3->64 7x7 s2 @224 (ImageNet ResNet-18 stem)", (224, 224, 3), (64, 7, 2, 3, 1)),
    ("3->64 3x3 s1 @32 (resnet18_4w4a stem)", (32, 32, 3), (64, 3, 1, 1, 1)),
    ("3->24 3x3 s2 @224 (ProxylessNAS stem)", (224, 224, 3), (24, 3, 2, 1, 1)),
    ("32 depthwise 3x3 s1 @112", (112, 112, 32), (32, 3, 1, 1, 32)),
    ("linear 512->1000", (1, 1, 512), (1000, 1, 1, 0, 1)),
]


def numpy_blas(x, w, bias, stride, pad, groups):
    """The NumPy path conv_f32 took before the native kernel (im2col + BLAS; depthwise per tap)."""
    b, h, wd, c = x.shape
    cout, cg, kh, kw = w.shape
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    xp = np.zeros((b, h + 2 * pad, wd + 2 * pad, c), np.float32) if pad else x
    if pad:
        xp[:, pad:pad + h, pad:pad + wd] = x
    taps = [xp[:, ky:ky + stride * (oh - 1) + 1:stride, kx:kx + stride * (ow - 1) + 1:stride]
            for ky in range(kh) for kx in range(kw)]
    if cg == 1 and cout == groups:
        out = np.zeros((b, oh, ow, cout), np.float32)
        wt = w.reshape(cout, kh * kw)
        for t, v in enumerate(taps):
            out += v * wt[:, t]
    else:
        cols = np.stack(taps, axis=3).reshape(b * oh * ow, kh * kw * cg)
        out = (cols @ w.transpose(2, 3, 1, 0).reshape(kh * kw * cg, cout)).reshape(b, oh, ow, cout)
    out += bias
    return out


def main():
    lowbit.set_num_threads(OPTS.threads)
    clock = time.thread_time if OPTS.threads == 1 else time.perf_counter
    rng = np.random.default_rng(0)
    print(f"# batch {OPTS.batch}, {OPTS.threads} thread(s), {'thread CPU' if OPTS.threads == 1 else 'wall'} time, "
          f"median of {OPTS.rounds} interleaved rounds; ms")
    print(f"{'layer':42s} {'numpy-blas':>11s} {'lowbit':>9s} {'speedup':>8s}  kernel")
    for name, (h, w, cin), (cout, k, stride, pad, groups) in CASES:
        x = rng.standard_normal((OPTS.batch, h, w, cin)).astype(np.float32)
        wt = (rng.standard_normal((cout, cin // groups, k, k)) * 0.2).astype(np.float32)
        bias = rng.standard_normal(cout).astype(np.float32)
        conv = _core.FloatConv(wt, bias, groups)
        args = ((stride, stride), (pad, pad), (1, 1), True)
        ref = numpy_blas(x, wt, bias, stride, pad, groups)
        got = conv(x, *args)
        assert np.allclose(got, ref, rtol=1e-4, atol=1e-3 * np.abs(ref).max()), name
        reps = max(1, int(2e7 // (ref.size * k * k * cin // groups + 1)))
        times = {"numpy": [], "lowbit": []}
        for _ in range(OPTS.rounds):
            for key, fn in (("numpy", lambda: numpy_blas(x, wt, bias, stride, pad, groups)),
                            ("lowbit", lambda: conv(x, *args))):
                t0 = clock()
                for _ in range(reps):
                    fn()
                times[key].append((clock() - t0) / reps * 1e3)
        a, b = statistics.median(times["numpy"]), statistics.median(times["lowbit"])
        print(f"{name:42s} {a:11.3f} {b:9.3f} {a / b:7.2f}x  {conv.kernel_name(True)}")


if __name__ == "__main__":
    main()
