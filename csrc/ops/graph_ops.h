// The model runtime's non-GEMM graph operations, natively. Each function is
// bit-identical to the NumPy function of python/lowbit/runtime.py named in
// its comment (that NumPy code is the specification and stays the reference
// executor's implementation). All of it is compiled with -ffp-contract=off
// (no FMA contraction): every float step below is rounded as written.
//
// Layouts: feature maps are NHWC (B, H, W, C), C-contiguous; flat values
// are (B, F). Callers pass valid, non-overlapping buffers of the sizes
// stated; nothing here allocates or throws. Functions taking a ThreadPool
// may split work across it; results never depend on the thread count.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "ops/pack.h"  // ConvGeometry, maxpool_nhwc_f32

namespace lowbit {

// runtime.quantize: float32 -> uint8 codes of a `quantize` node.
//   binary:   code = (x >= 0)                      (NaN -> 0)
//   pre_step: x = rint_half_even(x / pre_step) (float32 true division), then
//             x = x * pre_inv_div (float32, pre_inv_div = float32(1 / pre_div)),
//             then the rule below with step = 1
//   else:     code = rint_half_even(min(max(x / step, qn), qp)) - qn
//             (float32 true division; NaN -> code 0), as quantize_codes
//             (ops/epilogue.h).
struct QuantizeParams {
  bool binary = false;
  float step = 1;
  int32_t qn = 0, qp = 0;  // -128 <= qn <= qp <= qn + 255
  bool pre = false;        // QONNX Trunc form
  float pre_step = 1, pre_inv_div = 1;
  bool simd = true;  // quantize_codes' AVX2 twin when built and the CPU has it (same results)
};
void quantize_f32(const float* x, size_t n, const QuantizeParams& p, uint8_t* out);
// The same rule reading NCHW float32 x (B, C, H, W) and writing NHWC codes
// (the model input's transpose fused into its first quantizer).
void quantize_nchw_to_nhwc(const float* x, size_t B, size_t C, size_t H, size_t W, const QuantizeParams& p,
                           uint8_t* out, std::atomic<bool>* nonfinite = nullptr);
// With `nonfinite` set, quantize_nchw_to_nhwc also stores true there when a
// value of x is NaN or +-Inf (checked chunk by chunk as it is read, so the
// executor's input check needs no pass of its own); the codes are the same.
// Whether all n floats are finite: no value has every exponent bit set.
bool all_finite_f32(const float* x, size_t n);

#if LOWBIT_HAVE_X86_KERNELS
// quantize_nchw_to_nhwc's byte transpose of three channel planes (an RGB
// image's codes): out[3 * i + c] = planes[c * len + i] for i < len, 16
// pixels a time with byte shuffles (identical bytes to the scalar loop).
void interleave3_u8__avx2(const uint8_t* planes, size_t len, uint8_t* out);
#endif

// runtime.dequantize: out[i] = float32(levels[codes[i]]) * step (float32).
// `levels` has 2**bits entries; codes are < 2**bits (produced in-graph).
void dequantize_codes(const uint8_t* codes, size_t n, const int32_t* levels, float step, float* out);

// Layout changes (exact copies).
void nchw_to_nhwc_f32(const float* x, size_t B, size_t C, size_t H, size_t W, float* out);
void nhwc_to_nchw_f32(const float* x, size_t B, size_t H, size_t W, size_t C, float* out);
// runtime._flatten: NHWC (B, H, W, C) -> (B, C*H*W) in NCHW order.
void flatten_nhwc_f32(const float* x, size_t B, size_t H, size_t W, size_t C, float* out);
void flatten_nhwc_u8(const uint8_t* x, size_t B, size_t H, size_t W, size_t C, uint8_t* out);

// `add` node: out = a + b (float32).
void add_f32(const float* a, const float* b, size_t n, float* out);
// `clamp` node: out = minimum(maximum(x, lo), hi) with NumPy's NaN rule (a
// NaN x stays NaN); lo may be -inf and hi +inf.
void clamp_f32(const float* x, size_t n, float lo, float hi, float* out);
// `affine` node: out[r, c] = (x[r, c] * scale[c]) + bias[c], each step float32.
void affine_f32(const float* x, size_t rows, size_t C, const float* scale, const float* bias, float* out);

// runtime.avgpool on NHWC float32 (g.dh == g.dw == 1): float64 sums over the
// window taps in (ky, kx) order, the first tap's value (0.0 for padding) as
// the start; divided (float64) by kh*kw when count_include_pad or there is
// no padding, else by the count of in-image taps; rounded to float32.
void avgpool_nhwc_f32(const float* x, const ConvGeometry& g, bool count_include_pad, float* out);
// runtime.adaptive_avgpool: output cell (i, j) averages rows
// [floor(i*H/OH), ceil((i+1)*H/OH)) and columns [floor(j*W/OW), ceil((j+1)*W/OW)):
// float64 sum in row-major (y, x) order with the first tap's value as the
// start, divided (float64) by the cell count, rounded to float32.
// Both sums add with NumPy's NaN rule: when both operands are NaN, the sum is
// the running sum's NaN.
void adaptive_avgpool_nhwc_f32(const float* x, size_t B, size_t H, size_t W, size_t C, size_t OH, size_t OW,
                               float* out);

// maxpool_nhwc_f32 (ops/pack.h, the scalar rule), or its AVX2 twin when
// `simd` and the CPU has it (identical results).
void maxpool_nhwc(const float* x, const ConvGeometry& g, float* out, bool simd);
#if LOWBIT_HAVE_X86_KERNELS
void maxpool_nhwc_f32__avx2(const float* x, const ConvGeometry& g, float* out);
#endif

// Max pooling of NHWC uint8 codes (a `maxpool` node reading codes: see
// lowbit.lowering.requant_before_maxpool): out = the largest code among the
// window's in-image taps; padding taps never win (they stand for the lowest
// code, the code of -inf), and a window with no in-image tap gives code 0.
// `simd`: the AVX2 twin when the CPU has it (identical results).
void maxpool_nhwc_u8(const uint8_t* x, const ConvGeometry& g, uint8_t* out, bool simd);
void maxpool_nhwc_u8__scalar(const uint8_t* x, const ConvGeometry& g, uint8_t* out);
#if LOWBIT_HAVE_X86_KERNELS
void maxpool_nhwc_u8__avx2(const uint8_t* x, const ConvGeometry& g, uint8_t* out);
#endif

}  // namespace lowbit
