"""What a loaded Model keeps in memory: weight codes only bit-packed (the model
file's form, shared by the kernels' weight objects) plus the kernel layouts
that ran; nbytes_disk / nbytes_resident report both."""
import json

import numpy as np
import pytest

import lowbit
from lowbit import io
from lowbit.conv import ConvWeights
from lowbit.packing import PackedWeights
from lowbit.runtime.model import PackedCodes, resident_bytes

from numpy_models import images, small_cnn


def _kernel_weights(node):
    w = node._cache["weights"]
    return w.parts if isinstance(w, ConvWeights) else [w]


def test_run_keeps_only_packed_codes():
    m = small_cnn(seed=3)
    want = m.run_reference(images(1, 4))
    assert np.array_equal(m(images(1, 4)), want)
    for n in m.nodes:
        if n.op not in ("conv", "linear"):
            continue
        stored = n.arrays.stored("w_codes")
        assert isinstance(stored, PackedCodes)
        cout = n.arrays.shape("scale")[0]  # weight_bytes = packed codes + float32 scale and bias
        assert stored.nbytes == stored.packed.payload.nbytes == n.weight_bytes() - 8 * cout
        for pw in _kernel_weights(n):
            assert not any(isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.size == pw.N * pw.K
                           and v.ndim == 2 for v in vars(pw).values())
            # the kernels' weights read the node's packed codes (row blocks of them) or derive from them
            assert pw._payload is None or np.shares_memory(pw._payload, stored.packed.payload)
        if isinstance(n._cache["weights"], ConvWeights):
            assert n._cache["weights"].packed.payload is not None
            assert np.shares_memory(n._cache["weights"].packed.payload, stored.packed.payload)


def test_w_codes_reads_unpack_a_new_array_each_time():
    m = small_cnn(seed=4)
    x = images(2, 3)
    want = m(x)
    node = m.node("conv2")
    first = node.arrays["w_codes"]
    assert first.dtype == np.uint8 and first.shape == node.arrays.shape("w_codes") == (16, 16, 3, 3)
    first[:] = 0  # the caller's copy: the model is unchanged
    second = node.arrays["w_codes"]
    assert not np.shares_memory(first, second) and second.any()
    assert np.array_equal(m(x), want) and np.array_equal(m.run_reference(x), want)
    # same codes as the graph was built with (small_cnn is deterministic in its seed)
    assert np.array_equal(second, small_cnn(seed=4).node("conv2").arrays["w_codes"])


