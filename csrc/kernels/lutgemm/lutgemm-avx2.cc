// lutgemm, AVX2 tier: vpshufb on ymm (the 16-entry table is replicated in both
// 128-bit lanes). Tile 2x2 outputs; lanes run along K.
// Built with -mavx2 -mfma -mbmi2; everything here has internal linkage so no
// AVX2 code can leak into baseline translation units.
#include <immintrin.h>

#include "kernels/lutgemm/lutgemm.h"

namespace lowbit {
namespace {

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

inline __m256i load_table(const int8_t* t) {
  return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t)));
}

inline __m256i lo_nib(__m256i x, __m256i m0f) { return _mm256_and_si256(x, m0f); }
inline __m256i hi_nib(__m256i x, __m256i m0f) { return _mm256_and_si256(_mm256_srli_epi16(x, 4), m0f); }

// TableKind::i8. Per 32-byte step and output pair: 2 OR + 6 index ops,
// 4 vpshufb, 3 vpaddb (int8 sum of 4 products), 1 vpmaddubsw + 1 vpaddw.
template <int MR, int NR>
void tile_i8(const UKernelArgs& p) {
  const __m256i T = load_table(p.tables), Tt = load_table(p.tables + 16);
  const __m256i mcc = _mm256_set1_epi8(char(0xCC)), m33 = _mm256_set1_epi8(0x33);
  const __m256i m0f = _mm256_set1_epi8(0x0F), ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  __m256i acc16[MR][NR], acc32[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc16[m][n] = acc32[m][n] = _mm256_setzero_si256();
  uint32_t left = p.flush16;
  for (size_t s = 0; s < p.k_steps; ++s) {
    __m256i am[MR], al[MR];
    for (int m = 0; m < MR; ++m) {
      const __m256i A = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.a + m * p.a_stride + s * 32));
      am[m] = _mm256_and_si256(A, mcc);
      al[m] = _mm256_and_si256(A, m33);
    }
    for (int n = 0; n < NR; ++n) {
      const __m256i W = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.w + n * p.w_stride + s * 32));
      const __m256i wl = _mm256_and_si256(W, m33), wh = _mm256_and_si256(W, mcc);
      for (int m = 0; m < MR; ++m) {
        const __m256i i1 = _mm256_or_si256(am[m], wl), i2 = _mm256_or_si256(al[m], wh);
        const __m256i s1 = _mm256_add_epi8(_mm256_shuffle_epi8(T, lo_nib(i1, m0f)), _mm256_shuffle_epi8(T, hi_nib(i1, m0f)));
        const __m256i s2 = _mm256_add_epi8(_mm256_shuffle_epi8(Tt, lo_nib(i2, m0f)), _mm256_shuffle_epi8(Tt, hi_nib(i2, m0f)));
        acc16[m][n] = _mm256_add_epi16(acc16[m][n], _mm256_maddubs_epi16(ones8, _mm256_add_epi8(s1, s2)));
      }
    }
    if (--left == 0) {
      for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) {
          acc32[m][n] = _mm256_add_epi32(acc32[m][n], _mm256_madd_epi16(acc16[m][n], ones16));
          acc16[m][n] = _mm256_setzero_si256();
        }
      left = p.flush16;
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n)
      p.c[m * p.c_stride + n] = hsum_epi32(_mm256_add_epi32(acc32[m][n], _mm256_madd_epi16(acc16[m][n], ones16)));
}

// TableKind::split. Low bytes are unsigned: vpmaddubsw(lo, ones) sums two of
// them (<= 510) per 16-bit lane; high bytes are signed: vpmaddubsw(ones, hi).
template <int MR, int NR>
void tile_split(const UKernelArgs& p) {
  const __m256i Tlo = load_table(p.tables), Thi = load_table(p.tables + 16);
  const __m256i Ttlo = load_table(p.tables + 32), Tthi = load_table(p.tables + 48);
  const __m256i mcc = _mm256_set1_epi8(char(0xCC)), m33 = _mm256_set1_epi8(0x33);
  const __m256i m0f = _mm256_set1_epi8(0x0F), ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  __m256i lo16[MR][NR], hi16[MR][NR], lo32[MR][NR], hi32[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) lo16[m][n] = hi16[m][n] = lo32[m][n] = hi32[m][n] = _mm256_setzero_si256();
  uint32_t left = p.flush16;
  for (size_t s = 0; s < p.k_steps; ++s) {
    for (int n = 0; n < NR; ++n) {
      const __m256i W = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.w + n * p.w_stride + s * 32));
      for (int m = 0; m < MR; ++m) {
        const __m256i A = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.a + m * p.a_stride + s * 32));
        const __m256i i1 = _mm256_or_si256(_mm256_and_si256(A, mcc), _mm256_and_si256(W, m33));
        const __m256i i2 = _mm256_or_si256(_mm256_and_si256(W, mcc), _mm256_and_si256(A, m33));
        const __m256i idx[4] = {lo_nib(i1, m0f), hi_nib(i1, m0f), lo_nib(i2, m0f), hi_nib(i2, m0f)};
        for (int q = 0; q < 4; ++q) {
          const __m256i tl = q < 2 ? Tlo : Ttlo, th = q < 2 ? Thi : Tthi;
          lo16[m][n] = _mm256_add_epi16(lo16[m][n], _mm256_maddubs_epi16(_mm256_shuffle_epi8(tl, idx[q]), ones8));
          hi16[m][n] = _mm256_add_epi16(hi16[m][n], _mm256_maddubs_epi16(ones8, _mm256_shuffle_epi8(th, idx[q])));
        }
      }
    }
    if (--left == 0 || s + 1 == p.k_steps) {
      for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) {
          lo32[m][n] = _mm256_add_epi32(lo32[m][n], _mm256_madd_epi16(lo16[m][n], ones16));
          hi32[m][n] = _mm256_add_epi32(hi32[m][n], _mm256_madd_epi16(hi16[m][n], ones16));
          lo16[m][n] = hi16[m][n] = _mm256_setzero_si256();
        }
      left = p.flush16;
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n)
      p.c[m * p.c_stride + n] = int32_t(uint32_t(hsum_epi32(hi32[m][n])) * 256u + uint32_t(hsum_epi32(lo32[m][n])));
}

#define LOWBIT_TILE_SWITCH(fn, p)                                  \
  do {                                                             \
    if ((p).mr == 2 && (p).nr == 2) return fn<2, 2>(p);            \
    if ((p).mr == 2) return fn<2, 1>(p);                           \
    if ((p).nr == 2) return fn<1, 2>(p);                           \
    return fn<1, 1>(p);                                            \
  } while (0)

}  // namespace

void lutgemm_w2a2_i8__avx2(const UKernelArgs& p) { LOWBIT_TILE_SWITCH(tile_i8, p); }
void lutgemm_w2a2_split__avx2(const UKernelArgs& p) { LOWBIT_TILE_SWITCH(tile_split, p); }

}  // namespace lowbit
