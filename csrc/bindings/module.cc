// Python bindings (pybind11). Every precondition is checked here, before any
// pointer is touched; the Python layer adds friendlier checks on top.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/cpu_features.h"
#include "bindings/checks.h"
#include "core/thread_pool.h"
#include "kernels/dot8/dot8.h"
#include "kernels/dotgemm/dotgemm.h"
#include "kernels/ukernel.h"
#include "ops/conv.h"
#include "ops/gemm.h"
#include "ops/graph_ops.h"
#include "ops/pack.h"
#include "ops/roofline.h"
#include "bindings/executor.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace py = pybind11;
using namespace lowbit;

namespace {

// A C-contiguous M x N output whose data starts on a 64-byte cache line.
// Threads write disjoint blocks of 64 columns of each row; from an unaligned
// start every block's first and last cache lines would be shared with the
// blocks beside it, written at the same time by the other thread (false
// sharing). The view keeps its over-allocated base array alive.
template <class T>
py::array_t<T> empty_aligned(size_t M, size_t N) {
  constexpr size_t kLine = 64;
  static_assert(kLine % sizeof(T) == 0, "element size divides the cache line");
  py::array_t<T> base(M * N + kLine / sizeof(T));
  const auto addr = reinterpret_cast<uintptr_t>(base.mutable_data());
  const size_t skip = (kLine - addr % kLine) % kLine / sizeof(T);  // numpy data is sizeof(T)-aligned
  return py::array_t<T>({M, N}, {N * sizeof(T), sizeof(T)}, base.mutable_data() + skip, base);
}


// Throws TypeError/ValueError naming `name` unless `a` is a C-contiguous
// array of dtype T with `ndim` dimensions (any number when ndim < 0).
// Whether a's dtype is T's (NumPy's equivalence: descriptor objects of one
// dtype need not be the same object).
template <class T>
bool has_dtype(const py::array& a) {
  return py::detail::npy_api::get().PyArray_EquivTypes_(py::detail::array_proxy(a.ptr())->descr,
                                                        py::dtype::of<T>().ptr());
}

template <class T>
void require_array(const py::array& a, const char* name, int ndim, const char* dtype_name) {
  if (!has_dtype<T>(a))
    throw py::type_error(std::string(name) + ": expected dtype " + dtype_name + ", got " +
                         std::string(py::str(a.dtype())));
  if (ndim >= 0 && a.ndim() != ndim)
    throw py::value_error(std::string(name) + ": expected a " + std::to_string(ndim) + "-D array, got " +
                          std::to_string(a.ndim()) + "-D");
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": expected a C-contiguous array");
}

// Throws ValueError naming `what` unless the product of `dims` (each checked
// too) is at most kMaxElements (bindings/checks.h).
void check_elements(std::initializer_list<size_t> dims, const char* what) { checked_product(dims, what); }

// The same limit, with the Python layer's message (lowbit.packing.check_elements):
// names the array, its shape and its element count.
void check_shape(std::initializer_list<size_t> dims, const char* name) {
  unsigned __int128 count = 1;
  bool overflow = false;
  std::string shape;
  for (size_t d : dims) {
    overflow |= __builtin_mul_overflow(count, (unsigned __int128)d, &count);
    shape += (shape.empty() ? "" : ", ") + std::to_string(d);
  }
  if (!overflow && count <= kMaxElements) return;
  std::string digits;
  for (unsigned __int128 v = count; v > 0 || digits.empty(); v /= 10)
    digits.insert(digits.begin(), char('0' + int(v % 10)));
  throw py::value_error(std::string(name) + ": shape (" + shape + ") has " + (overflow ? "more than 2**128" : digits) +
                        " elements, more than lowbit's limit of " + std::to_string(kMaxElements) +
                        " (2**31 - 1) per array; split the batch");
}

// Throws ValueError naming `what` unless every one of `values` is at most kMaxElements.
void check_each(std::initializer_list<size_t> values, const char* what) {
  for (size_t v : values)
    if (v > kMaxElements) throw py::value_error(std::string(what) + ": expected values below 2^31");
}


Tier tier_from_int(int t) {
  if (t < 0 || t >= kNumTiers) throw py::value_error("tier: expected 0.." + std::to_string(kNumTiers - 1));
  return Tier(t);
}

py::dict features_dict() {
  py::dict d;
  const uint32_t f = cpu_features();
  for (int i = 0; i < kNumFeatures; ++i) d[feature_name(i)] = bool(f & (1u << i));
  return d;
}

py::list tier_list() {
  py::list out;
  for (int t = 0; t < kNumTiers; ++t) {
    py::dict d;
    d["name"] = tier_name(Tier(t));
    d["rank"] = t;
    py::list req;
    const uint32_t r = tier_required_features(Tier(t));
    for (int i = 0; i < kNumFeatures; ++i)
      if (r & (1u << i)) req.append(feature_name(i));
    d["requires"] = req;
    d["supported"] = (cpu_features() & r) == r;
    out.append(d);
  }
  return out;
}

py::list kernel_list() {
  size_t count = 0;
  const KernelInfo* reg = kernel_registry(&count);
  py::list out;
  for (size_t i = 0; i < count; ++i) {
    const KernelInfo& k = reg[i];
    py::dict d;
    d["index"] = i;
    d["name"] = k.name;
    d["family"] = k.family;
    d["w_bits"] = k.w_bits;
    d["a_bits"] = k.a_bits;
    d["tier"] = tier_name(k.tier);
    d["tier_rank"] = int(k.tier);
    d["mr"] = k.mr;
    d["nr"] = k.nr;
    d["table_kind"] = k.table_kind == TableKind::i8 ? "i8" : k.table_kind == TableKind::split ? "split" : "i32";
    d["description"] = k.description;
    d["indirect"] = k.indirect;
    d["layout"] = k.layout;
    d["subtracts_correction"] = k.subtracts_correction;
    out.append(d);
  }
  return out;
}

// Packs (M, K) codes into an (M + pad_rows, out_stride) array; the pad_rows
// extra rows hold K copies of pad_code packed the same way (convolution's
// all-padding pixel, so the input needs no copy with the pixel appended).
py::array_t<uint8_t> pack_groups_py(const py::array& codes, int bits, int group, size_t out_stride, int tier,
                                    int shift, size_t pad_rows, int pad_code) {
  require_array<uint8_t>(codes, "codes", 2, "uint8");
  if (bits < 1 || bits > 8) throw py::value_error("bits: expected 1..8");
  if (group < 1 || group * bits > 8) throw py::value_error("group: expected 1..8 with group * bits <= 8");
  if (shift < 0 || shift > 2 || group * bits + shift > 8)
    throw py::value_error("shift: expected 0..2 with group * bits + shift <= 8");
  const size_t M = size_t(codes.shape(0)), K = size_t(codes.shape(1));
  if (out_stride < (K + size_t(group) - 1) / size_t(group))
    throw py::value_error("out_stride: too small for K=" + std::to_string(K));
  if (pad_rows > 0 && (pad_code < 0 || pad_code >= (1 << bits)))
    throw py::value_error("pad_code: expected a code in [0, " + std::to_string(1 << bits) + ")");
  check_elements({pad_rows}, "pad_rows");
  check_elements({M + pad_rows, out_stride}, "packed output");
  py::array_t<uint8_t> out({M + pad_rows, out_stride});
  const uint8_t* src = static_cast<const uint8_t*>(codes.data());
  uint8_t* dst = out.mutable_data();
  bool ok;
  {
    py::gil_scoped_release release;
    ok = pack_groups(src, M, K, bits, group, shift, dst, out_stride, tier_from_int(tier));
    if (ok && pad_rows > 0) {
      const std::vector<uint8_t> pad(K, uint8_t(pad_code));
      uint8_t* first = dst + M * out_stride;
      pack_groups(pad.data(), 1, K, bits, group, shift, first, out_stride, tier_from_int(tier));
      for (size_t r = 1; r < pad_rows; ++r) std::memcpy(first + r * out_stride, first, out_stride);
    }
  }
  if (!ok) throw py::value_error("codes: expected every code in [0, " + std::to_string(1 << bits) + ")");
  return out;
}

// ---- The GEMM call path (docs/architecture.md, "One GEMM call").
//
// Python prepares two objects once and reuses them for every call:
//  * EpilogueSpec (_core.GemmEpilogue), per lowbit.Epilogue: output kind,
//    scale, bias, clamp and requantization, checked when built;
//  * PreparedGemm (_core.PreparedGemm), per ops.Bound: kernel, weight layout,
//    tables and geometry, checked when built.
// A call then passes only the activations (and the epilogue object, and a
// residual): the checks that depend on them are the only ones left, every
// message names the argument, and bad codes raise ValueError from here
// directly. The one-shot bindings (_core.gemm, gemm_codes, epilogue, dwconv,
// conv_grouped) build the same objects per call, so each check is written once.

// Throws ValueError naming the argument when a code of `codes` (n values) is
// >= 2**bits, with the largest code found. Call only after a kernel reported
// a bad code (it scans everything).
[[noreturn]] void throw_bad_code(const uint8_t* codes, size_t n, int bits, const char* name, const char* bits_name) {
  uint8_t top = 0;
  for (size_t i = 0; i < n; ++i) top = std::max(top, codes[i]);
  throw py::value_error(std::string(name) + ": expected every code in [0, " + std::to_string(1 << bits) + ") for " +
                        bits_name + "=" + std::to_string(bits) + ", got max " + std::to_string(int(top)));
}

