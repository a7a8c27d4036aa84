// Python bindings of the native whole-graph executor (runtime/executor.h):
// _core.ExecutorPlan, built step by step by python/lowbit/executor.py from
// the Python kernel path's own planning. Every size a step will touch is
// checked here, against the buffers it names, before the step exists; a
// plan that finalized can only be run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/checks.h"
#include "core/cpu_features.h"
#include "ops/float_gemm.h"
#include "ops/graph_ops.h"
#include "kernels/dwconv/dwconv.h"
#include "kernels/ukernel.h"
#include "runtime/executor.h"
#include "runtime/steps.h"

namespace py = pybind11;

namespace lowbit {
namespace {

QuantizeParams quantize_params(bool binary, float step, int qn, int qp, bool pre, float pre_step,
                               float pre_inv_div);

using runtime::Plan;

// ExecutorPlan.run(check_finite=True) found a NaN or Inf in x (a ValueError in Python:
// _core.NonFiniteInput); the output was not written.
struct NonFiniteInput : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class T>
const T* array_data(const py::array& a, const char* name, size_t min_count) {
  if (!a.dtype().is(py::dtype::of<T>()) || !(a.flags() & py::array::c_style))
    throw py::type_error(std::string(name) + ": expected a C-contiguous array of the kernel's dtype");
  if (size_t(a.size()) < min_count)
    throw py::value_error(std::string(name) + ": expected at least " + std::to_string(min_count) + " elements");
  return static_cast<const T*>(a.data());
}

// A plan under construction and the NumPy arrays its steps point into.
class PlanHandle {
 public:
  int buffer(size_t bytes) { return plan_.add_buffer(checked(bytes)); }
  int input(size_t bytes) { return plan_.input_buffer(checked(bytes)); }
  int output(size_t bytes) { return plan_.output_buffer(checked(bytes)); }

  // Throws unless buffer `id` has at least `bytes` bytes.
  void need(int id, size_t bytes, const char* what) const {
    if (id < 0 || size_t(id) >= plan_.num_buffers()) throw py::value_error(std::string(what) + ": unknown buffer");
    if (plan_.buffer(id).bytes < bytes)
      throw py::value_error(std::string(what) + ": buffer of " + std::to_string(plan_.buffer(id).bytes) +
                            " bytes, the step needs " + std::to_string(bytes));
  }

  template <class T>
  const T* keep(const py::array& a, const char* name, size_t min_count) {
    const T* p = array_data<T>(a, name, min_count);
    kept_.push_back(a);
    return p;
  }
  // Keeps a Python object a step points into (a prepared layer) alive with the plan.
  void keep_object(const py::object& o) { kept_.push_back(o); }

  void add(std::unique_ptr<runtime::Step> s, const char* kind, int node, std::vector<int> reads,
           std::vector<int> writes) {
    if (plan_.finalized()) throw py::value_error("plan: already finalized");
    s->kind = kind;
    s->node = node;
    s->reads = std::move(reads);
    s->writes = std::move(writes);
    plan_.add_step(std::move(s));
  }

  // ep = (out_kind, scale, bias, clamp_lo, clamp_hi, inv_step, qmin, qmax,
  //       out, out_col, out_stride, residual, residual_col, residual_stride[, codes
  //       [, step64, scale64, bias64]])
  // for an M x N block of columns [out_col, out_col + N) of rows of out_stride elements;
  // codes (float32 outputs only): None or (buffer, col, stride, step, qn, qp), the second
  // output (Epilogue::codes: the quantize rule of QuantizeParams applied to the float output).
  runtime::EpilogueSpec epilogue(const py::tuple& ep, size_t M, size_t N, Tier tier, std::vector<int>* reads,
                                 std::vector<int>* writes) {
    if (ep.size() != 14 && ep.size() != 15 && ep.size() != 18)
      throw py::value_error("epilogue: expected a 14-, 15- or 18-tuple");
    runtime::EpilogueSpec e;
    const std::string kind = ep[0].cast<std::string>();
    if (kind == "float32") {
      e.kind = OutKind::float32;
    } else if (kind == "codes") {
      e.kind = OutKind::codes;
    } else if (kind == "int32") {
      e.kind = OutKind::int32;
    } else {
      throw py::value_error("epilogue: out_kind must be 'float32', 'codes' or 'int32'");
    }
    if (e.kind == OutKind::int32) {  // raw sums: no parameters, no residual
      e.out = ep[8].cast<int>();
      e.out_col = ep[9].cast<size_t>();
      e.out_stride = ep[10].cast<size_t>();
      if (e.out_col + N > e.out_stride || !ep[11].is_none()) throw py::value_error("epilogue: bad int32 output");
      need(e.out, checked_product({M, e.out_stride, 4}, "int32 output"), "int32 output");
      writes->push_back(e.out);
      return e;
    }
    e.scale = keep<float>(ep[1].cast<py::array>(), "scale", N);
    e.bias = keep<float>(ep[2].cast<py::array>(), "bias", N);
    e.clamp_lo = ep[3].cast<float>();
    e.clamp_hi = ep[4].cast<float>();
    e.inv_step = ep[5].cast<float>();
    e.qmin = ep[6].cast<int32_t>();
    e.qmax = ep[7].cast<int32_t>();
    for (size_t i = 0; i < N; ++i)
      if (!std::isfinite(e.scale[i]) || !std::isfinite(e.bias[i]))
        throw py::value_error("scale/bias: expected finite values");
    if (e.kind == OutKind::codes &&
        (!(e.qmin <= e.qmax && e.qmax - e.qmin <= 255) || !std::isfinite(e.inv_step) || e.inv_step <= 0))
      throw py::value_error("epilogue: bad requantization parameters");
    e.out = ep[8].cast<int>();
    e.out_col = ep[9].cast<size_t>();
    e.out_stride = ep[10].cast<size_t>();
    const size_t elem = e.kind == OutKind::float32 ? 4 : 1;
    if (e.out_col + N > e.out_stride) throw py::value_error("epilogue: columns outside the output rows");
    need(e.out, checked_product({M, e.out_stride, elem}, "epilogue output"), "epilogue output");
    writes->push_back(e.out);
    if (!ep[11].is_none()) {
      e.residual = ep[11].cast<int>();
      e.residual_col = ep[12].cast<size_t>();
      e.residual_stride = ep[13].cast<size_t>();
      if (e.residual_col + N > e.residual_stride) throw py::value_error("residual: columns outside its rows");
      need(e.residual, checked_product({M, e.residual_stride, 4}, "residual"), "residual");
      reads->push_back(e.residual);
    }
    if (ep.size() >= 15 && !ep[14].is_none()) {
      const py::tuple q = ep[14].cast<py::tuple>();
      if (q.size() != 6 || e.kind != OutKind::float32)
        throw py::value_error("epilogue: codes must be (buffer, col, stride, step, qn, qp) of a float32 output");
      const QuantizeParams p = quantize_params(false, q[3].cast<float>(), q[4].cast<int>(), q[5].cast<int>(), false,
                                               1.0f, 1.0f);
      e.codes = q[0].cast<int>();
      e.codes_col = q[1].cast<size_t>();
      e.codes_stride = q[2].cast<size_t>();
      e.codes_step = p.step;
      e.codes_qn = p.qn;
      e.codes_qp = p.qp;
      if (e.codes_col + N > e.codes_stride) throw py::value_error("epilogue: codes columns outside their rows");
      need(e.codes, checked_product({M, e.codes_stride}, "epilogue codes"), "epilogue codes");
      writes->push_back(e.codes);
    }
    // codes output: the float64 parameters of its exact requantization (ops/epilogue.h): step64 (0: from
    // inv_step), scale64 and bias64 (None: the float32 ones)
    if (ep.size() == 18 && e.kind == OutKind::codes) {
      e.step64 = ep[15].cast<double>();
      check_step64(e.step64, e.inv_step);
      if (!ep[16].is_none()) e.scale64 = keep<double>(ep[16].cast<py::array>(), "scale64", N);
      if (!ep[17].is_none()) e.bias64 = keep<double>(ep[17].cast<py::array>(), "bias64", N);
      for (size_t i = 0; i < N; ++i)  // finite, and rounding to the float32 ones (as lowbit.Epilogue checks)
        if ((e.scale64 && !rounds_to(e.scale64[i], e.scale[i])) || (e.bias64 && !rounds_to(e.bias64[i], e.bias[i])))
          throw py::value_error("scale64/bias64: expected finite values that round to scale/bias");
    }
    e.simd = tier > Tier::scalar;  // a forced scalar tier runs the scalar epilogue too (as the Python path)
    if (e.kind == OutKind::codes) e.fast = code_constants(e.params(), N);
    return e;
  }

