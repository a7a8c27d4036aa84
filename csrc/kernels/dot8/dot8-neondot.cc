// dot8, NEONDOT tier (Armv8.2 dot product). Tile: up to 4 rows x 16
// channels. udot multiplies unsigned by unsigned bytes, and dot8 has uint8
// activations and int8 weights, so the weights are biased to w + 128 (eor
// 0x80, once per step for all rows) and the kernel also sums each row's
// activations (one more udot against ones):
//     sum a*w = sum a*(w + 128) - 128 * sum a      (exact modulo 2^32).
// Per k quad: 4 weight loads + 4 eor shared by the rows; per row one 32-bit
// broadcast and 4 + 1 udot (16 channels x 4 k). Accumulators: int32 lanes
// from the start, wrapping modulo 2^32 like every kernel's; the driver
// bounds K so the corrected result is exact. No int16 stage, so flush16 is
// unused.
#include "kernels/dot8/dot8-neon-common.h"

namespace lowbit {
namespace {

constexpr int kNR = 16;
constexpr size_t kStepW = size_t(kNR) * kDot8StepBytes;

template <int MR>
struct Tile {
  static void run(const UKernelArgs& p) {
    uint32x4_t acc[MR][4], asum[MR];
    for (int m = 0; m < MR; ++m) {
      asum[m] = vdupq_n_u32(0);
      for (int j = 0; j < 4; ++j) acc[m][j] = vdupq_n_u32(0);
    }
    const uint8x16_t bias = vdupq_n_u8(0x80), ones = vdupq_n_u8(1);
    for_quad_runs<MR>(
        p, kStepW, p.k_steps,
        [&](const uint8_t* const* rows, const uint8_t* w, size_t steps) {
          for (size_t s = 0; s < steps; ++s, w += kStepW) {
            uint8x16_t wv[4];
            for (int j = 0; j < 4; ++j) wv[j] = veorq_u8(vld1q_u8(w + 16 * j), bias);
            for (int m = 0; m < MR; ++m) {
              const uint8x16_t a = load_quad_dup(rows[m] + s * 4);
              for (int j = 0; j < 4; ++j) acc[m][j] = vdotq_u32(acc[m][j], wv[j], a);
              asum[m] = vdotq_u32(asum[m], a, ones);  // every lane: the row's sum so far
            }
          }
        },
        [] {});
    for (int m = 0; m < MR; ++m) {
      const uint32x4_t shift = vshlq_n_u32(asum[m], 7);  // 128 * sum a
      int32_t sums[kNR];
      for (int j = 0; j < 4; ++j) vst1q_s32(sums + 4 * j, vreinterpretq_s32_u32(vsubq_u32(acc[m][j], shift)));
      store_row<kNR>(p, m, sums);
    }
  }
};

}  // namespace

void dot8_4x16__neondot(const UKernelArgs& p) { by_row_blocks<Tile>(p); }

}  // namespace lowbit
