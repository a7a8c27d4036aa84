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

void shift_columns(Epilogue& e, size_t k) {
  e.scale += k;
  e.bias += k;
  if (e.scale64) e.scale64 += k;
  if (e.bias64) e.bias64 += k;
  e.fast_column += k;
  if (e.residual) e.residual += k;
  const size_t elem = e.kind == OutKind::float32 ? sizeof(float) : sizeof(uint8_t);
  e.out = static_cast<uint8_t*>(e.out) + k * elem;
  if (e.codes) e.codes += k;
}

// ---- Exact requantization: the float32 fast path and its near-tie test.
//
// Notation: u = 2^-24 (float32 unit roundoff); f32(x) rounds a double to
// float32; A = acc, S = scale64[n] (or double(scale[n])), B = bias64[n] (or
// double(bias[n])), r the residual (R = double(r)), step the formula's float64
// step (step64, or 1 / double(inv_step)), s = 1 / step (a real number).
// The fast path computes t - qmin, the code itself (so no abs and no
// subtraction per lane). code_constants computes in float64 and rounds once
// to float32: S' = f32(S / step), B' = f32(B / step - qmin), I' =
// residual_scale = f32(1 / step), Lf = lo / step, Hf = hi / step (float64, as
// exact_code divides a clamped value), Lq = max(Lf, qmin), Hq = min(Hf, qmax),
// lo32 = f32(Lq - qmin), hi32 = f32(Hq - qmin). It marks the whole fast path
// unusable unless Lq <= Hq, I' lies in [2^-100, 2^100] and |qmin| <= 255, and a
// column always exact (limit[n] = -inf) unless |S'| <= 2^64 and |B'| <= 2^64.
//
// 1. The clamps. Division by step > 0 (rounded) is monotone, so the formula's
//    t is T = clamp(Tu, Lf, Hf) with Tu = fl64(V / step), V the formula's
//    unclamped float64 value; Lq <= Hq gives Lf <= Hf. rint is monotone and
//    keeps integers, so the code is rint(clamp(clamp(Tu, Lf, Hf), qmin, qmax)) -
//    qmin = rint(F), F = clamp(Tu - qmin, Lq - qmin, Hq - qmin) (two clamps
//    whose bounds overlap, Lq <= Hq, are one clamp to the intersection; qmin is
//    an integer). Rounding is monotone: 0 <= lo32 <= hi32 <= qmax - qmin, and
//    |lo32 - (Lq - qmin)|, |hi32 - (Hq - qmin)| <= Ec (code_constants computes
//    Ec, to 2^-45: 0 when the bounds are integers, as for ReLU).
// 2. The error of t. Take a lane the test trusts (4. shows r is then finite
//    with R' = |r| I' < 2^18; the column's |S'|, |B'| <= 2^64): every value is
//    finite (|t| < 2^96). With P = A S s, Bs = B s - qmin, Rs = R s,
//    X = P + Bs + Rs (exact reals) and x1 = f32(A) S' + B', x2 = r I' + t1:
//     * |f32(A) S' - P| <= 2.0001u |P| + 2^-119 (f32(A) and S' each one rounding
//       of 2^-53 + u relative, or 2^-150 absolute where S' is subnormal, times
//       |A| < 2^31); |B' - Bs| <= 1.0001u |Bs| + 2^-44 (B / step rounds in float64
//       before qmin is taken off: 2^-53 (|Bs| + 255)); |r I' - Rs| <= 1.0001u |Rs|;
//     * the fmas: |t1 - x1| <= u |x1| + 2^-150, |t - x2| <= u |x2| + 2^-150
//       (without a residual t = t1, x2 = t1, r = 0);
//     * so |t - X| <= u|x2| + u|x1| + 2.0001u|P| + 1.0001u(|Bs| + |Rs|) + 2^-43,
//       and with |x2| <= |t|(1 + 1.0001u) (+ 2^-149), |x1| <= |x2| + R' (+ ...),
//       |P| <= (|x1| + |B'|)(1 + 2.001u), |Bs| <= |B'|(1 + 1.0002u) + 2^-43,
//       |Rs| <= R'(1 + 1.0002u):  |t - X| <= 4.01u (|t| + R') + 3.01u |B'| + 2^-42;
//     * Tu - qmin (four float64 roundings of values at most (|A S| + |B| + |R|)
//       (1 + 2^-50), then times s <= 2^101; subnormals 2^-1074 each): |Tu - qmin - X|
//       <= 2^-50 (|P| + |B s| + |Rs|) + 2^-960 <= 2^-48 (|t| + R' + |B'| + |qmin|) + 2^-960.
//    Total: |t - (Tu - qmin)| <= E(t) = c |t| + k, c = 4.02u,
//    k = 4.02u R' + 3.02u |B'| + 2^-39.
// 3. The clamp of t: tc = min(hi32, max(lo32, t)). Then |F - tc| <= E(tc) + Ec:
//    within [lo32, hi32], tc = t and clamping is 1-Lipschitz in the value and
//    in the bounds; for t > hi32 (tc = hi32), t - E(t) is increasing in t (c < 1),
//    so Tu - qmin >= hi32 - E(hi32), hence hi32 + Ec >= Hq - qmin >= F >=
//    min(Hq - qmin, Tu - qmin) >= tc - E(tc) - Ec; t < lo32 likewise. tc >= 0
//    (or NaN; -0 where t is -0 and lo32 +0), so |tc| is tc.
// 4. The test. frac = tc - q is exact (q = rint(tc) is 0 or within a factor 2
//    of tc). The code is trusted when |frac| < limit, where
//      limit[n] = f32(1/2 - K[n]),  K[n] = kTieSlope |B'| + 2^-22 + 2 Ec (in float64),
//      limit = fma(-tc, kTieSlope, limit[n]), then fma(-|r|, kTieSlope I', limit).
//    If limit > |frac| >= 0, every intermediate limit is > 0 (taking a
//    nonnegative amount from a value <= 0 stays <= 0, and rounding is monotone)
//    and <= 1/2, so each of the roundings (the double K, f32, the fmas; kTieSlope
//    I' is exact) errs by at most 2^-26, and
//      |frac| < 1/2 - kTieSlope (|tc| + R' + |B'|) - 2^-22 - 2 Ec + 4 * 2^-26.
//    In particular R' < 2^18 (r is finite; an infinite or NaN r, or a NaN tc,
//    makes limit -inf or NaN and fails the strict comparison). As kTieSlope =
//    2^-19 = 32u > 4.02u and 2^-39 + 2^-45 + 4 * 2^-26 < 2^-22:
//      |frac| + |F - tc| < 1/2,
//    so F lies strictly inside (q - 1/2, q + 1/2): rint(F) = q, the formula's code
//    (q lies in [0, qmax - qmin] since tc does). Any lane the test does not trust
//    is computed by exact_code. The test costs one fma and a compare a lane (an
//    abs and an fma more with a residual); the kTieSlope margin sends about
//    2^-18 (|tc| + |B'|) of the lanes to exact_code.
CodeConstants code_constants(const Epilogue& e, size_t columns) {
  CodeConstants c;
  const double step = e.step64 != 0 ? e.step64 : 1.0 / static_cast<double>(e.inv_step);
  const double lo = std::max(static_cast<double>(e.clamp_lo) / step, static_cast<double>(e.qmin));  // Lq (NaN: NaN)
  const double hi = std::min(static_cast<double>(e.clamp_hi) / step, static_cast<double>(e.qmax));  // Hq
  c.residual_scale = static_cast<float>(1.0 / step);
  if (!(lo <= hi) || !(c.residual_scale >= 0x1p-100f && c.residual_scale <= 0x1p100f) || e.qmin < -255 ||
      e.qmin > 255)
    return c;  // every code exact
  const double qmin = static_cast<double>(e.qmin);
  c.lo = static_cast<float>(lo - qmin);
  c.hi = static_cast<float>(hi - qmin);
  const double clamp_error =  // Ec
      std::max(std::fabs(double(c.lo) - (lo - qmin)), std::fabs(double(c.hi) - (hi - qmin)));
  c.residual_bound = kTieSlope * c.residual_scale;
  c.scale.resize(columns);
  c.bias.resize(columns);
  c.limit.resize(columns);
  for (size_t n = 0; n < columns; ++n) {
    const double scale = e.scale64 ? e.scale64[n] : static_cast<double>(e.scale[n]);
    const double bias = e.bias64 ? e.bias64[n] : static_cast<double>(e.bias[n]);
    c.scale[n] = static_cast<float>(scale / step);
    c.bias[n] = static_cast<float>(bias / step - qmin);
    const bool bounded = std::fabs(c.scale[n]) <= 0x1p64f && std::fabs(c.bias[n]) <= 0x1p64f;
    const double K = double(kTieSlope) * std::fabs(double(c.bias[n])) + 0x1p-22 + 2 * clamp_error;
    c.limit[n] = bounded ? static_cast<float>(0.5 - K) : -INFINITY;
  }
  c.usable = true;
  return c;
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

namespace {

// The fast path of one code output (epilogue.h, CodeConstants), in the AVX2 twin's
// order: the same float32 values (fmaf is the single-rounding vfmadd, vmaxps(lo, t)
// is `lo > t ? lo : t`, vminps(hi, t) is `hi < t ? hi : t`); exact_code where the
// test cannot vouch for q. Column n's constants are at k0 + n; `residual`: the output's
// residual, or null.
inline uint8_t fast_code(const Epilogue& e, const CodeConstants& k, size_t k0, int32_t acc, size_t n,
                         const float* residual) {
  float t = std::fma(static_cast<float>(acc), k.scale[k0 + n], k.bias[k0 + n]);
  if (residual) t = std::fma(*residual, k.residual_scale, t);
  float tc = k.lo > t ? k.lo : t;  // a NaN t passes
  tc = k.hi < tc ? k.hi : tc;
  const float q = std::nearbyint(tc);  // the code
  float limit = std::fma(-tc, kTieSlope, k.limit[k0 + n]);  // tc >= 0
  if (residual) limit = std::fma(-std::fabs(*residual), k.residual_bound, limit);
  if (std::fabs(tc - q) < limit) return uint8_t(int32_t(q));  // provably the formula's code
  return exact_code(e, acc, n, residual ? *residual : 0.0f);
}

}  // namespace

void apply_epilogue__scalar(const Epilogue& e, const int32_t* acc, size_t acc_stride, size_t m0, size_t m1,
                            size_t n0, size_t n1) {
  CodeConstants local;
  const CodeConstants* k = e.fast;
  size_t k0 = e.fast_column;  // column n's constants: k0 + n
  if (e.kind != OutKind::float32 && !k) k = &(local = code_constants(e, n1)), k0 = 0;
  for (size_t m = m0; m < m1; ++m) {
    const int32_t* src = acc + (m - m0) * acc_stride;
    const float* res = e.residual ? e.residual + m * e.residual_stride : nullptr;
    if (e.kind != OutKind::float32) {
      uint8_t* out = static_cast<uint8_t*>(e.out) + m * e.out_stride;
      for (size_t n = n0; n < n1; ++n) {
        const float r = res ? res[n] : 0.0f;
        out[n] = k->usable ? fast_code(e, *k, k0, src[n - n0], n, res ? &r : nullptr)
                           : exact_code(e, src[n - n0], n, r);
      }
      continue;
    }
    for (size_t n = n0; n < n1; ++n) {
      const float p = static_cast<float>(src[n - n0]) * e.scale[n];
      float v = p + e.bias[n];
      if (res) v = v + res[n];
      v = v < e.clamp_lo ? e.clamp_lo : v;
      v = v > e.clamp_hi ? e.clamp_hi : v;
      static_cast<float*>(e.out)[m * e.out_stride + n] = v;
      if (e.codes)
        quantize_codes__scalar(&static_cast<float*>(e.out)[m * e.out_stride + n], 1, e.codes_step, e.codes_qn,
                               e.codes_qp, e.codes + m * e.codes_stride + n);
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
