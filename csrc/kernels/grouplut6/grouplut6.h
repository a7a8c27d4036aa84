// Family "grouplut6": grouplut with 64-entry tables for AVX-512 VBMI.
//
// Same idea as grouplut (csrc/kernels/grouplut/grouplut.h): for every group
// of gw activation codes a table of the exact sums of gw products, indexed by
// gw weight codes; the activation group code picks the table. Here the index
// has up to 6 bits (vpermb on zmm looks up 64 bytes by index bits 0-5), so a
// lookup performs gw = 6 / bw multiply-accumulates: 3 for W2, 6 for W1,
// 2 for W3 (grouplut: 2, 4, 1).
//
// Parameters: bw * gw <= 6, ba * gw <= 8 (at most 256 tables).
// K step: one group. k_steps = G = ceil(K / gw).
// Packed activations: one byte per group, code = sum_j a[g*gw + j] << (ba*j);
//   positions >= K hold code 0.
// Kernel-layout weights: blocks of 64 output channels; block b starts at
//   w + b * (G * 64); byte [g * 64 + i] = sum_j w[64b + i][g*gw + j] << (bw*j)
//   (bits 6..7 zero). Channels >= N hold code 0 (N padded to a multiple of
//   64). A kernel with NR = 128 reads two consecutive blocks per n-tile
//   (UKernelArgs::w = block 2t; block 2t + 1 exists only when nr > 64).
// Tables: 256 tables x 64 int8 (16384 bytes; entries that cannot be indexed
//   are 0). Requires Tmax = max|entry| <= 127.
// Accumulator bounds (every kernel): as grouplut: int8 lanes take
//   flush8 = floor(127 / Tmax) lookups (|sum| <= flush8 * Tmax <= 127), then
//   are widened into two int16 lanes (even / odd channels; by shifts or by
//   vpmaddubsw against 0/1 selectors, both exact); int16 lanes take
//   flush16 = floor(32767 / (flush8 * Tmax)) widenings (|sum| <= 32767), then
//   are added into int32, which wraps modulo 2^32 (the driver bounds K).
// Padding: each padded k adds cbA[0] * cbW[0]; the driver subtracts it.
#pragma once
#include "kernels/ukernel.h"

namespace lowbit {

constexpr int kGrouplut6Lanes = 64;

void grouplut6__scalar(const UKernelArgs& p);
#if LOWBIT_HAVE_X86_KERNELS
void grouplut6__avx512icl(const UKernelArgs& p);        // 4 rows x 64 channels
void grouplut6_4x128__avx512icl(const UKernelArgs& p);  // 4 rows x 128: one table load per two blocks
#endif

}  // namespace lowbit
