// Native convolution drivers for the layers that are not one GEMM:
//  * run_dwconv: depthwise (groups == Cin == Cout) on a dwconv kernel
//    (kernels/dwconv/dwconv.h), one call per layer;
//  * run_grouped_conv: 1 < groups, any channel counts, as one GEMM per group
//    on the dotgemm family (int16 levels), all inside one call.
// Both decode the NHWC codes once into zero-padded int16 levels, so padding
// is exact for every codebook, then apply the fused epilogue
// (ops/epilogue.h) per block of output rows. Results are exact int32 sums,
// identical to lowbit.reference.conv2d.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/dwconv/dwconv.h"
#include "ops/epilogue.h"
#include "ops/gemm.h"
#include "ops/pack.h"  // ConvGeometry

namespace lowbit {

// Output size of one spatial axis, or 0 when the input is too small.
size_t conv_out_size(size_t in, size_t k, size_t stride, size_t pad, size_t dilation);

// Largest taps an int16 accumulator may sum (dwconv.h bound), or 0 when one
// product may exceed int16 (max_abs_a * max_abs_w > 32767).
int dwconv_tap_flush(int max_abs_a, int max_abs_w);

struct DwconvCall {
  const DwconvKernelInfo* kernel;
  ConvGeometry g;
  const uint8_t* x;        // (B, H, W, C) codes
  int bits;
  const int16_t* a_levels; // 2^bits activation levels
  const int16_t* w;        // (kh * kw, Cp) weight levels, Cp = round_up(C, kDwconvChannelBlock)
  int tap_flush;           // dwconv_tap_flush(...)
  int32_t* c = nullptr;    // int32 output (B*OH*OW, C) when epilogue.kind == int32
  Epilogue epilogue;       // otherwise: its output (float32 or codes), N = C
};

// Runs the depthwise layer (multi-threaded over output rows). Returns false
// when a code is >= 2^bits (the output is then unspecified).
bool run_dwconv(const DwconvCall& call);

struct GroupedConvCall {
  const KernelInfo* kernel;  // a dotgemm kernel
  DecodeFn decode;
  ConvGeometry g;
  size_t groups, cout;       // cin per group = C / groups, cout per group = cout / groups
  const uint8_t* x;
  int bits;
  const int16_t* a_levels;
  const uint8_t* w;          // groups consecutive dotgemm weight layouts of geometry.w_bytes each
  int32_t* c = nullptr;      // int32 output (rows, cout) when epilogue.kind == int32
  Epilogue epilogue;         // otherwise: its output, N = cout
};

// `gg`: gemm_geometry of the kernel for N = cout / groups and
// k_steps = ceil(kh * kw * C / groups / 2). Returns false on a bad code.
bool run_grouped_conv(const GroupedConvCall& call, const GemmGeometry& gg);

// The level decoder GroupedConvCall::decode takes for a kernel of `tier`: the
// dwconv table's decoder of the highest tier at or below it (scalar first).
DecodeFn grouped_conv_decoder(Tier tier);

}  // namespace lowbit
