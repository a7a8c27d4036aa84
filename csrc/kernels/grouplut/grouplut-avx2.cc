// grouplut, AVX2 tier: per group, one 32-byte load of weight indices (32
// output channels) serves MR rows; each row broadcasts its 16-byte table
// (picked by the activation group code) and does one vpshufb + vpaddb.
// int8 lanes are widened to even/odd int16 lanes every flush8 groups, and to
// int32 every flush16 widenings (bounds in grouplut.h).
#include <immintrin.h>

#include "kernels/grouplut/grouplut.h"

namespace lowbit {
namespace {

template <int MR>
void tile(const UKernelArgs& p) {
  const uint8_t* tab = reinterpret_cast<const uint8_t*>(p.tables);
  // int32 sums in "mod 4" order: acc32[m][r][i] is channel 4*i + r.
  alignas(32) int32_t acc32[MR][4][8] = {};
  const size_t G = p.k_steps;
  const size_t chunk16 = size_t(p.flush8) * p.flush16;
  size_t g = 0;
  while (g < G) {
    __m256i e16[MR], o16[MR];
    for (int m = 0; m < MR; ++m) e16[m] = o16[m] = _mm256_setzero_si256();
    const size_t end16 = G - g < chunk16 ? G : g + chunk16;
    while (g < end16) {
      __m256i acc8[MR];
      for (int m = 0; m < MR; ++m) acc8[m] = _mm256_setzero_si256();
      const size_t end8 = end16 - g < p.flush8 ? end16 : g + p.flush8;
      for (; g < end8; ++g) {
        const __m256i widx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.w + g * 32));
        for (int m = 0; m < MR; ++m) {
          const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(tab + size_t(p.a[m * p.a_stride + g]) * 16));
          acc8[m] = _mm256_add_epi8(acc8[m], _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(t), widx));
        }
      }
      for (int m = 0; m < MR; ++m) {  // int8 -> even/odd int16
        e16[m] = _mm256_add_epi16(e16[m], _mm256_srai_epi16(_mm256_slli_epi16(acc8[m], 8), 8));
        o16[m] = _mm256_add_epi16(o16[m], _mm256_srai_epi16(acc8[m], 8));
      }
    }
    for (int m = 0; m < MR; ++m) {  // int16 -> int32, channels 4i, 4i+2 (even) and 4i+1, 4i+3 (odd)
      const __m256i parts[4] = {
          _mm256_srai_epi32(_mm256_slli_epi32(e16[m], 16), 16), _mm256_srai_epi32(_mm256_slli_epi32(o16[m], 16), 16),
          _mm256_srai_epi32(e16[m], 16), _mm256_srai_epi32(o16[m], 16)};
      for (int r = 0; r < 4; ++r) {
        __m256i* dst = reinterpret_cast<__m256i*>(acc32[m][r]);
        _mm256_store_si256(dst, _mm256_add_epi32(_mm256_load_si256(dst), parts[r]));
      }
    }
  }
  for (size_t m = 0; m < size_t(MR); ++m)
    for (size_t n = 0; n < p.nr; ++n) p.c[m * p.c_stride + n] = acc32[m][n & 3][n >> 2];
}

}  // namespace

void grouplut__avx2(const UKernelArgs& p) {
  switch (p.mr) {
    case 1: return tile<1>(p);
    case 2: return tile<2>(p);
    case 3: return tile<3>(p);
    default: return tile<4>(p);
  }
}

}  // namespace lowbit
