// The fused GEMM epilogue, specified exactly so that the NumPy reference
// (lowbit.reference.epilogue) matches it bit for bit. For output (m, n) with
// exact int32 sum acc:
//
// float output (float32 arithmetic, every step rounded):
//   v = float32(acc)                      round to nearest even
//   v = v * scale[n]                      float32 multiply, rounded
//   v = v + bias[n]                       float32 add, rounded
//   v = v + residual[m, n]                (if a residual is given) float32 add
//   v = min(max(v, clamp_lo), clamp_hi)   ReLU: (0, +inf); ReLU6: (0, 6)
//   out[m, n] = v
//   second output (float32 kind with `codes` set): codes[m, n] = the code that
//                  quantize_codes(&out[m, n], 1, codes_step, codes_qn, codes_qp)
//                  gives for the float output just written (the standalone
//                  quantizer's true division, not inv_step), so a layer whose
//                  float output is also quantized writes both in one pass.
//
// code output: decided in float64 (exact_code below), every step rounded:
//   v = double(acc) * scale64[n]          (scale64 null: double(scale[n]))
//   v = v + bias64[n]                     (bias64 null: double(bias[n]))
//   v = v + double(residual[m, n])        (if a residual is given)
//   v = min(max(v, clamp_lo), clamp_hi)
//   t = v / step64                        a true division (step64 0: 1 / double(inv_step))
//   q = nearbyint(t)                      round half to even; a NaN t gives q = qmin
//   out[m, n] = uint8(min(max(q, qmin), qmax) - qmin)
// This is the value a float64 run of the source model (BatchNorm folded in
// float64, then x / step and round half to even) decides, up to float64
// rounding. The kernels do not compute it for every output: a fast path
// computes t - qmin directly in float32 from per-column constants
// (CodeConstants: fma(float32(acc), scale64[n] / step, bias64[n] / step - qmin)
// (+ residual / step), clamped once to the clamp and code range) and rounds
// it, unless it lies within a proven bound of a rounding boundary (the
// derivation is in epilogue.cc); only those outputs (about 2^-18 (|t| +
// |bias / step|) of them) are computed in float64 by exact_code. So every
// tier's codes equal the float64 formula exactly.
//
// Float outputs: no FMA contraction anywhere (this file is built with
// -ffp-contract=off and every step is a separate statement); the code fast
// path's fused multiply-adds are explicit (fmaf, _mm256_fmadd_ps). All
// parameters are finite (checked by the bindings).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace lowbit {

enum class OutKind : int { int32 = 0, float32 = 1, codes = 2 };

struct CodeConstants;  // below

struct Epilogue {
  OutKind kind = OutKind::int32;
  const float* scale = nullptr;     // [N]
  const float* bias = nullptr;      // [N]
  const float* residual = nullptr;  // [M, residual_stride] or null
  size_t residual_stride = 0;
  float clamp_lo = 0, clamp_hi = 0;
  float inv_step = 1;
  int32_t qmin = 0, qmax = 0;
  // code output's float64 parameters (see above): the values the float32
  // scale/bias were rounded from (null: the float32 ones), the step (0: from inv_step)
  const double* scale64 = nullptr;  // [N] or null
  const double* bias64 = nullptr;   // [N] or null
  double step64 = 0;
  // a code output's fast-path constants (code_constants); column n's are at fast_column + n.
  // null: the epilogue computes them for the call
  const CodeConstants* fast = nullptr;
  size_t fast_column = 0;
  void* out = nullptr;  // float32 [M, N] or uint8 [M, N]
  size_t out_stride = 0;  // elements
  uint8_t* codes = nullptr;  // second output (float32 kind only): uint8 [M, codes_stride] or null
  size_t codes_stride = 0;
  float codes_step = 1;
  int32_t codes_qn = 0, codes_qp = 0;  // -128 <= codes_qn <= codes_qp <= codes_qn + 255
  bool simd = true;       // AVX2 path when built and the CPU has it (same results)
};