// check_codes(codes, bits, name, bits_name): raises ValueError (the message of
// throw_bad_code) unless every code of the C-contiguous uint8 array is below
// 2**bits. The range check of validated activations (conv2d), without the
// cost of a NumPy reduction on small inputs.
void check_codes_py(const py::array& codes, int bits, const std::string& name, const std::string& bits_name) {
  require_array<uint8_t>(codes, name.c_str(), -1, "uint8");
  if (bits < 1 || bits > 8) throw py::value_error("bits: expected 1..8");
  const uint8_t* p = static_cast<const uint8_t*>(codes.data());
  const size_t n = size_t(codes.size());
  uint8_t any = 0;  // OR of every code: some code is too large iff a bit at or above `bits` is set
  for (size_t i = 0; i < n; ++i) any |= p[i];
  if (bits < 8 && (any >> bits) != 0) throw_bad_code(p, n, bits, name.c_str(), bits_name.c_str());
}

class EpilogueSpec {
 public:
  // step64, scale64, bias64: a code epilogue's float64 parameters (ops/epilogue.h; 0 / None: from
  // inv_step / the float32 scale and bias)
  EpilogueSpec(const std::string& out_kind, const py::object& scale_obj, const py::object& bias_obj, float clamp_lo,
               float clamp_hi, float inv_step, int qmin, int qmax, double step64 = 0,
               const py::object& scale64_obj = py::none(), const py::object& bias64_obj = py::none())
      : clamp_lo_(clamp_lo), clamp_hi_(clamp_hi), inv_step_(inv_step), qmin_(qmin), qmax_(qmax), step64_(step64) {
    if (out_kind == "float32") {
      kind_ = OutKind::float32;
    } else if (out_kind == "codes") {
      kind_ = OutKind::codes;
      if (!(qmin <= qmax && qmax - qmin <= 255))
        throw py::value_error("qmin/qmax: expected qmin <= qmax <= qmin + 255");
      if (!std::isfinite(inv_step) || inv_step <= 0) throw py::value_error("inv_step: expected a finite value > 0");
    } else {
      throw py::value_error("out_kind: expected 'float32' or 'codes' for an epilogue, got '" + out_kind + "'");
    }
    scale_ = checked_vector(scale_obj, "scale");
    bias_ = checked_vector(bias_obj, "bias");
    if (scale_.shape(0) != bias_.shape(0))
      throw py::value_error("bias: expected " + std::to_string(scale_.shape(0)) + " values (as scale), got " +
                            std::to_string(bias_.shape(0)));
    if (std::isnan(clamp_lo) || std::isnan(clamp_hi) || clamp_lo > clamp_hi)
      throw py::value_error("clamp_lo/clamp_hi: expected clamp_lo <= clamp_hi (no NaN)");
    if (kind_ == OutKind::codes) {
      check_step64(step64, inv_step);
      scale64_ = checked_vector64(scale64_obj, "scale64", scale_);
      bias64_ = checked_vector64(bias64_obj, "bias64", bias_);
      Epilogue e;
      fill_params(e);
      fast_ = code_constants(e, size_t(scale_.shape(0)));
    }
  }

  OutKind kind() const { return kind_; }

  // Fills `e` for an M x N output with `residual` (None or float32 (M, N))
  // and returns the output array it writes.
  py::array bind(Epilogue& e, size_t M, size_t N, const py::object& residual_obj) const {
    if (size_t(scale_.shape(0)) != N)
      throw py::value_error("epilogue: scale has " + std::to_string(scale_.shape(0)) +
                            " values but the layer has " + std::to_string(N) + " outputs");
    e.residual = nullptr;
    if (!residual_obj.is_none()) {
      if (!py::isinstance<py::array>(residual_obj))
        throw py::type_error("residual: expected a float32 NumPy array or None");
      const py::array res = py::reinterpret_borrow<py::array>(residual_obj);
      require_array<float>(res, "residual", 2, "float32");
      if (size_t(res.shape(0)) != M || size_t(res.shape(1)) != N)
        throw py::value_error("epilogue: residual shape (" + std::to_string(res.shape(0)) + ", " +
                              std::to_string(res.shape(1)) + "), expected (" + std::to_string(M) + ", " +
                              std::to_string(N) + ")");
      e.residual = static_cast<const float*>(res.data());  // the caller's object keeps it alive for the call
      e.residual_stride = N;
    }
    fill_params(e);
    e.out_stride = N;
    if (kind_ == OutKind::float32) {
      py::array_t<float> o = empty_aligned<float>(M, N);
      e.out = o.mutable_data();
      return o;
    }
    py::array_t<uint8_t> o = empty_aligned<uint8_t>(M, N);
    e.out = o.mutable_data();
    return o;
  }

 private:
  // The parameters (no residual, no output); a code output's fast-path constants made once
  void fill_params(Epilogue& e) const {
    e.kind = kind_;
    e.scale = static_cast<const float*>(scale_.data());
    e.bias = static_cast<const float*>(bias_.data());
    e.clamp_lo = clamp_lo_;
    e.clamp_hi = clamp_hi_;
    e.inv_step = inv_step_;
    e.qmin = qmin_;
    e.qmax = qmax_;
    e.step64 = step64_;
    e.scale64 = scale64_.size() ? static_cast<const double*>(scale64_.data()) : nullptr;
    e.bias64 = bias64_.size() ? static_cast<const double*>(bias64_.data()) : nullptr;
    e.fast = kind_ == OutKind::codes ? &fast_ : nullptr;
  }

  static py::array checked_vector(const py::object& obj, const char* name) {
    if (!py::isinstance<py::array>(obj))
      throw py::type_error(std::string(name) + ": expected a 1-D float32 NumPy array");
    py::array a = py::reinterpret_borrow<py::array>(obj);
    require_array<float>(a, name, 1, "float32");
    const float* v = static_cast<const float*>(a.data());
    for (py::ssize_t i = 0; i < a.shape(0); ++i)
      if (!std::isfinite(v[i])) throw py::value_error(std::string(name) + ": expected finite values");
    return a;
  }

  // An empty array for None, or a finite float64 array that rounds to the float32
  // `rounded` (the contract of lowbit.Epilogue's scale64/bias64)
  static py::array checked_vector64(const py::object& obj, const char* name, const py::array& rounded) {
    const py::ssize_t n = rounded.shape(0);
    if (obj.is_none()) return py::array_t<double>(0);
    if (!py::isinstance<py::array>(obj))
      throw py::type_error(std::string(name) + ": expected None or a 1-D float64 NumPy array");
    py::array a = py::reinterpret_borrow<py::array>(obj);
    require_array<double>(a, name, 1, "float64");
    if (a.shape(0) != n)
      throw py::value_error(std::string(name) + ": expected " + std::to_string(n) + " values (as scale), got " +
                            std::to_string(a.shape(0)));
    const double* v = static_cast<const double*>(a.data());
    const float* r = static_cast<const float*>(rounded.data());
    for (py::ssize_t i = 0; i < n; ++i) {
      if (!std::isfinite(v[i])) throw py::value_error(std::string(name) + ": expected finite values");
      if (!rounds_to(v[i], r[i]))
        throw py::value_error(std::string(name) + ": expected the float64 values the float32 parameters were "
                              "rounded from");
    }
    return a;
  }

  OutKind kind_;
  py::array scale_, bias_, scale64_, bias64_;  // scale64_/bias64_: empty when not given
  float clamp_lo_, clamp_hi_, inv_step_;
  int qmin_, qmax_;
  double step64_;
  CodeConstants fast_;  // code output: code_constants of the parameters (fill_params)
};

// Epilogue arguments of the one-shot bindings: int32 output (none), or an EpilogueSpec.
std::unique_ptr<EpilogueSpec> epilogue_from_args(const std::string& out_kind, const py::object& scale,
                                                 const py::object& bias, float clamp_lo, float clamp_hi,
                                                 float inv_step, int qmin, int qmax, double step64 = 0,
                                                 const py::object& scale64 = py::none(),
                                                 const py::object& bias64 = py::none()) {
  if (out_kind == "int32") return nullptr;
  if (out_kind != "float32" && out_kind != "codes")
    throw py::value_error("out_kind: expected 'int32', 'float32' or 'codes'");
  return std::make_unique<EpilogueSpec>(out_kind, scale, bias, clamp_lo, clamp_hi, inv_step, qmin, qmax, step64,
                                        scale64, bias64);
}

// epilogue_from_args with the float64 parameters as trailing positional arguments
// `exact`: () or (step64, scale64, bias64) (dwconv, conv_grouped).
std::unique_ptr<EpilogueSpec> epilogue_from_args_exact(const std::string& out_kind, const py::object& scale,
                                                       const py::object& bias, float clamp_lo, float clamp_hi,
                                                       float inv_step, int qmin, int qmax, const py::args& exact) {
  if (exact.size() != 0 && exact.size() != 3)
    throw py::type_error("expected the nine epilogue arguments, then none or (step64, scale64, bias64)");
  if (exact.size() == 0) return epilogue_from_args(out_kind, scale, bias, clamp_lo, clamp_hi, inv_step, qmin, qmax);
  return epilogue_from_args(out_kind, scale, bias, clamp_lo, clamp_hi, inv_step, qmin, qmax, exact[0].cast<double>(),
                            exact[1], exact[2]);
}

