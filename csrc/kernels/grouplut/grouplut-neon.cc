// grouplut, NEON tier (Armv8.0 ASIMD). Tile: up to 4 rows x 64 channels (two
// 32-channel blocks of the layout, each two 16-byte vectors). Per group: the
// weight indices of the tile (4 x 16 bytes) are loaded once for all rows;
// each row loads the 16-entry table its activation group code picks and does
// one tbl (vqtbl1q_u8) + add per 16 channels: 16 lanes x gw multiply-
// accumulates per lookup. The AVX2 kernel's contract, with 16-byte tables:
// only the first half of each 32-byte table copy is read.
// Accumulator bounds (grouplut.h): int8 lanes take flush8 lookups, then are
// widened with saddw/saddw2 (low/high 8 lanes, natural channel order) into
// int16 sums kept on the stack; those take flush16 widenings, then go to
// int32. The last chunk is stored straight to the output, correction
// subtracted.
#include <arm_neon.h>

#include "kernels/grouplut/grouplut.h"

namespace lowbit {
namespace {

constexpr int kVecs = kGrouplutLanes / 16;  // 16-byte vectors per 32-channel block

// kTableStride: bytes between tables per unit of activation byte (32 for
// plain group codes, 8 when the bytes hold code << 2).
template <int MR, int NV, int kTableStride>
void tile(const UKernelArgs& p) {
  constexpr int NQ = NV * kVecs;  // 16-channel vectors per row
  const uint8_t* tab = reinterpret_cast<const uint8_t*>(p.tables);
  const size_t G = p.k_steps;
  const uint8_t* wq[NQ];  // vector q: block q / 2, half q % 2
  for (int q = 0; q < NQ; ++q) wq[q] = p.w + size_t(q / kVecs) * G * kGrouplutLanes + size_t(q % kVecs) * 16;
  int32_t s32[MR][NQ][16];  // int32 sums; only used when K spans several int16 chunks
  const size_t chunk16 = size_t(p.flush8) * p.flush16;
  StepCursor<MR> rows(p);
  bool first_chunk = true;
  size_t g = 0;
  do {
    int16x8_t lo16[MR][NQ], hi16[MR][NQ];  // int16 sums of channels 0-7 / 8-15 of each vector
    for (int m = 0; m < MR; ++m)
      for (int q = 0; q < NQ; ++q) lo16[m][q] = hi16[m][q] = vdupq_n_s16(0);
    const size_t end16 = G - g < chunk16 ? G : g + chunk16;
    while (g < end16) {
      int8x16_t acc8[MR][NQ];
      for (int m = 0; m < MR; ++m)
        for (int q = 0; q < NQ; ++q) acc8[m][q] = vdupq_n_s8(0);
      const size_t end8 = end16 - g < p.flush8 ? end16 : g + p.flush8;
      while (g < end8) {
        const size_t stop = rows.run(g, end8);
        for (; g < stop; ++g) {
          uint8x16_t widx[NQ];
          for (int q = 0; q < NQ; ++q) widx[q] = vld1q_u8(wq[q] + g * kGrouplutLanes);
          for (int m = 0; m < MR; ++m) {
            const uint8x16_t t = vld1q_u8(tab + size_t(rows.code(m, g)) * kTableStride);
            for (int q = 0; q < NQ; ++q)
              acc8[m][q] = vaddq_s8(acc8[m][q], vreinterpretq_s8_u8(vqtbl1q_u8(t, widx[q])));
          }
        }
      }
      for (int m = 0; m < MR; ++m)  // int8 -> int16
        for (int q = 0; q < NQ; ++q) {
          lo16[m][q] = vaddw_s8(lo16[m][q], vget_low_s8(acc8[m][q]));
          hi16[m][q] = vaddw_high_s8(hi16[m][q], acc8[m][q]);
        }
    }
    // int16 -> int32: the last chunk goes straight to the output
    const bool last_chunk = g >= G;
    const int32x4_t correction = vdupq_n_s32(p.correction);
    for (int m = 0; m < MR; ++m)
      for (int q = 0; q < NQ; ++q) {
        const size_t n0 = size_t(q) * 16;
        if (last_chunk && n0 >= p.nr) break;
        int32x4_t v[4] = {vmovl_s16(vget_low_s16(lo16[m][q])), vmovl_high_s16(lo16[m][q]),
                          vmovl_s16(vget_low_s16(hi16[m][q])), vmovl_high_s16(hi16[m][q])};
        int32_t* sums = s32[m][q];
        if (!first_chunk)
          for (int j = 0; j < 4; ++j) v[j] = vaddq_s32(v[j], vld1q_s32(sums + 4 * j));
        if (last_chunk) {
          int32_t* dst = p.c + size_t(m) * p.c_stride + n0;
          const size_t count = p.nr - n0;
          for (int j = 0; j < 4; ++j) v[j] = vsubq_s32(v[j], correction);
          if (count >= 16) {
            for (int j = 0; j < 4; ++j) vst1q_s32(dst + 4 * j, v[j]);
          } else {
            int32_t tmp[16];
            for (int j = 0; j < 4; ++j) vst1q_s32(tmp + 4 * j, v[j]);
            for (size_t i = 0; i < count; ++i) dst[i] = tmp[i];
          }
        } else {
          for (int j = 0; j < 4; ++j) vst1q_s32(sums + 4 * j, v[j]);
        }
      }
    first_chunk = false;
  } while (g < G);
}

template <int NV, int kTableStride>
void by_rows(const UKernelArgs& p) {
  switch (p.mr) {
    case 1: return tile<1, NV, kTableStride>(p);
    case 2: return tile<2, NV, kTableStride>(p);
    case 3: return tile<3, NV, kTableStride>(p);
    default: return tile<4, NV, kTableStride>(p);
  }
}

}  // namespace

void grouplut__neon(const UKernelArgs& p) {
  const bool two_blocks = p.nr > size_t(kGrouplutLanes);
  if (p.a_code_shift == 2)
    return for_row_blocks(p, 4, two_blocks ? by_rows<2, 8> : by_rows<1, 8>);
  return for_row_blocks(p, 4, two_blocks ? by_rows<2, 32> : by_rows<1, 32>);
}

}  // namespace lowbit
