"""Activation packing time of pack_groups per (bits, group, shape), scalar vs
vector tier, interleaved runs, median of repeats (1 thread).

    PYTHONPATH=python python3 bench/bench_pack_groups.py [--repeats 31]
"""
import argparse
import time

import numpy as np

import lowbit
from lowbit import _core, _dispatch

# (M, K, bits, group): grouplut6's W2A2 (group 3) and W1A1 (group 6) activations
# of the ResNet-18-like shapes in issue 11, and grouplut's W2A2 (group 2) for scale
CASES = [(3136, 288, 2, 3), (12544, 144, 2, 3), (784, 1152, 2, 3), (3136, 288, 1, 6), (784, 1152, 1, 6),
         (3136, 288, 2, 2)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=31)
    args = ap.parse_args()
    lowbit.set_num_threads(1)
    tiers = [t for t in ("scalar", "avx2") if t in lowbit.supported_tiers()]
    rng = np.random.default_rng(0)
    print("| M x K | bits | group | " + " | ".join(f"{t} us" for t in tiers) + " | speedup |")
    print("|---|---:|---:|" + "---:|" * len(tiers) + "---:|")
    for m, k, bits, group in CASES:
        codes = rng.integers(0, 1 << bits, (m, k), dtype=np.uint8)
        g = -(-k // group)
        times = {t: [] for t in tiers}
        for _ in range(args.repeats):
            for t in tiers:  # interleaved: machine noise hits both alike
                t0 = time.perf_counter()
                _core.pack_groups(codes, bits, group, g, _dispatch.tier_rank(t), 0)
                times[t].append(time.perf_counter() - t0)
        med = {t: 1e6 * float(np.median(v)) for t, v in times.items()}
        speed = f"{med['scalar'] / med[tiers[-1]]:.1f}x" if len(tiers) > 1 else "-"
        print(f"| {m} x {k} | {bits} | {group} | " + " | ".join(f"{med[t]:.0f}" for t in tiers) + f" | {speed} |")


if __name__ == "__main__":
    main()