// The output of a GEMM-shaped op: int32 (no epilogue; *c set) or the epilogue's.
py::array gemm_output(const EpilogueSpec* ep, Epilogue& e, size_t M, size_t N, const py::object& residual,
                      int32_t** c, Tier tier) {
  if (ep == nullptr) {
    if (!residual.is_none()) throw py::value_error("residual: needs an epilogue (float32 or codes output)");
    py::array_t<int32_t> o = empty_aligned<int32_t>(M, N);
    *c = o.mutable_data();
    return o;
  }
  e.simd = tier > Tier::scalar;  // a forced scalar tier runs the scalar epilogue too
  return ep->bind(e, M, N, residual);
}

// One GEMM's weight side, checked once (see above). `k_steps`/`correction`
// are the direct (M, K) x (N, K) GEMM's; a call may pass others (convolution).
// With a_group > 0 (grouplut families) codes() runs straight from (M, K)
// codes of a_bits bits, packed inside the GEMM's tasks.
class PreparedGemm {
 public:
  PreparedGemm(size_t kernel_index, const py::array& w, const py::array& tables, size_t N, uint32_t flush8,
               uint32_t flush16, uint32_t a_code_shift, const py::object& col_correction_obj, size_t K,
               size_t k_steps, int64_t correction, int a_bits, int a_group)
      : k_(usable_kernel(kernel_index)), w_(w), tables_(tables), N_(N), K_(K), k_steps_(k_steps), a_bits_(a_bits),
        a_group_(a_group) {
    const KernelInfo& k = k_;
    require_array<uint8_t>(w, "w", 1, "uint8");
    require_array<int8_t>(tables, "tables", 1, "int8");
    if (flush8 == 0 || flush16 == 0) throw py::value_error("flush8/flush16: expected >= 1");
    if (a_code_shift != 0 && !(a_code_shift == 2 && std::string(k.family) == "grouplut"))
      throw py::value_error(std::string("a_code_shift: expected 0 (or 2 for grouplut kernels), got ") +
                            std::to_string(a_code_shift) + " for kernel " + k.name);
    correction_ = checked_correction(correction);
    geometry_ = checked_geometry(k_steps);
    base_.kernel = &k;
    base_.w = static_cast<const uint8_t*>(w.data());
    base_.tables = static_cast<const int8_t*>(tables.data());
    base_.N = N;
    base_.flush8 = flush8;
    base_.flush16 = flush16;
    base_.a_code_shift = a_code_shift;
    if (!col_correction_obj.is_none()) {
      if (!py::isinstance<py::array>(col_correction_obj))
        throw py::type_error("col_correction: expected a 1-D int32 NumPy array or None");
      col_correction_ = py::reinterpret_borrow<py::array>(col_correction_obj);
      require_array<int32_t>(col_correction_, "col_correction", 1, "int32");
      if (size_t(col_correction_.shape(0)) != N)
        throw py::value_error("col_correction: expected " + std::to_string(N) +
                              " int32 entries (one per output channel)");
      base_.col_correction = static_cast<const int32_t*>(col_correction_.data());
    }
    if (a_group != 0) {
      if (std::string(k.family) != "grouplut" && std::string(k.family) != "grouplut6")
        throw py::value_error(std::string("gemm_codes: kernel ") + k.name + " is not a grouplut kernel");
      if (a_bits < 1 || a_bits > 8 || a_group < 1 || a_group * a_bits + int(a_code_shift) > 8)
        throw py::value_error("bits/group: expected group * bits + a_code_shift <= 8");
      if (k_steps != (K + size_t(a_group) - 1) / size_t(a_group))
        throw py::value_error("k_steps: expected ceil(K / group) = " + std::to_string((K + a_group - 1) / a_group));
    }
  }

  size_t N() const { return N_; }
  size_t K() const { return K_; }

  // A GEMM on packed activations: a 2-D (>= M rows of a_row_bytes), or 1-D
  // with (M, segments) int64 byte offsets a_offsets (indirect kernels).
  py::array run(const py::object& a_obj, size_t M, size_t k_steps, int64_t correction, const EpilogueSpec* ep,
                const py::object& residual, const py::object& a_offsets_obj, size_t seg_steps) const {
    GemmCall call = base_;
    const GemmGeometry g = k_steps == k_steps_ ? geometry_ : checked_geometry(k_steps);
    call.k_steps = k_steps;
    call.correction = k_steps == k_steps_ && correction == correction_ ? correction_ : checked_correction(correction);
    call.M = M;
    check_elements({M, N_}, "output (M x N)");
    check_elements({M, k_steps}, "activations (M x k_steps)");
    const KernelInfo& k = k_;
    if (!py::isinstance<py::array>(a_obj)) throw py::type_error("a: expected a uint8 NumPy array");
    const py::array a = py::reinterpret_borrow<py::array>(a_obj);
    std::vector<const uint8_t*> ind;
    if (a_offsets_obj.is_none()) {
      require_array<uint8_t>(a, "a", 2, "uint8");
      if (size_t(a.shape(0)) < M || size_t(a.shape(1)) < g.a_row_bytes)
        throw py::value_error("a: expected at least " + std::to_string(M) + " x " + std::to_string(g.a_row_bytes) +
                              " packed bytes for kernel " + k.name);
      call.a = static_cast<const uint8_t*>(a.data());
      call.a_stride = size_t(a.shape(1));
    } else {
      bind_indirect(call, g, a, a_offsets_obj, seg_steps, &ind);
    }
    py::array out = gemm_output(ep, call.epilogue, M, N_, residual, &call.c, k.tier);
    if (!ep) call.c_stride = N_;
    execute(call, g);
    return out;
  }

  // The direct GEMM straight from (M, K) uint8 codes (grouplut families).
  py::array codes(const py::object& a_obj, const EpilogueSpec* ep, const py::object& residual) const {
    if (a_group_ == 0) throw py::value_error(std::string("codes: kernel ") + k_.name + " needs packed activations");
    if (!py::isinstance<py::array>(a_obj))
      throw py::type_error(std::string("a_codes: expected a numpy.ndarray of uint8 codes, got ") +
                           Py_TYPE(a_obj.ptr())->tp_name);
    py::array a = py::reinterpret_borrow<py::array>(a_obj);
    if (!has_dtype<uint8_t>(a))
      throw py::type_error("a_codes: expected dtype uint8, got " + std::string(py::str(a.dtype())));
    if (a.ndim() != 2)
      throw py::value_error("a_codes: expected a 2-D array, got " + std::to_string(a.ndim()) + "-D with shape " +
                            std::string(py::str(a.attr("shape"))));
    const size_t M = size_t(a.shape(0));
    if (size_t(a.shape(1)) != K_)
      throw py::value_error("a: K mismatch: activations have K=" + std::to_string(a.shape(1)) +
                            ", weights have K=" + std::to_string(K_));
    check_shape({M, K_}, "a_codes");
    check_shape({M, N_}, "output");
    if (!(a.flags() & py::array::c_style)) a = py::array::ensure(a, py::array::c_style);  // a copy, never misread
    GemmCall call = base_;
    call.M = M;
    call.k_steps = k_steps_;
    call.correction = correction_;
    FusedPack pack;
    pack.codes = static_cast<const uint8_t*>(a.data());
    pack.K = K_;
    pack.bits = a_bits_;
    pack.group = a_group_;
    pack.shift = int(base_.a_code_shift);
    pack.tier = k_.tier;
    std::vector<uint8_t> buffer(std::max<size_t>(M * k_steps_, 1));
    pack.out = buffer.data();
    call.a = buffer.data();
    call.a_stride = k_steps_;
    call.pack = &pack;
    py::array out = gemm_output(ep, call.epilogue, M, N_, residual, &call.c, k_.tier);
    if (!ep) call.c_stride = N_;
    execute(call, geometry_);
    if (pack.bad.load()) throw_bad_code(pack.codes, M * K_, a_bits_, "a_codes", "bits");
    return out;
  }

