"""Fuzzing in the test suite (docs/robustness.md): every harness of tests/fuzz
runs for a bounded time (atheris, coverage-guided, when installed; otherwise
the seeded mutation engine), every seed-corpus file runs in-process, and each
bug the fuzzers found has a readable regression test below."""
import json
import os
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

import lowbit
from lowbit import io

from conftest import optional_import, python_command
from numpy_models import small_cnn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FUZZ = os.path.join(ROOT, "tests", "fuzz")
HARNESSES = {"model_file": "fuzz_model_file.py", "packed_weights": "fuzz_packed_weights.py",
             "qonnx": "fuzz_qonnx.py"}
# Executions per harness in the default suite (about 10 s each here), with a fixed
# seed: the same inputs on every run, so CI cannot fail at random on a bug found
# by chance (run longer, other seeds, by hand: tests/fuzz/harness.py).
RUNS = {"model_file": 1500, "packed_weights": 40000, "qonnx": 2500}
SECONDS = 120  # a bound, not the budget


def _import_harness(name):
    sys.path.insert(0, FUZZ)
    try:
        return __import__(HARNESSES[name][:-3])
    finally:
        sys.path.remove(FUZZ)


@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_fuzz_harness_runs_clean_for_a_bounded_time(name, tmp_path):
    if name == "qonnx":
        optional_import("onnx")
    r = subprocess.run([*python_command(), os.path.join(FUZZ, HARNESSES[name]), f"--runs={RUNS[name]}", "--seed=1",
                        f"--seconds={SECONDS}", f"--workdir={tmp_path}"], capture_output=True, text=True,
                       timeout=SECONDS + 120,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)), cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    runs = re.search(r"Done (\d+) runs|executions: (\d+)", out)
    assert runs, out[-2000:]
    executions = int(runs.group(1) or runs.group(2))
    assert executions >= 50, out[-2000:]  # it really fuzzed
    print(f"{name}: {executions} executions")


def _corpus():
    folder = os.path.join(FUZZ, "corpus")
    return [(name, os.path.join(folder, name, f)) for name in sorted(HARNESSES)
            for f in sorted(os.listdir(os.path.join(folder, name)))]


@pytest.mark.parametrize("name,path", _corpus(), ids=lambda v: os.path.basename(v) if "/" in v else v)
def test_seed_corpus_input(name, path):
    if name == "qonnx":
        optional_import("onnx")
    with open(path, "rb") as f:
        _import_harness(name).test_one_input(f.read())


# ---- regressions: one per bug the fuzzers found ------------------------------------------------

def _file_with_header(edit):
    """A model file of small_cnn() whose JSON header went through edit(header), with a valid CRC."""
    blob = io.to_bytes(small_cnn())
    _, _, hlen, dlen = io._PREFIX.unpack_from(blob)
    header = json.loads(blob[io._PREFIX.size:io._PREFIX.size + hlen])
    edit(header)
    data = blob[io._PREFIX.size + hlen:io._PREFIX.size + hlen + dlen]
    new = json.dumps(header).encode()
    body = io._PREFIX.pack(io.MAGIC, io.FORMAT_VERSION, len(new), len(data)) + new + data
    return body + struct.pack("<I", zlib.crc32(body))


def _node(header, name):
    return next(n for n in header["graph"]["nodes"] if n["name"] == name)


@pytest.mark.parametrize("edit,message", [
    (lambda h: h.update(graph=3), "graph: expected dict, got int"),                       # was AttributeError
    (lambda h: h["graph"].update(nodes={"a": 1}), "graph.nodes: expected list"),
    (lambda h: h["tensors"][0].update(shape=[2**40, 2**40]), "shape"),                    # np.prod overflowed
    (lambda h: h["tensors"][0].update(offset="0"), r"tensors\[0\].offset: expected int"),
    (lambda h: _node(h, "conv1")["attrs"].pop("groups"), "missing attribute 'groups'"),   # was KeyError at run
    (lambda h: _node(h, "conv1")["attrs"].update(stride=[0, 1]), "attribute 'stride'"),
    (lambda h: _node(h, "conv1")["attrs"].update(padding=["1", 1]), "attribute 'padding'"),
    (lambda h: _node(h, "conv1")["attrs"].update(requant={"bits": 33, "step": 0.5, "signed": False}),
     "attribute 'requant'"),
    (lambda h: _node(h, "conv1")["attrs"].update(w_codebook=[1e308, 0, 0, 0]), "w_codebook"),
    (lambda h: _node(h, "q0")["attrs"].update(step=float("nan")), "attribute 'step'"),
    (lambda h: _node(h, "q0")["attrs"].update(qp=7), "needs more than 2 bits"),
    (lambda h: _node(h, "q0")["attrs"].update(levels=[0, 1, 2, -2**63]), "attribute 'levels'"),   # OverflowError at run
    (lambda h: _node(h, "input")["attrs"].update(channels=-3), "attribute 'channels'"),
    (lambda h: _node(h, "pool")["attrs"].update(output_size=[0, 1]), "attribute 'output_size'"),
])
def test_loader_regressions(edit, message):
    with pytest.raises(io.LowbitFormatError, match=message):
        io.from_bytes(_file_with_header(edit))


