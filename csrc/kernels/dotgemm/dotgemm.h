// Family "dotgemm": the exact general path. No tables: codes are decoded to
// int16 levels (weights once at pack time, activations per call by the packer
// below) and multiplied with int16 x int16 -> int32 pair dot products.
//
// Used for 8-bit operands (W8A8, W8 x A1-4, W1-4 x A8) and for any 1-4-bit
// pair whose codebook products are too large for the LUT families. It stays
// out of the LUT claims: it exists so that whole models run exactly and fast.
//
// Levels: every codebook value is an integer in [-128, 255] (8-bit codebooks;
// 1-4-bit ones are in [-128, 127]), stored as int16.
//
// K step: one k pair (2 consecutive k). k_steps = S = ceil(K / 2).
//
// Packed activations (row stride >= 4 * S bytes): row m is S pairs of int16,
//   little-endian, natural k order: bytes [4s, 4s + 4) hold
//   level(a[m][2s]), level(a[m][2s + 1]). Positions k >= K hold level 0 (not
//   the level of code 0), so padding contributes nothing.
// Kernel-layout weights: tiles of NR output channels (NR = the kernel's nr);
//   tile t starts at w + t * (S * NR * 4). Inside a tile, step s occupies
//   NR * 4 bytes (w_stride = NR * 4) and channel i of it the 4 bytes at
//   s * NR * 4 + 4 * i: level(w[NR*t + i][2s]), level(w[NR*t + i][2s + 1]) as
//   int16. Channels >= N and positions k >= K hold level 0.
//   So one 32-byte load (AVX2) or 64-byte load (AVX-512) of a step is the
//   (k pair x 8 or 16 channels) operand of vpmaddwd / vpdpwssd, and the
//   activation pair is a 32-bit broadcast.
// Tables: none (table_bytes = 0; the registry says TableKind::i8 only so that
//   dispatch's table-kind match is trivial). flush8 / flush16 are unused.
//
// Accumulator bound: one step adds a0*w0 + a1*w1 to an int32 lane, with
//   |a*w| <= 255 * 255 = 65025, so |pair| <= 130050 < 2^31: vpmaddwd's only
//   overflow case (-32768 * -32768 twice) cannot occur, and vpdpwssd (the
//   non-saturating form) adds the same exact pair. int32 lanes then wrap
//   modulo 2^32; the driver guarantees K <= K_max = floor((2^31-1) / max|a*w|),
//   so the true result fits and the wrapped sum equals it. No narrow stage,
//   no flush.
// Padding: none to correct (levels 0), padded_k = K; the driver correction is 0.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/ukernel.h"

namespace lowbit {

constexpr int kDotgemmStepBytes = 4;  // one k pair of int16 levels

void dotgemm__scalar(const UKernelArgs& p);
#if LOWBIT_HAVE_X86_KERNELS
void dotgemm_6x16__avx2(const UKernelArgs& p);
void dotgemm_8x32__avx512(const UKernelArgs& p);
void dotgemm_8x32__avx512icl(const UKernelArgs& p);
#endif
#if LOWBIT_HAVE_ARM_KERNELS
void dotgemm_4x8__neon(const UKernelArgs& p);
#endif

// Activation packer: out[m][k] = levels[codes[m][k]] for k < K and 0 for
// K <= k < out_cols (row stride out_cols int16). codes is M x K, row stride K.
// levels has 2^bits entries. Returns false (output unspecified) when a code
// is >= 2^bits. bits in {1, 2, 3, 4, 8}.
bool dotgemm_pack_a__scalar(const uint8_t* codes, size_t M, size_t K, int bits, const int16_t* levels, int16_t* out,
                            size_t out_cols);
#if LOWBIT_HAVE_X86_KERNELS
bool dotgemm_pack_a__avx2(const uint8_t* codes, size_t M, size_t K, int bits, const int16_t* levels, int16_t* out,
                          size_t out_cols);
#endif
#if LOWBIT_HAVE_ARM_KERNELS
bool dotgemm_pack_a__neon(const uint8_t* codes, size_t M, size_t K, int bits, const int16_t* levels, int16_t* out,
                          size_t out_cols);
#endif

}  // namespace lowbit

namespace lowbit {

// The activation packer, multi-threaded over rows (call without the GIL):
// (M, K) codes -> (M, out_cols) int16 levels, zero padded. tier: 0 = scalar,
// >= 1 = the SIMD packer when built (AVX2, or NEON on Arm64). Returns 1 on success, 0 when a code is out of range,
// -1 on bad arguments. Bound to Python as _core.dotgemm_pack_activations.
int dotgemm_pack_activations(const uint8_t* codes, size_t M, size_t K, int bits, const int16_t* levels,
                             int16_t* out, size_t out_cols, int tier);

}  // namespace lowbit
