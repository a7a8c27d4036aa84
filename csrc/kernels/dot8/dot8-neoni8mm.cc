// dot8, NEONI8MM tier (Armv8.6 int8 matrix multiply extension): sudot
// multiplies signed by unsigned bytes, exactly dot8's int8 weights x uint8
// activations. Tile: up to 4 rows x 16 channels. Four k quads at a time:
// each row loads its 4 quads as one vector and the lane-indexed sudot
// (vsudotq_laneq_s32) broadcasts quad q to the 4 weight vectors of step q:
// per 4 steps 16 weight loads shared by the rows, per row 1 load + 16
// sudot. A run's last 1-3 steps go one at a time (the quad alone in lane 0).
// int32 lanes from the start (wrapping modulo 2^32; the driver bounds K);
// flush16 unused.
#include "kernels/dot8/dot8-neon-common.h"

namespace lowbit {
namespace {

constexpr int kNR = 16;
constexpr size_t kStepW = size_t(kNR) * kDot8StepBytes;

template <int MR>
struct Tile {
  int32x4_t acc[MR][4];

  // Step Q of the 4 whose quads sit in lane Q of a[m].
  template <int Q>
  void step(const uint8x16_t* a, const uint8_t* w) {
    int8x16_t wv[4];
    for (int j = 0; j < 4; ++j) wv[j] = vld1q_s8(reinterpret_cast<const int8_t*>(w + 16 * j));
    for (int m = 0; m < MR; ++m)
      for (int j = 0; j < 4; ++j) acc[m][j] = vsudotq_laneq_s32(acc[m][j], wv[j], a[m], Q);
  }

  static void run(const UKernelArgs& p) {
    Tile t;
    for (int m = 0; m < MR; ++m)
      for (int j = 0; j < 4; ++j) t.acc[m][j] = vdupq_n_s32(0);
    for_quad_runs<MR>(
        p, kStepW, p.k_steps,
        [&](const uint8_t* const* rows, const uint8_t* w, size_t steps) {
          size_t s = 0;
          for (; s + 4 <= steps; s += 4, w += 4 * kStepW) {
            uint8x16_t a[MR];
            for (int m = 0; m < MR; ++m) a[m] = vld1q_u8(rows[m] + s * kDot8StepBytes);
            t.template step<0>(a, w);
            t.template step<1>(a, w + kStepW);
            t.template step<2>(a, w + 2 * kStepW);
            t.template step<3>(a, w + 3 * kStepW);
          }
          for (; s < steps; ++s, w += kStepW) {
            uint8x16_t a[MR];
            for (int m = 0; m < MR; ++m) a[m] = load_quad_lane0(rows[m] + s * kDot8StepBytes);
            t.template step<0>(a, w);
          }
        },
        [] {});
    for (int m = 0; m < MR; ++m) {
      int32_t sums[kNR];
      for (int j = 0; j < 4; ++j) vst1q_s32(sums + 4 * j, t.acc[m][j]);
      store_row<kNR>(p, m, sums);
    }
  }
};

}  // namespace

void dot8_4x16__neoni8mm(const UKernelArgs& p) { by_row_blocks<Tile>(p); }

}  // namespace lowbit
