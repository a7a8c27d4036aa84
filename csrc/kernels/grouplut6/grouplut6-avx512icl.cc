// grouplut6, __avx512icl tier: per group one 64-byte load of weight indices
// (64 output channels) serves up to 4 rows; each row loads its 64-byte table
// (picked by its activation group code) and does one vpermb + vpaddb:
// 64 lanes x gw multiply-accumulates per lookup. int8 lanes are widened to
// even/odd int16 sums every flush8 groups and to int32 every flush16
// widenings (bounds in grouplut6.h). Built with the avx512icl flags only.
#include "core/simd_avx512.h"

#include "kernels/grouplut6/grouplut6.h"

namespace lowbit {
namespace {

template <int MR>
void tile(const UKernelArgs& p) {
  const uint8_t* tab = reinterpret_cast<const uint8_t*>(p.tables);
  const size_t G = p.k_steps;
  alignas(64) int16_t e16[MR][32], o16[MR][32];   // channels 2j / 2j+1
  alignas(64) int32_t acc32[MR][4][16] = {};      // acc32[m][r][i]: channel 4i + r
  const size_t chunk16 = size_t(p.flush8) * p.flush16;
  StepCursor<MR> rows(p);  // activation group codes, direct or indirect
  size_t g = 0;
  while (g < G) {
    for (int m = 0; m < MR; ++m) {
      _mm512_store_si512(e16[m], _mm512_setzero_si512());
      _mm512_store_si512(o16[m], _mm512_setzero_si512());
    }
    const size_t end16 = G - g < chunk16 ? G : g + chunk16;
    while (g < end16) {
      __m512i acc8[MR];
      for (int m = 0; m < MR; ++m) acc8[m] = _mm512_setzero_si512();
      const size_t end8 = end16 - g < p.flush8 ? end16 : g + p.flush8;
      while (g < end8) {
        const size_t stop = rows.run(g, end8);
        for (; g < stop; ++g) {
          const __m512i widx = _mm512_loadu_si512(p.w + g * kGrouplut6Lanes);
          for (int m = 0; m < MR; ++m) {
            const __m512i t = _mm512_loadu_si512(tab + size_t(rows.code(m, g)) * 64);
            acc8[m] = _mm512_add_epi8(acc8[m], _mm512_permutexvar_epi8(widx, t));
          }
        }
      }
      for (int m = 0; m < MR; ++m) {
        _mm512_store_si512(e16[m], _mm512_add_epi16(_mm512_load_si512(e16[m]),
                                                    _mm512_srai_epi16(_mm512_slli_epi16(acc8[m], 8), 8)));
        _mm512_store_si512(o16[m], _mm512_add_epi16(_mm512_load_si512(o16[m]), _mm512_srai_epi16(acc8[m], 8)));
      }
    }
    for (int m = 0; m < MR; ++m) {
      const __m512i e = _mm512_load_si512(e16[m]), o = _mm512_load_si512(o16[m]);
      const __m512i parts[4] = {_mm512_srai_epi32(_mm512_slli_epi32(e, 16), 16),
                                _mm512_srai_epi32(_mm512_slli_epi32(o, 16), 16), _mm512_srai_epi32(e, 16),
                                _mm512_srai_epi32(o, 16)};
      for (int r = 0; r < 4; ++r)
        _mm512_store_si512(acc32[m][r], _mm512_add_epi32(_mm512_load_si512(acc32[m][r]), parts[r]));
    }
  }
  // natural channel order: out[16j + l] = acc32[m][(16j+l) & 3][(16j+l) >> 2]
  for (size_t m = 0; m < size_t(MR); ++m)
    for (size_t j = 0; j * 16 < p.nr; ++j) {
      const __m512i lane = _mm512_add_epi32(_mm512_set1_epi32(int(16 * j)),
                                            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
      const __m512i idx = _mm512_add_epi32(_mm512_slli_epi32(_mm512_and_si512(lane, _mm512_set1_epi32(3)), 4),
                                           _mm512_srli_epi32(lane, 2));
      const __m512i v = _mm512_i32gather_epi32(idx, &acc32[m][0][0], 4);
      const size_t left = p.nr - 16 * j;
      const __mmask16 k = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
      _mm512_mask_storeu_epi32(p.c + m * p.c_stride + 16 * j, k, v);
    }
}

}  // namespace

void grouplut6__avx512icl(const UKernelArgs& p) {
  for_row_blocks(p, 4, [](const UKernelArgs& q) {
    switch (q.mr) {
      case 1: return tile<1>(q);
      case 2: return tile<2>(q);
      case 3: return tile<3>(q);
      default: return tile<4>(q);
    }
  });
}

}  // namespace lowbit
