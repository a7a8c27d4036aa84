// Family "grouplut": activation-selected product-sum tables, lanes along N.
// (lowbit's multi-MAC lookup; see docs/kernels.md for how it relates to
// DeepGEMM's product LUT and to T-MAC/BiQGEMM activation tables.)
//
// A group is gw consecutive k. For every possible group of activation codes
// `acode` and group of weight codes `widx`, the table holds the exact sum
//     tab[acode][widx] = sum_j cbA[acode_j] * cbW[widx_j]      (j < gw)
// so one byte lookup performs gw multiply-accumulates. The tables depend only
// on the two codebooks: they are built at pack time, never per call. At run
// time the activation group code picks a 16-byte table (a scalar address) and
// 32 weight-group indices (32 output channels) look it up with one vpshufb.
//
// Parameters: index bits bw*gw <= 4 (vpshufb), activation group bits
// ba*gw <= 8 (so at most 256 tables, 4 KiB, always L1-resident).
//
// K step: one group. k_steps = G = ceil(K / gw).
// Packed activations: one byte per group, code = sum_j a[g*gw + j] << (ba*j);
//   positions >= K hold code 0. Row stride >= G bytes. When ba*gw <= 6 the
//   byte may hold code << 2 instead (UKernelArgs::a_code_shift = 2): the
//   table address code * 32 is then byte * 8, one addressing mode.
// Kernel-layout weights: n-blocks of NR = 32 output channels; block b starts at
//   w + b * (G * 32); byte [g * 32 + i] = sum_j w[32b + i][g*gw + j] << (bw*j)
//   (bits 4..7 zero). Channels >= N hold code 0.
// Tables: 256 tables x 32 int8 (8192 bytes): each 16-entry table is stored
//   twice in a row so a kernel loads it for both 128-bit lanes with a plain
//   32-byte load (a broadcast from memory costs a shuffle-port uop on some
//   cores). Tables and entries that cannot be indexed are 0. Requires
//   Tmax = max|entry| <= 127.
// Accumulator bounds: an int8 lane takes flush8 = floor(127 / Tmax) lookups,
//   then is widened into two int16 lanes (even/odd channels); an int16 lane
//   takes flush16 = floor(32767 / (flush8 * Tmax)) widenings, then is added
//   into int32 (which wraps modulo 2^32; the driver bounds K so the corrected
//   result fits).
// Padding: each padded k adds cbA[0] * cbW[0]; the driver subtracts
//   (G * gw - K) * cbA[0] * cbW[0].
// Centred tables: the entries may all be offset by one constant b (chosen at
//   pack time to minimise Tmax, hence widen less often); every step then adds
//   b, and the driver also subtracts G * b.
#pragma once
#include "kernels/ukernel.h"

namespace lowbit {

constexpr int kGrouplutLanes = 32;

void grouplut__scalar(const UKernelArgs& p);
#if LOWBIT_HAVE_X86_KERNELS
void grouplut__avx2(const UKernelArgs& p);
#endif
#if LOWBIT_HAVE_ARM_KERNELS
void grouplut__neon(const UKernelArgs& p);
#endif

}  // namespace lowbit
