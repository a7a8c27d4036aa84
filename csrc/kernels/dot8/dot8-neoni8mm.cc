// dot8, NEONI8MM tier (Armv8.6 int8 matrix multiply extension): usdot
// multiplies unsigned by signed bytes, exactly dot8's uint8 activations x
// int8 weights. Tile: up to 4 rows x 16 channels; per k quad: 4 weight loads
// shared by the rows, per row one 32-bit broadcast and 4 usdot. int32 lanes
// from the start (wrapping modulo 2^32; the driver bounds K); flush16 unused.
#include "kernels/dot8/dot8-neon-common.h"

namespace lowbit {
namespace {

constexpr int kNR = 16;
constexpr size_t kStepW = size_t(kNR) * kDot8StepBytes;

template <int MR>
struct Tile {
  static void run(const UKernelArgs& p) {
    int32x4_t acc[MR][4];
    for (int m = 0; m < MR; ++m)
      for (int j = 0; j < 4; ++j) acc[m][j] = vdupq_n_s32(0);
    for_quad_runs<MR>(
        p, kStepW, p.k_steps,
        [&](const uint8_t* const* rows, const uint8_t* w, size_t steps) {
          for (size_t s = 0; s < steps; ++s, w += kStepW) {
            int8x16_t wv[4];
            for (int j = 0; j < 4; ++j) wv[j] = vld1q_s8(reinterpret_cast<const int8_t*>(w + 16 * j));
            for (int m = 0; m < MR; ++m) {
              const uint8x16_t a = load_quad_dup(rows[m] + s * 4);
              for (int j = 0; j < 4; ++j) acc[m][j] = vusdotq_s32(acc[m][j], a, wv[j]);
            }
          }
        },
        [] {});
    for (int m = 0; m < MR; ++m) {
      int32_t sums[kNR];
      for (int j = 0; j < 4; ++j) vst1q_s32(sums + 4 * j, acc[m][j]);
      store_row<kNR>(p, m, sums);
    }
  }
};

}  // namespace

void dot8_4x16__neoni8mm(const UKernelArgs& p) { by_row_blocks<Tile>(p); }

}  // namespace lowbit
