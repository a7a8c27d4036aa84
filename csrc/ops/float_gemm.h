// Float32 convolution and linear layers: the `conv_f32` / `linear_f32` nodes
// of lowbit.Model (layers whose input is not quantized, e.g. the first
// convolution of a model that reads the raw image), natively.
//
// Summation order (the contract; every tier, thread count and tiling):
//
//   out[m, n] = (((0 + a[m, 0] * w[0, n]) + a[m, 1] * w[1, n]) + ...
//                + a[m, K-1] * w[K-1, n]) + bias[n]
//
// every product and every sum rounded to float32 (no FMA: the file is built
// with -ffp-contract=off like the rest), k running over the im2col row of
// output pixel m in (ky, kx, c) order over the group's channels, a padded
// tap reading 0.0f. Because each output is this fixed chain of IEEE
// operations, the AVX2 tier (8 output channels a vector, each lane one
// chain) and the scalar twin give identical bits, and so does the NumPy
// reference (lowbit.runtime.floatops with native=False), which runs the same
// chain vectorized over the outputs. BLAS sums in another order and agrees
// only to float rounding.
//
// Layouts: x is NHWC (B, H, W, groups * cg) float32, out is
// (B, OH, OW, cout) float32, weights arrive in ONNX order
// (cout, cg, kh, kw). A linear layer is the 1x1 convolution of a 1x1 map.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "ops/pack.h"  // ConvGeometry

namespace lowbit {

// Output channels per packed weight panel (two AVX2 vectors).
constexpr size_t kFloatPanel = 16;
// Output rows one register tile computes at once.
constexpr size_t kFloatTileRows = 6;

// One layer's weights, packed once (plan time) for every run.
//  * dense / grouped: per group, ceil(opg / kFloatPanel) panels; panel p
//    holds w[k][p * 16 + j] at [k * 16 + j] (k in im2col order), zero for
//    channels past opg.
//  * depthwise (cg == 1 and cout == groups): taps x cout, w[t][c].
class FloatConv {
 public:
  // w: (cout, cg, kh, kw) float32; bias: cout values or nullptr (none).
  // The caller checked the sizes (cout % groups == 0, all >= 1).
  FloatConv(const float* w, const float* bias, size_t cout, size_t cg, size_t kh, size_t kw, size_t groups);

  // out = conv(x) under geometry g (g.C == groups * cg, g.kh/kw == kh/kw),
  // split over the thread pool. `simd`: the AVX2 tier when the CPU has it.
  void run(const float* x, const ConvGeometry& g, float* out, bool simd) const;

  // The kernel run() uses ("f32gemm_avx2", "f32dwconv_scalar", ...).
  const char* kernel_name(bool simd) const;

  size_t cout, cg, kh, kw, groups;
  size_t K;    // kh * kw * cg: one output's chain length
  size_t opg;  // output channels per group
  bool depthwise;

