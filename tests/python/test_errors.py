"""Bad input raises a clear exception naming the argument; nothing crashes."""
import numpy as np
import pytest

import lowbit
from conftest import available_kernels, optional_import, python_command


@pytest.fixture
def pw():
    return lowbit.pack_weights(np.zeros((4, 10), np.uint8), 2)


def test_activation_dtype(pw):
    with pytest.raises(TypeError, match="a_codes.*uint8"):
        lowbit.gemm(np.zeros((2, 10), np.int64), pw, 2)
    with pytest.raises(TypeError, match="a_codes.*uint8"):
        lowbit.gemm(np.zeros((2, 10), np.float32), pw, 2)
    with pytest.raises(TypeError, match="a_codes"):
        lowbit.gemm([[0] * 10], pw, 2)


def test_activation_ndim_and_k(pw):
    with pytest.raises(ValueError, match="a_codes.*2-D"):
        lowbit.gemm(np.zeros(10, np.uint8), pw, 2)
    with pytest.raises(ValueError, match="K mismatch"):
        lowbit.gemm(np.zeros((2, 11), np.uint8), pw, 2)


def test_codes_out_of_range(pw):
    a = np.zeros((2, 10), np.uint8)
    a[1, 7] = 4
    with pytest.raises(ValueError, match=r"codes.*\[0, 4\)"):
        lowbit.gemm(a, pw, 2)
    with pytest.raises(ValueError, match=r"w_codes.*\[0, 4\)"):
        lowbit.pack_weights(np.full((2, 3), 9, np.uint8), 2)
    with pytest.raises(ValueError, match=r"a_codes.*\[0, 2\)"):
        lowbit.pack_activations(np.full((2, 3), 2, np.uint8), 1)


def test_weight_input_errors():
    with pytest.raises(TypeError, match="w_codes.*uint8"):
        lowbit.pack_weights(np.zeros((2, 3), np.int32), 2)
    with pytest.raises(ValueError, match="w_codes.*2-D"):
        lowbit.pack_weights(np.zeros((2, 3, 4), np.uint8), 2)
    with pytest.raises(ValueError, match="w_codes"):
        lowbit.pack_weights(np.zeros((0, 3), np.uint8), 2)


def test_bits_errors():
    w = np.zeros((2, 3), np.uint8)
    for bad in (0, 9, -1):
        with pytest.raises(ValueError, match="bits"):
            lowbit.pack_weights(w, bad)
    with pytest.raises(TypeError, match="bits"):
        lowbit.pack_weights(w, "2")
    with pytest.raises(TypeError, match="bits"):
        lowbit.pack_weights(w, 2.0)


def test_codebook_errors():
    w = np.zeros((2, 3), np.uint8)
    with pytest.raises(ValueError, match="codebook.*4 values"):
        lowbit.pack_weights(w, 2, [0, 1, 2])
    with pytest.raises(ValueError, match=r"codebook.*\[-128, 127\]"):
        lowbit.pack_weights(w, 2, [0, 1, 2, 200])
    with pytest.raises(ValueError, match="integer levels"):
        lowbit.pack_weights(w, 2, [0.5, 1, 2, 3])
    with pytest.raises(TypeError, match="codebook"):
        lowbit.pack_weights(w, 2, ["a", "b", "c", "d"])
    pw = lowbit.pack_weights(w, 2)
    with pytest.raises(ValueError, match="a_codebook|codebook"):
        lowbit.gemm(np.zeros((1, 3), np.uint8), pw, 2, [1, 2])


def test_packed_argument_errors(pw):
    with pytest.raises(TypeError, match="packed.*PackedWeights"):
        lowbit.gemm(np.zeros((2, 10), np.uint8), np.zeros((4, 10), np.uint8), 2)
    pa = lowbit.pack_activations(np.zeros((2, 10), np.uint8), 2)
    with pytest.raises(ValueError, match="a_bits"):
        lowbit.gemm(pa, pw, a_bits=3)
    with pytest.raises(ValueError, match="a_codebook"):
        lowbit.gemm(pa, pw, a_codebook=[0, 1, 2, 3])