  // Hands pack step `s` (groups kind) to gemm step `producer`, whose epilogue writes its codes in
  // whole rows; see GemmStep::store for what runs then, and ExecutorPlan.pack for who calls this.
  void fuse_pack(size_t producer, std::unique_ptr<runtime::PackStep> s) {
    if (plan_.finalized()) throw py::value_error("plan: already finalized");
    if (producer >= plan_.num_steps()) throw py::value_error("pack: producer is not a step of this plan");
    auto* g = dynamic_cast<runtime::GemmStep*>(plan_.mutable_step(producer));
    if (!g || g->store) throw py::value_error("pack: producer must be a gemm step with no fused pack yet");
    const runtime::EpilogueSpec& e = g->ep;
    // the codes the epilogue writes: its output (codes) or second output (float32 with codes), whole rows
    int codes = -1;
    size_t col = 0, stride = 0;
    int32_t top = 0;  // the largest code it can write
    if (e.kind == OutKind::codes) {
      codes = e.out, col = e.out_col, stride = e.out_stride, top = e.qmax - e.qmin;
    } else if (e.kind == OutKind::float32 && e.codes >= 0) {
      codes = e.codes, col = e.codes_col, stride = e.codes_stride, top = e.codes_qp - e.codes_qn;
    }
    if (s->kind != runtime::PackStep::Kind::groups || codes != s->src || col != 0 || stride != s->K ||
        g->M != s->M || g->N != s->K)
      throw py::value_error("pack: the producer's epilogue does not write these codes in whole rows");
    if (size_t(g->kernel->nr) % size_t(s->group) != 0)
      throw py::value_error("pack: the producer's column tiles do not start on a packing group");
    if (top >= (1 << s->bits)) throw py::value_error("pack: the producer's codes may not fit in bits");
    s->index = producer;  // runs inside the producer step
    const int dst = s->dst;
    g->store = std::move(s);
    plan_.add_write(producer, dst);
  }

  Plan plan_;

 private:
  static size_t checked(size_t bytes) { return checked_product({bytes}, "buffer"); }
  std::vector<py::object> kept_;
};

ConvGeometry geometry_of(const py::tuple& t) {
  if (t.size() != 14) throw py::value_error("geometry: expected (B, H, W, C, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW)");
  size_t v[14];
  for (size_t i = 0; i < 14; ++i) v[i] = t[i].cast<size_t>();
  ConvGeometry g{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13]};
  checked_product({g.B, g.H, g.W, g.C}, "input");
  checked_product({g.B, g.OH, g.OW, g.C}, "output");
  if (g.kh == 0 || g.kw == 0 || g.sh == 0 || g.sw == 0 || g.dh == 0 || g.dw == 0)
    throw py::value_error("geometry: kernel/stride/dilation must be >= 1");
  if (g.OH == 0 || g.OW == 0 || g.OH != conv_out_size(g.H, g.kh, g.sh, g.ph, g.dh) ||
      g.OW != conv_out_size(g.W, g.kw, g.sw, g.pw, g.dw))
    throw py::value_error("geometry: output size does not match the window");
  return g;
}

QuantizeParams quantize_params(bool binary, float step, int qn, int qp, bool pre, float pre_step,
                               float pre_inv_div) {
  if (!std::isfinite(step) || step <= 0 || (pre && (!std::isfinite(pre_step) || pre_step <= 0)))
    throw py::value_error("quantize: step must be finite and > 0");
  if (qn < -128 || qp < qn || qp - qn > 255) throw py::value_error("quantize: expected -128 <= qn <= qp <= qn + 255");
  QuantizeParams p;
  p.binary = binary;
  p.step = step;
  p.qn = qn;
  p.qp = qp;
  p.pre = pre;
  p.pre_step = pre_step;
  p.pre_inv_div = pre_inv_div;
  return p;
}

// A float32 conv/linear layer's prepared weights (ops/float_gemm.h): w
// (cout, cg, kh, kw) float32, bias (cout,) float32 or None, `groups`.
std::unique_ptr<FloatConv> make_float_conv(const py::array& w, const py::object& bias, size_t groups) {
  if (w.ndim() != 4) throw py::value_error("w: expected a 4-D (cout, cin / groups, kh, kw) float32 array");
  const size_t cout = size_t(w.shape(0)), cg = size_t(w.shape(1)), kh = size_t(w.shape(2)), kw = size_t(w.shape(3));
  const size_t count = checked_product({cout, cg, kh, kw}, "w");
  if (count == 0) throw py::value_error("w: expected every dimension >= 1");
  if (groups == 0 || cout % groups) throw py::value_error("groups: expected a divisor of cout (w.shape[0])");
  checked_product({groups, cg}, "input channels");
  const float* wp = array_data<float>(w, "w", count);
  const float* bp = nullptr;
  if (!bias.is_none()) {
    const py::array b = bias.cast<py::array>();
    if (b.ndim() != 1 || size_t(b.shape(0)) != cout) throw py::value_error("bias: expected (cout,) float32 values");
    bp = array_data<float>(b, "bias", cout);
  }
  return std::make_unique<FloatConv>(wp, bp, cout, cg, kh, kw, groups);
}

// The geometry of `conv` on an NHWC (B, H, W, C) input; ValueError naming x
// when C is not the layer's or the input is smaller than the window.
ConvGeometry float_conv_geometry(const FloatConv& conv, const std::vector<size_t>& shape, const py::tuple& stride,
                                 const py::tuple& padding, const py::tuple& dilation) {
  if (shape.size() != 4) throw py::value_error("x: expected an NHWC (B, H, W, C) array");
  if (stride.size() != 2 || padding.size() != 2 || dilation.size() != 2)
    throw py::value_error("stride/padding/dilation: expected pairs");
  ConvGeometry g{shape[0], shape[1], shape[2], shape[3], conv.kh, conv.kw, stride[0].cast<size_t>(),
                 stride[1].cast<size_t>(), padding[0].cast<size_t>(), padding[1].cast<size_t>(),
                 dilation[0].cast<size_t>(), dilation[1].cast<size_t>(), 0, 0};
  if (g.C != conv.groups * conv.cg)
    throw py::value_error("x: expected " + std::to_string(conv.groups * conv.cg) + " input channels, got " +
                          std::to_string(g.C));
  if (g.sh == 0 || g.sw == 0 || g.dh == 0 || g.dw == 0) throw py::value_error("stride/dilation: expected >= 1");
  checked_product({g.B, g.H, g.W, g.C}, "x");
  checked_product({g.H + 2 * g.ph, g.W + 2 * g.pw}, "padded input");
  g.OH = conv_out_size(g.H, g.kh, g.sh, g.ph, g.dh);
  g.OW = conv_out_size(g.W, g.kw, g.sw, g.pw, g.dw);
  if (g.OH == 0 || g.OW == 0)
    throw py::value_error("x: input " + std::to_string(g.H) + "x" + std::to_string(g.W) + " is too small for a " +
                          std::to_string(g.kh) + "x" + std::to_string(g.kw) + " kernel");
  checked_product({g.B, g.OH, g.OW, conv.cout}, "output");
  return g;
}

// The parameters of fix_float_quantize_ties (ops/float_gemm.h) for one quantize
// node, checked once, with the arrays they point into (lowbit.exact_float).
class ExactFloatSpec {
 public:
  ExactFloatSpec(const py::array& w, const py::object& conv_bias, const py::object& scale32, const py::object& bias32,
                 const py::object& scale64, const py::object& bias64, double clamp_lo, double clamp_hi, double step,
                 int qn, int qp, size_t groups, const py::object& divisors, const py::object& w64) {
    if (w.ndim() != 4) throw py::value_error("w: expected (cout, cin / groups, kh, kw)");
    const size_t cout = size_t(w.shape(0));
    if (groups == 0 || cout == 0 || cout % groups) throw py::value_error("groups: expected a divisor of cout");
    p.w = keep<float>(w, "w", checked_product({cout, size_t(w.shape(1)), size_t(w.shape(2)), size_t(w.shape(3))},
                                              "w"));
    p.cout = cout;
    p.cg = size_t(w.shape(1));
    p.groups = groups;
    kh = size_t(w.shape(2));
    kw = size_t(w.shape(3));
    if (!conv_bias.is_none()) p.conv_bias = keep<float>(conv_bias.cast<py::array>(), "conv_bias", cout);
    if (scale64.is_none() != bias64.is_none() || scale64.is_none() != scale32.is_none() ||
        scale32.is_none() != bias32.is_none())
      throw py::value_error("scale32/bias32/scale64/bias64: give all four (an affine) or none");
    if (!scale64.is_none()) {
      p.scale32 = keep<float>(scale32.cast<py::array>(), "scale32", cout);
      p.bias32 = keep<float>(bias32.cast<py::array>(), "bias32", cout);
      p.scale64 = keep<double>(scale64.cast<py::array>(), "scale64", cout);
      p.bias64 = keep<double>(bias64.cast<py::array>(), "bias64", cout);
      for (size_t c = 0; c < cout; ++c)
        if (!rounds_to(p.scale64[c], p.scale32[c]) || !rounds_to(p.bias64[c], p.bias32[c]))
          throw py::value_error("scale64/bias64: expected finite values that round to scale32/bias32");
    }
    if (std::isnan(clamp_lo) || std::isnan(clamp_hi) || clamp_lo > clamp_hi)
      throw py::value_error("clamp_lo/clamp_hi: expected clamp_lo <= clamp_hi (no NaN)");
    if (!(std::isfinite(step) && step > 0 && static_cast<double>(static_cast<float>(step)) == step))
      throw py::value_error("step: expected a finite float32 value > 0");
    if (qn < -128 || qp < qn || qp - qn > 255) throw py::value_error("qn/qp: expected -128 <= qn <= qp <= qn + 255");
    if (!w64.is_none()) {
      const size_t n = size_t(w.size());
      p.w64 = keep<double>(w64.cast<py::array>(), "w64", n);
      for (size_t i = 0; i < n; ++i)
        if (!rounds_to(p.w64[i], p.w[i]))
          throw py::value_error("w64: expected finite values that round to the float32 weights w");
    }
    if (!divisors.is_none()) {
      p.divisor64 = keep<double>(divisors.cast<py::array>(), "divisors", cout);
      for (size_t c = 0; c < cout; ++c)
        if (!(std::isfinite(p.divisor64[c]) && p.divisor64[c] > 0))
          throw py::value_error("divisors: expected finite values > 0");
    }
    p.clamp_lo = clamp_lo;
    p.clamp_hi = clamp_hi;
    p.step64 = step;
    p.qn = qn;
    p.qp = qp;
  }

