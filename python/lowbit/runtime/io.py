"""Save and load :class:`lowbit.Model` files (NumPy only).

File format version 1, specified in docs/pipeline.md (section 3): a 24-byte prefix (magic
``b"LOWBITMD"``, format version, header length H, data length D), H bytes of UTF-8 JSON header
(the graph and the table of tensors), D bytes of tensors each 16-byte aligned from the data
start ("packed_weights": 1-4-bit weight codes as :meth:`lowbit.PackedWeights.to_bytes`;
"raw": C-order little-endian bytes), then the CRC-32 of everything before it.

:func:`load` checks, in order: magic (foreign file), format version (files of
another version are refused, not guessed at), lengths (truncated or extended
files), CRC-32 (corruption), JSON and graph consistency; each failure raises
:class:`LowbitFormatError` (a ValueError) saying which.
"""
from __future__ import annotations

import json
import math
import os
import struct
import zlib

import numpy as np

from ..packing import MAX_ELEMENTS, PackedWeights, check_elements
from .model import Model, Node, PackedCodes

__all__ = ["LowbitFormatError", "MAGIC", "FORMAT_VERSION", "load", "save", "to_bytes", "from_bytes"]

MAGIC = b"LOWBITMD"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIIQ")  # magic, version, header length, data length
_ALIGN = 16
_DTYPES = {"<f4": np.float32, "|u1": np.uint8, "<i4": np.int32, "<f8": np.float64}  # f8: scale64/bias64


class LowbitFormatError(ValueError):
    """A file is not a valid lowbit model file (foreign, truncated, corrupted, other version)."""


def _encode(arrays, key: str, bits: int | None):
    """(encoding, bytes) of ``arrays[key]``: packed codes are written as they are kept."""
    stored = arrays.stored(key)
    if key == "w_codes" and bits is not None and bits <= 4:
        if not (isinstance(stored, PackedCodes) and stored.packed.bits == bits):
            stored = PackedCodes.pack(arrays[key], bits)
        return "packed_weights", stored.packed.to_bytes()
    arr = arrays[key]
    dt = np.dtype(arr.dtype).newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype
    if dt.str not in _DTYPES:
        raise TypeError(f"cannot store tensor {key!r} of dtype {arr.dtype}")
    return "raw", np.ascontiguousarray(arr, dtype=dt).tobytes()


def to_bytes(model: Model) -> bytes:
    """The file contents of ``model`` (see the module docstring)."""
    from .. import __version__

    tensors, chunks, offset = [], [], 0
    for n in model.nodes:
        for key in n.arrays:
            enc, blob = _encode(n.arrays, key, n.attrs.get("w_bits"))
            arr = n.arrays.stored(key)
            pad = (-offset) % _ALIGN
            chunks.append(b"\0" * pad)
            offset += pad
            tensors.append({"node": n.name, "key": key, "encoding": enc, "dtype": np.dtype(arr.dtype).str,
                            "shape": list(arr.shape), "offset": offset, "nbytes": len(blob)})
            chunks.append(blob)
            offset += len(blob)
    header = json.dumps({"format": "lowbit.Model", "format_version": FORMAT_VERSION,
                         "lowbit_version": __version__, "graph": model.graph(), "tensors": tensors},
                        separators=(",", ":"), allow_nan=False).encode("utf-8")
    data = b"".join(chunks)
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), len(data)) + header + data
    return body + struct.pack("<I", zlib.crc32(body))


def save(model: Model, path) -> None:
    """Write ``model`` to ``path`` atomically (a temporary file, then rename)."""
    if not isinstance(model, Model):
        raise TypeError(f"model: expected lowbit.Model, got {type(model).__name__}")
    blob = to_bytes(model)
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, path)


# the magic of a file often given by mistake -> a hint for the error message
_FOREIGN = {b"PK": " (it looks like a zip archive, e.g. a PyTorch checkpoint: convert the model with lowbit.convert)",
            b"\x93NUMPY": " (it looks like a .npy array)",
            b"LOWBITPW": " (it is a PackedWeights payload, not a model: use lowbit.PackedWeights.from_bytes)"}


