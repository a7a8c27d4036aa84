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

void apply_epilogue__scalar(const Epilogue& e, const int32_t* acc, size_t acc_stride, size_t m0, size_t m1,
                            size_t n0, size_t n1) {
  for (size_t m = m0; m < m1; ++m) {
    const int32_t* src = acc + (m - m0) * acc_stride;
    const float* res = e.residual ? e.residual + m * e.residual_stride : nullptr;
    for (size_t n = n0; n < n1; ++n) {
      float v = static_cast<float>(src[n - n0]);
      v = v * e.scale[n];
      v = v + e.bias[n];
      if (res) v = v + res[n];
      v = v < e.clamp_lo ? e.clamp_lo : v;
      v = v > e.clamp_hi ? e.clamp_hi : v;
      if (e.kind == OutKind::float32) {
        static_cast<float*>(e.out)[m * e.out_stride + n] = v;
        if (e.codes)
          quantize_codes__scalar(&static_cast<float*>(e.out)[m * e.out_stride + n], 1, e.codes_step, e.codes_qn,
                                 e.codes_qp, e.codes + m * e.codes_stride + n);
      } else {
        float q = v * e.inv_step;
        q = q == q ? q : float(e.qmin);  // NaN (e.g. inf - inf) -> code 0, as the AVX2 path and the reference
        q = std::nearbyint(q);
        q = q < float(e.qmin) ? float(e.qmin) : q;
        q = q > float(e.qmax) ? float(e.qmax) : q;
        static_cast<uint8_t*>(e.out)[m * e.out_stride + n] = uint8_t(int32_t(q) - e.qmin);
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
