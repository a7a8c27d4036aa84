"""``lowbit.qonnx.bench_qonnx``: a QONNX model timed under lowbit and under
onnxruntime (float lowering, optionally QDQ), interleaved, medians."""
from __future__ import annotations

import os
import time
import warnings

import numpy as np

from ..apps.timing import time_interleaved
from .qonnx import _load, from_qonnx
from .qonnx_float import to_float_onnx
from .qonnx_parity import _qonnx_executor

__all__ = ["bench_qonnx"]


def bench_qonnx(path, threads: int = 1, batch: int = 1, repeats: int = 50, warmup: int = 5,
                qdq: bool = False, fastest: bool = False, print_fn=print) -> dict:
    """Latency of a QONNX model under lowbit and under onnxruntime (float32, every
    quantizer lowered to float ops by :func:`to_float_onnx`), same input, at
    ``batch`` images and ``threads`` threads; with ``qdq`` also onnxruntime on
    qonnx's QuantizeLinear/Clip/DequantizeLinear lowering (``QuantToQCDQ``; 8-bit
    and narrower only); with ``fastest`` also lowbit under ``lowbit.use(strategy="fastest")``
    (dot products where the lookup tables are exact but slower, e.g. 4-bit weights; the
    outputs are checked byte-identical). One process, runs interleaved
    (:func:`lowbit.apps.timing.time_interleaved`, one call a round), median of ``repeats`` rounds.
    Returns a dict with milliseconds and ``speedup_vs_float`` (ort float / lowbit);
    prints a short report through ``print_fn`` (None: silent)."""
    import onnxruntime as ort

    from .. import get_num_threads, set_num_threads, use
    from .._dispatch import FASTEST

    for name, v in (("threads", threads), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
    src = _load(path)
    t0 = time.perf_counter()
    lb = from_qonnx(src)
    t_convert = time.perf_counter() - t0
    c, h, w = lb.input_shape
    x = np.random.default_rng(0).standard_normal((batch, c, h, w)).astype(np.float32)

    def session(proto):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])

    runners = {}
    fl = session(to_float_onnx(src))
    in_name = fl.get_inputs()[0].name
    runners["onnxruntime_float"] = lambda: fl.run(None, {in_name: x})
    if qdq:
        from qonnx.transformation.qonnx_to_qcdq import QuantToQCDQ

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mw = _qonnx_executor(src, batch).transform(QuantToQCDQ())
        qd = session(to_float_onnx(mw.model, dynamic_batch=False))  # what QuantToQCDQ leaves (Trunc, ...)
        qd_name = qd.get_inputs()[0].name
        runners["onnxruntime_qdq"] = lambda: qd.run(None, {qd_name: x})
    runners = {"lowbit": lambda: lb(x), **runners}
    if fastest:  # lowbit.use is entered around each timed batch (one call), outside the timed region
        runners["lowbit_fastest"] = (runners["lowbit"], lambda: use(strategy=FASTEST))
    old = get_num_threads()
    set_num_threads(threads)
    try:
        stats = time_interleaved(runners, rounds=repeats, warmup=warmup, min_time=0)
    finally:
        set_num_threads(old)
    failed = {k: st["error"] for k, st in stats.items() if "error" in st}
    if failed:
        raise RuntimeError(f"bench_qonnx: {failed}")
    ms = {k: 1e3 * st["median_s"] for k, st in stats.items()}
    ref = fl.run(None, {in_name: x})[0]
    mine = lb(x)
    res = {"model": os.fspath(path) if isinstance(path, (str, os.PathLike)) else type(path).__name__,
           "batch": batch, "threads": threads, "repeats": repeats, "convert_s": t_convert,
           "lowbit_ms": ms["lowbit"], "onnxruntime_float_ms": ms["onnxruntime_float"],
           "speedup_vs_float": ms["onnxruntime_float"] / ms["lowbit"],
           "top1_agree_float": float(np.mean(ref.reshape(batch, -1).argmax(1) == mine.reshape(batch, -1).argmax(1))),
           "layers": lb._bit_counts()}
    if fastest:
        with use(strategy=FASTEST):
            same = np.array_equal(lb(x), mine)
        if not same:
            raise AssertionError("lowbit under strategy='fastest' gave other outputs (a kernel is not exact)")
        res["lowbit_fastest_ms"] = ms["lowbit_fastest"]
        res["speedup_fastest_vs_float"] = ms["onnxruntime_float"] / ms["lowbit_fastest"]
    if qdq:
        res["onnxruntime_qdq_ms"] = ms["onnxruntime_qdq"]
        res["speedup_vs_qdq"] = ms["onnxruntime_qdq"] / ms["lowbit"]
    if print_fn is not None:
        lines = [f"{res['model']}: batch {batch}, {threads} thread(s), median of {repeats}",
                 f"  lowbit              {ms['lowbit']:9.3f} ms   ({', '.join(f'{k}: {v}' for k, v in res['layers'].items())})",
                 f"  onnxruntime float32 {ms['onnxruntime_float']:9.3f} ms   lowbit is "
                 f"{res['speedup_vs_float']:.2f}x faster"]
        if fastest:
            lines.append(f"  lowbit 'fastest'    {ms['lowbit_fastest']:9.3f} ms   lowbit is "
                         f"{res['speedup_fastest_vs_float']:.2f}x faster than onnxruntime float32")
        if qdq:
            lines.append(f"  onnxruntime QDQ     {ms['onnxruntime_qdq']:9.3f} ms   lowbit is "
                         f"{res['speedup_vs_qdq']:.2f}x faster")
        print_fn("\n".join(lines))
    return res
