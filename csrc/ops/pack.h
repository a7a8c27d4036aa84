// Run-time activation packers.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/cpu_features.h"

namespace lowbit {

// Packs `group` consecutive codes of `bits` bits into one byte, LSB first:
//   out[m][j] = sum_i codes[m][group*j + i] << (bits*i),  for j < ceil(K/group)
// and zero-fills out[m][ceil(K/group) .. out_stride). Requires group*bits <= 8
// (vector paths for group 1, 2, 4, 8; others run the scalar rule). codes is
// M x K, row stride K (C-contiguous).
// Returns false (output unspecified) when any code is >= 2**bits.
bool pack_groups(const uint8_t* codes, size_t M, size_t K, int bits, int group, uint8_t* out, size_t out_stride,
                 Tier tier);

bool pack_groups__scalar(const uint8_t* codes, size_t M, size_t K, int bits, int group, uint8_t* out,
                         size_t out_stride);
#if LOWBIT_HAVE_X86_KERNELS
bool pack_groups__avx2(const uint8_t* codes, size_t M, size_t K, int bits, int group, uint8_t* out,
                       size_t out_stride);
#endif

}  // namespace lowbit