  // An implicit-GEMM convolution straight from NHWC codes (grouplut families,
  // groups == 1, Cin a multiple of the packing group): x is (pixels, Cin)
  // uint8 codes, taps an (M, segments) int64 tap table (ops: conv._tap_rows)
  // holding the input pixel each output row reads per segment, -1 for
  // padding. The input is packed here (pack_groups rule, then one pixel of
  // pad_code) and each segment (seg_steps steps, one pixel's Cin codes) is
  // read through an indirection array built from the tap table: one call,
  // no Python-side packing or byte offsets.
  py::array conv_codes(const py::object& x_obj, const py::object& taps_obj, size_t seg_steps, size_t k_steps,
                       int64_t correction, int pad_code, const EpilogueSpec* ep, const py::object& residual) const {
    if (a_group_ == 0) throw py::value_error(std::string("conv_codes: kernel ") + k_.name + " needs packed activations");
    if (!k_.indirect) throw py::value_error(std::string("kernel ") + k_.name + " does not take indirect activations");
    if (!py::isinstance<py::array>(x_obj)) throw py::type_error("x: expected a uint8 NumPy array");
    if (!py::isinstance<py::array>(taps_obj)) throw py::type_error("taps: expected an int64 NumPy array");
    const py::array x = py::reinterpret_borrow<py::array>(x_obj), taps = py::reinterpret_borrow<py::array>(taps_obj);
    require_array<uint8_t>(x, "x", 2, "uint8");
    require_array<int64_t>(taps, "taps", 2, "int64");
    const size_t pixels = size_t(x.shape(0)), C = size_t(x.shape(1)), M = size_t(taps.shape(0));
    const size_t group = size_t(a_group_), pixel_bytes = (C + group - 1) / group;
    if (C % group != 0 || pixel_bytes != seg_steps)
      throw py::value_error("seg_steps: expected Cin / group = " + std::to_string(pixel_bytes) +
                            " with Cin a multiple of the group (" + std::to_string(group) + ")");
    const size_t segs = size_t(taps.shape(1));
    if (segs * seg_steps != k_steps)
      throw py::value_error("taps: expected k_steps / seg_steps = " + std::to_string(k_steps / seg_steps) + " columns");
    if (pad_code < 0 || pad_code >= (1 << a_bits_))
      throw py::value_error("pad_code: expected a code in [0, " + std::to_string(1 << a_bits_) + ")");
    check_elements({pixels + 1, pixel_bytes}, "packed input");
    GemmCall call = base_;
    const GemmGeometry g = k_steps == k_steps_ ? geometry_ : checked_geometry(k_steps);
    call.k_steps = k_steps;
    call.correction = k_steps == k_steps_ && correction == correction_ ? correction_ : checked_correction(correction);
    call.M = M;
    check_elements({M, N_}, "output (M x N)");
    if (g.a_row_bytes != k_steps) throw py::value_error("conv_codes: expected one packed byte per step");
    // every tap names an input pixel or -1 (padding)
    const int64_t* t = static_cast<const int64_t*>(taps.data());
    for (size_t i = 0; i < M * segs; ++i) {
      if (t[i] < -1 || t[i] >= int64_t(pixels))
        throw py::value_error("taps: entry " + std::to_string(t[i]) + " is not an input pixel in [0, " +
                              std::to_string(pixels) + ") or -1 (padding)");
    }
    std::vector<uint8_t> packed((pixels + 1) * pixel_bytes);
    std::vector<const uint8_t*> ind(M * segs);
    const int shift = int(base_.a_code_shift);
    auto pack_and_index = [&] {
      if (!pack_groups(static_cast<const uint8_t*>(x.data()), pixels, C, a_bits_, a_group_, shift, packed.data(),
                       pixel_bytes, k_.tier))
        return false;
      const std::vector<uint8_t> pad(C, uint8_t(pad_code));
      pack_groups_serial(pad.data(), 1, C, a_bits_, a_group_, shift, packed.data() + pixels * pixel_bytes,
                         pixel_bytes, k_.tier);
      const uint8_t* pad_pixel = packed.data() + pixels * pixel_bytes;
      for (size_t i = 0; i < M * segs; ++i) ind[i] = t[i] < 0 ? pad_pixel : packed.data() + size_t(t[i]) * pixel_bytes;
      return true;
    };
    call.a = nullptr;
    call.a_ind = ind.data();
    call.a_ind_stride = segs;
    call.seg_steps = seg_steps;
    py::array out = gemm_output(ep, call.epilogue, M, N_, residual, &call.c, k_.tier);
    if (!ep) call.c_stride = N_;
    bool ok;
    if (gemm_runs_inline(M, N_, k_steps)) {  // small: keep the GIL (as execute())
      ok = pack_and_index();
      if (ok) run_gemm(call, g);
    } else {
      py::gil_scoped_release release;
      ok = pack_and_index();
      if (ok) run_gemm(call, g);
    }
    if (!ok) throw_bad_code(static_cast<const uint8_t*>(x.data()), pixels * C, a_bits_, "a_codes", "bits");
    return out;
  }

 private:
  GemmGeometry checked_geometry(size_t k_steps) const {
    check_elements({N_, k_steps}, "weights (N x k_steps)");
    GemmGeometry g;
    std::string why;
    if (!gemm_geometry(k_, N_, k_steps, &g, &why)) throw py::value_error(why);
    if (size_t(w_.shape(0)) < g.w_bytes)
      throw py::value_error("w: expected at least " + std::to_string(g.w_bytes) + " bytes for kernel " + k_.name);
    if (size_t(tables_.shape(0)) < g.table_bytes)
      throw py::value_error("tables: expected at least " + std::to_string(g.table_bytes) + " bytes");
    return g;
  }

  static int32_t checked_correction(int64_t correction) {
    if (correction < INT32_MIN || correction > INT32_MAX) throw py::value_error("correction: out of int32 range");
    return int32_t(correction);
  }

  // Indirect activations: a 1-D buffer plus an (M, segments) int64 array of
  // byte offsets, each segment seg_steps steps of the family's step bytes
  // (a_row_bytes / k_steps: 1 grouplut, 4 dot8). Every offset is checked.
  void bind_indirect(GemmCall& call, const GemmGeometry& g, const py::array& a, const py::object& a_offsets_obj,
                     size_t seg_steps, std::vector<const uint8_t*>* ind) const {
    const KernelInfo& k = k_;
    const size_t M = call.M, k_steps = call.k_steps;
    if (!k.indirect) throw py::value_error(std::string("kernel ") + k.name + " does not take indirect activations");
    require_array<uint8_t>(a, "a", 1, "uint8");
    if (!py::isinstance<py::array>(a_offsets_obj)) throw py::type_error("a_offsets: expected an int64 NumPy array");
    const py::array offs = py::reinterpret_borrow<py::array>(a_offsets_obj);
    require_array<int64_t>(offs, "a_offsets", 2, "int64");
    if (seg_steps == 0) throw py::value_error("seg_steps: expected >= 1");
    const size_t segs = (k_steps + seg_steps - 1) / seg_steps;
    if (size_t(offs.shape(0)) != M || size_t(offs.shape(1)) != segs)
      throw py::value_error("a_offsets: expected shape (" + std::to_string(M) + ", " + std::to_string(segs) + ")");
    const size_t len = size_t(a.shape(0));
    const int64_t* o = static_cast<const int64_t*>(offs.data());
    const uint8_t* base = static_cast<const uint8_t*>(a.data());
    // every segment is seg_steps long except the last of a row (lengths in bytes)
    const size_t step_bytes = k_steps ? g.a_row_bytes / k_steps : 1;
    const size_t seg_len = seg_steps * step_bytes, last_len = (k_steps - (segs - 1) * seg_steps) * step_bytes;
    if (len < seg_len || len < last_len) throw py::value_error("a: shorter than one segment");
    const int64_t max_start = int64_t(len - seg_len), max_last = int64_t(len - last_len);
    ind->resize(M * segs);
    bool ok = true;
    for (size_t m = 0; m < M; ++m) {
      const int64_t* row = o + m * segs;
      const uint8_t** dst = ind->data() + m * segs;
      for (size_t s = 0; s + 1 < segs; ++s) {
        ok &= row[s] >= 0 && row[s] <= max_start;
        dst[s] = base + row[s];
      }
      ok &= row[segs - 1] >= 0 && row[segs - 1] <= max_last;
      dst[segs - 1] = base + row[segs - 1];
    }
    if (!ok) {  // name the first bad offset
      for (size_t i = 0; i < M * segs; ++i) {
        const size_t n = (i % segs + 1 == segs) ? last_len : seg_len;
        if (o[i] < 0 || size_t(o[i]) + n > len)
          throw py::value_error("a_offsets: offset " + std::to_string(o[i]) + " reads outside a (" +
                                std::to_string(len) + " bytes)");
      }
    }
    call.a = nullptr;
    call.a_ind = ind->data();
    call.a_ind_stride = segs;
    call.seg_steps = seg_steps;
  }

  // Runs the call; problems small enough to run inline keep the GIL (releasing
  // and taking it back would cost more than they take).
  static void execute(const GemmCall& call, const GemmGeometry& g) {
    if (gemm_runs_inline(call.M, call.N, call.k_steps)) {
      run_gemm(call, g);
      return;
    }
    py::gil_scoped_release release;
    run_gemm(call, g);
  }

  const KernelInfo& k_;
  py::array w_, tables_, col_correction_;  // kept alive with the object
  size_t N_, K_, k_steps_;
  int32_t correction_ = 0;
  int a_bits_, a_group_;
  GemmGeometry geometry_;
  GemmCall base_;  // everything but the activations, M and the output
};

// The epilogue argument of PreparedGemm's methods: None or a GemmEpilogue.
// (Taken as an object: pybind11's own None handling for a class pointer
// raises and clears an AttributeError on every call.)
const EpilogueSpec* epilogue_arg(const py::object& obj) {
  if (obj.is_none()) return nullptr;
  if (!py::isinstance<EpilogueSpec>(obj))
    throw py::type_error(std::string("epilogue: expected a _core.GemmEpilogue or None, got ") +
                         Py_TYPE(obj.ptr())->tp_name);
  return obj.cast<const EpilogueSpec*>();
}

// _core.gemm: a one-shot GEMM (the prepared path's checks, built per call).
py::array gemm_py(size_t kernel_index, const py::object& a_obj, const py::array& w, const py::array& tables, size_t M,
                  size_t N, size_t k_steps, uint32_t flush8, uint32_t flush16, int64_t correction,
                  uint32_t a_code_shift, const py::object& a_offsets_obj, size_t seg_steps, const std::string& out_kind,
                  const py::object& scale_obj, const py::object& bias_obj, const py::object& residual_obj,
                  float clamp_lo, float clamp_hi, float inv_step, int qmin, int qmax,
                  const py::object& col_correction_obj, double step64, const py::object& scale64,
                  const py::object& bias64) {
  const PreparedGemm prepared(kernel_index, w, tables, N, flush8, flush16, a_code_shift, col_correction_obj, 0,
                              k_steps, correction, 0, 0);
  const auto ep = epilogue_from_args(out_kind, scale_obj, bias_obj, clamp_lo, clamp_hi, inv_step, qmin, qmax, step64,
                                     scale64, bias64);
  return prepared.run(a_obj, M, k_steps, correction, ep.get(), residual_obj, a_offsets_obj, seg_steps);
}

