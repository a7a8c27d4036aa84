// dot8, __avx512icl tier: vpdpbusd zmm (AVX512-VNNI: u8 x s8, four products
// per int32 lane summed and added to the lane, non-saturating, wrapping) —
// no int16 stage, so no widening and no bound on the levels beyond the
// layout's uint8 activations and int8 weights (TableKind::i32: it computes
// every dot8 plan, including those whose pair sums exceed int16; dot8.h).
// Tile: up to 8 rows x 32 channels. Per k quad: two 64-byte weight loads
// (32 channels x 4 levels) serve all rows; each row broadcasts its 32-bit
// activation quad from memory and does two vpdpbusd (64 MACs each);
// 16 int32 accumulators stay in registers for the whole K.
#include "core/simd_avx512.h"

#include <algorithm>
#include <cstring>

#include "kernels/dot8/dot8.h"

#if !LOWBIT_AVX512_VNNI
#error "dot8-avx512icl.cc must be compiled with the avx512icl flags (-mavx512vnni)"
#endif

namespace lowbit {
namespace {

constexpr int kNR = 32;
constexpr size_t kStepW = size_t(kNR) * kDot8StepBytes;  // weight bytes per k quad

template <int MR>
void tile(const UKernelArgs& p) {
  __m512i acc[MR][2];
  for (int m = 0; m < MR; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_si512();
  const size_t S = p.k_steps;
  for (size_t s = 0; s < S;) {
    // a run of consecutive quads: the whole K, or one segment of the indirection buffer
    const uint8_t* rows[MR];
    size_t end = S;
    if (p.a_ind) {
      const size_t seg = s / p.seg_steps, off = (s - seg * p.seg_steps) * kDot8StepBytes;
      for (int m = 0; m < MR; ++m) rows[m] = p.a_ind[size_t(m) * p.a_ind_stride + seg] + off;
      end = std::min(S, (seg + 1) * p.seg_steps);
    } else {
      for (int m = 0; m < MR; ++m) rows[m] = p.a + size_t(m) * p.a_stride + s * kDot8StepBytes;
    }
    const uint8_t* w = p.w + s * kStepW;
    for (size_t i = 0; i < end - s; ++i, w += kStepW) {
      const __m512i w0 = _mm512_loadu_si512(w), w1 = _mm512_loadu_si512(w + 64);
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        int32_t quad;
        std::memcpy(&quad, rows[m] + i * kDot8StepBytes, 4);
        const __m512i x = _mm512_set1_epi32(quad);
        acc[m][0] = _mm512_dpbusd_epi32(acc[m][0], x, w0);
        acc[m][1] = _mm512_dpbusd_epi32(acc[m][1], x, w1);
      }
    }
    s = end;
  }
  for (int m = 0; m < MR; ++m)
    for (size_t h = 0; h < 2 && 16 * h < p.nr; ++h) {
      const size_t left = p.nr - 16 * h;
      const __mmask16 k = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
      _mm512_mask_storeu_epi32(p.c + size_t(m) * p.c_stride + 16 * h, k, acc[m][h]);
    }
}

}  // namespace

void dot8_8x32__avx512icl(const UKernelArgs& p) {
  for_row_blocks(p, 8, [](const UKernelArgs& q) {
    switch (q.mr) {
      case 1: return tile<1>(q);
      case 2: return tile<2>(q);
      case 3: return tile<3>(q);
      case 4: return tile<4>(q);
      case 5: return tile<5>(q);
      case 6: return tile<6>(q);
      case 7: return tile<7>(q);
      default: return tile<8>(q);
    }
  });
}

}  // namespace lowbit
