// Shared by the dot-product families' activation packers (dotgemm: int16
// levels, dot8: uint8 levels): codes -> levels, zero padded, range-checked.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "core/thread_pool.h"

namespace lowbit {

// out[m][k] = levels[codes[m][k]] for k < K and 0 for K <= k < out_cols (row
// stride out_cols); codes is M x K, row stride K; levels has 2^bits entries.
// Returns false (output unspecified) when a code is >= 2^bits.
template <class Level>
bool pack_levels_scalar(const uint8_t* codes, size_t M, size_t K, int bits, const Level* levels, Level* out,
                        size_t out_cols) {
  unsigned seen = 0;  // OR of all codes: any bit >= `bits` means out of range
  const unsigned mask = (1u << bits) - 1;
  for (size_t m = 0; m < M; ++m) {
    const uint8_t* row = codes + m * K;
    Level* dst = out + m * out_cols;
    for (size_t k = 0; k < K; ++k) {
      seen |= row[k];
      dst[k] = levels[row[k] & mask];
    }
    std::fill(dst + K, dst + out_cols, Level(0));
  }
  return (seen >> bits) == 0;
}

// A packer's entry point: checks the arguments, splits the rows over the
// thread pool and packs each block with `simd` (tier >= 1 and not null) or
// `scalar`. Returns 1 on success, 0 when a code is out of range, -1 on bad
// arguments. bits in {1, 2, 3, 4, 8}.
template <class Level>
int pack_levels_parallel(const uint8_t* codes, size_t M, size_t K, int bits, const Level* levels, Level* out,
                         size_t out_cols, int tier,
                         bool (*scalar)(const uint8_t*, size_t, size_t, int, const Level*, Level*, size_t),
                         bool (*simd)(const uint8_t*, size_t, size_t, int, const Level*, Level*, size_t)) {
  if (!(bits == 1 || bits == 2 || bits == 3 || bits == 4 || bits == 8) || out_cols < K) return -1;
  if (M == 0) return 1;
  if ((K > 0 && !codes) || !levels || !out) return -1;
  const auto pack = tier >= 1 && simd ? simd : scalar;
  return parallel_row_blocks(M, K, [&](size_t m0, size_t m1) {
    return pack(codes + m0 * K, m1 - m0, K, bits, levels, out + m0 * out_cols, out_cols);
  }) ? 1 : 0;
}

}  // namespace lowbit