// _core.gemm_codes: a one-shot grouplut GEMM straight from (M, K) uint8 codes:
// the driver packs them (pack_groups rule: `group` codes of `bits` bits a
// byte, shifted left by a_code_shift) block by block inside the GEMM's tasks.
py::array gemm_codes_py(size_t kernel_index, const py::array& codes, int bits, int group, const py::array& w,
                        const py::array& tables, size_t N, size_t k_steps, uint32_t flush8, uint32_t flush16,
                        int64_t correction, uint32_t a_code_shift, const std::string& out_kind,
                        const py::object& scale_obj, const py::object& bias_obj, const py::object& residual_obj,
                        float clamp_lo, float clamp_hi, float inv_step, int qmin, int qmax, double step64,
                        const py::object& scale64, const py::object& bias64) {
  require_array<uint8_t>(codes, "a", 2, "uint8");
  const PreparedGemm prepared(kernel_index, w, tables, N, flush8, flush16, a_code_shift, py::none(),
                              size_t(codes.shape(1)), k_steps, correction, bits, group);
  const auto ep = epilogue_from_args(out_kind, scale_obj, bias_obj, clamp_lo, clamp_hi, inv_step, qmin, qmax, step64,
                                     scale64, bias64);
  return prepared.codes(codes, ep.get(), residual_obj);
}

// The dot-product families' activation packers: codes -> levels of type
// Level (int16 for dotgemm, uint8 for dot8; see their headers), then
// pad_rows rows of level 0 (the all-padding pixel of a convolution).
template <class Level, int (*Pack)(const uint8_t*, size_t, size_t, int, const Level*, Level*, size_t, int)>
py::array_t<Level> pack_levels_py(const py::array& codes, int bits, const py::array& levels, size_t out_cols,
                                  int tier, size_t pad_rows) {
  require_array<uint8_t>(codes, "codes", 2, "uint8");
  require_array<Level>(levels, "levels", 1, sizeof(Level) == 1 ? "uint8" : "int16");
  if (!(bits == 1 || bits == 2 || bits == 3 || bits == 4 || bits == 8)) throw py::value_error("bits: expected 1-4 or 8");
  if (size_t(levels.shape(0)) != (size_t(1) << bits))
    throw py::value_error("levels: expected " + std::to_string(1 << bits) + " values");
  const size_t M = size_t(codes.shape(0)), K = size_t(codes.shape(1));
  if (out_cols < K) throw py::value_error("out_cols: expected >= K");
  check_elements({pad_rows}, "pad_rows");
  check_elements({M + pad_rows, out_cols}, "packed output");
  tier_from_int(tier);
  py::array_t<Level> out({M + pad_rows, out_cols});
  const uint8_t* src = static_cast<const uint8_t*>(codes.data());
  const Level* lv = static_cast<const Level*>(levels.data());
  Level* dst = out.mutable_data();
  int rc;
  {
    py::gil_scoped_release release;
    rc = Pack(src, M, K, bits, lv, dst, out_cols, tier);
    std::fill(dst + M * out_cols, dst + (M + pad_rows) * out_cols, Level(0));
  }
  if (rc == 0) throw py::value_error("codes: expected every code in [0, " + std::to_string(1 << bits) + ")");
  if (rc != 1) throw py::value_error("pack_activations: bad arguments");
  return out;
}

// im2col of NHWC codes for the convolution fallback (ops/pack.h).
py::array_t<uint8_t> im2col_nhwc_py(const py::array& x, size_t B, size_t H, size_t W, size_t kh, size_t kw, size_t sh,
                                    size_t sw, size_t ph, size_t pw, size_t dh, size_t dw, int pad_code) {
  require_array<uint8_t>(x, "x", 2, "uint8");
  if (pad_code < 0 || pad_code > 255) throw py::value_error("pad_code: expected 0..255");
  check_elements({B, H, W}, "x (B*H*W)");
  check_elements({kh, kw, size_t(x.shape(1))}, "kernel taps x channels");
  check_each({sh, sw, ph, pw, dh, dw}, "stride/padding/dilation");
  if (size_t(x.shape(0)) != B * H * W)
    throw py::value_error("x: expected B*H*W = " + std::to_string(B * H * W) + " rows, got " +
                          std::to_string(x.shape(0)));
  if (kh < 1 || kw < 1 || sh < 1 || sw < 1 || dh < 1 || dw < 1)
    throw py::value_error("kernel/stride/dilation: expected >= 1");
  ConvGeometry g{B, H, W, size_t(x.shape(1)), kh, kw, sh, sw, ph, pw, dh, dw, 0, 0};
  const size_t span_h = dh * (kh - 1) + 1, span_w = dw * (kw - 1) + 1;
  if (H + 2 * ph < span_h || W + 2 * pw < span_w)
    throw py::value_error("x: input " + std::to_string(H) + "x" + std::to_string(W) + " is too small for the kernel");
  g.OH = (H + 2 * ph - span_h) / sh + 1;
  g.OW = (W + 2 * pw - span_w) / sw + 1;
  check_elements({B, g.OH, g.OW, kh, kw, g.C}, "im2col output");
  py::array_t<uint8_t> out({B * g.OH * g.OW, kh * kw * g.C});
  const uint8_t* src = static_cast<const uint8_t*>(x.data());
  uint8_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    im2col_nhwc(src, g, uint8_t(pad_code), dst);
  }
  return out;
}

// ---- The runtime's graph ops (ops/graph_ops.h).

// The quantize node's parameters, checked (pre_step/pre_div: both None, or both finite > 0).
QuantizeParams quantize_params(float step, int qn, int qp, bool binary, const py::object& pre_step,
                               const py::object& pre_div) {
  if (!std::isfinite(step) || step <= 0) throw py::value_error("step: expected a finite value > 0");
  if (qn < -128 || qp < qn || qp - qn > 255) throw py::value_error("qn/qp: expected -128 <= qn <= qp <= qn + 255");
  QuantizeParams p;
  p.binary = binary;
  p.step = step;
  p.qn = qn;
  p.qp = qp;
  if (pre_step.is_none() != pre_div.is_none())
    throw py::value_error("pre_step/pre_div: expected both (QONNX Trunc form) or neither");
  if (!pre_step.is_none()) {
    const double ps = pre_step.cast<double>(), pd = pre_div.cast<double>();
    if (!std::isfinite(ps) || ps <= 0 || !std::isfinite(float(ps)) || float(ps) <= 0)
      throw py::value_error("pre_step: expected a finite float32 value > 0");
    if (!std::isfinite(pd) || pd <= 0 || !std::isfinite(float(1.0 / pd)))
      throw py::value_error("pre_div: expected a finite value > 0 whose float32 inverse is finite");
    p.pre = true;
    p.pre_step = float(ps);
    p.pre_inv_div = float(1.0 / pd);  // np.float32(1.0 / pre_div)
  }
  return p;
}

// Float32 x (any shape) -> uint8 codes of the same shape.
py::array_t<uint8_t> quantize_py(const py::array& x, float step, int qn, int qp, bool binary,
                                 const py::object& pre_step, const py::object& pre_div) {
  require_array<float>(x, "x", -1, "float32");
  const QuantizeParams p = quantize_params(step, qn, qp, binary, pre_step, pre_div);
  py::array_t<uint8_t> out(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
  const float* src = static_cast<const float*>(x.data());
  uint8_t* dst = out.mutable_data();
  const size_t n = size_t(x.size());
  {
    py::gil_scoped_release release;
    quantize_f32(src, n, p, dst);
  }
  return out;
}

// Float32 NCHW x (B, C, H, W) -> NHWC codes (B, H, W, C).
py::array_t<uint8_t> quantize_nchw_to_nhwc_py(const py::array& x, float step, int qn, int qp, bool binary,
                                              const py::object& pre_step, const py::object& pre_div) {
  require_array<float>(x, "x", 4, "float32");
  const QuantizeParams p = quantize_params(step, qn, qp, binary, pre_step, pre_div);
  const size_t B = size_t(x.shape(0)), C = size_t(x.shape(1)), H = size_t(x.shape(2)), W = size_t(x.shape(3));
  py::array_t<uint8_t> out({B, H, W, C});
  const float* src = static_cast<const float*>(x.data());
  uint8_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    quantize_nchw_to_nhwc(src, B, C, H, W, p, dst);
  }
  return out;
}

