// AVX2 twin of float_quantize_near_row (ops/float_gemm.h, float_gemm_exact.cc):
// the same float32 operations 8 outputs at a time. vmaxps/vminps return the
// second operand on a NaN, so a NaN t clamps to -2^22 here where the scalar
// std::max keeps it; either way d is NaN and the output is near.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "ops/float_gemm.h"

namespace lowbit {

bool float_quantize_near_row__avx2(const float* y, size_t n, const float* delta, float inv, float hi_edge,
                                   float lo_edge, uint8_t* near) {
  const __m256 vinv = _mm256_set1_ps(inv), hi = _mm256_set1_ps(hi_edge), lo = _mm256_set1_ps(lo_edge);
  const __m256 big = _mm256_set1_ps(4194304.0f), nbig = _mm256_set1_ps(-4194304.0f);
  const __m256 magic = _mm256_set1_ps(12582912.0f), half = _mm256_set1_ps(0.5f), sign = _mm256_set1_ps(-0.0f);
  const __m256 rel = _mm256_set1_ps(0x1p-20f), tiny = _mm256_set1_ps(0x1p-120f);
  const size_t nvec = n / 8 * 8;
  bool any = false;
  for (size_t c = 0; c < nvec; c += 8) {
    const __m256 t = _mm256_mul_ps(_mm256_loadu_ps(y + c), vinv);
    const __m256 d = _mm256_add_ps(_mm256_loadu_ps(delta + c),
                                   _mm256_add_ps(_mm256_mul_ps(_mm256_andnot_ps(sign, t), rel), tiny));
    const __m256 tc = _mm256_min_ps(_mm256_max_ps(t, nbig), big);
    const __m256 r = _mm256_sub_ps(_mm256_add_ps(tc, magic), magic);
    const __m256 dist = _mm256_sub_ps(half, _mm256_andnot_ps(sign, _mm256_sub_ps(tc, r)));
    __m256 safe = _mm256_cmp_ps(dist, d, _CMP_GT_OQ);
    safe = _mm256_or_ps(safe, _mm256_cmp_ps(_mm256_sub_ps(t, hi), d, _CMP_GT_OQ));
    safe = _mm256_or_ps(safe, _mm256_cmp_ps(_mm256_sub_ps(lo, t), d, _CMP_GT_OQ));
    const int bits = ~_mm256_movemask_ps(safe) & 0xff;
    if (bits == 0) {
      const uint64_t none = 0;
      std::memcpy(near + c, &none, 8);
    } else {
      for (int j = 0; j < 8; ++j) near[c + j] = uint8_t((bits >> j) & 1);
      any = true;
    }
  }
  if (nvec < n) any |= float_quantize_near_row(y + nvec, n - nvec, delta + nvec, inv, hi_edge, lo_edge, near + nvec);
  return any;
}

}  // namespace lowbit