def from_bytes(data, source: str = "data") -> Model:
    """Parse and verify a model file's contents (see the module docstring)."""
    data = bytes(data)
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        if len(data) < len(MAGIC) and MAGIC.startswith(data):
            raise LowbitFormatError(f"{source}: truncated lowbit model file ({len(data)} bytes)")
        hint = next((h for magic, h in _FOREIGN.items() if data.startswith(magic)), "")
        raise LowbitFormatError(f"{source}: not a lowbit model file (bad magic){hint}")
    if len(data) < _PREFIX.size:
        raise LowbitFormatError(f"{source}: truncated lowbit model file ({len(data)} bytes, shorter than "
                                f"its {_PREFIX.size}-byte prefix)")
    _, version, hlen, dlen = _PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise LowbitFormatError(f"{source}: lowbit model format version {version} is not supported "
                                f"(this lowbit reads version {FORMAT_VERSION}); re-save it with a matching lowbit")
    expected = _PREFIX.size + hlen + dlen + 4
    if len(data) < expected:
        raise LowbitFormatError(f"{source}: truncated lowbit model file ({len(data)} bytes, expected {expected})")
    if len(data) > expected:
        raise LowbitFormatError(f"{source}: {len(data) - expected} unexpected bytes after the end of the "
                                f"lowbit model ({len(data)} bytes, expected {expected})")
    (crc,) = struct.unpack_from("<I", data, expected - 4)
    if crc != zlib.crc32(memoryview(data)[:expected - 4]):
        raise LowbitFormatError(f"{source}: checksum mismatch: the lowbit model file is corrupted")
    try:
        header = json.loads(data[_PREFIX.size:_PREFIX.size + hlen].decode("utf-8"))
        graph, tensors = header["graph"], header["tensors"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise LowbitFormatError(f"{source}: unreadable header ({exc})") from exc
    try:
        return _build(graph, tensors, data, _PREFIX.size + hlen, dlen)
    except LowbitFormatError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise LowbitFormatError(f"{source}: inconsistent model ({type(exc).__name__}: {exc})") from exc


def _expect(value, kind, what):
    """value if it is of JSON type `kind` (bool is not an int here), else LowbitFormatError."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise LowbitFormatError(f"{what}: expected {names}, got {type(value).__name__}")
    return value


def _check_structure(graph, tensors) -> None:
    """The JSON types of the graph and tensor table (values are checked by Model)."""
    _expect(graph, dict, "graph")
    for i, d in enumerate(_expect(graph.get("nodes"), list, "graph.nodes")):
        where = f"graph.nodes[{i}]"
        _expect(d, dict, where)
        for key, kind in (("name", str), ("op", str), ("inputs", list), ("attrs", dict)):
            _expect(d.get(key), kind, f"{where}.{key}")
        for j, src in enumerate(d["inputs"]):
            _expect(src, str, f"{where}.inputs[{j}]")
    if graph.get("meta") is not None:
        _expect(graph["meta"], dict, "graph.meta")
    for i, t in enumerate(_expect(tensors, list, "tensors")):
        where = f"tensors[{i}]"
        _expect(t, dict, where)
        for key, kind in (("node", str), ("key", str), ("encoding", str), ("dtype", str), ("offset", int),
                          ("nbytes", int)):
            _expect(t.get(key), kind, f"{where}.{key}")
        for j, s in enumerate(_expect(t.get("shape"), list, f"{where}.shape")):
            if _expect(s, int, f"{where}.shape[{j}]") < 0 or s > MAX_ELEMENTS:
                raise LowbitFormatError(f"{where}.shape[{j}]: expected 0..{MAX_ELEMENTS}, got {s}")


def _build(graph, tensors, data, base, dlen) -> Model:
    _check_structure(graph, tensors)
    if graph.get("version") != Model.FORMAT_GRAPH_VERSION:
        raise LowbitFormatError(f"graph version {graph.get('version')} is not supported")
    arrays = {}
    for t in tensors:
        off, nb = int(t["offset"]), int(t["nbytes"])
        if off < 0 or nb < 0 or off + nb > dlen:
            raise LowbitFormatError(f"tensor {t['node']}.{t['key']} lies outside the data section")
        blob = data[base + off: base + off + nb]
        shape = tuple(int(s) for s in t["shape"])
        check_elements(shape, f"tensor {t['node']}.{t['key']}")
        if t["encoding"] == "packed_weights":
            pw = PackedWeights.from_bytes(blob)
            if len(shape) < 2 or (pw.N, pw.K) != (shape[0], math.prod(shape[1:])):
                raise LowbitFormatError(f"tensor {t['node']}.{t['key']}: packed shape {(pw.N, pw.K)} "
                                        f"does not match {shape}")
            arr = PackedCodes(pw.with_codebook(None), shape)  # kept packed (the codebook is the node's)
        elif t["encoding"] == "raw":
            dt = _DTYPES.get(t["dtype"])
            if dt is None:
                raise LowbitFormatError(f"tensor {t['node']}.{t['key']}: unknown dtype {t['dtype']!r}")
            if nb != math.prod(shape) * np.dtype(dt).itemsize:
                raise LowbitFormatError(f"tensor {t['node']}.{t['key']}: {nb} bytes for shape {shape}")
            arr = np.frombuffer(blob, dt).reshape(shape).copy()
        else:
            raise LowbitFormatError(f"tensor {t['node']}.{t['key']}: unknown encoding {t['encoding']!r}")
        arrays.setdefault(t["node"], {})[t["key"]] = arr
    nodes = [Node(d["name"], d["op"], d["inputs"], d["attrs"], arrays.pop(d["name"], {})) for d in graph["nodes"]]
    if arrays:
        raise LowbitFormatError(f"tensors for unknown nodes: {sorted(arrays)}")
    return Model(nodes, graph.get("meta"))


def load(path) -> Model:
    """Read a model written by :meth:`lowbit.Model.save`; raises :class:`LowbitFormatError`
    on a foreign, truncated, corrupted or other-version file."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    return from_bytes(data, source=path)
