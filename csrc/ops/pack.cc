#include "ops/pack.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/thread_pool.h"

namespace lowbit {

bool pack_groups__scalar(const uint8_t* codes, size_t M, size_t K, int bits, int group, int shift, uint8_t* out,
                         size_t out_stride) {
  unsigned seen = 0;  // OR of all codes: any bit >= `bits` means out of range
  const size_t g = size_t(group), full = K / g;
  for (size_t m = 0; m < M; ++m) {
    const uint8_t* row = codes + m * K;
    uint8_t* dst = out + m * out_stride;
    for (size_t j = 0; j < full; ++j) {
      unsigned v = 0;
      for (size_t i = 0; i < g; ++i) {
        seen |= row[j * g + i];
        v |= unsigned(row[j * g + i]) << (bits * int(i));
      }
      dst[j] = uint8_t(v << shift);
    }
    size_t j = full;
    if (full * g < K) {
      unsigned v = 0;
      for (size_t k = full * g; k < K; ++k) {
        seen |= row[k];
        v |= unsigned(row[k]) << (bits * int(k - full * g));
      }
      dst[j++] = uint8_t(v << shift);
    }
    std::memset(dst + j, 0, out_stride - j);
  }
  return (seen >> bits) == 0;
}

bool gather_pixels(const uint8_t* x, size_t npix, size_t C, const int64_t* rows, size_t M, size_t taps,
                   uint8_t pad_code, uint8_t* out) {
  for (size_t i = 0; i < M * taps; ++i)
    if (rows[i] >= int64_t(npix)) return false;
  const size_t block = std::max<size_t>(1, (size_t(1) << 16) / std::max<size_t>(taps * C, 1));
  auto task = [&](size_t b) {
    const size_t m1 = std::min(M, (b + 1) * block);
    const int64_t* r = rows + b * block * taps;
    uint8_t* dst = out + b * block * taps * C;
    for (size_t i = 0, n = (m1 - b * block) * taps; i < n; ++i, dst += C) {
      const int64_t p = r[i];
      if (p < 0) {
        std::memset(dst, pad_code, C);
      } else if (C == 3) {  // RGB stems: skip the library call
        const uint8_t* src = x + size_t(p) * 3;
        dst[0] = src[0];
        dst[1] = src[1];
        dst[2] = src[2];
      } else {
        std::memcpy(dst, x + size_t(p) * C, C);
      }
    }
  };
  parallel_for((M + block - 1) / block, task);
  return true;
}

bool pack_groups(const uint8_t* codes, size_t M, size_t K, int bits, int group, int shift, uint8_t* out,
                 size_t out_stride, Tier tier) {
  // Rows are independent: split them over the thread pool in blocks of at
  // least 64 Ki codes (threads only pay off on big inputs).
  const size_t rows = std::max<size_t>(1, (size_t(1) << 16) / std::max<size_t>(K, 1));
  const size_t tasks = (M + rows - 1) / rows;
  std::vector<char> ok(tasks, 1);
  auto task = [&](size_t i) {
    const size_t m0 = i * rows, m = std::min(rows, M - m0);
    const uint8_t* src = codes + m0 * K;
    uint8_t* dst = out + m0 * out_stride;
#if LOWBIT_HAVE_X86_KERNELS
    const bool vector_group = group == 1 || group == 2 || group == 4 || group == 8;
    if (tier >= Tier::avx2 && vector_group) {
      ok[i] = pack_groups__avx2(src, m, K, bits, group, shift, dst, out_stride);
      return;
    }
#endif
    (void)tier;
    ok[i] = pack_groups__scalar(src, m, K, bits, group, shift, dst, out_stride);
  };
  parallel_for(tasks, task);
  for (char v : ok)
    if (!v) return false;
  return true;
}

}  // namespace lowbit
