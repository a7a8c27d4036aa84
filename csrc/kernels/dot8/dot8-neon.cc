// dot8, NEON tier (Armv8.0, no dot product instructions). Tile: up to 4 rows
// x 8 channels. Per k quad: two 16-byte weight loads (8 channels x 4 levels),
// sign-extended to four int16x8 (sxtl/sxtl2) for all rows; each row widens
// its activation quad to int16 (uxtl of a 32-bit broadcast) and does 4 mla
// (int16 multiply-accumulate): 8 lanes = 2 channels x 4 k per instruction.
// Accumulator bound: an int16 lane takes one product a*w per step,
// |a*w| <= P/2 with P = 2 max|a| max|w| <= 32767 (dot8.h), so it may take
// 2 * flush16 = 2 floor(32767 / P) steps (|lane| <= 32767) before sadalp adds
// its lane pairs into int32 (a channel's 4 k in two int32 lanes); the two
// lanes of a channel are added (addp) when storing. int32 wraps modulo 2^32
// like every other kernel's; the driver bounds K.
#include "kernels/dot8/dot8-neon-common.h"

namespace lowbit {
namespace {

constexpr int kNR = 8;
constexpr size_t kStepW = size_t(kNR) * kDot8StepBytes;  // weight bytes per k quad

template <int MR>
struct Tile {
  static void run(const UKernelArgs& p) {
    int16x8_t acc16[MR][4];  // row m, channels (2j, 2j+1) x 4 k
    int32x4_t acc32[MR][4];
    for (int m = 0; m < MR; ++m)
      for (int j = 0; j < 4; ++j) {
        acc16[m][j] = vdupq_n_s16(0);
        acc32[m][j] = vdupq_n_s32(0);
      }
    const size_t window = 2 * size_t(p.flush16 ? p.flush16 : 1);
    for_quad_runs<MR>(
        p, kStepW, window,
        [&](const uint8_t* const* rows, const uint8_t* w, size_t steps) {
          for (size_t s = 0; s < steps; ++s, w += kStepW) {
            const int8x16_t w0 = vld1q_s8(reinterpret_cast<const int8_t*>(w));
            const int8x16_t w1 = vld1q_s8(reinterpret_cast<const int8_t*>(w + 16));
            const int16x8_t wv[4] = {vmovl_s8(vget_low_s8(w0)), vmovl_high_s8(w0), vmovl_s8(vget_low_s8(w1)),
                                     vmovl_high_s8(w1)};
            for (int m = 0; m < MR; ++m) {
              const int16x8_t a = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(load_quad_dup(rows[m] + s * 4))));
              for (int j = 0; j < 4; ++j) acc16[m][j] = vmlaq_s16(acc16[m][j], wv[j], a);
            }
          }
        },
        [&] {
          for (int m = 0; m < MR; ++m)
            for (int j = 0; j < 4; ++j) {
              acc32[m][j] = vpadalq_s16(acc32[m][j], acc16[m][j]);
              acc16[m][j] = vdupq_n_s16(0);
            }
        });
    for (int m = 0; m < MR; ++m) {
      int32_t sums[kNR];
      vst1q_s32(sums, vpaddq_s32(acc32[m][0], acc32[m][1]));
      vst1q_s32(sums + 4, vpaddq_s32(acc32[m][2], acc32[m][3]));
      store_row<kNR>(p, m, sums);
    }
  }
};

}  // namespace

void dot8_4x8__neon(const UKernelArgs& p) { by_row_blocks<Tile>(p); }

}  // namespace lowbit

namespace lowbit {

bool dot8_pack_a__neon(const uint8_t* codes, size_t M, size_t K, int bits, const uint8_t* levels, uint8_t* out,
                       size_t out_cols) {
  // 1-4-bit codes: one tbl on a 16-entry level table; 8-bit codes whose
  // levels are the codes themselves: a copy; any other 8-bit codebook: scalar.
  bool identity = bits == 8;
  for (int i = 0; identity && i < 256; ++i) identity = levels[i] == i;
  if (bits == 8 && !identity) return dot8_pack_a__scalar(codes, M, K, bits, levels, out, out_cols);
  uint8_t table[16] = {0};
  if (bits <= 4) std::memcpy(table, levels, size_t(1) << bits);
  const uint8x16_t lut = vld1q_u8(table);
  const size_t kvec = K / 16 * 16;
  const unsigned mask = (1u << bits) - 1;
  uint8x16_t seen = vdupq_n_u8(0);
  unsigned seen_tail = 0;
  for (size_t m = 0; m < M; ++m) {
    const uint8_t* row = codes + m * K;
    uint8_t* dst = out + m * out_cols;
    if (identity) {
      std::memcpy(dst, row, K);
    } else {
      for (size_t k = 0; k < kvec; k += 16) {
        const uint8x16_t v = vld1q_u8(row + k);
        seen = vorrq_u8(seen, v);
        vst1q_u8(dst + k, vqtbl1q_u8(lut, v));
      }
      for (size_t k = kvec; k < K; ++k) {
        seen_tail |= row[k];
        dst[k] = levels[row[k] & mask];
      }
    }
    std::memset(dst + K, 0, out_cols - K);
  }
  seen_tail |= vmaxvq_u8(seen);
  return (seen_tail >> bits) == 0;
}

}  // namespace lowbit
