// bitserial, __avx512icl tier: AND + vpopcntq on 512-bit words, 64-bit counts
// accumulated directly (no narrow stage). Tile: one row x up to 4 columns.
// The last 64-byte iteration of an odd k_steps reads 32 bytes (masked load).
#include "core/simd_avx512.h"

#include "kernels/bitserial/bitserial.h"

namespace lowbit {
namespace {

template <int NR, int BA>
void tile(const UKernelArgs& p, const int32_t* coef) {
  const size_t plane = p.k_steps * kBitserialStepBytes;
  __m512i cnt[BA][NR], row[BA];
  for (int b = 0; b < BA; ++b) {
    row[b] = _mm512_setzero_si512();
    for (int n = 0; n < NR; ++n) cnt[b][n] = _mm512_setzero_si512();
  }
  for (size_t off = 0; off < plane; off += 64) {
    const __mmask64 k = plane - off >= 64 ? ~__mmask64(0) : (__mmask64(1) << (plane - off)) - 1;
    __m512i a[BA];
    for (int b = 0; b < BA; ++b) {
      a[b] = _mm512_maskz_loadu_epi8(k, p.a + b * plane + off);
      row[b] = _mm512_add_epi64(row[b], _mm512_popcnt_epi64(a[b]));
    }
    for (int n = 0; n < NR; ++n) {
      const __m512i w = _mm512_maskz_loadu_epi8(k, p.w + n * p.w_stride + off);
      for (int b = 0; b < BA; ++b)
        cnt[b][n] = _mm512_add_epi64(cnt[b][n], _mm512_popcnt_epi64(_mm512_and_si512(a[b], w)));
    }
  }
  uint32_t pop_a[2] = {0, 0};
  for (int b = 0; b < BA; ++b) pop_a[b] = uint32_t(_mm512_reduce_add_epi64(row[b]));
  for (int n = 0; n < NR; ++n) {
    uint32_t pop_aw[2] = {0, 0};
    for (int b = 0; b < BA; ++b) pop_aw[b] = uint32_t(_mm512_reduce_add_epi64(cnt[b][n]));
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

void bitserial__avx512icl(const UKernelArgs& p) {
  const int32_t* coef = reinterpret_cast<const int32_t*>(p.tables);
  for_row_blocks(p, 1, [coef](const UKernelArgs& q) {
    if (coef[6] == 2) return by_cols<2>(q, coef);
    return by_cols<1>(q, coef);
  });
}

}  // namespace lowbit
