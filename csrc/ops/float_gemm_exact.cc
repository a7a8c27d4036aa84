// Exact codes of a quantizer fed by a float layer (ops/float_gemm.h,
// fix_float_quantize_ties). Built with -ffp-contract=off like the rest: the
// float64 chain below is the one lowbit.exact_float computes in NumPy.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/float_gemm.h"

#include "core/cpu_features.h"

namespace lowbit {

namespace {

// The formula's code of output channel c at output pixel (b, oy, ox).
uint8_t exact_code(const ExactFloatQuantize& p, const float* x, const ConvGeometry& g, size_t b, size_t oy, size_t ox,
                   size_t c) {
  const size_t opg = p.cout / p.groups, c0 = c / opg * p.cg;
  const size_t wc = c * p.cg * g.kh * g.kw;  // channel c's (cg, kh, kw) weights start here
  double z = 0.0;
  for (size_t ky = 0; ky < g.kh; ++ky) {
    const long iy = long(oy * g.sh + ky * g.dh) - long(g.ph);
    for (size_t kx = 0; kx < g.kw; ++kx) {
      const long ix = long(ox * g.sw + kx * g.dw) - long(g.pw);
      const bool inside = iy >= 0 && iy < long(g.H) && ix >= 0 && ix < long(g.W);
      const float* px = inside ? x + ((b * g.H + size_t(iy)) * g.W + size_t(ix)) * g.C + c0 : nullptr;
      for (size_t ci = 0; ci < p.cg; ++ci) {
        const double xv = inside ? static_cast<double>(px[ci]) : 0.0;
        const size_t k = wc + (ci * g.kh + ky) * g.kw + kx;
        const double prod = xv * (p.w64 ? p.w64[k] : static_cast<double>(p.w[k]));
        z = z + prod;
      }
    }
  }
  if (p.conv_bias) z = z + static_cast<double>(p.conv_bias[c]);
  double v = z;
  if (p.scale64) {
    v = v * p.scale64[c];
    v = v + p.bias64[c];
  }
  v = v < p.clamp_lo ? p.clamp_lo : v;
  v = v > p.clamp_hi ? p.clamp_hi : v;
  double q = v / (p.divisor64 ? p.divisor64[c] : p.step64);
  q = q == q ? q : double(p.qn);  // NaN -> code 0
  q = std::nearbyint(q);
  q = q < double(p.qn) ? double(p.qn) : q;
  q = q > double(p.qp) ? double(p.qp) : q;
  return uint8_t(int32_t(q) - p.qn);
}

}  // namespace

// The bound. u = 2^-24; K = kh * kw * cg, the chain length; Xmax = max |x| over
// the whole input; for channel c: W1 = sum |w| of its K weights, b = conv_bias,
// S, B = scale64, bias64 (1, 0 without an affine), s, b32 their float32 values.
//  * the float32 chain (K rounded products, K + 1 rounded sums, ops/float_gemm.h),
//    on float32 weights within u relative of the exact ones (w64):
//    |z32 - Z| <= gamma_{K+2} (sum |x_i w_i| + |b|) <= gamma_{K+2} (Xmax W1 + |b|),
//    gamma_n = n u / (1 - n u), W1 = (1 + 2^-23) sum |w|; and |z32| <= M = (Xmax W1 + |b|)
//    (1 + gamma_{K+2}).
//  * the float32 affine a = (z32 * s) + b32 (two roundings; s, b32 rounded from S, B):
//    |a - (Z S + B)| <= |z32 - Z| |S| + 3.001u M |S| + 2.001u |B|.
//  * the clamp is 1-Lipschitz; the float64 formula's own rounding is at most
//    (K + 5) 2^-52 (M |S| + |B|) in v and 2^-52 |t| in t = v / step.
//  * the quantize node's float32 t' = float32(y / step) and the t32 = float32(y *
//    float32(1 / step)) tested here are each within 2.001u |t| of y / step; with
//    per-channel steps d[c], y is float32(v * float32(1 / d[c])) (step 1): 2.001u
//    |y| more.
// Hence |t32 - T| <= delta_c + 6.01u |t32| with delta_c = [gamma_{K+2}(Xmax W1 + |b|)|S|
// + 3.001u M |S| + 2.001u |B| + (K + 5) 2^-52 (M |S| + |B|)] / d[c], and likewise for
// t'. The test uses 2 delta_c + 2^-20 |t32| + 2^-120 (more than twice each term,
// which covers the float32 evaluation of the test and underflow): outside it,
// t32, t' and T round (and clamp) to the same code, as in ops/epilogue.cc.
bool float_quantize_near_row(const float* y, size_t n, const float* delta, float inv, float hi_edge, float lo_edge,
                             uint8_t* near) {
  // t32's nearest integer by (t + 1.5 * 2^23) - 1.5 * 2^23 (round half to even) on t clamped to
  // +-2^22: exact there; a |t32| beyond that is far past an end of the code range (|qn|, |qp| <=
  // 255), which the edge tests see, and a NaN t32 makes d NaN: every comparison fails (near).
  const float magic = 12582912.0f, big = 4194304.0f;
  uint8_t any = 0;
  for (size_t c = 0; c < n; ++c) {
    const float t = y[c] * inv;
    const float d = delta[c] + (std::fabs(t) * 0x1p-20f + 0x1p-120f);
    const float tc = std::min(std::max(t, -big), big);
    const float r = (tc + magic) - magic;
    const float dist = 0.5f - std::fabs(tc - r);
    // bitwise, not short-circuit: no branch in the loop
    const uint8_t is_near = uint8_t(!(dist > d) & !(t - hi_edge > d) & !(lo_edge - t > d));
    near[c] = is_near;
    any |= is_near;
  }
  return any != 0;
}

size_t fix_float_quantize_ties(const ExactFloatQuantize& p, const float* x, const ConvGeometry& g, const float* y,
                               uint8_t* codes, bool simd) {
  const size_t K = g.kh * g.kw * p.cg, n_in = g.B * g.H * g.W * g.C;
  double xmax = 0;
  for (size_t i = 0; i < n_in; ++i) {
    const double a = std::fabs(static_cast<double>(x[i]));
    if (!(a <= xmax)) xmax = a == a ? a : INFINITY;  // a NaN input: no bound (every output is recomputed)
  }
  const double u = 0x1p-24, gamma = (K + 2) * u / (1 - (K + 2) * u);
  std::vector<float> delta(p.cout);
  for (size_t c = 0; c < p.cout; ++c) {
    double w1 = 0;
    for (size_t k = 0; k < K; ++k) w1 += std::fabs(static_cast<double>(p.w[c * K + k]));
    w1 = w1 * (1 + 0x1p-23);  // the exact weights are within u of these
    const double b = p.conv_bias ? std::fabs(static_cast<double>(p.conv_bias[c])) : 0.0;
    const double S = p.scale64 ? std::fabs(p.scale64[c]) : 1.0, B = p.bias64 ? std::fabs(p.bias64[c]) : 0.0;
    const double sum = xmax * w1 + b, M = sum * (1 + gamma);
    double d = gamma * sum * S + 3.001 * u * M * S + 2.001 * u * B + (K + 5) * 0x1p-52 * (M * S + B);
    d = 2 * d / (p.divisor64 ? p.divisor64[c] : p.step64) * (1 + 0x1p-20);  // rounded up past its own evaluation error
    // NaN (inf * 0) fails every comparison below, as +inf does: every output of c is recomputed
    delta[c] = d <= 3e38 ? static_cast<float>(d) : static_cast<float>(d == d ? INFINITY : NAN);
  }
  const float inv = static_cast<float>(1.0 / p.step64), hi_edge = float(p.qp) - 0.5f, lo_edge = float(p.qn) + 0.5f;
#if LOWBIT_HAVE_X86_KERNELS
  const bool avx2 = simd && best_tier() >= Tier::avx2;
#else
  const bool avx2 = false;
  (void)simd;
#endif
  std::vector<uint8_t> near(p.cout);
  size_t fixed = 0;
  const size_t M = g.B * g.OH * g.OW;
  for (size_t m = 0; m < M; ++m) {
    const float* yr = y + m * p.cout;
#if LOWBIT_HAVE_X86_KERNELS
    const bool any = avx2 ? float_quantize_near_row__avx2(yr, p.cout, delta.data(), inv, hi_edge, lo_edge, near.data())
                          : float_quantize_near_row(yr, p.cout, delta.data(), inv, hi_edge, lo_edge, near.data());
#else
    const bool any = float_quantize_near_row(yr, p.cout, delta.data(), inv, hi_edge, lo_edge, near.data());
#endif
    if (!any) continue;
    const size_t b = m / (g.OH * g.OW), oy = m / g.OW % g.OH, ox = m % g.OW;
    for (size_t c = 0; c < p.cout; ++c) {
      if (!near[c]) continue;
      codes[m * p.cout + c] = exact_code(p, x, g, b, oy, ox, c);
      ++fixed;
    }
  }
  return fixed;
}

}  // namespace lowbit