def test_conv_weights_parts_match_kernel_order_codes(rng):
    codes = rng.integers(0, 4, (24, 6, 3, 3), dtype=np.uint8)
    rows = codes.transpose(0, 2, 3, 1).reshape(24, -1)  # the GEMM path's (ky, kx, cin) order
    for groups in (1, 4):
        cw = ConvWeights(codes, 2, None, groups)
        assert np.array_equal(cw.codes(), codes) and cw.nbytes == 24 * -(-54 * 2 // 8)
        opg = 24 // groups
        for g, part in enumerate(cw.parts):
            assert part._payload is None  # 3x3 kernel, several channels a group: derived, re-ordered on demand
            assert np.array_equal(part.codes(), rows[g * opg:(g + 1) * opg])
            assert part.nbytes == opg * -(-54 * 2 // 8)
            assert part.to_bytes() == lowbit.pack_weights(rows[g * opg:(g + 1) * opg], 2).to_bytes()
    pointwise = ConvWeights(codes[:, :, :1, :1].copy(), 2)  # 1x1: both orders agree, the payload is shared
    assert np.shares_memory(pointwise.parts[0]._payload, pointwise.packed.payload)


def test_packed_weights_codes_are_not_cached(rng):
    codes = rng.integers(0, 8, (5, 37), dtype=np.uint8)
    pw = lowbit.pack_weights(codes, 3)
    a, b = pw.codes(), pw.codes()
    assert np.array_equal(a, codes) and np.array_equal(b, codes) and not np.shares_memory(a, b)
    assert all(not (isinstance(v, np.ndarray) and v.shape == codes.shape) for v in vars(pw).values())
    eight = lowbit.pack_weights(codes, 8)
    assert not np.shares_memory(eight.codes(), eight.payload)
    shared = pw.with_codebook([-4, -3, -2, -1, 0, 1, 2, 3])
    assert shared.payload is pw.payload and shared.codebook.tolist() == [-4, -3, -2, -1, 0, 1, 2, 3]


def test_nbytes_disk_and_resident():
    m = small_cnn(seed=5)
    assert m.nbytes == m.nbytes_disk == sum(n.weight_bytes() for n in m.nodes)
    before = m.nbytes_resident
    # nothing built yet: the packed codes, float32 parameters and the packed codes' (default) codebooks
    codebooks = [n.arrays.stored("w_codes").packed.codebook for n in m.nodes if n.op in ("conv", "linear")]
    assert before == m.nbytes_disk + resident_bytes(codebooks)
    m(images(3, 2))
    after = m.memory()
    assert after == {"disk": m.nbytes_disk, "resident": m.nbytes_resident}
    layouts = sum(sum(pw.layout_nbytes.values()) for n in m.nodes if n.op in ("conv", "linear")
                  for pw in _kernel_weights(n))
    assert after["resident"] >= m.nbytes_disk + layouts > m.nbytes_disk
    text = m.summary(print_fn=None)
    assert f"{m.nbytes_disk} bytes" in text and f"{m.nbytes_resident} resident" in text


def test_resident_bytes_counts_each_buffer_once():
    m = small_cnn(seed=6)
    base = resident_bytes([m])
    extra = np.zeros(1000, np.uint8)
    assert resident_bytes([m, extra, extra[10:], extra.reshape(10, 100)]) == base + 1000


def test_file_format_unchanged():
    """A model built from unpacked codes (as the converters make it) saves the bytes the
    format defines (each 1-4-bit tensor = PackedWeights.from_codes(...).to_bytes()), loads
    packed, and saves the same bytes again."""
    m = small_cnn(seed=7, w_bits=3, a_bits=2)
    raw = {n.name: n.arrays["w_codes"] for n in m.nodes if n.op in ("conv", "linear")}
    blob = io.to_bytes(m)
    header_len = int.from_bytes(blob[12:16], "little")
    tensors = json.loads(blob[24:24 + header_len])["tensors"]
    for t in tensors:
        if t["key"] == "w_codes":
            codes = raw[t["node"]]
            want = PackedWeights.from_codes(codes.reshape(codes.shape[0], -1), 3).to_bytes()
            assert t["encoding"] == "packed_weights" and t["shape"] == list(codes.shape)
            assert blob[24 + header_len + t["offset"]:][:t["nbytes"]] == want
    loaded = io.from_bytes(blob)
    assert io.to_bytes(loaded) == blob
    assert all(isinstance(n.arrays.stored("w_codes"), PackedCodes) for n in loaded.nodes if n.op in ("conv", "linear"))
    x = images(4, 3)
    assert np.array_equal(loaded(x), m(x))
    assert io.to_bytes(loaded) == blob  # running builds caches, never changes what is saved


def test_packed_codes_of_another_width_are_checked_and_repacked():
    """A file may hold a layer's codes packed wider than its w_bits: they are unpacked,
    range-checked against w_bits and kept packed at w_bits (as codes given unpacked are)."""
    from lowbit.runtime import Model

    m = small_cnn(seed=9)
    x = images(5, 2)
    want = m(x)
    fc = m.node("fc")
    codes = fc.arrays["w_codes"]
    fc.arrays["w_codes"] = PackedCodes.pack(codes, 4)
    fc._cache.clear()
    again = Model(m.nodes, m.meta)
    assert again.node("fc").arrays.stored("w_codes").packed.bits == 2
    assert np.array_equal(again(x), want)
    codes[0, 0] = 5  # not a 2-bit code
    fc.arrays["w_codes"] = PackedCodes.pack(codes, 4)
    with pytest.raises(ValueError, match=r"^node 'fc': weight code out of range for 2 bits$"):
        Model(m.nodes, m.meta)
