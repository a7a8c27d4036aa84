#include "ops/epilogue.h"

#include <cmath>

#include "core/cpu_features.h"

namespace lowbit {

void apply_epilogue(const Epilogue& e, const int32_t* acc, size_t acc_stride, size_t m0, size_t m1, size_t n0,
                    size_t n1) {
#if LOWBIT_HAVE_X86_KERNELS
  if (e.simd && best_tier() >= Tier::avx2) return apply_epilogue__avx2(e, acc, acc_stride, m0, m1, n0, n1);
#endif
  apply_epilogue__scalar(e, acc, acc_stride, m0, m1, n0, n1);
}

// ---- Exact requantization: the float32 fast path and its near-tie test.
//
// Notation: u = 2^-24 (float32 unit roundoff), A = acc, S = scale64[n],
// B = bias64[n], R = double(r) the residual, T = the formula's t computed in
// float64, Sigma = |p| + |b| + |r| with the float32 values the fast path
// computes (p = float32(float32(A) * s), s = float32(S), b = float32(B)), and
// inv = inv_step = (1 / step64)(1 + e3) with |e3| <= 2u (lowbit.quant.inv_step
// rounds 1 / step to float32; the bindings check |inv_step * step64 - 1| <= 2^-23;
// with step64 0 the formula's step is 1 / double(inv_step)).
//
//  * p = A*S*(1+e0)(1+e1)(1+e2) (float32(A), the rounding of S, the product):
//    |p - A*S| <= 3.0001u |A*S| <= 3.0002u |p|;
//  * |b - B| <= u|B| <= 1.0001u |b|;  w = float32(p + b): |w - (p + b)| <= u(|p| + |b|);
//  * v = float32(w + r): |v - (w + r)| <= u|w + r| <= 1.0001u Sigma;
//  so |v - (A*S + B + R)| <= 6u Sigma. The clamp is 1-Lipschitz (same bounds on
//  both sides), so the clamped values differ by no more.
//  * t32 = float32(v * inv): |t32 - v/step| <= 3.0001u |t32|,
//    and |v/step - V/step| <= 6u Sigma/step <= 6.0002u Sigma*inv.
//  * the float64 evaluation of T: at most 5 roundings of 2^-53 relative on values
//    bounded by Sigma (1 + 7u): |T - exact| <= 2^-50 Sigma*inv.
//  * underflow (subnormal intermediate results) adds at most 2^-149 absolute per
//    float32 operation on v, i.e. 4 * 2^-149 * inv in t, and 2^-149 on t32.
// Total: |t32 - T| <= 6.01u Sigma*inv + 3.01u |t32| + 2^-146 inv + 2^-149.
// delta below is 2^-20 Sigma*inv + 2^-21 |t32| + 2^-120 inv + 2^-120: more than
// twice each term, which also covers the float32 evaluation of delta itself
// (5 roundings: relative error under 6u) and of the distances it is compared
// with (t32 - rint(t32) is exact; each other subtraction is off by at most u
// relative, so a computed distance d > delta means a true one > delta / (1 + u)).
// Then if t32 is farther than delta from every half-integer, T lies in the same
// open interval between two half-integers and rounds to the same integer; if
// t32 - (qmax - 1/2) > delta, both round to at least qmax and clamp to qmax
// (likewise qmin). A NaN or infinite t32 (or delta) fails every comparison: a
// near tie, computed exactly.
namespace {
constexpr float kDeltaSigma = 0x1p-20f, kDeltaT = 0x1p-21f, kDeltaAbs = 0x1p-120f;
}  // namespace

bool near_tie(float t32, float rounded, float magnitude, float inv_step, int32_t qmin, int32_t qmax) {
  float delta = magnitude * inv_step;
  delta = delta * kDeltaSigma;
  float at = t32 < 0 ? -t32 : t32;
  delta = delta + at * kDeltaT;
  delta = delta + (inv_step * kDeltaAbs + kDeltaAbs);
  const float frac = t32 - rounded;  // exact: |t32 - rint(t32)| <= 1/2 (0 once |t32| >= 2^23)
  const float dist = 0.5f - (frac < 0 ? -frac : frac);
  const bool inside = dist > delta;
  const bool above = t32 - (float(qmax) - 0.5f) > delta;
  const bool below = (float(qmin) + 0.5f) - t32 > delta;
  return !(inside || above || below);
}

uint8_t exact_code(const Epilogue& e, int32_t acc, size_t n, float residual) {
  double v = static_cast<double>(acc);
  v = v * (e.scale64 ? e.scale64[n] : static_cast<double>(e.scale[n]));
  v = v + (e.bias64 ? e.bias64[n] : static_cast<double>(e.bias[n]));
  if (e.residual) v = v + static_cast<double>(residual);
  const double lo = e.clamp_lo, hi = e.clamp_hi;
  v = v < lo ? lo : v;
  v = v > hi ? hi : v;
  const double step = e.step64 != 0 ? e.step64 : 1.0 / static_cast<double>(e.inv_step);
  double q = v / step;
  q = q == q ? q : double(e.qmin);  // NaN (a NaN or infinite residual) -> code 0
  q = std::nearbyint(q);
  q = q < double(e.qmin) ? double(e.qmin) : q;
  q = q > double(e.qmax) ? double(e.qmax) : q;
  return uint8_t(int32_t(q) - e.qmin);
}

void apply_epilogue__scalar(const Epilogue& e, const int32_t* acc, size_t acc_stride, size_t m0, size_t m1,
                            size_t n0, size_t n1) {
  for (size_t m = m0; m < m1; ++m) {
    const int32_t* src = acc + (m - m0) * acc_stride;
    const float* res = e.residual ? e.residual + m * e.residual_stride : nullptr;
    for (size_t n = n0; n < n1; ++n) {
      const float p = static_cast<float>(src[n - n0]) * e.scale[n];
      float v = p + e.bias[n];
      const float r = res ? res[n] : 0.0f;
      if (res) v = v + r;
      v = v < e.clamp_lo ? e.clamp_lo : v;
      v = v > e.clamp_hi ? e.clamp_hi : v;
      if (e.kind == OutKind::float32) {
        static_cast<float*>(e.out)[m * e.out_stride + n] = v;
        if (e.codes)
          quantize_codes__scalar(&static_cast<float*>(e.out)[m * e.out_stride + n], 1, e.codes_step, e.codes_qn,
                                 e.codes_qp, e.codes + m * e.codes_stride + n);
      } else {
        uint8_t& out = static_cast<uint8_t*>(e.out)[m * e.out_stride + n];
        const float t = v * e.inv_step;
        float q = std::nearbyint(t);
        float magnitude = (p < 0 ? -p : p) + (e.bias[n] < 0 ? -e.bias[n] : e.bias[n]);
        magnitude = magnitude + (r < 0 ? -r : r);
        if (near_tie(t, q, magnitude, e.inv_step, e.qmin, e.qmax)) {
          out = exact_code(e, src[n - n0], n, r);
        } else {  // provably the formula's code (near_tie): t's nearest integer, clamped
          q = q < float(e.qmin) ? float(e.qmin) : q;
          q = q > float(e.qmax) ? float(e.qmax) : q;
          out = uint8_t(int32_t(q) - e.qmin);
        }
      }
    }
  }
}

void quantize_codes(const float* x, size_t n, float step, int32_t qn, int32_t qp, uint8_t* out, bool simd) {
#if LOWBIT_HAVE_X86_KERNELS
  if (simd && best_tier() >= Tier::avx2) return quantize_codes__avx2(x, n, step, qn, qp, out);
#endif
  (void)simd;
  quantize_codes__scalar(x, n, step, qn, qp, out);
}

void quantize_codes__scalar(const float* x, size_t n, float step, int32_t qn, int32_t qp, uint8_t* out) {
  const float lo = float(qn), hi = float(qp);
  const float magic = 12582912.0f;  // 1.5 * 2^23: (q + magic) - magic rounds half to even for |q| < 2^22
  for (size_t i = 0; i < n; ++i) {
    float q = x[i] / step;
    q = q < lo ? lo : q;  // NaN compares false and stays NaN
    q = q > hi ? hi : q;
    q = q + magic;
    q = q - magic;
    out[i] = q == q ? uint8_t(int32_t(q) - qn) : uint8_t(0);
  }
}

}  // namespace lowbit