// The epilogue of columns [k, N) of `e` as columns [0, N - k) (a grouped
// convolution's group): every per-column pointer, the residual and the outputs moved by k.
void shift_columns(Epilogue& e, size_t k);

// Applies the epilogue to rows [m0, m1) x columns [n0, n1) of `acc` (row
// stride acc_stride, already corrected).
void apply_epilogue(const Epilogue& e, const int32_t* acc, size_t acc_stride, size_t m0, size_t m1, size_t n0,
                    size_t n1);
// LSQ quantization of float32 activations (the runtime's `quantize` node):
//   code = rint_half_even(min(max(x / step, qn), qp)) - qn
// in float32 with a true division, as torch computes it; NaN gives code 0.
// Requires -128 <= qn <= qp <= qn + 255. `simd` picks the AVX2 twin when
// built and the CPU has it (identical results).
void quantize_codes(const float* x, size_t n, float step, int32_t qn, int32_t qp, uint8_t* out, bool simd = true);
void quantize_codes__scalar(const float* x, size_t n, float step, int32_t qn, int32_t qp, uint8_t* out);

// The code of output (m, n) by the float64 formula above (`acc`: its sum;
// `residual`: its residual value, ignored without a residual).
uint8_t exact_code(const Epilogue& e, int32_t acc, size_t n, float residual);

// The fast path of a code output (derivation and soundness: epilogue.cc). For
// output (m, n) with sum acc and residual r, in float32 (t is the formula's
// t - qmin, so q is the code):
//   t  = fma(float32(acc), scale[n], bias[n])        (one rounding)
//   t  = fma(r, residual_scale, t)                    (with a residual)
//   tc = min(hi, max(lo, t))                          (a NaN t stays NaN; tc >= 0)
//   q  = rint(tc)                                     (round half to even)
//   limit = fma(-tc, kTieSlope, limit[n])             (with a residual, then
//   limit = fma(-|r|, residual_bound, limit))
// and the code is q when |tc - q| < limit; otherwise exact_code decides.
// Each tier computes exactly these float32 values (so they pick the same
// outputs for exact_code, although any sound choice gives the same codes).
constexpr float kTieSlope = 0x1p-19f;
struct CodeConstants {
  bool usable = false;  // false: exact_code decides every output
  // float32(max(clamp_lo / step, qmin) - qmin), float32(min(clamp_hi / step, qmax) - qmin): 0 <= lo <= hi
  float lo = 0, hi = 0;
  float residual_scale = 0;  // float32(1 / step)
  float residual_bound = 0;  // kTieSlope * residual_scale
  // per column: float32(scale64[n] / step), float32(bias64[n] / step - qmin), and the test's
  // limit float32(1/2 - K[n]) (-inf: the column is always exact)
  std::vector<float> scale, bias, limit;
};
// The constants of columns [0, columns) of a code epilogue (its float64 step,
// scale and bias, clamps and code range).
CodeConstants code_constants(const Epilogue& e, size_t columns);

void apply_epilogue__scalar(const Epilogue& e, const int32_t* acc, size_t acc_stride, size_t m0, size_t m1,
                            size_t n0, size_t n1);
#if LOWBIT_HAVE_X86_KERNELS
// The same operations 8 lanes at a time (cvtdq2ps, mulps, addps, maxps/minps
// for the clamps; codes: the fast path's vfmadd, roundps to nearest even);
// identical results.
void apply_epilogue__avx2(const Epilogue& e, const int32_t* acc, size_t acc_stride, size_t m0, size_t m1, size_t n0,
                          size_t n1);
// quantize_codes 8 values at a time (divps, maxps/minps clamps, roundps to
// nearest even); identical results.
void quantize_codes__avx2(const float* x, size_t n, float step, int32_t qn, int32_t qp, uint8_t* out);
#endif

}  // namespace lowbit
