#include "ops/pack.h"

#include <cstring>

namespace lowbit {

bool pack_groups__scalar(const uint8_t* codes, size_t M, size_t K, int bits, int group, uint8_t* out,
                         size_t out_stride) {
  unsigned seen = 0;  // OR of all codes: any bit >= `bits` means out of range
  for (size_t m = 0; m < M; ++m) {
    const uint8_t* row = codes + m * K;
    uint8_t* dst = out + m * out_stride;
    std::memset(dst, 0, out_stride);
    for (size_t k = 0; k < K; ++k) {
      seen |= row[k];
      dst[k / group] |= uint8_t(row[k] << (bits * (k % group)));
    }
  }
  return (seen >> bits) == 0;
}

bool pack_groups(const uint8_t* codes, size_t M, size_t K, int bits, int group, uint8_t* out, size_t out_stride,
                 Tier tier) {
#if LOWBIT_HAVE_X86_KERNELS
  const bool vector_group = group == 1 || group == 2 || group == 4 || group == 8;
  if (tier >= Tier::avx2 && vector_group) return pack_groups__avx2(codes, M, K, bits, group, out, out_stride);
#endif
  (void)tier;
  return pack_groups__scalar(codes, M, K, bits, group, out, out_stride);
}

}  // namespace lowbit