 private:
  size_t panels_;               // panels per group (dense)
  std::vector<float> packed_;   // see above
  std::vector<float> bias_;     // empty: no bias; dense: per group, padded to whole panels
  bool has_bias_ = false;
};

// Up to kFloatTileRows rows of A, read in place: row r's chain values
// a[r, k] are, for k = s * seg_len + t (segment s < nseg, t < seg_len),
// base[s * seg_stride + r * lda + t]. An im2col row block is one segment of
// K values a row; a convolution window wholly inside the image, rows being
// consecutive output pixels of one output row, is kh segments (one per
// kernel row: kw * C contiguous input values) read straight from the input.
struct FloatTile {
  const float* base;
  size_t seg_stride, nseg, seg_len, lda;
  size_t rows;     // 1..kFloatTileRows
  size_t out_row;  // the tile's first row in the block's output
};

// Tiles times panels [p0, p1) of `panels` (one group's): columns
// n = p * 16 + j < N of output row out_row + r written to out[row * ldo + n]
// (+ bias[n] when bias is not null; bias is padded to whole panels). The
// scalar twin and the AVX2 tier; identical results.
void float_gemm_tiles_scalar(const FloatTile* tiles, size_t ntiles, const float* panels, size_t p0, size_t p1,
                             const float* bias, size_t N, float* out, size_t ldo);
// Depthwise output rows [r0, r1) (row r: image r / OH, output row r % OH)
// of weights w (taps x C), bias (C or null).
void float_dwconv_rows_scalar(const float* x, const ConvGeometry& g, const float* w, const float* bias, size_t r0,
                              size_t r1, float* out);
// ---- Exact codes of a quantizer fed by a float layer (lowbit.exact_float).
//
// A `quantize` node (step, qn..qp, round half to even) whose float32 input y is
// clamp(affine(conv_f32(x))) (the affine and the clamp optional) writes the codes
// of the float64 formula, as a float64 run of the source model decides them:
//
//   z = (((0 + x_0 * w_0) + x_1 * w_1) + ... + x_{K-1} * w_{K-1}) + conv_bias[c]
//       in float64, in the layer's chain order above (a padded tap reads 0),
//       w the exact weights w64 when given (float32(w64) == w), else w
//   v = z * scale64[c] + bias64[c]          (the affine's float64 values; none: v = z)
//   v = min(max(v, clamp_lo), clamp_hi)
//   code = min(max(rint(v / d[c]), qn), qp) - qn   (NaN: code 0)
//
// d[c] = step64, or the quantizer's per-channel step divisor64[c] (the node then
// reads y already multiplied by float32(1 / divisor64[c]) and has step 1).
//
// The quantize node computed codes from y; fix_float_quantize_ties recomputes
// only the outputs whose y lies within a proven bound of a rounding boundary
// (derivation in float_gemm_exact.cc) and rewrites their codes.
struct ExactFloatQuantize {
  const float* w = nullptr;          // (cout, cg, kh, kw), the layer's weights
  const double* w64 = nullptr;       // the same, exact (float32(w64) == w), or null (w)
  const float* conv_bias = nullptr;  // cout values or null
  const double* scale64 = nullptr;   // cout values or null (no affine)
  const double* bias64 = nullptr;    // cout values or null (no affine)
  const float* scale32 = nullptr;    // the affine's float32 values (null: no affine)
  const float* bias32 = nullptr;
  double clamp_lo = -INFINITY, clamp_hi = INFINITY;
  double step64 = 1;
  const double* divisor64 = nullptr;  // cout per-channel steps or null
  int32_t qn = 0, qp = 0;
  size_t cout = 0, cg = 0, groups = 1;
};

// y: the quantize node's float32 input, (B, OH, OW, cout); codes: its codes, the
// same layout, rewritten where near a tie; x: the layer's NHWC input under g.
// `simd`: the AVX2 scan when the CPU has it (the same outputs recomputed).
// Returns the number of outputs recomputed.
size_t fix_float_quantize_ties(const ExactFloatQuantize& p, const float* x, const ConvGeometry& g, const float* y,
                               uint8_t* codes, bool simd = true);
// The scan of one row of n outputs: near[c] = 1 where output c is within the bound
// of a rounding boundary (delta[c]: its channel's part); returns whether any is.
bool float_quantize_near_row(const float* y, size_t n, const float* delta, float inv, float hi_edge, float lo_edge,
                             uint8_t* near);

#if LOWBIT_HAVE_X86_KERNELS
bool float_quantize_near_row__avx2(const float* y, size_t n, const float* delta, float inv, float hi_edge,
                                   float lo_edge, uint8_t* near);
void float_gemm_tiles__avx2(const FloatTile* tiles, size_t ntiles, const float* panels, size_t p0, size_t p1,
                            const float* bias, size_t N, float* out, size_t ldo);
void float_dwconv_rows__avx2(const float* x, const ConvGeometry& g, const float* w, const float* bias, size_t r0,
                             size_t r1, float* out);
#endif

}  // namespace lowbit
