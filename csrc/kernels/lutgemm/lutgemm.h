// Family "lutgemm": the paper-faithful DeepGEMM product lookup table, W2A2.
//
// Every product cbA[a] * cbW[w] of an activation level and a weight level is
// precomputed into a 16-entry table; packed 2-bit codes form 4-bit indices and
// a byte shuffle (vpshufb / vpermb) looks up 32 or 64 products at once.
//
// K step: 64 codes (16 bytes of a packed row). k_steps = ceil(K / 64).
// Kernels load 32 (AVX2) or 64 (AVX-512) bytes at a time and finish with a
// narrower, masked tail, so the waste is at most 63 codes per row.
//
// Packed activations (rows of 16 * k_steps bytes): byte j holds codes
// k = 4j, 4j+1, 4j+2, 4j+3 at bits [1:0], [3:2], [5:4], [7:6]. Positions >= K
// hold code 0.
//
// Kernel-layout weights (one row of 16 * k_steps bytes per output channel,
// rows padded to a multiple of NR): byte j holds
//   w[4j+1] at [1:0], w[4j] at [3:2], w[4j+3] at [5:4], w[4j+2] at [7:6]
// (the two codes of each nibble swapped, done once at pack time). Layout 1
// (KernelInfo::layout, the AVX2 kernel) instead stores, per pair of steps
// (32 dense bytes W; 16 for an odd last step), four pre-masked planes
//   [W & 0x03][W & 0x0C][(W >> 4) & 0x03][(W >> 4) & 0x0C]
// (row stride 64 * k_steps bytes), so every index is ONE OR with the
// matching activation plane (A & 0x0C, A & 0x03, (A>>4) & 0x0C, (A>>4) & 0x03,
// computed once per row and reused by 4 columns) and needs no mask at all:
// the unpacking work moves offline. Layout 0 is used as follows: one
// bitwise select per byte pair forms two 4-bit indices per byte:
//   i1 = (A & 0xCC) | (W & 0x33): nibbles (a1<<2 | w1), (a3<<2 | w3)  -> table T
//   i2 = (W & 0xCC) | (A & 0x33): nibbles (w0<<2 | a0), (w2<<2 | a2)  -> table Tt
//
// Tables, TableKind::i8 (32 bytes): T[a<<2|w] = cbA[a]*cbW[w] at [0, 16),
//   Tt[w<<2|a] = cbA[a]*cbW[w] at [16, 32). Requires 4 * max|product| <= 127:
//   the four lookups of one byte position are summed in an int8 lane.
// Tables, TableKind::split (64 bytes): the int16 product as low byte (uint8)
//   and high byte (int8): Tlo [0,16), Thi [16,32), Ttlo [32,48), Tthi [48,64).
//   product = Thi * 256 + Tlo.
//
// Accumulator bounds (P = max|product|). One loop iteration (a 32- or 64-byte
// load, or the tail) adds 4 products to each byte lane.
//   i8:    int8 lanes take flush8 = floor(127 / (4P)) iterations, then are
//          widened pairwise into int16 lanes (at most 2 * 4P * flush8 each
//          time); int16 lanes take flush16 = floor(32767 / (8P * flush8))
//          widenings, then go to int32. (Kernels may flush earlier.)
//   split: per iteration a 16-bit lane gets at most 8 low bytes (<= 255) or
//          8 high bytes (|hi| <= 64): flush16 = 16 iterations; flush8 unused.
// int32 lanes wrap modulo 2^32; the driver guarantees K <= K_max so the true
// result (after the padding correction) fits int32.
//
// Padding: k >= K contributes cbA[0]*cbW[0] per padded position; the driver
// subtracts (64 * k_steps - K) * cbA[0] * cbW[0].
#pragma once
#include "kernels/ukernel.h"

namespace lowbit {

constexpr int kLutgemmStepBytes = 16;

void lutgemm_w2a2_i8__scalar(const UKernelArgs& p);
void lutgemm_w2a2_split__scalar(const UKernelArgs& p);
#if LOWBIT_HAVE_X86_KERNELS
void lutgemm_w2a2_i8__avx2(const UKernelArgs& p);
void lutgemm_w2a2_split__avx2(const UKernelArgs& p);
void lutgemm_w2a2_i8__avx512(const UKernelArgs& p);
void lutgemm_w2a2_i8__avx512icl(const UKernelArgs& p);
void lutgemm_w2a2_split__avx512icl(const UKernelArgs& p);
#endif
#if LOWBIT_HAVE_ARM_KERNELS
void lutgemm_w2a2_i8__neon(const UKernelArgs& p);
#endif

}  // namespace lowbit
