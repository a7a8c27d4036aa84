"""Packed weights and activations.

``PackedWeights`` is self-describing and ISA-neutral: its payload is the codes
packed densely, ``bits`` per code, LSB first, one row per output channel
(``ceil(K * bits / 8)`` bytes a row; byte diagrams in docs/packing-formats.md).
Kernel-specific layouts (nibble-swapped rows for the DeepGEMM kernel, group
indices in 32-channel blocks for grouplut) are built lazily from it, cached on
the object and reported by :attr:`PackedWeights.layout_nbytes`.

Memory contract: a PackedWeights keeps the packed payload (or, when derived,
nothing of its own: see :meth:`PackedWeights.derived`), the layouts and tables
its kernels built, and never an unpacked copy of the codes. :meth:`codes`
unpacks anew on each call; layouts are built from it once per kernel.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

from . import _core
from . import codebook as cbmod

_MAGIC = b"LOWBITPW"
_FORMAT_VERSION = 1
# magic, version, bits, n_levels, reserved, N, K, row_bytes
_HEADER = struct.Struct("<8sHBBHQQQ")


# The largest array (operand, copy or output) lowbit accepts, in elements.
# Larger sizes are refused before anything is allocated (docs/robustness.md).
MAX_ELEMENTS = 2**31 - 1


def check_elements(shape, name: str) -> None:
    """Raise ValueError (before any allocation) when an array of ``shape``
    would exceed :data:`MAX_ELEMENTS` elements."""
    count = 1
    for s in shape:
        count *= int(s)
    if count > MAX_ELEMENTS:
        raise ValueError(f"{name}: shape {tuple(int(s) for s in shape)} has {count} elements, more than "
                         f"lowbit's limit of {MAX_ELEMENTS} (2**31 - 1) per array; split the batch")


def _as_code_matrix(codes, name: str) -> np.ndarray:
    if not isinstance(codes, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray of uint8 codes, got {type(codes).__name__}")
    if codes.dtype != np.uint8:
        raise TypeError(f"{name}: expected dtype uint8, got {codes.dtype}")
    if codes.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array, got {codes.ndim}-D with shape {codes.shape}")
    check_elements(codes.shape, name)
    return np.ascontiguousarray(codes)  # strided input is copied, never misread


def pack_dense(codes: np.ndarray, bits: int) -> np.ndarray:
    """(R, K) codes -> (R, ceil(K*bits/8)) bytes, LSB-first bitstream per row."""
    if bits == 8:  # the bitstream of 8-bit codes is the codes themselves
        return np.ascontiguousarray(codes, dtype=np.uint8).copy()
    r, k = codes.shape
    bitplanes = ((codes[:, :, None] >> np.arange(bits, dtype=np.uint8)) & 1).reshape(r, k * bits)
    return np.packbits(bitplanes, axis=1, bitorder="little")


def unpack_dense(payload: np.ndarray, k: int, bits: int) -> np.ndarray:
    """(R, ceil(k*bits/8)) bytes -> (R, k) codes: a new array (never a view of ``payload``)."""
    if bits == 8:
        return payload[:, :k].copy()
    r = payload.shape[0]
    bitplanes = np.unpackbits(payload, axis=1, count=k * bits, bitorder="little").reshape(r, k, bits)
    return (bitplanes << np.arange(bits, dtype=np.uint8)).sum(axis=2, dtype=np.uint8)


class PackedWeights:
    """Weights of one layer: N output channels x K codes of ``bits`` bits.

    Build with :func:`lowbit.pack_weights`; serialize with :meth:`to_bytes`.
    """

    def __init__(self, payload: np.ndarray, n: int, k: int, bits: int, codebook: np.ndarray):
        self.N, self.K, self.bits = int(n), int(k), int(bits)
        self.codebook = codebook
        self._payload = payload  # (N, ceil(K*bits/8)) uint8, or None when derived (see derived())
        self._source = None      # derived weights: a function returning the (N, K) codes, unpacked anew
        self._layouts = {}  # kernel layout key -> uint8 array (reported by layout_nbytes)
        self._tables = {}   # (plan, activation codebook) -> (tables, flush8, flush16, step_bias)
        self._bound = {}    # (a_bits, a_codebook bytes, dispatch state) -> ops.Bound

    # ---- construction / serialization ---------------------------------------------------
    @classmethod
    def from_codes(cls, w_codes, bits: int, codebook=None) -> "PackedWeights":
        bits = cbmod.check_bits(bits, "bits")
        codes = _as_code_matrix(w_codes, "w_codes")
        if codes.shape[0] < 1 or codes.shape[1] < 1:
            raise ValueError(f"w_codes: expected shape (N, K) with N, K >= 1, got {codes.shape}")
        _core.check_codes(codes, bits, "w_codes", "bits")
        cb = cbmod.normalize(codebook, bits, "codebook")
        return cls(pack_dense(codes, bits), codes.shape[0], codes.shape[1], bits, cb)

    @classmethod
    def derived(cls, source, n: int, k: int, bits: int, codebook: np.ndarray) -> "PackedWeights":
        """Weights with no payload of their own: ``source()`` returns their (n, k) uint8
        codes, unpacked anew from packed codes held elsewhere (e.g. a convolution's
        weights in another K order, lowbit.ConvWeights). The codes must be valid for
        ``bits`` (the caller validated them when it packed them); ``codebook`` is normalized."""
        pw = cls(None, n, k, bits, codebook)
        pw._source = source
        return pw

    def with_codebook(self, codebook) -> "PackedWeights":
        """The same packed codes (the payload is shared, not copied) read with
        ``codebook`` (validated), with caches of its own."""
        cb = cbmod.normalize(codebook, self.bits, "codebook")
        if self._payload is None:
            return PackedWeights.derived(self._source, self.N, self.K, self.bits, cb)
        return PackedWeights(self._payload, self.N, self.K, self.bits, cb)

    @property
    def payload(self) -> np.ndarray:
        """The (N, ceil(K*bits/8)) uint8 packed codes (the serialized form; read-only use:
        it may be shared). Derived weights pack it anew on each access."""
        if self._payload is None:
            return pack_dense(self._source(), self.bits)
        return self._payload

    def to_bytes(self) -> bytes:
        # n_levels is one byte: 2**bits mod 256 (0 for 8-bit codebooks of 256 levels)
        payload = self.payload
        header = _HEADER.pack(_MAGIC, _FORMAT_VERSION, self.bits, len(self.codebook) & 0xFF, 0, self.N, self.K,
                              payload.shape[1])
        body = header + self.codebook.astype("<i2").tobytes() + payload.tobytes()
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data) -> "PackedWeights":
        data = bytes(data)
        if len(data) < _HEADER.size + 4:
            raise ValueError("data: truncated PackedWeights payload (shorter than its header)")
        magic, version, bits, n_levels, _, n, k, row_bytes = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError("data: not a lowbit PackedWeights payload (bad magic)")
        if version != _FORMAT_VERSION:
            raise ValueError(f"data: PackedWeights format version {version} is not supported "
                             f"(this lowbit reads version {_FORMAT_VERSION})")
        if bits not in cbmod.SUPPORTED_BITS or n_levels != (1 << bits) & 0xFF:
            raise ValueError(f"data: corrupted header (bits={bits}, levels={n_levels})")
        n_levels = 1 << bits
        if row_bytes != (k * bits + 7) // 8 or n < 1 or k < 1:
            raise ValueError("data: corrupted header (inconsistent N/K/row size)")
        expected = _HEADER.size + 2 * n_levels + n * row_bytes + 4
        if len(data) != expected:
            raise ValueError(f"data: truncated or oversized PackedWeights payload ({len(data)} bytes, "
                             f"expected {expected})")
        (crc,) = struct.unpack_from("<I", data, len(data) - 4)
        if crc != zlib.crc32(data[:-4]):
            raise ValueError("data: PackedWeights checksum mismatch (corrupted payload)")
        off = _HEADER.size
        cb = np.frombuffer(data, "<i2", n_levels, off).astype(np.int32)
        cb = cbmod.normalize(cb, bits, "data codebook")
        off += 2 * n_levels
        payload = np.frombuffer(data, np.uint8, n * row_bytes, off).reshape(n, row_bytes).copy()
        return cls(payload, n, k, bits, cb)

    # ---- views ---------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Size of the compact, ISA-neutral payload: N * ceil(K*bits/8) (also for
        derived weights, which hold it elsewhere)."""
        return self.N * ((self.K * self.bits + 7) // 8)

    @property
    def layout_nbytes(self) -> dict:
        """Bytes of every kernel-specific layout built (and cached) so far."""
        return {str(key): int(arr.nbytes) for key, arr in self._layouts.items()}

    def codes(self) -> np.ndarray:
        """The (N, K) uint8 codes, unpacked anew on each call (not kept: the
        weights stay bit-packed); a new array the caller may keep or modify."""
        if self._payload is None:
            return self._source()
        return unpack_dense(self._payload, self.K, self.bits)

    def layout(self, key, builder):
        """Kernel layout `key`, built once with builder(codes) and cached
        (the codes are unpacked for the builder and dropped after)."""
        if key not in self._layouts:
            self._layouts[key] = builder(self.codes())
        return self._layouts[key]

    def tables(self, key, builder):
        """Lookup tables for `key` (plan + activation codebook), built once."""
        if key not in self._tables:
            self._tables[key] = builder()
        return self._tables[key]

    def __repr__(self):
        return (f"PackedWeights(N={self.N}, K={self.K}, bits={self.bits}, "
                f"codebook={self.codebook.tolist()}, nbytes={self.nbytes})")


class PackedActivations:
    """Activation codes (M x K, ``bits`` each) validated once, with every packed
    form a kernel asked for cached, so one pack serves many GEMMs."""

    def __init__(self, codes: np.ndarray, bits: int, codebook: np.ndarray, shape=None, codebook_key=None):
        self.codes = codes
        self.M, self.K = codes.shape
        self.bits = bits
        self.codebook = codebook
        self.shape = shape  # (B, H, W, C) when the rows are NHWC pixels
        self._packed = {}
        self._codebook_key = codebook_key  # codebook.tobytes(), when the caller has it

    @property
    def codebook_key(self) -> bytes:
        """The codebook as bytes (a cache key), computed once."""
        if self._codebook_key is None:
            self._codebook_key = self.codebook.tobytes()
        return self._codebook_key

    @classmethod
    def from_codes(cls, a_codes, bits: int, codebook=None, validate: bool = True) -> "PackedActivations":
        """validate=False skips the code-range scan; only for callers whose next
        step is a native packer, which checks the range itself."""
        bits = cbmod.check_bits(bits, "bits")
        codes = _as_code_matrix(a_codes, "a_codes")
        if validate:
            _core.check_codes(codes, bits, "a_codes", "bits")
        return cls(codes, bits, cbmod.normalize(codebook, bits, "codebook"))

    def packed(self, key, builder):
        """The packed form ``key``, built once with builder(codes)."""
        if key not in self._packed:
            self._packed[key] = builder(self.codes)
        return self._packed[key]

    def __repr__(self):
        return f"PackedActivations(M={self.M}, K={self.K}, bits={self.bits}, codebook={self.codebook.tolist()})"


def pack_weights(w_codes, bits: int, codebook=None) -> PackedWeights:
    """Pack (N, K) uint8 weight codes in [0, 2**bits) for :func:`lowbit.gemm`
    (``bits`` is required: codes of a wider width must never be read as 2-bit)."""
    return PackedWeights.from_codes(w_codes, bits, codebook)


def pack_activations(a_codes, bits: int, codebook=None) -> PackedActivations:
    """Validate (M, K) uint8 activation codes once so several GEMMs can reuse them."""
    return PackedActivations.from_codes(a_codes, bits, codebook)
