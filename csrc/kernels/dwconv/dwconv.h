// Family "dwconv": depthwise convolution (groups == Cin == Cout) on NHWC
// activation codes, one native call per layer (driver: ops/conv.h).
//
// It is not a GEMM (no reduction over channels), so it has its own small
// kernel table (dwconv_kernels(), ops/conv.cc) instead of a KernelInfo row.
//
// Data the kernels see (prepared by the driver):
//  * x: the input decoded to int16 LEVELS, zero padded: (B, Hp, Wp, Cp) with
//    Hp = H + 2 ph, Wp = W + 2 pw, Cp = C rounded up to kDwconvChannelBlock.
//    Padding pixels and channels >= C hold level 0, so zero padding is exact
//    whatever the activation codebook (no correction, even for bipolar).
//  * w: weight levels, (taps, Cp) int16, tap t = ky * kw + kx; channels >= C
//    hold 0.
//  * One call computes one output row: OW pixels x Cp channels of exact
//    int32 sums, out[ox * Cp + c] = sum_t x_row[ox * sw * Cp + tap_off[t] + c]
//    * w[t * Cp + c], where x_row is the top-left input pixel of the row and
//    tap_off[t] = (ky * dh * Wp + kx * dw) * Cp.
//
// Levels are integers in [-128, 255] (codebook contract), so one product
// |a * w| <= max|a| * max|w| = P <= 65025.
// Accumulator bound (AVX2): when P <= 32767 the products are exact int16
// (vpmullw) and up to tap_flush = floor(32767 / P) of them are summed in
// int16 lanes before widening to int32; when P > 32767 (tap_flush = 0) the
// levels are widened first and multiplied in int32 (vpmulld). int32 sums wrap
// modulo 2^32; the caller checks taps <= K_max = floor((2^31 - 1) / P), so the
// true sum fits and the wrapped sum equals it.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/cpu_features.h"

namespace lowbit {

constexpr size_t kDwconvChannelBlock = 16;  // Cp is a multiple of this (one ymm of int16)

struct DwconvRowArgs {
  const int16_t* x_row;    // input pixel (b, oy * sh, 0) of the padded levels, channel 0
  const int16_t* w;        // (taps, Cp) weight levels
  const size_t* tap_off;   // [taps] element offsets of the taps from an output pixel's top-left input
  size_t taps;
  size_t Cp;
  size_t OW;
  size_t x_step;           // elements between the top-left inputs of neighbouring output pixels (sw * Cp)
  int tap_flush;           // int16 taps before widening; 0: int32 products (see the bound above)
  int32_t* out;            // (OW, Cp) int32
};

using DwconvRowFn = void (*)(const DwconvRowArgs&);
// Decodes n codes to int16 levels: out[i] = levels[codes[i]]. Returns false
// (output unspecified) when a code is >= 2^bits. bits in {1, 2, 3, 4, 8}.
using DecodeFn = bool (*)(const uint8_t* codes, size_t n, int bits, const int16_t* levels, int16_t* out);

struct DwconvKernelInfo {
  const char* name;  // dwconv_<pixels>x<channels>__<tier>
  Tier tier;
  DwconvRowFn row;
  DecodeFn decode;   // the same tier's level decoder (also used by the grouped-convolution driver)
  const char* description;
};

// Every depthwise kernel built into this binary, scalar first.
const DwconvKernelInfo* dwconv_kernels(size_t* count);

void dwconv_row__scalar(const DwconvRowArgs& a);
bool decode_levels__scalar(const uint8_t* codes, size_t n, int bits, const int16_t* levels, int16_t* out);
#if LOWBIT_HAVE_X86_KERNELS
// 16 channels per ymm (int16 levels), vpmullw + vpaddw with the tap_flush
// bound, or vpmovsxwd + vpmulld when tap_flush == 0.
void dwconv_row__avx2(const DwconvRowArgs& a);
// bits <= 4: vpshufb on 32 codes at a time (1-4-bit levels fit int8); 8 bits: scalar lookups.
bool decode_levels__avx2(const uint8_t* codes, size_t n, int bits, const int16_t* levels, int16_t* out);
#endif

}  // namespace lowbit
