// Family "bitserial": AND + popcount over bit planes, for 1-bit weights and
// 1- or 2-bit activations (W1A1, W1A2).
//
// Any 2-level codebook is affine in its code bit: cbW[w] = aw + bw * w. An
// activation codebook is accepted when it is affine in its code bits,
// cbA[c] = aa + sum_b ba_b * bit_b(c) (every 1-bit codebook; a 2-bit one when
// cbA[3] = cbA[1] + cbA[2] - cbA[0], i.e. a uniform grid). Then
//   y[m,n] = aw * (aa*K + sum_b ba_b * popc(A_b[m]))      (K: padded, see below)
//          + bw * (aa * popc(W[n]) + sum_b ba_b * popc(A_b[m] & W[n]))
// computed exactly in wrapping int32 arithmetic (the driver bounds K).
//
// K step: 256 codes (32 bytes of a bit plane). k_steps = ceil(K / 256).
// Packed activations: per row, ba planes of 32 * k_steps bytes, plane b first
//   (bit k of plane b = bit b of code a[m][k], LSB-first within bytes);
//   positions >= K are 0. Row stride >= ba * 32 * k_steps.
// Kernel-layout weights: one row per output channel (rows padded with zeros
//   to a multiple of NR) of 32 * (k_steps + 1) bytes: the bit plane
//   (bit k = w[n][k]) followed by a 32-byte trailer whose first 4 bytes hold
//   popc(W[n]) as uint32.
// "Tables" (8 int32): [aw, bw, aa, ba_0, ba_1, 0, ba, 0]. The formula runs
//   over the padded K = 256 * k_steps; padded positions (code 0 on both
//   sides) add cbA[0] * cbW[0] each, which the driver subtracts as usual.
// Accumulators: per-byte popcounts (<= 8 per iteration) are summed in int8
//   lanes for at most 31 iterations, then into 64-bit lanes (vpsadbw).
#pragma once
#include "kernels/ukernel.h"

namespace lowbit {

constexpr int kBitserialStepBytes = 32;

void bitserial__scalar(const UKernelArgs& p);
#if LOWBIT_HAVE_X86_KERNELS
void bitserial__avx2(const UKernelArgs& p);
void bitserial__avx512icl(const UKernelArgs& p);      // 1 row x 4 columns
void bitserial_4x4__avx512icl(const UKernelArgs& p);  // 4 rows x 4 columns (2 x 4 for A2)
#endif
#if LOWBIT_HAVE_ARM_KERNELS
void bitserial__neon(const UKernelArgs& p);
#endif

namespace {  // internal linkage, shared by the family's translation units

// y from the popcounts of one output (see the header comment).
inline uint32_t bitserial_row_popcount(const uint8_t* w_row, size_t k_steps) {
  const uint8_t* t = w_row + k_steps * 32;
  return uint32_t(t[0]) | uint32_t(t[1]) << 8 | uint32_t(t[2]) << 16 | uint32_t(t[3]) << 24;
}

inline int32_t bitserial_combine(const int32_t* coef, int ba, size_t k_steps, const uint32_t* pop_a,
                                 const uint32_t* pop_aw, uint32_t pop_w) {
  const uint32_t aw = uint32_t(coef[0]), bw = uint32_t(coef[1]), aa = uint32_t(coef[2]);
  const uint32_t k = uint32_t(k_steps * 256);  // padded K: the driver removes the padding terms
  uint32_t row = aa * k, cross = aa * pop_w;
  for (int b = 0; b < ba; ++b) {
    row += uint32_t(coef[3 + b]) * pop_a[b];
    cross += uint32_t(coef[3 + b]) * pop_aw[b];
  }
  return int32_t(aw * row + bw * cross);
}

}  // namespace
}  // namespace lowbit
