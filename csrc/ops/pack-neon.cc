// NEON activation packer (see ops/pack.h for the contract). 16 codes per
// vector: each code is shifted left by bits * (its index in the group)
// (ushl with a per-lane shift vector), then log2(group) pairwise adds (addp)
// merge the groups' codes into bytes; for codes < 2**bits the adds never
// carry, so they equal the ORs of the scalar rule (out-of-range codes are
// caught by the OR of all codes, `seen`). The row remainder is zero-padded
// to a full vector (zero codes pack to zero bits).
#include <arm_neon.h>

#include <cstring>

#include "ops/pack.h"

namespace lowbit {
namespace {

// 16 codes -> 16/group bytes (group 1, 2, 4 or 8), each shifted left by `shift`.
inline size_t pack16(uint8x16_t v, int group, int8x16_t code_shifts, int8x16_t out_shift, uint8_t* dst) {
  uint8x16_t x = vshlq_u8(v, code_shifts);
  for (int g = group; g > 1; g /= 2) x = vpaddq_u8(x, x);  // lanes [0, 16/g') hold the merged groups
  x = vshlq_u8(x, out_shift);
  const size_t n = 16 / size_t(group);
  uint8_t tmp[16];
  vst1q_u8(tmp, x);
  std::memcpy(dst, tmp, n);
  return n;
}

}  // namespace

bool pack_groups__neon(const uint8_t* codes, size_t M, size_t K, int bits, int group, int shift, uint8_t* out,
                       size_t out_stride) {
  int8_t lane_shift[16];
  for (int i = 0; i < 16; ++i) lane_shift[i] = int8_t(bits * (i % group));
  const int8x16_t code_shifts = vld1q_s8(lane_shift), out_shift = vdupq_n_s8(int8_t(shift));
  uint8x16_t seen = vdupq_n_u8(0);
  const size_t kvec = K / 16 * 16, tail = K - kvec;
  const size_t tail_bytes = (tail + size_t(group) - 1) / size_t(group);
  for (size_t m = 0; m < M; ++m) {
    const uint8_t* row = codes + m * K;
    uint8_t* dst = out + m * out_stride;
    size_t j = 0;
    for (size_t k = 0; k < kvec; k += 16) {
      const uint8x16_t v = vld1q_u8(row + k);
      seen = vorrq_u8(seen, v);
      j += pack16(v, group, code_shifts, out_shift, dst + j);
    }
    if (tail) {
      uint8_t in[16] = {};
      std::memcpy(in, row + kvec, tail);
      const uint8x16_t v = vld1q_u8(in);
      seen = vorrq_u8(seen, v);
      uint8_t packed[16];
      pack16(v, group, code_shifts, out_shift, packed);
      std::memcpy(dst + j, packed, tail_bytes);
      j += tail_bytes;
    }
    std::memset(dst + j, 0, out_stride - j);
  }
  return (vmaxvq_u8(seen) >> bits) == 0;
}

}  // namespace lowbit
