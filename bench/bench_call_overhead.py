"""Per-call cost of tiny GEMMs, linears and 1x1 convolutions (issue 13: a call
costs <= 3 us on the 4x32x64 W2A2 problem).

Each case: timeit of ``--number`` calls, min of ``--repeat`` repeats, in
microseconds per call; ``--rounds`` rounds, reported as the median over
rounds. With ``--baseline DIR`` (a directory holding another build's
``lowbit`` package, e.g. an exported older commit built with
scripts/dev-build.sh), every round runs the baseline and this checkout one
after the other in fresh subprocesses, so both see the same machine load.

    python3 bench/bench_call_overhead.py
    python3 bench/bench_call_overhead.py --baseline /tmp/base/python --rounds 7
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# name, (M, N, K), a_bits, w_bits, epilogue kind (None, "float32", "codes")
GEMM_CASES = [
    ("gemm 4x32x64 W2A2", (4, 32, 64), 2, 2, None),
    ("gemm 4x32x64 W2A2 +epilogue f32", (4, 32, 64), 2, 2, "float32"),
    ("gemm 4x32x64 W2A2 +epilogue codes", (4, 32, 64), 2, 2, "codes"),
    ("gemm 1x16x32 W2A2", (1, 16, 32), 2, 2, None),
    ("gemm 8x64x128 W2A2", (8, 64, 128), 2, 2, None),
    ("gemm 4x32x64 W1A1", (4, 32, 64), 1, 1, None),
    ("gemm 4x32x64 W4A4", (4, 32, 64), 4, 4, None),
    ("gemm 4x32x64 W8A8", (4, 32, 64), 8, 8, None),
    ("linear 4x32x64 W2A2 +epilogue f32", (4, 32, 64), 2, 2, "float32"),
]
CONV_CASES = [  # name, (B, H, W, Cin, Cout), epilogue kind
    ("conv1x1 1x4x4x32->32 W2A2", (1, 4, 4, 32, 32), None),
    ("conv1x1 1x4x4x32->32 W2A2 +epilogue codes", (1, 4, 4, 32, 32), "codes"),
]


def _epilogue(lowbit, kind, n, rng):
    if kind is None:
        return None
    import numpy as np

    requant = lowbit.Requant(2, 0.5) if kind == "codes" else None
    return lowbit.Epilogue(rng.uniform(0.5, 1.5, n).astype(np.float32), rng.normal(size=n).astype(np.float32),
                           "relu", requant)


def one_round(number: int, repeat: int) -> dict:
    """{case: us per call} for the lowbit importable here."""
    import numpy as np

    import lowbit

    rng = np.random.default_rng(0)
    calls = {}
    for name, (m, n, k), ab, wb, kind in GEMM_CASES:
        a = rng.integers(0, 1 << ab, (m, k)).astype(np.uint8)
        packed = lowbit.pack_weights(rng.integers(0, 1 << wb, (n, k)).astype(np.uint8), wb)
        ep = _epilogue(lowbit, kind, n, rng)
        if name.startswith("linear"):
            calls[name] = (lambda a=a, p=packed, e=ep, b=ab: lowbit.linear(a, p, e, a_bits=b))
        else:
            calls[name] = (lambda a=a, p=packed, e=ep, b=ab: lowbit.gemm(a, p, a_bits=b, epilogue=e))
    for name, (b, h, w, cin, cout), kind in CONV_CASES:
        x = rng.integers(0, 4, (b, h, w, cin)).astype(np.uint8)
        cw = lowbit.ConvWeights(rng.integers(0, 4, (cout, cin, 1, 1)).astype(np.uint8), 2)
        ep = _epilogue(lowbit, kind, cout, rng)
        calls[name] = (lambda x=x, cw=cw, e=ep: lowbit.conv2d(x, cw, epilogue=e, a_bits=2))
    out = {}
    for name, fn in calls.items():
        fn()  # plan, pack the weights, build the prepared call
        out[name] = min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6
    return out


def _subprocess_round(python_dir: str, number: int, repeat: int) -> dict:
    env = dict(os.environ, PYTHONPATH=python_dir, LOWBIT_AUTOTUNE=os.environ.get("LOWBIT_AUTOTUNE", "0"))
    r = subprocess.run([sys.executable, __file__, "--one-round", "--number", str(number), "--repeat", str(repeat)],
                       env=env, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--number", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline", help="PYTHONPATH directory of the build to compare against")
    ap.add_argument("--one-round", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one_round:
        print(json.dumps(one_round(args.number, args.repeat)))
        return
    builds = {"this checkout": str(REPO / "python")}
    if args.baseline:
        builds = {"baseline": args.baseline, **builds}
    rounds = {label: [] for label in builds}
    for _ in range(args.rounds):
        for label, path in builds.items():  # interleaved: each round runs every build once
            rounds[label].append(_subprocess_round(path, args.number, args.repeat))
    cases = list(rounds["this checkout"][0])
    labels = list(builds)
    print(f"us per call: median over {args.rounds} interleaved rounds of min-of-{args.repeat} x "
          f"{args.number} calls (LOWBIT_AUTOTUNE={os.environ.get('LOWBIT_AUTOTUNE', '0')})")
    print(f"{'case':<44}" + "".join(f"{label:>16}" for label in labels))
    for case in cases:
        meds = [statistics.median(r[case] for r in rounds[label]) for label in labels]
        print(f"{case:<44}" + "".join(f"{v:>16.2f}" for v in meds))


if __name__ == "__main__":
    main()