// uint8 codes (any shape) -> float32 level * step; every code must index `levels`.
py::array_t<float> dequantize_py(const py::array& codes, const py::array& levels, float step) {
  require_array<uint8_t>(codes, "codes", -1, "uint8");
  require_array<int32_t>(levels, "levels", 1, "int32");
  const size_t count = size_t(levels.shape(0));
  if (count < 1 || count > 256) throw py::value_error("levels: expected 1 to 256 values");
  if (!std::isfinite(step)) throw py::value_error("step: expected a finite value");
  const uint8_t* src = static_cast<const uint8_t*>(codes.data());
  const int32_t* lv = static_cast<const int32_t*>(levels.data());
  const size_t n = size_t(codes.size());
  for (size_t i = 0; i < count; ++i)
    if (lv[i] < -(1 << 24) || lv[i] > (1 << 24))
      throw py::value_error("levels: expected values of magnitude <= 2^24 (exact in float32)");
  py::array_t<float> out(std::vector<py::ssize_t>(codes.shape(), codes.shape() + codes.ndim()));
  float* dst = out.mutable_data();
  bool ok;
  {
    py::gil_scoped_release release;
    uint8_t top = 0;
    for (size_t i = 0; i < n; ++i) top = std::max(top, src[i]);
    ok = n == 0 || size_t(top) < count;
    if (ok) dequantize_codes(src, n, lv, step, dst);
  }
  if (!ok) throw py::value_error("codes: expected every code in [0, " + std::to_string(count) + ") (one per level)");
  return out;
}

// NCHW <-> NHWC copies of a 4-D float32 array; flatten of NHWC float32 or uint8 to (B, C*H*W).
py::array_t<float> nchw_to_nhwc_py(const py::array& x) {
  require_array<float>(x, "x", 4, "float32");
  const size_t B = size_t(x.shape(0)), C = size_t(x.shape(1)), H = size_t(x.shape(2)), W = size_t(x.shape(3));
  py::array_t<float> out({B, H, W, C});
  const float* src = static_cast<const float*>(x.data());
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    nchw_to_nhwc_f32(src, B, C, H, W, dst);
  }
  return out;
}

py::array_t<float> nhwc_to_nchw_py(const py::array& x) {
  require_array<float>(x, "x", 4, "float32");
  const size_t B = size_t(x.shape(0)), H = size_t(x.shape(1)), W = size_t(x.shape(2)), C = size_t(x.shape(3));
  py::array_t<float> out({B, C, H, W});
  const float* src = static_cast<const float*>(x.data());
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    nhwc_to_nchw_f32(src, B, H, W, C, dst);
  }
  return out;
}

template <class T>
py::array_t<T> flatten_typed(const py::array& x, void (*flatten)(const T*, size_t, size_t, size_t, size_t, T*)) {
  const size_t B = size_t(x.shape(0)), H = size_t(x.shape(1)), W = size_t(x.shape(2)), C = size_t(x.shape(3));
  py::array_t<T> out({B, C * H * W});
  const T* src = static_cast<const T*>(x.data());
  T* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    flatten(src, B, H, W, C, dst);
  }
  return out;
}

py::array flatten_nhwc_py(const py::array& x) {
  if (has_dtype<uint8_t>(x)) {
    require_array<uint8_t>(x, "x", 4, "uint8");
    return flatten_typed<uint8_t>(x, flatten_nhwc_u8);
  }
  if (!has_dtype<float>(x))
    throw py::type_error("x: expected dtype float32 or uint8, got " + std::string(py::str(x.dtype())));
  require_array<float>(x, "x", 4, "float32");
  return flatten_typed<float>(x, flatten_nhwc_f32);
}

// A new float32 array of x's shape.
py::array_t<float> empty_like_f32(const py::array& x) {
  return py::array_t<float>(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
}

py::array_t<float> add_py(const py::array& a, const py::array& b) {
  require_array<float>(a, "a", -1, "float32");
  require_array<float>(b, "b", -1, "float32");
  if (a.ndim() != b.ndim() || !std::equal(a.shape(), a.shape() + a.ndim(), b.shape()))
    throw py::value_error("b: expected the shape of a " + std::string(py::str(a.attr("shape"))) + ", got " +
                          std::string(py::str(b.attr("shape"))));
  py::array_t<float> out = empty_like_f32(a);
  const float *pa = static_cast<const float*>(a.data()), *pb = static_cast<const float*>(b.data());
  float* dst = out.mutable_data();
  const size_t n = size_t(a.size());
  {
    py::gil_scoped_release release;
    add_f32(pa, pb, n, dst);
  }
  return out;
}

py::array_t<float> clamp_py(const py::array& x, float lo, float hi) {
  require_array<float>(x, "x", -1, "float32");
  if (std::isnan(lo) || std::isnan(hi) || lo > hi) throw py::value_error("lo/hi: expected lo <= hi (no NaN)");
  py::array_t<float> out = empty_like_f32(x);
  const float* src = static_cast<const float*>(x.data());
  float* dst = out.mutable_data();
  const size_t n = size_t(x.size());
  {
    py::gil_scoped_release release;
    clamp_f32(src, n, lo, hi, dst);
  }
  return out;
}

// x (..., C) float32 with per-channel scale and bias (C,) on its last axis.
py::array_t<float> affine_py(const py::array& x, const py::array& scale, const py::array& bias) {
  require_array<float>(x, "x", -1, "float32");
  require_array<float>(scale, "scale", 1, "float32");
  require_array<float>(bias, "bias", 1, "float32");
  if (x.ndim() < 1) throw py::value_error("x: expected at least 1 dimension (channels last)");
  const size_t C = size_t(x.shape(x.ndim() - 1));
  if (size_t(scale.shape(0)) != C || size_t(bias.shape(0)) != C)
    throw py::value_error("scale/bias: expected " + std::to_string(C) + " values (x's last axis)");
  py::array_t<float> out = empty_like_f32(x);
  const float* src = static_cast<const float*>(x.data());
  const float *ps = static_cast<const float*>(scale.data()), *pb = static_cast<const float*>(bias.data());
  float* dst = out.mutable_data();
  const size_t rows = C ? size_t(x.size()) / C : 0;
  {
    py::gil_scoped_release release;
    affine_f32(src, rows, C, ps, pb, dst);
  }
  return out;
}

// The output geometry of a pooling window over float32 NHWC x (ValueError when it does not fit).
ConvGeometry pool_geometry(const py::array& x, size_t kh, size_t kw, size_t sh, size_t sw, size_t ph, size_t pw,
                           size_t dh, size_t dw) {
  require_array<float>(x, "x", 4, "float32");
  if (kh < 1 || kw < 1 || sh < 1 || sw < 1 || dh < 1 || dw < 1)
    throw py::value_error("kernel/stride/dilation: expected >= 1");
  check_each({kh, kw, sh, sw, ph, pw, dh, dw}, "kernel/stride/padding/dilation");
  ConvGeometry g{size_t(x.shape(0)), size_t(x.shape(1)), size_t(x.shape(2)), size_t(x.shape(3)), kh, kw, sh, sw, ph,
                 pw, dh, dw, 0, 0};
  const size_t span_h = dh * (kh - 1) + 1, span_w = dw * (kw - 1) + 1;
  if (g.H + 2 * ph < span_h || g.W + 2 * pw < span_w)
    throw py::value_error("x: input " + std::to_string(g.H) + "x" + std::to_string(g.W) +
                          " is too small for the pooling window");
  g.OH = (g.H + 2 * ph - span_h) / sh + 1;
  g.OW = (g.W + 2 * pw - span_w) / sw + 1;
  check_elements({g.B, g.OH, g.OW, g.C}, "pooling output");
  return g;
}

// Max pooling of float32 NHWC input (ops/pack.h).
py::array_t<float> maxpool_nhwc_py(const py::array& x, size_t kh, size_t kw, size_t sh, size_t sw, size_t ph,
                                   size_t pw, size_t dh, size_t dw) {
  const ConvGeometry g = pool_geometry(x, kh, kw, sh, sw, ph, pw, dh, dw);
  py::array_t<float> out({g.B, g.OH, g.OW, g.C});
  const float* src = static_cast<const float*>(x.data());
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    maxpool_nhwc_f32(src, g, dst);
  }
  return out;
}

py::array_t<float> avgpool_nhwc_py(const py::array& x, size_t kh, size_t kw, size_t sh, size_t sw, size_t ph,
                                   size_t pw, bool count_include_pad) {
  const ConvGeometry g = pool_geometry(x, kh, kw, sh, sw, ph, pw, 1, 1);
  py::array_t<float> out({g.B, g.OH, g.OW, g.C});
  const float* src = static_cast<const float*>(x.data());
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    avgpool_nhwc_f32(src, g, count_include_pad, dst);
  }
  return out;
}

py::array_t<float> adaptive_avgpool_nhwc_py(const py::array& x, size_t oh, size_t ow) {
  require_array<float>(x, "x", 4, "float32");
  const size_t B = size_t(x.shape(0)), H = size_t(x.shape(1)), W = size_t(x.shape(2)), C = size_t(x.shape(3));
  if (H < 1 || W < 1) throw py::value_error("x: expected a feature map of at least 1x1");
  if (oh < 1 || ow < 1) throw py::value_error("oh/ow: expected an output size >= 1");
  check_elements({B, oh, ow, C}, "adaptive_avgpool output");
  py::array_t<float> out({B, oh, ow, C});
  const float* src = static_cast<const float*>(x.data());
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    adaptive_avgpool_nhwc_f32(src, B, H, W, C, oh, ow, dst);
  }
  return out;
}
// ---- end of the graph ops

