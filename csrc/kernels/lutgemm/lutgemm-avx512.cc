// lutgemm, __avx512 tier (F/BW/VL/DQ): vpshufb on zmm, indices built with
// vpternlogd bitwise selects, int8 sums widened with vpmaddubsw/vpmaddwd.
// 64-byte iterations (four family K steps); a partial last iteration masks its
// loads and the products of the missing bytes to zero.
#include "kernels/lutgemm/lutgemm-avx512-common.h"

namespace lowbit {
namespace {

// ---- avx512 (BW): vpshufb zmm ------------------------------------------------
template <int MR, int NR>
void tile_i8_bw(const UKernelArgs& p) {
  const __m512i T = table64(p.tables), Tt = table64(p.tables + 16);
  const __m512i mcc = _mm512_set1_epi8(char(0xCC)), m0f = _mm512_set1_epi8(0x0F);
  const __m512i ones8 = _mm512_set1_epi8(1), ones16 = _mm512_set1_epi16(1);
  __m512i acc16[MR][NR], acc32[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc16[m][n] = acc32[m][n] = _mm512_setzero_si512();
  const Steps st = steps_of(p.k_steps);
  // A 64-byte iteration adds 8 products to each 16-bit lane, the same as one
  // 32-byte family step does on AVX2, so flush16 applies per iteration.
  uint32_t left = p.flush16;
  for (size_t it = 0; it < st.iters; ++it) {
    const __mmask64 k = iter_mask(st, it);
    __m512i A[MR];
    for (int m = 0; m < MR; ++m) A[m] = load_step(p.a + m * p.a_stride + it * 64, k);
    for (int n = 0; n < NR; ++n) {
      const __m512i W = load_step(p.w + n * p.w_stride + it * 64, k);
      for (int m = 0; m < MR; ++m) {
        const __m512i i1 = select(mcc, A[m], W), i2 = select(mcc, W, A[m]);
        __m512i s = _mm512_add_epi8(
            _mm512_add_epi8(_mm512_shuffle_epi8(T, _mm512_and_si512(i1, m0f)),
                            _mm512_shuffle_epi8(T, _mm512_and_si512(_mm512_srli_epi16(i1, 4), m0f))),
            _mm512_add_epi8(_mm512_shuffle_epi8(Tt, _mm512_and_si512(i2, m0f)),
                            _mm512_shuffle_epi8(Tt, _mm512_and_si512(_mm512_srli_epi16(i2, 4), m0f))));
        s = _mm512_maskz_mov_epi8(k, s);  // the masked-off tail contributes nothing
        acc16[m][n] = _mm512_add_epi16(acc16[m][n], _mm512_maddubs_epi16(ones8, s));
      }
    }
    if (--left == 0) {
      for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) {
          acc32[m][n] = _mm512_add_epi32(acc32[m][n], _mm512_madd_epi16(acc16[m][n], ones16));
          acc16[m][n] = _mm512_setzero_si512();
        }
      left = p.flush16;
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n)
      p.c[m * p.c_stride + n] =
          _mm512_reduce_add_epi32(_mm512_add_epi32(acc32[m][n], _mm512_madd_epi16(acc16[m][n], ones16)));
}

}  // namespace

void lutgemm_w2a2_i8__avx512(const UKernelArgs& p) {
  for_row_blocks(p, 4, [](const UKernelArgs& q) { LOWBIT_TILE_4x2(tile_i8_bw, q); });
}

}  // namespace lowbit
