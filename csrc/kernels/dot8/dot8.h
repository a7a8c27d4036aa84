// Family "dot8": exact byte dot products with narrow accumulators. No tables:
// activation codes are decoded to uint8 levels, weight codes to int8 levels,
// and vpmaddubsw (u8 x s8 -> int16 pair sums) adds four k per int32 lane
// pair straight into int16 accumulators, widened to int32 (vpmaddwd with
// ones) only every `flush16` steps. An int8 engine must widen after every
// vpmaddubsw (8-bit products overflow int16 pairs quickly); small levels let
// dot8 skip that, so it does twice the MACs per instruction of dotgemm.
//
// Applies when activation levels are in [0, 255], weight levels in
// [-128, 127], and 2 * max|a| * max|w| <= 32767 (every 1-4-bit pair with the
// default codebooks, W1-4 x A8 with unsigned 8-bit activations, W8 x A1-4
// with small activation levels). Otherwise dotgemm is the exact path.
//
// K step: one k quad (4 consecutive k). k_steps = S = ceil(K / 4).
//
// Packed activations (row stride >= 4 * S bytes): row m holds the uint8
//   levels level(a[m][k]) in natural k order; positions k >= K hold level 0
//   (not the level of code 0), so padding contributes nothing.
// Kernel-layout weights: tiles of NR output channels (NR = the kernel's nr);
//   tile t starts at w + t * (S * NR * 4). Inside a tile, step s occupies
//   NR * 4 bytes (w_stride = NR * 4) and channel i of it the 4 bytes at
//   s * NR * 4 + 4 * i: the int8 levels of w[NR*t + i][4s .. 4s + 3].
//   Channels >= N and positions k >= K hold level 0. So one 32-byte load is
//   the (k quad x 8 channels) operand of vpmaddubsw and the activation quad
//   is a 32-bit broadcast.
// Indirect activations (convolution): K is made of segments of seg_steps
//   quads; row m's segment s starts at a_ind[m * a_ind_stride + s] (4 * seg_steps
//   consecutive level bytes). The int16 accumulators carry over segment
//   boundaries; the widening count runs over the whole K.
// Tables: none (table_bytes = 0). flush8 is unused.
//
// Accumulator bound: vpmaddubsw gives lane j of channel c the pair sum
//   a[2j]*w[c][2j] + a[2j+1]*w[c][2j+1], |pair| <= P = 2 * max|a| * max|w|
//   <= 32767: it never saturates. An int16 lane takes at most flush16 =
//   floor(32767 / P) such steps before it is widened, so it never wraps.
//   vpmaddwd with ones then adds the two int16 lanes of a channel into its
//   int32 lane (|sum| <= 65534). int32 lanes wrap modulo 2^32; the driver
//   guarantees K <= K_max, so the true result fits.
//   (That bound is the AVX2 kernel's. The VNNI kernel, dot8_8x32__avx512icl,
//   adds each lane's four products straight into int32 with vpdpbusd, and
//   the scalar twin sums in int32: both are exact for every uint8 x int8
//   level pair, registered as TableKind::i32, and run the family's "i32"
//   plans, whose pair sums exceed int16: W8A8 with unsigned activations and
//   int8 weights, W1-4 x A8 with wide weight levels; also signed 8-bit
//   activations, packed as level + 128, for which the op driver subtracts
//   128 * sum_k w[n][k] per channel (GemmCall::col_correction).)
// Padding: none to correct (level 0), padded_k = K; the driver correction is 0.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/ukernel.h"

namespace lowbit {

constexpr int kDot8StepBytes = 4;  // one k quad of byte levels

void dot8__scalar(const UKernelArgs& p);
#if LOWBIT_HAVE_X86_KERNELS
void dot8_4x16__avx2(const UKernelArgs& p);
void dot8_8x32__avx512icl(const UKernelArgs& p);
#endif
#if LOWBIT_HAVE_ARM_KERNELS
void dot8_4x8__neon(const UKernelArgs& p);       // mla int16 + sadalp (Armv8.0)
void dot8_4x16__neondot(const UKernelArgs& p);   // udot on biased weights, minus 128 * activation sums
void dot8_4x16__neoni8mm(const UKernelArgs& p);  // sudot (i8mm)
#endif

// Activation packer: out[m][k] = levels[codes[m][k]] for k < K and 0 for
// K <= k < out_cols (row stride out_cols bytes). codes is M x K, row stride
// K; levels has 2^bits entries. Returns false (output unspecified) when a
// code is >= 2^bits. bits in {1, 2, 3, 4, 8}.
bool dot8_pack_a__scalar(const uint8_t* codes, size_t M, size_t K, int bits, const uint8_t* levels, uint8_t* out,
                         size_t out_cols);
#if LOWBIT_HAVE_X86_KERNELS
bool dot8_pack_a__avx2(const uint8_t* codes, size_t M, size_t K, int bits, const uint8_t* levels, uint8_t* out,
                       size_t out_cols);
#endif
#if LOWBIT_HAVE_ARM_KERNELS
bool dot8_pack_a__neon(const uint8_t* codes, size_t M, size_t K, int bits, const uint8_t* levels, uint8_t* out,
                       size_t out_cols);
#endif

// The packer, multi-threaded over rows (call without the GIL). tier: 0 =
// scalar, >= 1 = the SIMD packer when built (AVX2, or NEON on Arm64). Returns 1 on success, 0 when a code is out
// of range, -1 on bad arguments. Bound to Python as _core.dot8_pack_activations.
int dot8_pack_activations(const uint8_t* codes, size_t M, size_t K, int bits, const uint8_t* levels, uint8_t* out,
                          size_t out_cols, int tier);

}  // namespace lowbit