// The fused epilogue on its own, for paths that must correct int32 sums
// between the GEMM and the epilogue (e.g. padding with a nonzero level).
py::array epilogue_py(const py::array& acc, const py::object& scale, const py::object& bias,
                      const py::object& residual_obj, float clamp_lo, float clamp_hi, const std::string& out_kind,
                      float inv_step, int qmin, int qmax, double step64, const py::object& scale64,
                      const py::object& bias64, bool simd) {
  require_array<int32_t>(acc, "acc", 2, "int32");
  const size_t M = size_t(acc.shape(0)), N = size_t(acc.shape(1));
  const EpilogueSpec spec(out_kind, scale, bias, clamp_lo, clamp_hi, inv_step, qmin, qmax, step64, scale64, bias64);
  Epilogue e;
  py::array out = spec.bind(e, M, N, residual_obj);
  e.simd = simd;  // False: the scalar epilogue (the same results)
  const int32_t* src = static_cast<const int32_t*>(acc.data());
  {
    py::gil_scoped_release release;
    apply_epilogue(e, src, N, 0, M, 0, N);
  }
  return out;
}

// ---- Depthwise and grouped convolution (ops/conv.h): one native call per layer.

ConvGeometry conv_geometry(const py::array& x, size_t kh, size_t kw, size_t sh, size_t sw, size_t ph, size_t pw,
                           size_t dh, size_t dw) {
  require_array<uint8_t>(x, "x", 4, "uint8");
  if (kh == 0 || kw == 0 || sh == 0 || sw == 0 || dh == 0 || dw == 0)
    throw py::value_error("kernel size/stride/dilation: expected >= 1");
  ConvGeometry g{size_t(x.shape(0)), size_t(x.shape(1)), size_t(x.shape(2)), size_t(x.shape(3)), kh, kw, sh, sw,
                 ph, pw, dh, dw, 0, 0};
  g.OH = conv_out_size(g.H, kh, sh, ph, dh);
  g.OW = conv_out_size(g.W, kw, sw, pw, dw);
  if (g.OH == 0 || g.OW == 0) throw py::value_error("x: input too small for the kernel with this padding/dilation");
  return g;
}

const int16_t* checked_levels(const py::array& levels, int bits) {
  require_array<int16_t>(levels, "a_levels", 1, "int16");
  if (!(bits == 1 || bits == 2 || bits == 3 || bits == 4 || bits == 8)) throw py::value_error("bits: expected 1-4 or 8");
  if (size_t(levels.shape(0)) != (size_t(1) << bits))
    throw py::value_error("a_levels: expected " + std::to_string(1 << bits) + " values");
  const int16_t* lv = static_cast<const int16_t*>(levels.data());
  const int hi = bits == 8 ? 255 : 127;  // the codebook contract (1-4-bit levels fit int8: the vpshufb decoder)
  for (int i = 0; i < (1 << bits); ++i)
    if (lv[i] < -128 || lv[i] > hi)
      throw py::value_error("a_levels: expected values in [-128, " + std::to_string(hi) + "] for " +
                            std::to_string(bits) + "-bit codes");
  return lv;
}

py::list dwconv_kernel_list() {
  size_t count = 0;
  const DwconvKernelInfo* reg = dwconv_kernels(&count);
  py::list out;
  for (size_t i = 0; i < count; ++i) {
    py::dict d;
    d["index"] = i;
    d["name"] = reg[i].name;
    d["family"] = "dwconv";
    d["tier"] = tier_name(reg[i].tier);
    d["tier_rank"] = int(reg[i].tier);
    d["description"] = reg[i].description;
    out.append(d);
  }
  return out;
}

// Depthwise: x (B, H, W, C) codes, w_levels (kh * kw, Cp) int16 (Cp = C rounded up to 16, zero padded).
py::array dwconv_py(size_t kernel_index, const py::array& x, int bits, const py::array& a_levels,
                    const py::array& w_levels, size_t kh, size_t kw, size_t sh, size_t sw, size_t ph, size_t pw,
                    size_t dh, size_t dw, const std::string& out_kind, const py::object& scale,
                    const py::object& bias, const py::object& residual, float clamp_lo, float clamp_hi,
                    float inv_step, int qmin, int qmax, const py::args& exact) {
  const DwconvKernelInfo& k = usable_dwconv_kernel(kernel_index);
  DwconvCall call;
  call.kernel = &k;
  call.g = conv_geometry(x, kh, kw, sh, sw, ph, pw, dh, dw);
  call.bits = bits;
  call.a_levels = checked_levels(a_levels, bits);
  require_array<int16_t>(w_levels, "w_levels", 2, "int16");
  const size_t Cp = (call.g.C + kDwconvChannelBlock - 1) / kDwconvChannelBlock * kDwconvChannelBlock;
  if (size_t(w_levels.shape(0)) != kh * kw || size_t(w_levels.shape(1)) != Cp)
    throw py::value_error("w_levels: expected shape (" + std::to_string(kh * kw) + ", " + std::to_string(Cp) + ")");
  call.x = static_cast<const uint8_t*>(x.data());
  call.w = static_cast<const int16_t*>(w_levels.data());
  int max_a = 0, max_w = 0;
  for (int i = 0; i < (1 << bits); ++i) max_a = std::max(max_a, std::abs(int(call.a_levels[i])));
  for (size_t i = 0; i < kh * kw * Cp; ++i) {
    const int v = call.w[i];
    if (v < -128 || v > 255) throw py::value_error("w_levels: expected values in [-128, 255]");
    max_w = std::max(max_w, std::abs(v));
  }
  call.tap_flush = dwconv_tap_flush(max_a, max_w);
  const auto ep = epilogue_from_args_exact(out_kind, scale, bias, clamp_lo, clamp_hi, inv_step, qmin, qmax, exact);
  py::array out = gemm_output(ep.get(), call.epilogue, call.g.B * call.g.OH * call.g.OW, call.g.C, residual, &call.c,
                              k.tier);
  bool ok;
  {
    py::gil_scoped_release release;
    ok = run_dwconv(call);
  }
  if (!ok) throw_bad_code(call.x, call.g.B * call.g.H * call.g.W * call.g.C, bits, "x", "a_bits");
  return out;
}

// Grouped: one dotgemm GEMM per group; w holds `groups` consecutive dotgemm weight layouts for
// N = cout / groups, K = kh * kw * C / groups.
py::array conv_grouped_py(size_t kernel_index, const py::array& x, int bits, const py::array& a_levels,
                          const py::array& w, size_t groups, size_t cout, size_t kh, size_t kw, size_t sh, size_t sw,
                          size_t ph, size_t pw, size_t dh, size_t dw, const std::string& out_kind,
                          const py::object& scale, const py::object& bias, const py::object& residual,
                          float clamp_lo, float clamp_hi, float inv_step, int qmin, int qmax,
                          const py::args& exact) {
  const KernelInfo& k = usable_kernel(kernel_index);
  if (std::string(k.family) != "dotgemm")
    throw py::value_error(std::string("conv_grouped: kernel ") + k.name + " is not a dotgemm kernel");
  GroupedConvCall call;
  call.kernel = &k;
  call.g = conv_geometry(x, kh, kw, sh, sw, ph, pw, dh, dw);
  if (groups == 0 || call.g.C % groups || cout == 0 || cout % groups)
    throw py::value_error("groups: expected a divisor of the input channels and of cout");
  call.groups = groups;
  call.cout = cout;
  call.bits = bits;
  call.a_levels = checked_levels(a_levels, bits);
  call.decode = grouped_conv_decoder(k.tier);
  const size_t k_steps = (kh * kw * (call.g.C / groups) + 1) / 2;
  GemmGeometry gg;
  std::string why;
  if (!gemm_geometry(k, cout / groups, k_steps, &gg, &why)) throw py::value_error(why);
  require_array<uint8_t>(w, "w", 1, "uint8");
  if (size_t(w.shape(0)) != groups * gg.w_bytes)
    throw py::value_error("w: expected " + std::to_string(groups * gg.w_bytes) + " bytes (" +
                          std::to_string(groups) + " dotgemm layouts) for kernel " + k.name);
  call.x = static_cast<const uint8_t*>(x.data());
  call.w = static_cast<const uint8_t*>(w.data());
  const auto ep = epilogue_from_args_exact(out_kind, scale, bias, clamp_lo, clamp_hi, inv_step, qmin, qmax, exact);
  py::array out = gemm_output(ep.get(), call.epilogue, call.g.B * call.g.OH * call.g.OW, cout, residual, &call.c,
                              k.tier);
  bool ok;
  {
    py::gil_scoped_release release;
    ok = run_grouped_conv(call, gg);
  }
  if (!ok) throw_bad_code(call.x, call.g.B * call.g.H * call.g.W * call.g.C, bits, "x", "a_bits");
  return out;
}
// ---- end of depthwise and grouped convolution

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "lowbit native core: CPU dispatch, kernel registry, packers and GEMM driver";
#if defined(__GLIBC__)
  // Every GEMM returns a fresh output (and packs activations into a fresh
  // buffer). With glibc's defaults, buffers over ~128 KiB are new mmaps whose
  // pages fault on first touch: on the VMs measured that doubled the time of
  // a mid-sized layer. Keep such buffers on the heap and reuse them instead.
  // Set LOWBIT_KEEP_MALLOC=1 to leave the process's malloc settings alone.
  if (!std::getenv("LOWBIT_KEEP_MALLOC")) {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
  }
