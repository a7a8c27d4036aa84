// bitserial, NEON tier: AND + cnt (per-byte popcount, Armv8.0) over bit
// planes; one 32-byte step is two 16-byte vectors. Tile: one row x up to 4
// columns, as the AVX2 kernel. Accumulator bounds: a step adds at most 16 to
// a uint8 lane (two cnt results of <= 8), so uint8 lanes take 15 steps
// (<= 240), then are folded into uint32 lanes (uaddlp + uadalp); the uint32
// totals wrap modulo 2^32 like the scalar twin's, and the driver bounds K.
#include <arm_neon.h>

#include "kernels/bitserial/bitserial.h"

namespace lowbit {
namespace {

constexpr int kSteps8 = 15;  // steps a uint8 popcount lane takes (15 * 16 = 240 <= 255)

inline uint32x4_t fold(uint32x4_t acc32, uint8x16_t acc8) { return vpadalq_u16(acc32, vpaddlq_u8(acc8)); }

template <int NR, int BA>
void tile(const UKernelArgs& p, const int32_t* coef) {
  const size_t plane = p.k_steps * kBitserialStepBytes;
  uint8x16_t cnt8[BA][NR], row8[BA];
  uint32x4_t cnt32[BA][NR], row32[BA];
  for (int b = 0; b < BA; ++b) {
    row8[b] = vdupq_n_u8(0);
    row32[b] = vdupq_n_u32(0);
    for (int n = 0; n < NR; ++n) {
      cnt8[b][n] = vdupq_n_u8(0);
      cnt32[b][n] = vdupq_n_u32(0);
    }
  }
  int left = kSteps8;
  for (size_t s = 0; s < p.k_steps; ++s) {
    uint8x16_t a0[BA], a1[BA];
    for (int b = 0; b < BA; ++b) {
      const uint8_t* x = p.a + b * plane + s * kBitserialStepBytes;
      a0[b] = vld1q_u8(x);
      a1[b] = vld1q_u8(x + 16);
      row8[b] = vaddq_u8(row8[b], vaddq_u8(vcntq_u8(a0[b]), vcntq_u8(a1[b])));
    }
    for (int n = 0; n < NR; ++n) {
      const uint8_t* y = p.w + n * p.w_stride + s * kBitserialStepBytes;
      const uint8x16_t w0 = vld1q_u8(y), w1 = vld1q_u8(y + 16);
      for (int b = 0; b < BA; ++b)
        cnt8[b][n] = vaddq_u8(cnt8[b][n], vaddq_u8(vcntq_u8(vandq_u8(a0[b], w0)), vcntq_u8(vandq_u8(a1[b], w1))));
    }
    if (--left == 0 || s + 1 == p.k_steps) {
      for (int b = 0; b < BA; ++b) {
        row32[b] = fold(row32[b], row8[b]);
        row8[b] = vdupq_n_u8(0);
        for (int n = 0; n < NR; ++n) {
          cnt32[b][n] = fold(cnt32[b][n], cnt8[b][n]);
          cnt8[b][n] = vdupq_n_u8(0);
        }
      }
      left = kSteps8;
    }
  }
  uint32_t pop_a[2] = {0, 0};
  for (int b = 0; b < BA; ++b) pop_a[b] = vaddvq_u32(row32[b]);
  for (int n = 0; n < NR; ++n) {
    uint32_t pop_aw[2] = {0, 0};
    for (int b = 0; b < BA; ++b) pop_aw[b] = vaddvq_u32(cnt32[b][n]);
    p.c[n] = bitserial_combine(coef, BA, p.k_steps, pop_a, pop_aw,
                               bitserial_row_popcount(p.w + n * p.w_stride, p.k_steps));
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

void bitserial__neon(const UKernelArgs& p) {
  const int32_t* coef = reinterpret_cast<const int32_t*>(p.tables);
  for_row_blocks(p, 1, [coef](const UKernelArgs& q) {
    if (coef[6] == 2) return by_cols<2>(q, coef);
    return by_cols<1>(q, coef);
  });
}

}  // namespace lowbit
