// dot8, NEONDOT tier (Armv8.2 dot product). Tile: up to 4 rows x 16
// channels. udot multiplies unsigned by unsigned bytes, and dot8 has uint8
// activations and int8 weights, so the weights are biased to w + 128 (eor
// 0x80, once per step for all rows) and the kernel also sums each row's
// activations (one more udot against ones per 4 steps):
//     sum a*w = sum a*(w + 128) - 128 * sum a      (exact modulo 2^32).
// Four k quads at a time: each row loads its 4 quads as one vector and the
// lane-indexed udot (vdotq_laneq_u32) broadcasts quad q to the 4 weight
// vectors of step q: per 4 steps 16 weight loads + 16 eor shared by the
// rows, per row 1 load + 16 + 1 udot. A run's last 1-3 steps go one at a
// time (the quad alone in lane 0). Accumulators: int32 lanes from the
// start, wrapping modulo 2^32 like every kernel's; the driver bounds K so the
// corrected result is exact. No int16 stage, so flush16 is unused.
#include "kernels/dot8/dot8-neon-common.h"

namespace lowbit {
namespace {

constexpr int kNR = 16;
constexpr size_t kStepW = size_t(kNR) * kDot8StepBytes;

template <int MR>
struct Tile {
  uint32x4_t acc[MR][4], asum[MR];  // asum: the sum of its 4 lanes is the row's activation sum

  // Step Q of the 4 whose quads sit in lane Q of a[m].
  template <int Q>
  void step(const uint8x16_t* a, const uint8_t* w) {
    const uint8x16_t bias = vdupq_n_u8(0x80);
    uint8x16_t wv[4];
    for (int j = 0; j < 4; ++j) wv[j] = veorq_u8(vld1q_u8(w + 16 * j), bias);
    for (int m = 0; m < MR; ++m)
      for (int j = 0; j < 4; ++j) acc[m][j] = vdotq_laneq_u32(acc[m][j], wv[j], a[m], Q);
  }

  static void run(const UKernelArgs& p) {
    Tile t;
    for (int m = 0; m < MR; ++m) {
      t.asum[m] = vdupq_n_u32(0);
      for (int j = 0; j < 4; ++j) t.acc[m][j] = vdupq_n_u32(0);
    }
    const uint8x16_t ones = vdupq_n_u8(1);
    for_quad_runs<MR>(
        p, kStepW, p.k_steps,
        [&](const uint8_t* const* rows, const uint8_t* w, size_t steps) {
          size_t s = 0;
          for (; s + 4 <= steps; s += 4, w += 4 * kStepW) {
            uint8x16_t a[MR];
            for (int m = 0; m < MR; ++m) {
              a[m] = vld1q_u8(rows[m] + s * kDot8StepBytes);
              t.asum[m] = vdotq_u32(t.asum[m], a[m], ones);
            }
            t.template step<0>(a, w);
            t.template step<1>(a, w + kStepW);
            t.template step<2>(a, w + 2 * kStepW);
            t.template step<3>(a, w + 3 * kStepW);
          }
          for (; s < steps; ++s, w += kStepW) {
            uint8x16_t a[MR];
            for (int m = 0; m < MR; ++m) {
              a[m] = load_quad_lane0(rows[m] + s * kDot8StepBytes);
              t.asum[m] = vdotq_u32(t.asum[m], a[m], ones);
            }
            t.template step<0>(a, w);
          }
        },
        [] {});
    for (int m = 0; m < MR; ++m) {
      const uint32x4_t shift = vdupq_n_u32(vaddvq_u32(t.asum[m]) << 7);  // 128 * sum a (mod 2^32)
      int32_t sums[kNR];
      for (int j = 0; j < 4; ++j) vst1q_s32(sums + 4 * j, vreinterpretq_s32_u32(vsubq_u32(t.acc[m][j], shift)));
      store_row<kNR>(p, m, sums);
    }
  }
};

}  // namespace

void dot8_4x16__neondot(const UKernelArgs& p) { by_row_blocks<Tile>(p); }

}  // namespace lowbit
