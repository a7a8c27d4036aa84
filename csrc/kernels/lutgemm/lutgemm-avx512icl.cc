// lutgemm, __avx512icl tier (adds VBMI, VNNI): vpermb on zmm with the
// 16-entry table replicated 4x, so index bits 4-5 are "don't care" and no
// masking is needed; products go straight to int32 with vpdpbusd (no 16-bit
// stage, so no flush bound). Same 64-byte stepping as the __avx512 kernel.
#include "kernels/lutgemm/lutgemm-avx512-common.h"

namespace lowbit {
namespace {

// ---- avx512icl: vpermb + vpdpbusd --------------------------------------------
template <int MR, int NR>
void tile_i8_icl(const UKernelArgs& p) {
  const __m512i T = table64(p.tables), Tt = table64(p.tables + 16);
  const __m512i mcc = _mm512_set1_epi8(char(0xCC)), ones8 = _mm512_set1_epi8(1);
  __m512i acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_setzero_si512();
  const Steps st = steps_of(p.k_steps);
  for (size_t it = 0; it < st.iters; ++it) {
    const __mmask64 k = iter_mask(st, it);
    __m512i A[MR];
    for (int m = 0; m < MR; ++m) A[m] = load_step(p.a + m * p.a_stride + it * 64, k);
    for (int n = 0; n < NR; ++n) {
      const __m512i W = load_step(p.w + n * p.w_stride + it * 64, k);
      for (int m = 0; m < MR; ++m) {
        const __m512i i1 = select(mcc, A[m], W), i2 = select(mcc, W, A[m]);
        __m512i s = _mm512_add_epi8(
            _mm512_add_epi8(_mm512_permutexvar_epi8(i1, T), _mm512_permutexvar_epi8(_mm512_srli_epi16(i1, 4), T)),
            _mm512_add_epi8(_mm512_permutexvar_epi8(i2, Tt), _mm512_permutexvar_epi8(_mm512_srli_epi16(i2, 4), Tt)));
        s = _mm512_maskz_mov_epi8(k, s);
        acc[m][n] = _mm512_dpbusd_epi32(acc[m][n], ones8, s);
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) p.c[m * p.c_stride + n] = _mm512_reduce_add_epi32(acc[m][n]);
}

template <int MR, int NR>
void tile_split_icl(const UKernelArgs& p) {
  const __m512i Tlo = table64(p.tables), Thi = table64(p.tables + 16);
  const __m512i Ttlo = table64(p.tables + 32), Tthi = table64(p.tables + 48);
  const __m512i mcc = _mm512_set1_epi8(char(0xCC)), ones8 = _mm512_set1_epi8(1);
  __m512i lo[MR][NR], hi[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) lo[m][n] = hi[m][n] = _mm512_setzero_si512();
  const Steps st = steps_of(p.k_steps);
  for (size_t it = 0; it < st.iters; ++it) {
    const __mmask64 k = iter_mask(st, it);
    __m512i A[MR];
    for (int m = 0; m < MR; ++m) A[m] = load_step(p.a + m * p.a_stride + it * 64, k);
    for (int n = 0; n < NR; ++n) {
      const __m512i W = load_step(p.w + n * p.w_stride + it * 64, k);
      for (int m = 0; m < MR; ++m) {
        const __m512i i1 = select(mcc, A[m], W), i2 = select(mcc, W, A[m]);
        const __m512i idx[4] = {i1, _mm512_srli_epi16(i1, 4), i2, _mm512_srli_epi16(i2, 4)};
        for (int q = 0; q < 4; ++q) {
          const __m512i l = _mm512_maskz_permutexvar_epi8(k, idx[q], q < 2 ? Tlo : Ttlo);
          const __m512i h = _mm512_maskz_permutexvar_epi8(k, idx[q], q < 2 ? Thi : Tthi);
          lo[m][n] = _mm512_dpbusd_epi32(lo[m][n], l, ones8);  // unsigned low bytes
          hi[m][n] = _mm512_dpbusd_epi32(hi[m][n], ones8, h);  // signed high bytes
        }
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n)
      p.c[m * p.c_stride + n] = int32_t(uint32_t(_mm512_reduce_add_epi32(hi[m][n])) * 256u +
                                        uint32_t(_mm512_reduce_add_epi32(lo[m][n])));
}

}  // namespace

void lutgemm_w2a2_i8__avx512icl(const UKernelArgs& p) {
  for_row_blocks(p, 4, [](const UKernelArgs& q) { LOWBIT_TILE_4x4(tile_i8_icl, q); });
}
void lutgemm_w2a2_split__avx512icl(const UKernelArgs& p) {
  for_row_blocks(p, 4, [](const UKernelArgs& q) { LOWBIT_TILE_4x2(tile_split_icl, q); });
}

}  // namespace lowbit