def test_from_bytes_rejects_bad_payloads(pw):
    blob = pw.to_bytes()
    with pytest.raises(ValueError, match="bad magic"):
        lowbit.PackedWeights.from_bytes(b"NOTLOWBT" + blob[8:])
    with pytest.raises(ValueError, match="truncated"):
        lowbit.PackedWeights.from_bytes(blob[:-3])
    with pytest.raises(ValueError, match="truncated"):
        lowbit.PackedWeights.from_bytes(blob[:10])
    other_version = bytearray(blob)
    other_version[8] = 99
    with pytest.raises(ValueError, match="version 99"):
        lowbit.PackedWeights.from_bytes(bytes(other_version))
    corrupted = bytearray(blob)
    corrupted[-6] ^= 0xFF
    with pytest.raises(ValueError, match="checksum|corrupted"):
        lowbit.PackedWeights.from_bytes(bytes(corrupted))
    with pytest.raises(ValueError):
        lowbit.PackedWeights.from_bytes(b"")


def test_use_errors():
    with pytest.raises(ValueError, match="isa.*unknown"):
        with lowbit.use(isa="sse9"):
            pass
    with pytest.raises(ValueError, match="kernel.*unknown"):
        with lowbit.use(kernel="nope__avx2"):
            pass
    with pytest.raises(ValueError, match="strategy"):
        with lowbit.use(strategy="magic"):
            pass


def test_forced_kernel_that_cannot_be_exact():
    names = [k["name"] for k in available_kernels("lutgemm") if k["table_kind"] == "i8"]
    a = np.zeros((2, 8), np.uint8)
    pw = lowbit.pack_weights(np.zeros((3, 8), np.uint8), 2, [-128, 127, 0, 1])
    for name in names:
        with lowbit.use(kernel=name):
            with pytest.raises(ValueError, match="int16|split|i8"):
                lowbit.gemm(a, pw, 2, [-128, 127, 0, 1])


def test_native_layer_rejects_bad_buffers():
    """The bindings check sizes themselves, so even a direct _core call with
    short buffers raises instead of reading out of bounds."""
    from lowbit import _core

    k = next(k for k in lowbit.kernels() if k["name"].endswith("__scalar") and k["family"] == "grouplut")
    with pytest.raises(ValueError, match="w: expected at least"):
        _core.gemm(k["index"], np.zeros((4, 8), np.uint8), np.zeros(10, np.uint8), np.zeros(8192, np.int8),
                   4, 32, 8, 1, 1, 0)
    with pytest.raises(ValueError, match="tables"):
        _core.gemm(k["index"], np.zeros((4, 8), np.uint8), np.zeros(256, np.uint8), np.zeros(16, np.int8),
                   4, 32, 8, 1, 1, 0)
    with pytest.raises(ValueError, match="a: expected"):
        _core.gemm(k["index"], np.zeros((2, 8), np.uint8), np.zeros(256, np.uint8), np.zeros(8192, np.int8),
                   4, 32, 8, 1, 1, 0)
    with pytest.raises(TypeError, match="a: expected dtype uint8"):
        _core.gemm(k["index"], np.zeros((4, 8), np.int8), np.zeros(256, np.uint8), np.zeros(8192, np.int8),
                   4, 32, 8, 1, 1, 0)
    with pytest.raises(ValueError, match="a_offsets"):
        _core.gemm(k["index"], np.zeros(16, np.uint8), np.zeros(256, np.uint8), np.zeros(8192, np.int8),
                   1, 32, 8, 1, 1, 0, a_offsets=np.array([[20]], np.int64), seg_steps=8)


def test_api_consistency():
    """One exception base for both front ends; no silent 2-bit default; bits
    and codebooks of explain() by keyword only (activations, then weights)."""
    from lowbit.convert import ConversionError as convert_error
    from lowbit.qonnx import QonnxConversionError

    assert lowbit.ConversionError is convert_error and issubclass(QonnxConversionError, lowbit.ConversionError)
    assert issubclass(lowbit.ConversionError, NotImplementedError)
    codes = np.zeros((3, 8), np.uint8)
    with pytest.raises(TypeError, match="bits"):
        lowbit.pack_weights(codes)
    with pytest.raises(TypeError, match="a_bits"):
        lowbit.gemm(codes, lowbit.pack_weights(codes, 2))
    with pytest.raises(TypeError):
        lowbit.explain(3, 3, 8, 2, 2)  # positional bits could be swapped silently
    assert "kernel" in lowbit.explain(3, 3, 8, a_bits=2, w_bits=2)


def test_submodules_load_on_first_use():
    code = ("import sys, lowbit\n"
            "assert 'torch' not in sys.modules, 'import lowbit must not import torch'\n"
            "assert callable(lowbit.qat.prepare) and callable(lowbit.models.load_fmnist)\n"
            "print('ok')\n")
    import subprocess

    optional_import("torch")  # lowbit.qat loads torch on first use
    r = subprocess.run([*python_command(), "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lowbit.nope  # noqa: B018
