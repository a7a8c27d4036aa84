"""Fuzz harness: the model file loader (lowbit.io.from_bytes / lowbit.load).

The first byte of an input picks how the rest is used:

0. raw file bytes, as a user's file on disk;
1. "rewrapped": the rest is a model file whose lengths and CRC-32 are
   recomputed, so mutations get past the checksum into the JSON header, the
   graph and the tensors;
2. hostile header edits of a valid model (from a fixed small CNN): the rest
   picks JSON values to replace with hostile ones (negative, zero, huge, NaN,
   wrong types), nodes to reorder or point at themselves (cycles) or at
   missing names (dangling inputs), with a valid CRC.

Expected: lowbit.io.LowbitFormatError on load. A model that loads must run
one image or raise ValueError/TypeError/RuntimeError/NotImplementedError
(lowbit's own clear errors); any other exception, a crash or a hang is a bug.
"""
import copy
import json
import os
import struct
import sys
import warnings
import zlib


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))  # numpy_models

import harness  # noqa: E402

with harness.instrument():
    import lowbit  # noqa: E402,F401
    from lowbit import io  # noqa: E402

from numpy_models import small_cnn  # noqa: E402

NAME = "model_file"
HOSTILE = [-1, 0, 1, 2, 3, 33, 255, 256, -2**31, 2**31, 2**63, 2**64, -2**63, 1e308, -1e308, 0.5,
           float("nan"), float("inf"), float("-inf"), None, True, False, "", "x", "input", [], [0], [-1, -1],
           [2**40, 1], [None, None], {}, {"bits": 33, "step": 0.0, "signed": False}]
BASE = small_cnn(seed=3)


def wrap(header: bytes, data: bytes) -> bytes:
    body = io._PREFIX.pack(io.MAGIC, io.FORMAT_VERSION, len(header), len(data)) + header + data
    return body + struct.pack("<I", zlib.crc32(body))


def rewrap(blob: bytes) -> bytes:
    """A file whose prefix lengths and CRC are made consistent with its bytes."""
    if len(blob) < io._PREFIX.size:
        return blob
    _, _, hlen, _ = io._PREFIX.unpack_from(blob)
    rest = blob[io._PREFIX.size:]
    hlen = min(hlen, len(rest))
    return wrap(rest[:hlen], rest[hlen:])


def _paths(obj, prefix=()):
    """Every (path) to a JSON value in obj, containers included."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _set(obj, path, value):
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


def hostile_header(choices: bytes) -> bytes:
    blob = io.to_bytes(BASE)
    _, _, hlen, dlen = io._PREFIX.unpack_from(blob)
    header = json.loads(blob[io._PREFIX.size:io._PREFIX.size + hlen])
    data = blob[io._PREFIX.size + hlen:io._PREFIX.size + hlen + dlen]
    it = iter(choices)
    for c in it:
        graph = header.get("graph") if isinstance(header, dict) else None
        nodes = graph.get("nodes") if isinstance(graph, dict) else None
        nodes = [n for n in nodes if isinstance(n, dict)] if isinstance(nodes, list) else []
        kind = c % 4
        pick = next(it, 0) | (next(it, 0) << 8)
        if kind == 0:  # replace one value
            paths = [p for p in _paths(header) if p]
            if not paths:
                continue
            _set(header, paths[pick % len(paths)], copy.deepcopy(HOSTILE[next(it, 0) % len(HOSTILE)]))
        elif kind == 1 and nodes:  # a node reads itself (cycle) or a name nobody computes (dangling)
            n = nodes[pick % len(nodes)]
            n["inputs"] = [n.get("name")] if next(it, 0) % 2 else ["nowhere"]
        elif kind == 2 and len(nodes) > 1:  # swap two nodes (reads before writes)
            i, j = pick % len(nodes), next(it, 0) % len(nodes)
            nodes[i], nodes[j] = nodes[j], nodes[i]
        elif kind == 3 and nodes:  # drop an attribute
            attrs = nodes[pick % len(nodes)].get("attrs")
            if isinstance(attrs, dict) and attrs:
                del attrs[sorted(attrs)[next(it, 0) % len(attrs)]]
    return wrap(json.dumps(header).encode(), data)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 3, data[1:]
    blob = body if mode == 0 else rewrap(body) if mode == 1 else hostile_header(body)
    try:
        model = io.from_bytes(blob)
    except io.LowbitFormatError:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        harness.check_runs(model)


def seed_corpus() -> dict:
    """The files of tests/fuzz/corpus/model_file (regenerate with --write-corpus)."""
    a = io.to_bytes(small_cnn(seed=3))
    b = io.to_bytes(small_cnn(seed=4, w_bits=4, a_bits=4, width=8))
    return {"raw_w2a2": b"\x00" + a, "rewrap_w4a4": b"\x01" + b, "header_edits": b"\x02" + bytes(range(0, 48, 3)),
            "truncated": b"\x00" + a[:40]}


if __name__ == "__main__":
    if "--write-corpus" in sys.argv:
        folder = os.path.join(harness.CORPUS, NAME)
        os.makedirs(folder, exist_ok=True)
        for name, blob in seed_corpus().items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(blob)
        sys.exit(0)
    harness.main(NAME, test_one_input)
