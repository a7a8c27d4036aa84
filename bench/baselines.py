"""Baseline contenders. Each builder prepacks once and returns a zero-arg callable that runs
one inference. Inputs are already quantized (input quantization is not timed).

Names: torch_<engine>_linear / torch_<engine>_conv, ort_int8_matmul / ort_int8_conv,
ort_mnb2_acc0 / ort_mnb2_acc4 (MatMulNBits 2-bit, fp32 A), fp32_matmul / fp32_conv.
"""
import numpy as np
import torch
import torch.nn.functional as F

ENGINES = ("qnnpack", "fbgemm", "onednn", "x86")
INT8_BEST_POOL = ("fbgemm", "onednn", "x86", "ort_int8")  # candidates for best_int8
WHAT_IS_TIMED = {
    "torch_<engine>_linear": "torch.ops.quantized.linear on a quint8 (M,K) input, prepacked qint8 "
                             "(N,K) weight, quint8 output (requantize included; input quantize not timed)",
    "torch_<engine>_conv": "torch.ops.quantized.conv2d, batch-1 quint8 NCHW input in channels_last "
                           "memory format, quint8 output (input quantize not timed)",
    "ort_int8_matmul": "onnxruntime MatMulInteger uint8 (M,K) x int8 (K,N) -> int32, io_binding",
    "ort_int8_conv": "onnxruntime QLinearConv uint8 NCHW x int8 weight -> uint8, io_binding",
    "ort_mnb2_acc<L>": "onnxruntime com.microsoft MatMulNBits bits=2, fp32 (M,K) A, fp32 out, "
                       "accuracy_level L (0: fp32 compute, 4: int8 compute)",
    "fp32_matmul / fp32_conv": "torch.matmul / F.conv2d in float32",
    "lowbit:<strategy>:w<bw>a<ba>[:nu]": "lowbit.gemm on (M,K) uint8 codes x packed (N,K) codes -> "
                                         "int32; activation packing included; no im2col",
    "int8 weights": "int8 weights are drawn in [-64,63]: AVX2 u8s8 paths (vpmaddubsw) saturate "
                    "with full-range weights; timing does not depend on it",
}
_rng = np.random.default_rng(0)


def _u8(shape):
    return _rng.integers(0, 256, shape, dtype=np.uint8)


def _s8(shape):
    return _rng.integers(-64, 64, shape, dtype=np.int8)


# ---------------------------------------------------------------- torch quantized int8
def _with_engine(engine):
    if engine not in torch.backends.quantized.supported_engines:
        raise RuntimeError(f"engine {engine} not in {torch.backends.quantized.supported_engines}")
    torch.backends.quantized.engine = engine


def torch_qlinear(engine, m, k, n):
    _with_engine(engine)
    w = torch.quantize_per_tensor(torch.from_numpy(_s8((n, k))).float() * 0.01, 0.01, 0, torch.qint8)
    packed = torch.ops.quantized.linear_prepack(w, None)
    x = torch.quantize_per_tensor(torch.rand(m, k), 1 / 255, 0, torch.quint8)
    op = torch.ops.quantized.linear
    return lambda: op(x, packed, 0.5, 128)


def torch_qconv(engine, c):
    _with_engine(engine)
    w = torch.quantize_per_tensor(torch.from_numpy(_s8((c["cout"], c["cin"], c["kh"], c["kw"])))
                                  .float() * 0.01, 0.01, 0, torch.qint8)
    s, p = [c["stride"]] * 2, [c["pad"]] * 2
    packed = torch.ops.quantized.conv2d_prepack(w, None, s, p, [1, 1], 1)
    x = torch.quantize_per_tensor(torch.rand(1, c["cin"], c["h_in"], c["w_in"]), 1 / 255, 0,
                                  torch.quint8).contiguous(memory_format=torch.channels_last)
    op = torch.ops.quantized.conv2d
    return lambda: op(x, packed, 0.5, 128)


# ---------------------------------------------------------------- fp32
def fp32_matmul(m, k, n):
    a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
    return lambda: torch.matmul(a, b, out=out)


def fp32_conv(c):
    x = torch.randn(1, c["cin"], c["h_in"], c["w_in"])
    w = torch.randn(c["cout"], c["cin"], c["kh"], c["kw"])
    return lambda: F.conv2d(x, w, None, c["stride"], c["pad"])


# ---------------------------------------------------------------- onnxruntime
def _ort_session(nodes, inputs, outputs, inits, threads, feeds, opsets=(("", 17),)):
    import onnxruntime as ort
    from onnx import helper
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    # IR 8 is all opset 17 needs; a newer onnx than onnxruntime would
    # otherwise stamp an IR version the runtime refuses (seen: IR 14 vs max 13)
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # don't steal other contenders' cores
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    io = sess.io_binding()
    for name, arr in feeds.items():
        io.bind_cpu_input(name, arr)
    for o in outputs:
        io.bind_output(o.name, "cpu")
    sess.run_with_iobinding(io)  # allocate outputs once; later runs reuse them
    return lambda: sess.run_with_iobinding(io)


def ort_matmulinteger(m, k, n, threads):
    from onnx import TensorProto as T, helper, numpy_helper as nh
    node = helper.make_node("MatMulInteger", ["A", "B", "azp"], ["Y"])
    inits = [nh.from_array(_s8((k, n)), "B"), nh.from_array(np.array(128, np.uint8), "azp")]
    return _ort_session([node], [helper.make_tensor_value_info("A", T.UINT8, [m, k])],
                        [helper.make_tensor_value_info("Y", T.INT32, [m, n])], inits, threads,
                        {"A": _u8((m, k))})


