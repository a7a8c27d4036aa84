// bitserial, AVX2 tier: popcount of 256-bit words with the vpshufb nibble
// table (two lookups + add per 32 bytes); byte counts accumulate in int8 lanes
// (<= 8 per iteration) for at most 31 iterations, then vpsadbw into 64-bit
// lanes. Tile: one row x up to 4 columns.
#include <immintrin.h>

#include "kernels/bitserial/bitserial.h"

namespace lowbit {
namespace {

inline __m256i popcnt_bytes(__m256i v, __m256i lut, __m256i m0f) {
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, m0f)),
                         _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), m0f)));
}

inline uint32_t hsum64(__m256i v) {
  const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  return uint32_t(_mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1));
}

template <int NR, int BA>
void tile(const UKernelArgs& p, const int32_t* coef) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2,
                                       2, 3, 2, 3, 3, 4);
  const __m256i m0f = _mm256_set1_epi8(0x0F), zero = _mm256_setzero_si256();
  const size_t plane = p.k_steps * kBitserialStepBytes;
  __m256i cnt8[BA][NR], cnt64[BA][NR], rowc8[BA], row64[BA];
  for (int b = 0; b < BA; ++b) {
    rowc8[b] = row64[b] = zero;
    for (int n = 0; n < NR; ++n) cnt8[b][n] = cnt64[b][n] = zero;
  }
  int left = 31;
  for (size_t s = 0; s < p.k_steps; ++s) {
    __m256i a[BA];
    for (int b = 0; b < BA; ++b) {
      a[b] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.a + b * plane + s * 32));
      rowc8[b] = _mm256_add_epi8(rowc8[b], popcnt_bytes(a[b], lut, m0f));
    }
    for (int n = 0; n < NR; ++n) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.w + n * p.w_stride + s * 32));
      for (int b = 0; b < BA; ++b)
        cnt8[b][n] = _mm256_add_epi8(cnt8[b][n], popcnt_bytes(_mm256_and_si256(a[b], w), lut, m0f));
    }
    if (--left == 0 || s + 1 == p.k_steps) {
      for (int b = 0; b < BA; ++b) {
        row64[b] = _mm256_add_epi64(row64[b], _mm256_sad_epu8(rowc8[b], zero));
        rowc8[b] = zero;
        for (int n = 0; n < NR; ++n) {
          cnt64[b][n] = _mm256_add_epi64(cnt64[b][n], _mm256_sad_epu8(cnt8[b][n], zero));
          cnt8[b][n] = zero;
        }
      }
      left = 31;
    }
  }
  uint32_t pop_a[2] = {0, 0};
  for (int b = 0; b < BA; ++b) pop_a[b] = hsum64(row64[b]);
  for (int n = 0; n < NR; ++n) {
    uint32_t pop_aw[2] = {0, 0};
    for (int b = 0; b < BA; ++b) pop_aw[b] = hsum64(cnt64[b][n]);
    p.c[n] = bitserial_combine(coef, BA, p.k_steps, pop_a, pop_aw, bitserial_row_popcount(p.w + n * p.w_stride, p.k_steps));
  }
}

template <int BA>
void by_cols(const UKernelArgs& q, const int32_t* coef) {
  switch (q.nr) {
    case 1: return tile<1, BA>(q, coef);
    case 2: return tile<2, BA>(q, coef);
    case 3: return tile<3, BA>(q, coef);
    default: return tile<4, BA>(q, coef);
  }
}

}  // namespace

void bitserial__avx2(const UKernelArgs& p) {
  const int32_t* coef = reinterpret_cast<const int32_t*>(p.tables);
  for_row_blocks(p, 1, [coef](const UKernelArgs& q) {
    if (coef[6] == 2) return by_cols<2>(q, coef);
    return by_cols<1>(q, coef);
  });
}

}  // namespace lowbit
