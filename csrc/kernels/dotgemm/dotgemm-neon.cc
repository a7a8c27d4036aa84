// dotgemm, NEON tier (Armv8.0): int16 levels, smlal/smlal2 (int16 x int16 ->
// int32 multiply-accumulate). Tile: up to 4 rows x 8 channels. Per k pair:
// two 16-byte weight loads (8 channels x 2 int16 levels) shared by the rows;
// each row broadcasts its 32-bit activation pair and does 4 smlal/smlal2
// (lane 2c + j of a channel-pair accumulator holds channel c's k-parity-j
// sum). Accumulator bound (dotgemm.h): |a*w| <= 65025 per product; int32
// lanes wrap modulo 2^32 and the two lanes of a channel are added (addp)
// when storing, so the result is the exact sum modulo 2^32, which the driver's
// K <= K_max makes the true one. Also the NEON activation packer (int16
// levels through two tbl lookups on the low and high level bytes).
#include <arm_neon.h>

#include <algorithm>
#include <cstring>

#include "kernels/dotgemm/dotgemm.h"

namespace lowbit {
namespace {

constexpr int kNR = 8;
constexpr size_t kStepW = size_t(kNR) * kDotgemmStepBytes;

template <int MR>
void tile(const UKernelArgs& p) {
  int32x4_t acc[MR][4];  // row m, channels (2j, 2j+1) x k parity
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < 4; ++j) acc[m][j] = vdupq_n_s32(0);
  const uint8_t* w = p.w;
  for (size_t s = 0; s < p.k_steps; ++s, w += kStepW) {
    const int16x8_t w0 = vld1q_s16(reinterpret_cast<const int16_t*>(w));
    const int16x8_t w1 = vld1q_s16(reinterpret_cast<const int16_t*>(w + 16));
    for (int m = 0; m < MR; ++m) {
      uint32_t pair;
      std::memcpy(&pair, p.a + size_t(m) * p.a_stride + s * kDotgemmStepBytes, 4);
      const int16x8_t a = vreinterpretq_s16_u32(vdupq_n_u32(pair));
      acc[m][0] = vmlal_s16(acc[m][0], vget_low_s16(w0), vget_low_s16(a));
      acc[m][1] = vmlal_high_s16(acc[m][1], w0, a);
      acc[m][2] = vmlal_s16(acc[m][2], vget_low_s16(w1), vget_low_s16(a));
      acc[m][3] = vmlal_high_s16(acc[m][3], w1, a);
    }
  }
  for (int m = 0; m < MR; ++m) {
    int32_t sums[kNR];
    vst1q_s32(sums, vpaddq_s32(acc[m][0], acc[m][1]));
    vst1q_s32(sums + 4, vpaddq_s32(acc[m][2], acc[m][3]));
    std::memcpy(p.c + size_t(m) * p.c_stride, sums, std::min(p.nr, size_t(kNR)) * sizeof(int32_t));
  }
}

}  // namespace

void dotgemm_4x8__neon(const UKernelArgs& p) {
  for_row_blocks(p, 4, [](const UKernelArgs& q) {
    switch (q.mr) {
      case 1: return tile<1>(q);
      case 2: return tile<2>(q);
      case 3: return tile<3>(q);
      default: return tile<4>(q);
    }
  });
}

bool dotgemm_pack_a__neon(const uint8_t* codes, size_t M, size_t K, int bits, const int16_t* levels, int16_t* out,
                          size_t out_cols) {
  if (bits > 4) return dotgemm_pack_a__scalar(codes, M, K, bits, levels, out, out_cols);
  uint8_t lo[16] = {0}, hi[16] = {0};  // the levels' low and high bytes
  for (int i = 0; i < (1 << bits); ++i) {
    lo[i] = uint8_t(uint16_t(levels[i]) & 0xff);
    hi[i] = uint8_t(uint16_t(levels[i]) >> 8);
  }
  const uint8x16_t lut_lo = vld1q_u8(lo), lut_hi = vld1q_u8(hi);
  const size_t kvec = K / 16 * 16;
  const unsigned mask = (1u << bits) - 1;
  uint8x16_t seen = vdupq_n_u8(0);
  unsigned seen_tail = 0;
  for (size_t m = 0; m < M; ++m) {
    const uint8_t* row = codes + m * K;
    int16_t* dst = out + m * out_cols;
    for (size_t k = 0; k < kvec; k += 16) {
      const uint8x16_t v = vld1q_u8(row + k);
      seen = vorrq_u8(seen, v);
      uint8x16x2_t bytes = {{vqtbl1q_u8(lut_lo, v), vqtbl1q_u8(lut_hi, v)}};
      vst2q_u8(reinterpret_cast<uint8_t*>(dst + k), bytes);  // interleaved lo, hi = little-endian int16
    }
    for (size_t k = kvec; k < K; ++k) {
      seen_tail |= row[k];
      dst[k] = levels[row[k] & mask];
    }
    std::fill(dst + K, dst + out_cols, int16_t(0));
  }
  seen_tail |= vmaxvq_u8(seen);
  return (seen_tail >> bits) == 0;
}

}  // namespace lowbit
