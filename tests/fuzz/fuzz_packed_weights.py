"""Fuzz harness: lowbit.PackedWeights.from_bytes.

The first byte of an input picks how the rest is used:

0. raw payload bytes;
1. "rewrapped": the rest is a payload whose CRC-32 is recomputed, so
   mutations of the header (bits, levels, N, K, row size) and of the codebook
   get past the checksum.

Expected: ValueError (naming ``data``). A payload that loads must give codes
in range and run a GEMM bit-exact against the NumPy reference; any other
exception, a crash or a hang is a bug.
"""
import os
import struct
import sys
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

with harness.instrument():
    import lowbit  # noqa: E402
    from lowbit import reference  # noqa: E402

NAME = "packed_weights"


def rewrap(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_one_input(data: bytes) -> None:
    if not data:
        return
    blob = data[1:] if data[0] % 2 == 0 else rewrap(data[1:])
    try:
        pw = lowbit.PackedWeights.from_bytes(blob)
    except ValueError as exc:
        assert str(exc).startswith("data"), exc
        return
    codes = pw.codes()
    assert codes.shape == (pw.N, pw.K) and int(codes.max()) < (1 << pw.bits)
    if pw.N * pw.K > 1 << 16:
        return  # valid but large: not worth a fuzz iteration's time
    a = (np.arange(3 * pw.K, dtype=np.int64) % 4).astype(np.uint8).reshape(3, pw.K)
    try:
        y = lowbit.gemm(a, pw, 2)
    except ValueError as exc:  # e.g. K beyond K_max for this codebook
        assert "K_max" in str(exc), exc
        return
    assert np.array_equal(y, reference.gemm(a, codes, 2, pw.bits, None, pw.codebook))


def seed_corpus() -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for bits, cb in ((1, [-1, 1]), (2, [-2, -1, 0, 1]), (3, None), (4, list(range(-128, 128, 16))), (8, None)):
        pw = lowbit.pack_weights(rng.integers(0, 1 << bits, (5, 37), dtype=np.uint8), bits, cb)
        blob = pw.to_bytes()
        out[f"w{bits}_raw"] = b"\x00" + blob
        out[f"w{bits}_rewrap"] = b"\x01" + blob[:-4]
    return out


if __name__ == "__main__":
    if "--write-corpus" in sys.argv:
        folder = os.path.join(harness.CORPUS, NAME)
        os.makedirs(folder, exist_ok=True)
        for name, blob in seed_corpus().items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(blob)
        sys.exit(0)
    harness.main(NAME, test_one_input)