#endif
  m.attr("avx512_emulated") = avx512_emulated();  // SIMDe test build (csrc/core/simd_avx512.h)
  m.def("cpu_features", &features_dict, "CPU features detected with cpuid + xgetbv");
  m.def("tiers", &tier_list, "ISA tiers in chain order, with required features and support here");
  m.def("kernels", &kernel_list, "The kernel registry");
  m.def("pack_groups", &pack_groups_py, py::arg("codes"), py::arg("bits"), py::arg("group"), py::arg("out_stride"),
        py::arg("tier"), py::arg("shift") = 0, py::arg("pad_rows") = 0, py::arg("pad_code") = 0);
  m.def("gemm_codes", &gemm_codes_py, py::arg("kernel_index"), py::arg("a"), py::arg("bits"), py::arg("group"),
        py::arg("w"), py::arg("tables"), py::arg("N"), py::arg("k_steps"), py::arg("flush8"), py::arg("flush16"),
        py::arg("correction"), py::arg("a_code_shift") = 0, py::arg("out_kind") = "int32",
        py::arg("scale") = py::none(), py::arg("bias") = py::none(), py::arg("residual") = py::none(),
        py::arg("clamp_lo") = -INFINITY, py::arg("clamp_hi") = INFINITY, py::arg("inv_step") = 1.0f,
        py::arg("qmin") = 0, py::arg("qmax") = 0, py::arg("step64") = 0.0, py::arg("scale64") = py::none(),
        py::arg("bias64") = py::none());
  m.def("gemm", &gemm_py, py::arg("kernel_index"), py::arg("a"), py::arg("w"), py::arg("tables"), py::arg("M"),
        py::arg("N"), py::arg("k_steps"), py::arg("flush8"), py::arg("flush16"), py::arg("correction"),
        py::arg("a_code_shift") = 0, py::arg("a_offsets") = py::none(), py::arg("seg_steps") = 0, py::arg("out_kind") = "int32",
        py::arg("scale") = py::none(), py::arg("bias") = py::none(), py::arg("residual") = py::none(),
        py::arg("clamp_lo") = -INFINITY, py::arg("clamp_hi") = INFINITY, py::arg("inv_step") = 1.0f,
        py::arg("qmin") = 0, py::arg("qmax") = 0, py::arg("col_correction") = py::none(), py::arg("step64") = 0.0,
        py::arg("scale64") = py::none(), py::arg("bias64") = py::none());
  // the prepared GEMM call path (docs/architecture.md, "One GEMM call")
  // module_local (every class here and in executor.cc): two builds of _core can live in one process
  // (bench/bench_executor.py --baseline), each with its own types
  py::class_<EpilogueSpec>(m, "GemmEpilogue", py::module_local(),
                           "A fused epilogue's parameters, checked once (lowbit.Epilogue.native)")
      .def(py::init<const std::string&, const py::object&, const py::object&, float, float, float, int, int, double,
                    const py::object&, const py::object&>(),
           py::arg("out_kind"), py::arg("scale"), py::arg("bias"), py::arg("clamp_lo") = -INFINITY,
           py::arg("clamp_hi") = INFINITY, py::arg("inv_step") = 1.0f, py::arg("qmin") = 0, py::arg("qmax") = 0,
           py::arg("step64") = 0.0, py::arg("scale64") = py::none(), py::arg("bias64") = py::none());
  py::class_<PreparedGemm>(m, "PreparedGemm", py::module_local(),
                           "One GEMM's weight side, checked once (ops.Bound.native)")
      .def(py::init<size_t, const py::array&, const py::array&, size_t, uint32_t, uint32_t, uint32_t,
                    const py::object&, size_t, size_t, int64_t, int, int>(),
           py::arg("kernel_index"), py::arg("w"), py::arg("tables"), py::arg("N"), py::arg("flush8"),
           py::arg("flush16"), py::arg("a_code_shift"), py::arg("col_correction"), py::arg("K"), py::arg("k_steps"),
           py::arg("correction"), py::arg("a_bits") = 0, py::arg("a_group") = 0)
      .def_property_readonly("N", &PreparedGemm::N)
      .def(
          "conv_codes",
          [](const PreparedGemm& g, const py::object& x, const py::object& taps, size_t seg_steps, size_t k_steps,
             int64_t correction, int pad_code, const py::object& epilogue, const py::object& residual) {
            return g.conv_codes(x, taps, seg_steps, k_steps, correction, pad_code, epilogue_arg(epilogue), residual);
          },
          py::arg("x"), py::arg("taps"), py::arg("seg_steps"), py::arg("k_steps"), py::arg("correction"),
          py::arg("pad_code"), py::arg("epilogue") = py::none(), py::arg("residual") = py::none())
      .def_property_readonly("K", &PreparedGemm::K)
      .def(
          "run",
          [](const PreparedGemm& g, const py::object& a, size_t M, size_t k_steps, int64_t correction,
             const py::object& epilogue, const py::object& residual, const py::object& a_offsets, size_t seg_steps) {
            return g.run(a, M, k_steps, correction, epilogue_arg(epilogue), residual, a_offsets, seg_steps);
          },
          py::arg("a"), py::arg("M"), py::arg("k_steps"), py::arg("correction"), py::arg("epilogue") = py::none(),
          py::arg("residual") = py::none(), py::arg("a_offsets") = py::none(), py::arg("seg_steps") = 0)
      .def(
          "codes",
          [](const PreparedGemm& g, const py::object& a, const py::object& epilogue, const py::object& residual) {
            return g.codes(a, epilogue_arg(epilogue), residual);
          },
          py::arg("a"), py::arg("epilogue") = py::none(), py::arg("residual") = py::none());
  m.def("epilogue", &epilogue_py, py::arg("acc"), py::arg("scale"), py::arg("bias"), py::arg("residual") = py::none(),
        py::arg("clamp_lo") = -INFINITY, py::arg("clamp_hi") = INFINITY, py::arg("out_kind") = "float32",
        py::arg("inv_step") = 1.0f, py::arg("qmin") = 0, py::arg("qmax") = 0, py::arg("step64") = 0.0,
        py::arg("scale64") = py::none(), py::arg("bias64") = py::none(), py::arg("simd") = true);
  m.def(
      "lookup_rates",
      [](double seconds) {
        LookupRates r;
        {
          py::gil_scoped_release release;
          r = measure_lookup_rates(seconds);
        }
        py::dict d;
        d["lookups_per_s"] = r.lookups_per_s;
        d["lookup_add_per_s"] = r.lookup_add_per_s;
        return d;
      },
      py::arg("seconds") = 0.2, "Byte-lookup ceilings of this core (tight AVX2 vpshufb loops; 0 without AVX2)");
  m.def("dotgemm_pack_activations", &pack_levels_py<int16_t, dotgemm_pack_activations>, py::arg("codes"),
        py::arg("bits"), py::arg("levels"), py::arg("out_cols"), py::arg("tier"), py::arg("pad_rows") = 0);
  m.def("dot8_pack_activations", &pack_levels_py<uint8_t, dot8_pack_activations>, py::arg("codes"),
        py::arg("bits"), py::arg("levels"), py::arg("out_cols"), py::arg("tier"), py::arg("pad_rows") = 0);
  // the runtime's graph ops (ops/graph_ops.h)
  m.def("quantize", &quantize_py, py::arg("x"), py::arg("step"), py::arg("qn"), py::arg("qp"),
        py::arg("binary") = false, py::arg("pre_step") = py::none(), py::arg("pre_div") = py::none());
  m.def("quantize_nchw_to_nhwc", &quantize_nchw_to_nhwc_py, py::arg("x"), py::arg("step"), py::arg("qn"),
        py::arg("qp"), py::arg("binary") = false, py::arg("pre_step") = py::none(), py::arg("pre_div") = py::none());
  m.def("dequantize", &dequantize_py, py::arg("codes"), py::arg("levels"), py::arg("step"));
  m.def("nchw_to_nhwc", &nchw_to_nhwc_py, py::arg("x"));
  m.def("nhwc_to_nchw", &nhwc_to_nchw_py, py::arg("x"));
  m.def("flatten_nhwc", &flatten_nhwc_py, py::arg("x"));
  m.def("add", &add_py, py::arg("a"), py::arg("b"));
  m.def("clamp", &clamp_py, py::arg("x"), py::arg("lo"), py::arg("hi"));
  m.def("affine", &affine_py, py::arg("x"), py::arg("scale"), py::arg("bias"));
  m.def("maxpool_nhwc", &maxpool_nhwc_py, py::arg("x"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"),
        py::arg("ph"), py::arg("pw"), py::arg("dh"), py::arg("dw"));
  m.def("avgpool_nhwc", &avgpool_nhwc_py, py::arg("x"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"),
        py::arg("ph"), py::arg("pw"), py::arg("count_include_pad"));
  m.def("adaptive_avgpool_nhwc", &adaptive_avgpool_nhwc_py, py::arg("x"), py::arg("oh"), py::arg("ow"));
  m.def("im2col_nhwc", &im2col_nhwc_py, py::arg("x"), py::arg("B"), py::arg("H"), py::arg("W"), py::arg("kh"),
        py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("dh"), py::arg("dw"),
        py::arg("pad_code"));
  // depthwise and grouped convolution (ops/conv.h)
  m.def("check_codes", &check_codes_py, py::arg("codes"), py::arg("bits"), py::arg("name"), py::arg("bits_name"),
        "Raises ValueError unless every uint8 code is below 2**bits");
  m.def("dwconv_kernels", &dwconv_kernel_list, "The depthwise convolution kernels");
  m.def("dwconv", &dwconv_py);
  m.def("conv_grouped", &conv_grouped_py);
  m.def("get_num_threads", &get_num_threads);
  m.def("set_num_threads", &set_num_threads);
  m.def("default_num_threads", &default_num_threads);
  bind_executor(m);  // the whole-graph executor (runtime/executor.h)
}
