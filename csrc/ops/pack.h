// Run-time activation packers.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/cpu_features.h"

namespace lowbit {

// Packs `group` consecutive codes of `bits` bits into one byte, LSB first:
//   out[m][j] = sum_i codes[m][group*j + i] << (bits*i),  for j < ceil(K/group)
// and zero-fills out[m][ceil(K/group) .. out_stride); each byte is then
// shifted left by `shift` (0..2, grouplut's table-offset form). Requires
// group*bits + shift <= 8
// (vector paths for group 1, 2, 4, 8; others run the scalar rule). codes is
// M x K, row stride K (C-contiguous).
// Returns false (output unspecified) when any code is >= 2**bits.
bool pack_groups(const uint8_t* codes, size_t M, size_t K, int bits, int group, int shift, uint8_t* out,
                 size_t out_stride, Tier tier);

// im2col for the convolution fallback: out[m] = concat over taps t of the
// C codes of input pixel rows[m][t] (a row of x), or C copies of pad_code
// when rows[m][t] < 0. x is npix x C, rows is M x taps, out is M x (taps*C).
// Returns false (nothing written) if a pixel index is >= npix.
bool gather_pixels(const uint8_t* x, size_t npix, size_t C, const int64_t* rows, size_t M, size_t taps,
                   uint8_t pad_code, uint8_t* out);

bool pack_groups__scalar(const uint8_t* codes, size_t M, size_t K, int bits, int group, int shift, uint8_t* out,
                         size_t out_stride);
#if LOWBIT_HAVE_X86_KERNELS
bool pack_groups__avx2(const uint8_t* codes, size_t M, size_t K, int bits, int group, int shift, uint8_t* out,
                       size_t out_stride);
#endif

}  // namespace lowbit
