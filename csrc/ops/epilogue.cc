#include "ops/epilogue.h"

#include <algorithm>
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
//  * |t32| <= |clamped v| inv (1 + u) <= (Sigma (1 + 2u) + C) inv (1 + u), with C the
//    larger magnitude of the finite clamp bounds (0 if none): the clamp moves v to a
//    bound or leaves it.
//  * the float64 evaluation of T: at most 5 roundings of 2^-53 relative on values
//    bounded by Sigma (1 + 7u): |T - exact| <= 2^-50 Sigma*inv.
//  * underflow (subnormal intermediate results) adds at most 2^-149 absolute per
//    float32 operation on v, i.e. 4 * 2^-149 * inv in t, and 2^-149 on t32.
// Total: |t32 - T| <= 9.04u (Sigma + C) inv + 2^-146 inv + 2^-149. The test uses
// delta = Sigma * (2^-19 inv) + (C * (2^-19 inv) + (2^-120 inv + 2^-120)) (TieBound:
// 32u, more than three times the first term, which also covers the float32
// evaluation of delta itself, a few roundings). It rounds tc = t32 clamped to
// [qmin, qmax] (a NaN stays NaN) to q = rint(tc), and trusts q when
// 1/2 - |tc - q| > delta (tc - q is exact; the other subtraction is off by at most
// u relative). Then T rounds (and clamps) to q: if t32 lies in the range, T is
// within delta of t32, inside the same open interval between two half-integers;
// if t32 > qmax (tc = qmax, which needs delta < 1/2), T > qmax - 1/2, so T rounds
// to at least qmax and clamps to qmax (likewise below qmin). A NaN or infinite
// t32 or delta fails the comparison: a near tie, computed exactly.
TieBound tie_bound(const Epilogue& e) {
  float c = 0;
  if (std::isfinite(e.clamp_lo)) c = std::max(c, std::fabs(e.clamp_lo));
  if (std::isfinite(e.clamp_hi)) c = std::max(c, std::fabs(e.clamp_hi));
  TieBound b;
  b.scale = e.inv_step * 0x1p-19f;
  if (!(b.scale >= 0x1p-126f)) b.scale = INFINITY;  // a subnormal scale would lose the bound: every output exact
  b.offset = c * b.scale + (e.inv_step * 0x1p-120f + 0x1p-120f);
  return b;
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
  const TieBound bound = e.kind != OutKind::float32 ? tie_bound(e) : TieBound{};
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
        float tc = t < float(e.qmin) ? float(e.qmin) : t;  // a NaN stays NaN
        tc = tc > float(e.qmax) ? float(e.qmax) : tc;
        const float q = std::nearbyint(tc);
        float magnitude = (p < 0 ? -p : p) + (e.bias[n] < 0 ? -e.bias[n] : e.bias[n]);
        magnitude = magnitude + (r < 0 ? -r : r);
        const float delta = magnitude * bound.scale + bound.offset;
        const float frac = tc - q;
        if (0.5f - (frac < 0 ? -frac : frac) > delta)  // provably the formula's code (tie_bound)
          out = uint8_t(int32_t(q) - e.qmin);
        else
          out = exact_code(e, src[n - n0], n, r);
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
