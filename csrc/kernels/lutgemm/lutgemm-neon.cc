// lutgemm (DeepGEMM's product LUT), NEON tier, int8 tables, layout 0. Tile:
// one row x up to 4 columns. Per 16-byte step of a row pair: two bitwise
// selects (bsl) form the two index bytes of lutgemm.h,
//   i1 = (A & 0xCC) | (W & 0x33) -> table T,   i2 = (W & 0xCC) | (A & 0x33) -> table Tt,
// their low nibbles (and 0x0F) and high nibbles (ushr 4) index the 16-entry
// tables with four tbl, and the four products are added into int8 lanes:
// one product per byte lookup, as in the paper.
// Accumulator bounds (lutgemm.h, P = max|product|): an iteration adds 4
// products (<= 4P) to an int8 lane, which takes flush8 iterations; sadalp
// then adds lane pairs into int16 (<= 8P * flush8 a time), which take
// flush16 widenings before sadalp adds their pairs into int32. int32 wraps
// modulo 2^32 (the driver bounds K); the lanes are summed when storing.
#include <arm_neon.h>

#include "kernels/lutgemm/lutgemm.h"

namespace lowbit {
namespace {

template <int NR>
void tile(const UKernelArgs& p) {
  const uint8_t* tab = reinterpret_cast<const uint8_t*>(p.tables);
  const uint8x16_t t = vld1q_u8(tab), tt = vld1q_u8(tab + 16);
  const uint8x16_t sel = vdupq_n_u8(0xCC), low = vdupq_n_u8(0x0F);
  int16x8_t acc16[NR];
  int32x4_t acc32[NR];
  for (int n = 0; n < NR; ++n) {
    acc16[n] = vdupq_n_s16(0);
    acc32[n] = vdupq_n_s32(0);
  }
  const size_t S = p.k_steps, flush8 = p.flush8 ? p.flush8 : 1, flush16 = p.flush16 ? p.flush16 : 1;
  size_t widenings = 0;
  for (size_t s = 0; s < S;) {
    const size_t end = S - s < flush8 ? S : s + flush8;
    int8x16_t acc8[NR];
    for (int n = 0; n < NR; ++n) acc8[n] = vdupq_n_s8(0);
    for (; s < end; ++s) {
      const uint8x16_t a = vld1q_u8(p.a + s * kLutgemmStepBytes);
      for (int n = 0; n < NR; ++n) {
        const uint8x16_t w = vld1q_u8(p.w + n * p.w_stride + s * kLutgemmStepBytes);
        const uint8x16_t i1 = vbslq_u8(sel, a, w), i2 = vbslq_u8(sel, w, a);
        const int8x16_t sum =
            vaddq_s8(vaddq_s8(vreinterpretq_s8_u8(vqtbl1q_u8(t, vandq_u8(i1, low))),
                              vreinterpretq_s8_u8(vqtbl1q_u8(t, vshrq_n_u8(i1, 4)))),
                     vaddq_s8(vreinterpretq_s8_u8(vqtbl1q_u8(tt, vandq_u8(i2, low))),
                              vreinterpretq_s8_u8(vqtbl1q_u8(tt, vshrq_n_u8(i2, 4)))));
        acc8[n] = vaddq_s8(acc8[n], sum);
      }
    }
    for (int n = 0; n < NR; ++n) acc16[n] = vpadalq_s8(acc16[n], acc8[n]);
    if (++widenings == flush16 || s == S) {
      for (int n = 0; n < NR; ++n) {
        acc32[n] = vpadalq_s16(acc32[n], acc16[n]);
        acc16[n] = vdupq_n_s16(0);
      }
      widenings = 0;
    }
  }
  for (int n = 0; n < NR; ++n) p.c[n] = vaddvq_s32(acc32[n]);  // wraps modulo 2^32 like the scalar twin
}

}  // namespace

void lutgemm_w2a2_i8__neon(const UKernelArgs& p) {
  for_row_blocks(p, 1, [](const UKernelArgs& q) {
    switch (q.nr) {
      case 1: return tile<1>(q);
      case 2: return tile<2>(q);
      case 3: return tile<3>(q);
      default: return tile<4>(q);
    }
  });
}

}  // namespace lowbit