def ort_qlinearconv(c, threads):
    from onnx import TensorProto as T, helper, numpy_helper as nh
    f32, shape = (lambda v, n: nh.from_array(np.array(v, np.float32), n)), [1, c["cin"], c["h_in"], c["w_in"]]
    inits = [f32(1 / 255, "xs"), nh.from_array(np.array(0, np.uint8), "xz"),
             nh.from_array(_s8((c["cout"], c["cin"], c["kh"], c["kw"])), "w"), f32(0.01, "ws"),
             nh.from_array(np.array(0, np.int8), "wz"), f32(0.5, "ys"), nh.from_array(np.array(128, np.uint8), "yz")]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"],
                            kernel_shape=[c["kh"], c["kw"]], strides=[c["stride"]] * 2, pads=[c["pad"]] * 4)
    return _ort_session([node], [helper.make_tensor_value_info("x", T.UINT8, shape)],
                        [helper.make_tensor_value_info("y", T.UINT8, None)], inits, threads, {"x": _u8(shape)})


def ort_matmulnbits(m, k, n, threads, bits=2, block_size=32, accuracy_level=0):
    """MatMulNBits: B is (N, k_blocks, block_size*bits/8) uint8, element j of a byte at bit j*bits;
    default zero point 2^(bits-1); scales fp32 (N*k_blocks)."""
    from onnx import TensorProto as T, helper, numpy_helper as nh
    kb, per = -(-k // block_size), 8 // bits
    codes = _rng.integers(0, 1 << bits, (n, kb * block_size), dtype=np.uint8)
    packed = np.zeros((n, kb * block_size // per), np.uint8)
    for j in range(per):
        packed |= codes[:, j::per] << (j * bits)
    inits = [nh.from_array(packed.reshape(n, kb, block_size * bits // 8), "B"),
             nh.from_array(np.full(n * kb, 0.01, np.float32), "scales")]
    node = helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft", K=k, N=n,
                            bits=bits, block_size=block_size, accuracy_level=accuracy_level)
    return _ort_session([node], [helper.make_tensor_value_info("A", T.FLOAT, [m, k])],
                        [helper.make_tensor_value_info("Y", T.FLOAT, [m, n])], inits, threads,
                        {"A": _rng.standard_normal((m, k)).astype(np.float32)},
                        opsets=(("", 17), ("com.microsoft", 1)))


# ---------------------------------------------------------------- all of them
def build(shape, threads, block_size=32, only=None):
    """Return ({name: fn}, {name: error}) for every baseline that applies to the shape.
    `only`: optional list of name substrings to keep."""
    m, n, k, c = shape["M"], shape["N"], shape["K"], shape["conv"]
    builders = {f"torch_{e}_linear": (lambda e=e: torch_qlinear(e, m, k, n)) for e in ENGINES}
    builders.update({
        "ort_int8_matmul": lambda: ort_matmulinteger(m, k, n, threads),
        "ort_mnb2_acc0": lambda: ort_matmulnbits(m, k, n, threads, 2, block_size, 0),
        "ort_mnb2_acc4": lambda: ort_matmulnbits(m, k, n, threads, 2, block_size, 4),
        "fp32_matmul": lambda: fp32_matmul(m, k, n),
    })
    if c is not None:
        builders.update({f"torch_{e}_conv": (lambda e=e: torch_qconv(e, c)) for e in ENGINES})
        builders["ort_int8_conv"] = lambda: ort_qlinearconv(c, threads)
        builders["fp32_conv"] = lambda: fp32_conv(c)
    fns, errors = {}, {}
    for name, make in builders.items():
        if only and not any(s in name for s in only):
            continue
        try:
            fns[name] = make()
        except Exception as e:  # noqa: BLE001 - record why a baseline is missing
            errors[name] = f"{type(e).__name__}: {e}"
    return fns, errors


def engine_of(name):
    """Group a baseline name into its engine: qnnpack, fbgemm, onednn, x86, ort_int8, ... or None."""
    for e in ENGINES:
        if name.startswith(f"torch_{e}_"):
            return e
    return "ort_int8" if name.startswith("ort_int8_") else None


def ort_int8_static(net, x, calib_batches, threads=1):
    """onnxruntime int8 as a user would build it for a float torch model: export to ONNX
    (TorchScript route, opset 17, dynamic batch), ``quantize_static`` in QOperator form
    (uint8 activations, int8 weights) calibrated on ``calib_batches`` (float32 NCHW arrays,
    one per calibration step), a session with ``threads`` intra-op threads and no spinning.
    Returns a callable running float32 NCHW ``x`` (input quantization included)."""
    import os
    import tempfile
    import warnings

    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    d = tempfile.mkdtemp(prefix="ort-int8-")
    f32, i8 = os.path.join(d, "f32.onnx"), os.path.join(d, "int8.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.from_numpy(np.ascontiguousarray(x[:1])), f32, input_names=["x"],
                          output_names=["y"], opset_version=17, dynamo=False,
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.data = iter([{"x": b} for b in calib_batches])

        def get_next(self):
            return next(self.data, None)

    quantize_static(f32, i8, Reader(), quant_format=QuantFormat.QOperator, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(i8, so, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"x": x})