  // Throws unless g is a geometry of these weights.
  void check(const ConvGeometry& g) const {
    if (g.C != p.groups * p.cg || g.kh != kh || g.kw != kw)
      throw py::value_error("exact_float: geometry does not match the layer's weights");
  }

  ExactFloatQuantize p;
  size_t kh = 0, kw = 0;

 private:
  template <class T>
  const T* keep(const py::array& a, const char* name, size_t count) {
    if (size_t(a.size()) != count) throw py::value_error(std::string(name) + ": expected " + std::to_string(count) +
                                                        " values");
    const T* d = array_data<T>(a, name, count);
    kept_.push_back(a);
    return d;
  }
  std::vector<py::object> kept_;
};

}  // namespace

void bind_executor(py::module_& m) {
  py::class_<FloatConv>(m, "FloatConv", py::module_local(),
                        "A float32 convolution / linear layer with its weights packed once (conv_f32 / linear_f32 "
                        "nodes; summation order: docs/runtime.md)")
      .def(py::init(&make_float_conv), py::arg("w"), py::arg("bias"), py::arg("groups") = 1,
           "w: (cout, cin / groups, kh, kw) float32 (ONNX order; a linear layer: (N, K, 1, 1)), bias: (cout,) "
           "float32 or None")
      .def(
          "__call__",
          [](const FloatConv& conv, const py::array& x, const py::tuple& stride, const py::tuple& padding,
             const py::tuple& dilation, bool simd) {
            std::vector<size_t> shape(size_t(x.ndim()));
            for (size_t i = 0; i < shape.size(); ++i) shape[i] = size_t(x.shape(ssize_t(i)));
            const ConvGeometry g = float_conv_geometry(conv, shape, stride, padding, dilation);
            const float* src = array_data<float>(x, "x", g.B * g.H * g.W * g.C);
            py::array_t<float> out({g.B, g.OH, g.OW, conv.cout});
            float* dst = out.mutable_data();
            {
              py::gil_scoped_release release;
              conv.run(src, g, dst, simd);
            }
            return out;
          },
          py::arg("x"), py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("simd"),
          "NHWC float32 x (B, H, W, C) -> (B, OH, OW, cout); simd=False runs the scalar twin (identical results)")
      .def("kernel_name", &FloatConv::kernel_name, py::arg("simd"))
      .def_readonly("cout", &FloatConv::cout)
      .def_readonly("groups", &FloatConv::groups)
      .def_readonly("depthwise", &FloatConv::depthwise)
      .def_readonly("K", &FloatConv::K);
  py::class_<ExactFloatSpec>(m, "ExactFloatSpec", py::module_local(),
                             "The exact codes of a quantize node fed by a float layer (lowbit.exact_float)")
      .def(py::init<const py::array&, const py::object&, const py::object&, const py::object&, const py::object&,
                    const py::object&, double, double, double, int, int, size_t, const py::object&,
                    const py::object&>(),
           py::arg("w"), py::arg("conv_bias"), py::arg("scale32"), py::arg("bias32"), py::arg("scale64"),
           py::arg("bias64"), py::arg("clamp_lo"), py::arg("clamp_hi"), py::arg("step"), py::arg("qn"), py::arg("qp"),
           py::arg("groups"), py::arg("divisors") = py::none(), py::arg("w64") = py::none());
  m.def(
      "executor_maxpool_nhwc",
      [](const py::array_t<float, py::array::c_style | py::array::forcecast>& x, const py::tuple& geometry,
         bool simd) {
        const ConvGeometry g = geometry_of(geometry);
        if (size_t(x.size()) != g.B * g.H * g.W * g.C) throw py::value_error("x: expected B*H*W*C float32 values");
        py::array_t<float> out({g.B, g.OH, g.OW, g.C});
        const float* src = x.data();
        float* dst = out.mutable_data();
        {
          py::gil_scoped_release release;
          maxpool_nhwc(src, g, dst, simd);
        }
        return out;
      },
      "The executor's max pooling step on NHWC float32 x with geometry (B, H, W, C, kh, kw, sh, sw, ph, pw, dh, "
      "dw, OH, OW): simd=False runs the scalar rule, True its AVX2 twin where the CPU has it (identical results)",
      py::arg("x"), py::arg("geometry"), py::arg("simd"));
  m.def(
      "executor_pack_groups_block",
      [](const py::array_t<uint8_t, py::array::c_style>& codes, size_t m0, size_t m1, size_t n0, size_t n1, int bits,
         int group, int shift, py::array_t<uint8_t, py::array::c_style>& out, size_t out_bytes, int tier) {
        if (codes.ndim() != 2 || m0 > m1 || m1 > size_t(codes.shape(0)) || n0 >= n1 || n1 > size_t(codes.shape(1)))
          throw py::value_error("codes: expected a 2-D array holding rows [m0, m1) x columns [n0, n1)");
        if (bits < 1 || bits > 8 || group < 1 || shift < 0 || shift > 2 || group * bits + shift > 8)
          throw py::value_error("bits/group/shift: expected group * bits + shift <= 8, shift 0..2");
        const size_t packed = (n1 - n0 + size_t(group) - 1) / size_t(group);
        if (out.ndim() != 2 || size_t(out.shape(0)) != m1 - m0 || out_bytes < packed ||
            out_bytes > size_t(out.shape(1)))
          throw py::value_error("out: expected (m1 - m0, out_stride) bytes with ceil(K/group) <= out_bytes <= out_stride");
        if (tier < 0 || tier >= kNumTiers) throw py::value_error("tier: out of range");
        const Tier t = std::min(Tier(tier), best_tier());
        const size_t stride = size_t(codes.shape(1));
        const uint8_t* src = codes.data() + m0 * stride + n0;
        uint8_t* dst = out.mutable_data();
        const size_t out_stride = size_t(out.shape(1));
        py::gil_scoped_release release;
        return pack_groups_block(src, stride, m1 - m0, n1 - n0, bits, group, shift, dst, out_stride, out_bytes, t);
      },
      "pack_groups_block (ops/pack.h) of codes rows [m0, m1) x columns [n0, n1) into `out` (out_bytes a row); "
      "False when a code is >= 2**bits. tier: 0 scalar, 1 the AVX2 packer where the CPU has it",
      py::arg("codes"), py::arg("m0"), py::arg("m1"), py::arg("n0"), py::arg("n1"), py::arg("bits"), py::arg("group"),
      py::arg("shift"), py::arg("out"), py::arg("out_bytes"), py::arg("tier"));
  m.def(
      "maxpool_nhwc_codes",
      [](const py::array_t<uint8_t, py::array::c_style>& x, const py::tuple& geometry, bool simd) {
        const ConvGeometry g = geometry_of(geometry);
        if (x.ndim() != 4 || size_t(x.shape(0)) != g.B || size_t(x.shape(1)) != g.H || size_t(x.shape(2)) != g.W ||
            size_t(x.shape(3)) != g.C)
          throw py::value_error("x: expected uint8 codes of shape (B, H, W, C) of the geometry");
        py::array_t<uint8_t> out({g.B, g.OH, g.OW, g.C});
        const uint8_t* src = x.data();
        uint8_t* dst = out.mutable_data();
        {
          py::gil_scoped_release release;
          maxpool_nhwc_u8(src, g, dst, simd);
        }
        return out;
      },
      "Max pooling of NHWC uint8 codes with geometry (B, H, W, C, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW): the "
      "largest code of each window's in-image taps (padding never wins); simd=False runs the scalar rule, True its "
      "AVX2 twin where the CPU has it (identical results)",
      py::arg("x"), py::arg("geometry"), py::arg("simd") = true);
  using runtime::DequantizeStep;
  using runtime::DwconvStep;
  using runtime::EltwiseStep;
  using runtime::GemmStep;
  using runtime::GroupedConvStep;
  using runtime::Im2colStep;
  using runtime::LayoutStep;
  using runtime::PackStep;
  using runtime::PoolStep;
  using runtime::QuantizeStep;

  py::class_<PlanHandle>(m, "ExecutorPlan", py::module_local(),
                         "A lowbit.Model lowered to native steps for one input shape (built by lowbit.executor)")
      .def(py::init<>())
      .def("buffer", &PlanHandle::buffer, "A new arena buffer of nbytes bytes; returns its id")
      .def("input", &PlanHandle::input, "The caller's input array (NCHW float32) as a buffer")
      .def("output", &PlanHandle::output, "The caller's output array as a buffer")
      .def("quantize",
           [](PlanHandle& h, int node, int src, int dst, size_t n, py::object nchw, bool binary, float step, int qn,
              int qp, bool pre, float pre_step, float pre_inv_div, bool simd) {
             auto s = std::make_unique<QuantizeStep>();
             s->src = src;
             s->dst = dst;
             s->params = quantize_params(binary, step, qn, qp, pre, pre_step, pre_inv_div);
             s->params.simd = simd;  // false under a forced scalar tier
             if (!nchw.is_none()) {
               auto shape = nchw.cast<std::vector<size_t>>();
               if (shape.size() != 4) throw py::value_error("quantize: nchw must be (B, C, H, W)");
               s->nchw = true;
               s->B = shape[0];
               s->C = shape[1];
               s->H = shape[2];
               s->W = shape[3];
               n = checked_product({s->B, s->C, s->H, s->W}, "quantize input");
             }
             s->n = n;
             h.need(src, checked_product({n, 4}, "quantize input"), "quantize input");
             h.need(dst, n, "quantize output");
             h.add(std::move(s), "quantize", node, {src}, {dst});
           })
      .def("dequantize",
           [](PlanHandle& h, int node, int src, int dst, size_t n, const py::array& levels, float step) {
             auto s = std::make_unique<DequantizeStep>();
             const int32_t* lv = array_data<int32_t>(levels, "levels", 1);
             const size_t count = size_t(levels.size());
             if (count != 2 && count != 4 && count != 8 && count != 16 && count != 256)
               throw py::value_error("dequantize: expected 2**bits levels");
             s->levels.assign(lv, lv + count);
             s->src = src;
             s->dst = dst;
             s->n = n;
             s->step = step;
             h.need(src, n, "dequantize input");
             h.need(dst, checked_product({n, 4}, "dequantize output"), "dequantize output");
             h.add(std::move(s), "dequantize", node, {src}, {dst});
           })
      .def("layout",
           [](PlanHandle& h, int node, const std::string& kind, int src, int dst, std::vector<size_t> shape) {
             auto s = std::make_unique<LayoutStep>();
             size_t elem = 4;
             if (kind == "nchw_to_nhwc") {
               s->kind = LayoutStep::Kind::nchw_to_nhwc;
             } else if (kind == "nhwc_to_nchw") {
               s->kind = LayoutStep::Kind::nhwc_to_nchw;
             } else if (kind == "flatten_f32") {
               s->kind = LayoutStep::Kind::flatten_f32;
             } else if (kind == "flatten_u8") {
               s->kind = LayoutStep::Kind::flatten_u8;
               elem = 1;
             } else if (kind == "copy") {
               s->kind = LayoutStep::Kind::copy;
               elem = 1;
               shape.resize(4, 1);
             } else {
               throw py::value_error("layout: unknown kind " + kind);
             }
             if (shape.size() != 4) throw py::value_error("layout: expected a 4-D shape");
             s->d0 = shape[0];
             s->d1 = shape[1];
             s->d2 = shape[2];
             s->d3 = shape[3];
             const size_t bytes = checked_product({shape[0], shape[1], shape[2], shape[3], elem}, "layout");
             h.need(src, bytes, "layout input");
             h.need(dst, bytes, "layout output");
             s->src = src;
             s->dst = dst;
             h.add(std::move(s), "layout", node, {src}, {dst});
           })
      .def("add",
           [](PlanHandle& h, int node, int a, int b, int dst, size_t n) {
             auto s = std::make_unique<EltwiseStep>();
             s->kind = EltwiseStep::Kind::add;
             const size_t bytes = checked_product({n, 4}, "add");
             h.need(a, bytes, "add input");
             h.need(b, bytes, "add input");
             h.need(dst, bytes, "add output");
             s->a = a;
             s->b = b;
             s->dst = dst;
             s->n = n;
             h.add(std::move(s), "add", node, {a, b}, {dst});
           })
      .def("clamp",
           [](PlanHandle& h, int node, int src, int dst, size_t n, float lo, float hi) {
             auto s = std::make_unique<EltwiseStep>();
             s->kind = EltwiseStep::Kind::clamp;
             const size_t bytes = checked_product({n, 4}, "clamp");
             h.need(src, bytes, "clamp input");
             h.need(dst, bytes, "clamp output");
             s->a = src;
             s->dst = dst;
             s->n = n;
             s->lo = lo;
             s->hi = hi;
             h.add(std::move(s), "clamp", node, {src}, {dst});
           })
      .def("affine",
           [](PlanHandle& h, int node, int src, int dst, size_t rows, const py::array& scale, const py::array& bias) {
             auto s = std::make_unique<EltwiseStep>();
             s->kind = EltwiseStep::Kind::affine;
             const size_t C = size_t(scale.size());
             if (C == 0 || size_t(bias.size()) != C) throw py::value_error("affine: scale and bias of one size >= 1");
             const float* sc = array_data<float>(scale, "scale", C);
             const float* bi = array_data<float>(bias, "bias", C);
             s->scale.assign(sc, sc + C);
             s->bias.assign(bi, bi + C);
             s->C = C;
             s->n = checked_product({rows, C}, "affine");
             h.need(src, s->n * 4, "affine input");
             h.need(dst, s->n * 4, "affine output");
             s->a = src;
             s->dst = dst;
             h.add(std::move(s), "affine", node, {src}, {dst});
           })
      .def("pool",
           [](PlanHandle& h, int node, const std::string& kind, int src, int dst, const py::tuple& geometry,
              bool count_include_pad, bool simd) {
             auto s = std::make_unique<PoolStep>();
             s->simd = simd;
             if (kind == "adaptive") {
               s->kind = PoolStep::Kind::adaptive;
               if (geometry.size() != 6) throw py::value_error("pool: adaptive needs (B, H, W, C, OH, OW)");
               ConvGeometry g{};
               g.B = geometry[0].cast<size_t>();
               g.H = geometry[1].cast<size_t>();
               g.W = geometry[2].cast<size_t>();
               g.C = geometry[3].cast<size_t>();
               g.OH = geometry[4].cast<size_t>();
               g.OW = geometry[5].cast<size_t>();
               checked_product({g.B, g.H, g.W, g.C}, "pool input");
               checked_product({g.B, g.OH, g.OW, g.C}, "pool output");
               if (g.OH == 0 || g.OW == 0 || g.H == 0 || g.W == 0) throw py::value_error("pool: empty map");
               s->g = g;
             } else {
               s->kind = kind == "max" ? PoolStep::Kind::max
                         : kind == "max_codes" ? PoolStep::Kind::max_codes : PoolStep::Kind::avg;
               if (kind != "max" && kind != "avg" && kind != "max_codes")
                 throw py::value_error("pool: unknown kind " + kind);
               s->g = geometry_of(geometry);
               if (s->kind == PoolStep::Kind::avg && (s->g.dh != 1 || s->g.dw != 1))
                 throw py::value_error("pool: avgpool has no dilation");
             }
             s->count_include_pad = count_include_pad;
             const ConvGeometry& g = s->g;
             const size_t elem = s->kind == PoolStep::Kind::max_codes ? 1 : 4;  // bytes: codes or float32
             h.need(src, checked_product({g.B, g.H, g.W, g.C, elem}, "pool input"), "pool input");
             h.need(dst, checked_product({g.B, g.OH, g.OW, g.C, elem}, "pool output"), "pool output");
             s->src = src;
             s->dst = dst;
             h.add(std::move(s), "pool", node, {src}, {dst});
           })
      .def("im2col",
           [](PlanHandle& h, int node, int src, int dst, const py::tuple& geometry, int pad, size_t elem,
              size_t out_stride) {
             // codes (elem 1, pad = the pad code, out_stride 0 = kh*kw*C), or a map already converted to a dot
             // family's levels (Im2colStep): elements of `elem` bytes, pad = level(pad code), rows of
             // out_stride elements
             auto s = std::make_unique<Im2colStep>();
             s->g = geometry_of(geometry);
             if (elem != 1 && elem != 2) throw py::value_error("im2col: elem must be 1 or 2");
             if (elem == 1 ? (pad < 0 || pad > 255) : (pad < -32768 || pad > 32767))
               throw py::value_error("im2col: pad out of range for elem");
             const ConvGeometry& g = s->g;
             const size_t K = checked_product({g.kh, g.kw, g.C}, "im2col row");
             if (out_stride == 0) out_stride = K;
             if (out_stride < K) throw py::value_error("im2col: out_stride < kh*kw*C");
             h.need(src, checked_product({g.B, g.H, g.W, g.C, elem}, "im2col input"), "im2col input");
             h.need(dst, checked_product({g.B, g.OH, g.OW, out_stride, elem}, "im2col output"), "im2col output");
             s->src = src;
             s->dst = dst;
             s->pad = int16_t(pad);
             s->elem = elem;
             s->out_stride = out_stride;
             h.add(std::move(s), "im2col", node, {src}, {dst});
           },
           py::arg("node"), py::arg("src"), py::arg("dst"), py::arg("geometry"), py::arg("pad"), py::arg("elem") = 1,
           py::arg("out_stride") = 0)
      .def("channel_slice",
           [](PlanHandle& h, int node, int src, int dst, size_t rows, size_t C, size_t c0, size_t c1) {
             if (!(c0 < c1 && c1 <= C)) throw py::value_error("channel_slice: expected 0 <= c0 < c1 <= C");
             auto s = std::make_unique<runtime::ChannelSliceStep>();
             h.need(src, checked_product({rows, C}, "channel_slice input"), "channel_slice input");
             h.need(dst, checked_product({rows, c1 - c0}, "channel_slice output"), "channel_slice output");
             s->src = src;
             s->dst = dst;
             s->rows = rows;
             s->C = C;
             s->c0 = c0;
             s->c1 = c1;
             h.add(std::move(s), "channel_slice", node, {src}, {dst});
           })
      .def("pack",
           [](PlanHandle& h, int node, const std::string& kind, int src, int dst, size_t M, size_t K, int bits,
              int group, int shift, size_t out_stride, int tier, size_t pad_rows, int pad_code, py::object levels,
              long producer) {
             // producer: -1 (a pack step of its own), or the index of the gemm step whose epilogue writes
             // the codes `src`: that step's tasks then pack each tile they finish (GemmStep::store)
             auto s = std::make_unique<PackStep>();
             if (!(bits == 1 || bits == 2 || bits == 3 || bits == 4 || bits == 8))
               throw py::value_error("pack: bits must be 1-4 or 8");
             if (tier < 0 || tier >= kNumTiers) throw py::value_error("pack: bad tier");
             if (pad_rows > 0 && (pad_code < 0 || pad_code >= (1 << bits)))
               throw py::value_error("pack: pad_code out of range");
             h.need(src, checked_product({M, K}, "pack input"), "pack input");
             std::vector<int> writes{dst};
             size_t out_bytes = 0;
             if (kind == "groups") {
               s->kind = PackStep::Kind::groups;
               if (group < 1 || shift < 0 || shift > 2 || group * bits + shift > 8 ||
                   out_stride < (K + size_t(group) - 1) / size_t(group))
                 throw py::value_error("pack: bad group/shift/out_stride");
               out_bytes = checked_product({M + pad_rows, out_stride}, "pack output");
               s->pad_codes.assign(K, uint8_t(pad_code));
             } else if (kind == "dotgemm" || kind == "dot8") {
               const bool d8 = kind == "dot8";
               s->kind = d8 ? PackStep::Kind::dot8 : PackStep::Kind::dotgemm;
               const py::array lv = levels.cast<py::array>();
               if (size_t(lv.size()) != (size_t(1) << bits)) throw py::value_error("pack: expected 2**bits levels");
               if (out_stride < K) throw py::value_error("pack: out_cols < K");
               if (d8) {
                 const uint8_t* p = array_data<uint8_t>(lv, "levels", size_t(1) << bits);
                 s->levels8.assign(p, p + (size_t(1) << bits));
               } else {
                 const int16_t* p = array_data<int16_t>(lv, "levels", size_t(1) << bits);
                 s->levels16.assign(p, p + (size_t(1) << bits));
               }
               out_bytes = checked_product({M + pad_rows, out_stride, d8 ? size_t(1) : size_t(2)}, "pack output");
             } else if (kind == "bitplanes") {
               s->kind = PackStep::Kind::bitplanes;
               // out_stride = 2 * plane bytes; plane >= ceil(K / 8)
               s->plane = out_stride / 2;
               if (out_stride % 2 || s->plane < (K + 7) / 8 || pad_rows || size_t(bits) > 2)
                 throw py::value_error("pack: bad bitplane geometry");
               out_bytes = checked_product({M, out_stride}, "pack output");
               s->plane_codes = h.buffer(checked_product({M, K}, "bit plane"));
               s->plane_out = h.buffer(checked_product({M, s->plane}, "bit plane"));
               writes.push_back(s->plane_codes);
               writes.push_back(s->plane_out);
             } else {
               throw py::value_error("pack: unknown kind " + kind);
             }
             h.need(dst, out_bytes, "pack output");
             s->src = src;
             s->dst = dst;
             s->M = M;
             s->K = K;
             s->bits = bits;
             s->group = group;
             s->shift = shift;
             s->out_stride = out_stride;
             s->tier = Tier(tier);
             s->pad_rows = pad_rows;
             s->pad_code = pad_code;
             if (producer < 0) {
               h.add(std::move(s), "pack", node, {src}, writes);
               return;
             }
             h.fuse_pack(size_t(producer), std::move(s));
           })
      .def("gemm",
           [](PlanHandle& h, int node, size_t kernel_index, const py::array& w, const py::array& tables, size_t M,
              size_t N, size_t k_steps, uint32_t flush8, uint32_t flush16, int64_t correction, uint32_t a_code_shift,
              py::object col_correction, int a, size_t a_stride, py::object offsets, size_t seg_steps, int codes,
              size_t K, int bits, int group, const py::tuple& ep, py::object gather) {
             // gather: None, or (src, geometry, elem, pad): the tasks write their rows of `a` with the levelled
             // im2col gather of buffer src (Im2colStep), a_stride = its row bytes
             auto s = std::make_unique<GemmStep>();
             const KernelInfo& k = usable_kernel(kernel_index);
             s->kernel = &k;
             checked_product({M, N}, "output");
             checked_product({N, k_steps}, "weights");
             checked_product({M, k_steps}, "activations");
             std::string why;
             if (!gemm_geometry(k, N, k_steps, &s->geometry, &why)) throw py::value_error(why);
             const GemmGeometry& g = s->geometry;
             s->w = h.keep<uint8_t>(w, "w", g.w_bytes);
             s->tables = h.keep<int8_t>(tables, "tables", g.table_bytes);
             if (flush8 == 0 || flush16 == 0) throw py::value_error("flush8/flush16: expected >= 1");
             if (correction < INT32_MIN || correction > INT32_MAX) throw py::value_error("correction: not int32");
             if (a_code_shift != 0 && !(a_code_shift == 2 && std::string(k.family) == "grouplut"))
               throw py::value_error("a_code_shift: expected 0 (or 2 for grouplut kernels)");
             if (!col_correction.is_none())
               s->col_correction = h.keep<int32_t>(col_correction.cast<py::array>(), "col_correction", N);
             s->M = M;
             s->N = N;
             s->k_steps = k_steps;
             s->flush8 = flush8;
             s->flush16 = flush16;
             s->correction = int32_t(correction);
             s->a_code_shift = a_code_shift;
             s->a = a;
             std::vector<int> reads, writes;
             if (!offsets.is_none()) {
               // indirect: M x segs byte offsets into buffer a, every segment seg_steps steps (the last may be shorter)
               if (!k.indirect) throw py::value_error(std::string("kernel ") + k.name + " is not indirect");
               if (seg_steps == 0 || codes >= 0) throw py::value_error("gemm: bad indirect arguments");
               const py::array offs = offsets.cast<py::array>();
               const size_t segs = (k_steps + seg_steps - 1) / seg_steps;
               const int64_t* o = array_data<int64_t>(offs, "offsets", checked_product({M, segs}, "offsets"));
               if (size_t(offs.size()) != M * segs) throw py::value_error("offsets: expected M x segments entries");
               const size_t step_bytes = k_steps ? g.a_row_bytes / k_steps : 1;
               const size_t len = h.plan_.buffer(a).bytes;
               for (size_t m = 0; m < M; ++m)
                 for (size_t sg = 0; sg < segs; ++sg) {
                   const size_t steps = sg + 1 == segs ? k_steps - sg * seg_steps : seg_steps;
                   const int64_t v = o[m * segs + sg];
                   if (v < 0 || size_t(v) + steps * step_bytes > len)
                     throw py::value_error("offsets: offset " + std::to_string(v) + " reads outside the buffer");
                 }
               s->offsets.assign(o, o + M * segs);
               s->segs = segs;
               s->seg_steps = seg_steps;
               reads.push_back(a);
             } else {
               if (a_stride < g.a_row_bytes) throw py::value_error("gemm: a_stride below the kernel's row bytes");
               h.need(a, checked_product({M, a_stride}, "activations"), "gemm activations");
               s->a_stride = a_stride;
               if (!gather.is_none()) {
                 const py::tuple gt = gather.cast<py::tuple>();
                 if (gt.size() != 4 || codes >= 0) throw py::value_error("gemm: bad gather arguments");
                 auto gs = std::make_unique<Im2colStep>();
                 gs->g = geometry_of(gt[1].cast<py::tuple>());
                 const ConvGeometry& cg = gs->g;
                 gs->src = gt[0].cast<int>();
                 gs->dst = a;
                 gs->elem = gt[2].cast<size_t>();
                 const int pad = gt[3].cast<int>();
                 if (gs->elem != 1 && gs->elem != 2) throw py::value_error("gemm gather: elem must be 1 or 2");
                 if (gs->elem == 1 ? (pad < 0 || pad > 255) : (pad < -32768 || pad > 32767))
                   throw py::value_error("gemm gather: pad out of range for elem");
                 gs->pad = int16_t(pad);
                 const size_t Kg = checked_product({cg.kh, cg.kw, cg.C}, "gather row");
                 if (a_stride % gs->elem || a_stride / gs->elem < Kg || M != cg.B * cg.OH * cg.OW)
                   throw py::value_error("gemm gather: rows do not match the GEMM's activations");
                 gs->out_stride = a_stride / gs->elem;
                 h.need(gs->src, checked_product({cg.B, cg.H, cg.W, cg.C, gs->elem}, "gather input"), "gather input");
                 reads.push_back(gs->src);
                 writes.push_back(a);
                 s->gather = std::move(gs);
               } else if (codes >= 0) {  // fused packing of (M, K) codes (grouplut kernels)
                 const std::string fam = k.family;
                 if (fam != "grouplut" && fam != "grouplut6") throw py::value_error("gemm: fused packing is grouplut's");
                 if (bits < 1 || bits > 8 || group < 1 || group * bits + int(a_code_shift) > 8 ||
                     k_steps != (K + size_t(group) - 1) / size_t(group))
                   throw py::value_error("gemm: bad fused packing arguments");
                 h.need(codes, checked_product({M, K}, "codes"), "gemm codes");
                 s->codes = codes;
                 s->K = K;
                 s->bits = bits;
                 s->group = group;
                 reads.push_back(codes);
                 writes.push_back(a);
               } else {
                 reads.push_back(a);
               }
             }
             s->ep = h.epilogue(ep, M, N, k.tier, &reads, &writes);
             h.add(std::move(s), "gemm", node, reads, writes);
           })
      .def("pad_correction",
           [](PlanHandle& h, int node, int acc, size_t M, size_t N, const py::array& padded, const py::array& table,
              const py::tuple& ep) {
             auto s = std::make_unique<runtime::PadCorrectionStep>();
             if (padded.ndim() != 2 || size_t(padded.shape(0)) != M) throw py::value_error("padded: expected (M, taps)");
             const size_t taps = size_t(padded.shape(1));
             const uint8_t* pd = array_data<uint8_t>(padded, "padded", checked_product({M, taps}, "padded"));
             const int64_t* tb = array_data<int64_t>(table, "table", checked_product({taps, N}, "table"));
             if (size_t(table.size()) != taps * N) throw py::value_error("table: expected (taps, N) entries");
             s->padded.assign(pd, pd + M * taps);
             s->table.assign(tb, tb + taps * N);
             s->acc = acc;
             s->M = M;
             s->N = N;
             s->taps = taps;
             h.need(acc, checked_product({M, N, 4}, "sums"), "pad_correction sums");
             std::vector<int> reads{acc}, writes{acc};
             s->ep = h.epilogue(ep, M, N, Tier::scalar, &reads, &writes);
             s->ep.simd = true;  // as _core.epilogue (the Python path's separate epilogue call)
             if (s->ep.kind == OutKind::int32) throw py::value_error("pad_correction: needs an epilogue");
             h.add(std::move(s), "pad_correction", node, reads, writes);
           })
      .def("dwconv",
           [](PlanHandle& h, int node, size_t kernel_index, int src, const py::tuple& geometry, int bits,
              const py::array& a_levels, const py::array& w_levels, const py::tuple& ep) {
             const DwconvKernelInfo& k = usable_dwconv_kernel(kernel_index);
             auto s = std::make_unique<DwconvStep>();
             s->call.kernel = &k;
             s->call.g = geometry_of(geometry);
             const ConvGeometry& g = s->call.g;
             if (!(bits == 1 || bits == 2 || bits == 3 || bits == 4 || bits == 8)) throw py::value_error("bits");
             s->call.bits = bits;
             s->call.a_levels = h.keep<int16_t>(a_levels, "a_levels", size_t(1) << bits);
             const size_t Cp = (g.C + kDwconvChannelBlock - 1) / kDwconvChannelBlock * kDwconvChannelBlock;
             s->call.w = h.keep<int16_t>(w_levels, "w_levels", checked_product({g.kh, g.kw, Cp}, "w_levels"));
             int max_a = 0, max_w = 0;
             for (size_t i = 0; i < (size_t(1) << bits); ++i) max_a = std::max(max_a, std::abs(int(s->call.a_levels[i])));
             for (size_t i = 0; i < g.kh * g.kw * Cp; ++i) max_w = std::max(max_w, std::abs(int(s->call.w[i])));
             if (max_a > 255 || max_w > 255) throw py::value_error("dwconv: levels outside [-128, 255]");
             s->call.tap_flush = dwconv_tap_flush(max_a, max_w);
             h.need(src, checked_product({g.B, g.H, g.W, g.C}, "dwconv input"), "dwconv input");
             s->src = src;
             std::vector<int> reads{src}, writes;
             s->ep = h.epilogue(ep, g.B * g.OH * g.OW, g.C, k.tier, &reads, &writes);
             if (s->ep.out_col != 0 || s->ep.out_stride != g.C || (s->ep.residual >= 0 && s->ep.residual_stride != g.C))
               throw py::value_error("dwconv: whole rows of C channels only");
             h.add(std::move(s), "dwconv", node, reads, writes);
           })
      .def("conv_grouped",
           [](PlanHandle& h, int node, size_t kernel_index, int src, const py::tuple& geometry, size_t groups,
              size_t cout, int bits, const py::array& a_levels, const py::array& w, const py::tuple& ep) {
             const KernelInfo& k = usable_kernel(kernel_index);
             if (std::string(k.family) != "dotgemm") throw py::value_error("conv_grouped: not a dotgemm kernel");
             auto s = std::make_unique<GroupedConvStep>();
             s->call.kernel = &k;
             s->call.g = geometry_of(geometry);
             const ConvGeometry& g = s->call.g;
             if (groups == 0 || g.C % groups || cout == 0 || cout % groups)
               throw py::value_error("groups: expected a divisor of the input channels and of cout");
             if (!(bits == 1 || bits == 2 || bits == 3 || bits == 4 || bits == 8)) throw py::value_error("bits");
             s->call.groups = groups;
             s->call.cout = cout;
             s->call.bits = bits;
             s->call.a_levels = h.keep<int16_t>(a_levels, "a_levels", size_t(1) << bits);
             s->call.decode = grouped_conv_decoder(k.tier);
             const size_t k_steps = (g.kh * g.kw * (g.C / groups) + 1) / 2;
             std::string why;
             if (!gemm_geometry(k, cout / groups, k_steps, &s->gg, &why)) throw py::value_error(why);
             s->call.w = h.keep<uint8_t>(w, "w", checked_product({groups, s->gg.w_bytes}, "w"));
             h.need(src, checked_product({g.B, g.H, g.W, g.C}, "conv input"), "conv input");
             s->src = src;
             std::vector<int> reads{src}, writes;
             s->ep = h.epilogue(ep, g.B * g.OH * g.OW, cout, k.tier, &reads, &writes);
             if (s->ep.out_col != 0 || s->ep.out_stride != cout || (s->ep.residual >= 0 && s->ep.residual_stride != cout))
               throw py::value_error("conv_grouped: whole rows of cout channels only");
             h.add(std::move(s), "conv_grouped", node, reads, writes);
           })
      .def("conv_f32",
           [](PlanHandle& h, int node, const py::object& layer, int src, int dst, const py::tuple& geometry,
              bool simd) {
             // layer: a FloatConv (kept alive with the plan); geometry as geometry_of
             const FloatConv& conv = layer.cast<const FloatConv&>();
             auto s = std::make_unique<runtime::FloatConvStep>();
             s->g = geometry_of(geometry);
             const ConvGeometry& g = s->g;
             if (g.C != conv.groups * conv.cg || g.kh != conv.kh || g.kw != conv.kw)
               throw py::value_error("conv_f32: geometry does not match the layer's weights");
             h.need(src, checked_product({g.B, g.H, g.W, g.C, 4}, "conv_f32 input"), "conv_f32 input");
             h.need(dst, checked_product({g.B, g.OH, g.OW, conv.cout, 4}, "conv_f32 output"), "conv_f32 output");
             h.keep_object(layer);
             s->conv = &conv;
             s->src = src;
             s->dst = dst;
             s->simd = simd;
             h.add(std::move(s), "conv_f32", node, {src}, {dst});
           })
      .def("exact_float_fix",
           [](PlanHandle& h, int node, const py::object& spec_obj, int x, int y, int codes, const py::tuple& geometry,
              bool simd) {
             // spec: an ExactFloatSpec (kept alive with the plan); the quantize node's input y and codes
             const ExactFloatSpec& spec = spec_obj.cast<const ExactFloatSpec&>();
             auto s = std::make_unique<runtime::ExactFloatFixStep>();
             s->g = geometry_of(geometry);
             spec.check(s->g);
             const ConvGeometry& g = s->g;
             h.need(x, checked_product({g.B, g.H, g.W, g.C, 4}, "exact_float input"), "exact_float input");
             h.need(y, checked_product({g.B, g.OH, g.OW, spec.p.cout, 4}, "exact_float y"), "exact_float y");
             h.need(codes, checked_product({g.B, g.OH, g.OW, spec.p.cout}, "exact_float codes"), "exact_float codes");
             h.keep_object(spec_obj);
             s->spec = &spec.p;
             s->x = x;
             s->y = y;
             s->codes = codes;
             s->simd = simd;
             h.add(std::move(s), "exact_float_fix", node, {x, y, codes}, {codes});
           })
      .def("concat",
           [](PlanHandle& h, int node, const std::vector<int>& srcs, const std::vector<size_t>& row_bytes, int dst,
              size_t rows) {
             if (srcs.size() < 2 || srcs.size() != row_bytes.size())
               throw py::value_error("concat: expected 2 or more inputs, each with its row bytes");
             auto s = std::make_unique<runtime::ConcatStep>();
             size_t total = 0;
             for (size_t i = 0; i < srcs.size(); ++i) {
               h.need(srcs[i], checked_product({rows, row_bytes[i]}, "concat input"), "concat input");
               total = checked_product({total + row_bytes[i]}, "concat row");
               if (srcs[i] == dst) throw py::value_error("concat: output aliases an input");
             }
             h.need(dst, checked_product({rows, total}, "concat output"), "concat output");
             s->srcs = srcs;
             s->row_bytes = row_bytes;
             s->dst = dst;
             s->rows = rows;
             h.add(std::move(s), "concat", node, srcs, {dst});
           })
      .def("pad",
           [](PlanHandle& h, int node, int src, int dst, const std::vector<size_t>& nhwc, size_t elem,
              const std::vector<size_t>& pads, const py::bytes& fill) {
             // nhwc: the input's (B, H, W, C); pads: (top, left, bottom, right); fill: `elem` bytes
             const std::string f = fill;
             if (nhwc.size() != 4 || pads.size() != 4 || !(elem == 1 || elem == 4) || f.size() != elem)
               throw py::value_error("pad: expected (B, H, W, C), 4 pads, elem 1 or 4 and elem fill bytes");
             auto s = std::make_unique<runtime::PadStep>();
             s->B = nhwc[0];
             s->H = nhwc[1];
             s->W = nhwc[2];
             s->C = nhwc[3];
             s->elem = elem;
             s->top = pads[0];
             s->left = pads[1];
             s->bottom = pads[2];
             s->right = pads[3];
             std::memcpy(s->fill, f.data(), elem);
             const size_t oh = checked_product({s->top + s->H + s->bottom}, "pad height");
             const size_t ow = checked_product({s->left + s->W + s->right}, "pad width");
             h.need(src, checked_product({s->B, s->H, s->W, s->C, elem}, "pad input"), "pad input");
             h.need(dst, checked_product({s->B, oh, ow, s->C, elem}, "pad output"), "pad output");
             if (src == dst) throw py::value_error("pad: output aliases the input");
             s->src = src;
             s->dst = dst;
             h.add(std::move(s), "pad", node, {src}, {dst});
           })
      .def("finalize", [](PlanHandle& h, bool keep_all) { h.plan_.finalize(keep_all); }, py::arg("keep_all") = false,
           "Assigns arena offsets; keep_all: no buffer reuse, so run(keep=...) can copy any value out")
      .def_property_readonly("arena_bytes", [](const PlanHandle& h) { return h.plan_.arena_bytes(); })
      .def_property_readonly("buffer_bytes", [](const PlanHandle& h) { return h.plan_.total_buffer_bytes(); })
      .def_property_readonly("step_kinds",
                             [](const PlanHandle& h) {
                               std::vector<std::string> out(h.plan_.num_steps());
                               for (size_t i = 0; i < out.size(); ++i) out[i] = h.plan_.step_kind(i);
                               return out;
                             })
      .def_property_readonly("num_steps", [](const PlanHandle& h) { return h.plan_.num_steps(); })
      .def_property_readonly("fused_packs",
                             [](const PlanHandle& h) {
                               // the gemm steps that pack their output for the next layer (GemmStep::store)
                               std::vector<size_t> out;
                               for (size_t i = 0; i < h.plan_.num_steps(); ++i) {
                                 const auto* g = dynamic_cast<const runtime::GemmStep*>(&h.plan_.step(i));
                                 if (g && g->store) out.push_back(i);
                               }
                               return out;
                             })
      .def_property_readonly("step_nodes",
                             [](const PlanHandle& h) {
                               std::vector<int> out(h.plan_.num_steps());
                               for (size_t i = 0; i < out.size(); ++i) out[i] = h.plan_.step_node(i);
                               return out;
                             })
      .def(
          "run",
          [](PlanHandle& h, const py::array& x, py::array& out, const py::object& profile, bool check_finite,
             const std::optional<std::vector<int>>& keep) -> py::object {
            // profile: False, True (wall clock) or "thread_cpu" (the caller's CPU time)
            const bool thread_cpu = py::isinstance<py::str>(profile) && profile.cast<std::string>() == "thread_cpu";
            const bool timed = thread_cpu || (py::isinstance<py::bool_>(profile) && profile.cast<bool>());
            if (!timed && !(py::isinstance<py::bool_>(profile) || profile.is_none()))
              throw py::value_error("profile: expected a bool or 'thread_cpu'");
            if (!h.plan_.finalized()) throw py::value_error("plan: run before finalize");
            // keep: a uint8 array per buffer, filled by the run (allocated here, with the GIL)
            py::list kept;
            std::vector<std::pair<int, void*>> copy_out;
            if (keep) {
              if (timed) throw py::value_error("keep: a run that copies buffers out is not profiled");
              for (int id : *keep) {
                if (id < 0 || size_t(id) >= h.plan_.num_buffers()) throw py::value_error("keep: unknown buffer");
                py::array_t<uint8_t> a(py::ssize_t(h.plan_.buffer(id).bytes));
                copy_out.emplace_back(id, a.mutable_data());
                kept.append(a);
              }
            }
            // the boundary buffers' sizes were fixed by the plan; the arrays must hold them
            for (size_t i = 0; i < h.plan_.num_buffers(); ++i) {
              const runtime::Buffer& b = h.plan_.buffer(int(i));
              const py::array& arr = b.kind == runtime::BufferKind::input ? x : out;
              if (b.kind == runtime::BufferKind::arena) continue;
              if (!arr.dtype().is(py::dtype::of<float>()) || !(arr.flags() & py::array::c_style) ||
                  size_t(arr.nbytes()) != b.bytes)
                throw py::value_error(std::string(b.kind == runtime::BufferKind::input ? "x" : "out") +
                                      ": expected a C-contiguous float32 array of " + std::to_string(b.bytes) +
                                      " bytes");
            }
            if (!out.writeable()) throw py::value_error("out: not writeable");
            if (check_finite && (!x.dtype().is(py::dtype::of<float>()) || !(x.flags() & py::array::c_style)))
              throw py::value_error("x: check_finite needs a C-contiguous float32 array");
            const void* in_ptr = x.data();
            void* out_ptr = out.mutable_data();
            std::vector<double> seconds;
            long bad = -1;
            bool finite = true;
            {
              py::gil_scoped_release release;
              // the input quantizer checks the values as it reads them, when the plan starts with it
              const bool in_plan = check_finite && h.plan_.first_step_checks_input();
              if (check_finite && !in_plan)
                finite = all_finite_f32(static_cast<const float*>(in_ptr), size_t(x.size()));
              if (finite)
                bad = h.plan_.run(in_ptr, out_ptr, timed ? &seconds : nullptr, thread_cpu, in_plan,
                                  keep ? &copy_out : nullptr);
              if (bad == Plan::kNonFiniteInput) finite = false;
            }
            if (!finite)
              throw NonFiniteInput("x: expected finite values, got NaN or Inf (pass check_finite=False to skip this check)");
            if (bad >= 0) {
              throw py::value_error("step " + std::to_string(bad) + " (node " +
                                    std::to_string(h.plan_.step_node(size_t(bad))) +
                                    "): expected every activation code below 2**bits");
            }
            if (keep) return std::move(kept);
            if (!timed) return py::none();
            return py::cast(seconds);
          },
          py::arg("x"), py::arg("out"), py::arg("profile") = false, py::arg("check_finite") = false,
          py::arg("keep") = py::none(),
          "Runs the plan (GIL released; thread-safe). profile: True (wall clock) or 'thread_cpu' returns "
          "each step's seconds. check_finite: raise NonFiniteInput (a ValueError) when x holds a NaN or Inf "
          "(checked before the plan runs, or by its input quantizer, which then stops it; out is not written). keep: "
          "buffer ids whose bytes the run returns, a uint8 array each (a plan finalized with keep_all)");
  py::register_local_exception<NonFiniteInput>(m, "NonFiniteInput", PyExc_ValueError);
}

}  // namespace lowbit