def test_loader_refuses_non_finite_epilogue_parameters():
    m = small_cnn()
    m.node("fc").arrays["scale"][3] = np.nan
    with pytest.raises(io.LowbitFormatError, match="'scale' has non-finite values"):
        io.from_bytes(io.to_bytes(m))


# QONNX importer regressions (qonnx.py: local checks at the entry points)


def _qonnx_graph(conv_attrs=None, bits=2.0, in_shape=(1, 2, 8, 8), reshape=None, w_bits=2.0):
    from onnx import TensorProto, helper, numpy_helper

    qd = "qonnx.custom_op.general"
    inits = []

    def c(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    nodes = [helper.make_node("Quant", ["x", c("s", np.float32(0.25)), c("z", np.float32(0)),
                                        c("b", np.float32(bits))], ["q"], domain=qd, signed=0, narrow=0),
             helper.make_node("Quant", [c("w", np.zeros((4, 2, 3, 3), np.float32)), c("ws", np.float32(0.25)),
                                        c("wz", np.float32(0)), c("wb", np.float32(w_bits))], ["wq"], domain=qd,
                              signed=1, narrow=1),
             helper.make_node("Conv", ["q", "wq"], ["y"], **(conv_attrs or {"pads": [1, 1, 1, 1]})),
             helper.make_node("GlobalAveragePool", ["y"], ["p"])]
    out = "p"
    if reshape is not None:
        nodes.append(helper.make_node("Reshape", ["p", c("shape", np.asarray(reshape))], ["r"]))
        out = "r"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(qd, 2)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("kwargs,message", [
    ({"conv_attrs": {"strides": [0, 1]}}, r"strides \[0, 1\] is not supported"),    # was ZeroDivisionError
    ({"conv_attrs": {"group": 0}}, r"group=0 is not supported"),                    # was ZeroDivisionError
    ({"conv_attrs": {"pads": [-1, -1, -1, -1]}}, r"pads \[-1, -1\] is not supported"),
    ({"conv_attrs": {"strides": [1, 1]}, "in_shape": (1, 2, 2, 2)}, "too small for kernel"),
    ({"bits": 33.0}, "bit width 33 is not supported"),
    ({"bits": 0.0}, "bit width 0 is not supported"),
    ({"bits": float("nan")}, "bit width nan is not supported"),
    ({"w_bits": 1e10}, "bit_width 1e[+]10 is not supported"),                          # was OverflowError
    ({"w_bits": 2.5}, "bit_width 2.5 is not supported"),
    ({"in_shape": (1, 2**31, 8, 8)}, "exceed the import limits"),                     # was a hang (allocation)
    ({"reshape": np.array([np.inf, 1.0], np.float32)}, "Reshape node .*malformed"),      # was OverflowError
])
def test_qonnx_importer_regressions(kwargs, message):
    optional_import("onnx")
    with pytest.raises((lowbit.qonnx.QonnxConversionError, ValueError), match=message):
        lowbit.from_qonnx(_qonnx_graph(**kwargs))


def test_qonnx_importer_refuses_undecodable_bytes_and_non_utf8_names():
    optional_import("onnx")
    with pytest.raises(ValueError, match="not a serialized ONNX model"):         # was protobuf DecodeError
        lowbit.from_qonnx(b"\x0a\xff\xff\xff\xff garbage")
    blob = _qonnx_graph().SerializeToString().replace(b"qonnx.custom_op.general", b"\xffonnx.custom_op.general")
    with pytest.raises(ValueError, match="node domain .* is not valid UTF-8"):      # was TypeError (bytes)
        lowbit.from_qonnx(blob)
    assert lowbit.from_qonnx(_qonnx_graph()).input_shape == (2, 8, 8)            # the undamaged graph converts


@pytest.mark.parametrize("data_type", [0, 33])  # UNDEFINED; no such type
def test_qonnx_importer_refuses_an_initializer_of_unknown_type(data_type):
    """Fuzz findings (atheris, seeds 3 and 4): onnx's to_array raised a bare TypeError / KeyError."""
    optional_import("onnx")
    m = _qonnx_graph()
    m.graph.initializer[0].data_type = data_type
    with pytest.raises(lowbit.qonnx.QonnxConversionError, match="initializer 's': unreadable tensor"):
        lowbit.from_qonnx(m)
