// The step kinds of an executor plan (runtime/executor.h). Each holds the
// parameters of one native operation, fixed when the plan is built, and
// buffer ids resolved through the run's Context. The bindings
// (bindings/executor.cc) check every size before a step is made; run()
// trusts them.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/ukernel.h"
#include "ops/conv.h"
#include "ops/epilogue.h"
#include "ops/float_gemm.h"
#include "ops/gemm.h"
#include "ops/graph_ops.h"
#include "ops/pack.h"
#include "runtime/executor.h"

namespace lowbit {
namespace runtime {

// The fused epilogue of a conv/linear step, with its residual and output
// as buffers (col: first column written/read; stride: elements a row).
struct EpilogueSpec {
  OutKind kind = OutKind::float32;  // float32 or codes; int32: raw sums to `out` (scale/bias unused)
  const float* scale = nullptr;
  const float* bias = nullptr;
  float clamp_lo = 0, clamp_hi = 0, inv_step = 1;
  int32_t qmin = 0, qmax = 0;
  int out = -1;
  size_t out_col = 0, out_stride = 0;
  int residual = -1;
  size_t residual_col = 0, residual_stride = 0;
  int codes = -1;  // the second output (Epilogue::codes) or -1
  size_t codes_col = 0, codes_stride = 0;
  float codes_step = 1;
  int32_t codes_qn = 0, codes_qp = 0;
  bool simd = true;
  // codes output: the float64 parameters (Epilogue::scale64, bias64, step64)
  const double* scale64 = nullptr;
  const double* bias64 = nullptr;
  double step64 = 0;
  // codes output: the fast path's constants (code_constants of params(), made when the
  // plan is built; left unusable, every code is computed by exact_code)
  CodeConstants fast;

  // The parameters without the buffers; make: with this context's buffers.
  Epilogue params() const;
  Epilogue make(const Context& c) const;
};

// `quantize` node: float32 -> codes; `nchw`: the input is the caller's NCHW
// array (shape B, C, H, W) and the codes come out NHWC.
struct QuantizeStep : Step {
  int src = -1, dst = -1;
  size_t n = 0;
  bool nchw = false;
  size_t B = 0, C = 0, H = 0, W = 0;
  QuantizeParams params;
  bool run(Context& c) const override;
};

// `dequantize` node (and a codes model output).
struct DequantizeStep : Step {
  int src = -1, dst = -1;
  size_t n = 0;
  std::vector<int32_t> levels;
  float step = 1;
  bool run(Context& c) const override;
};

// Exact layout changes: the input's NCHW -> NHWC, an output's NHWC -> NCHW,
// flatten (NHWC -> NCHW order) of floats or codes, and plain copies.
struct LayoutStep : Step {
  enum class Kind { nchw_to_nhwc, nhwc_to_nchw, flatten_f32, flatten_u8, copy };
  Kind kind = Kind::copy;
  int src = -1, dst = -1;
  size_t d0 = 0, d1 = 0, d2 = 0, d3 = 0;  // the source's 4-D shape (copy: d0 = bytes)
  bool run(Context& c) const override;
};

// Element-wise float ops: `add`, `clamp`, `affine`.
struct EltwiseStep : Step {
  enum class Kind { add, clamp, affine };
  Kind kind = Kind::add;
  int a = -1, b = -1, dst = -1;  // b: add's second input
  size_t n = 0;                  // elements (affine: rows * C)
  float lo = 0, hi = 0;          // clamp
  size_t C = 0;                  // affine channels
  std::vector<float> scale, bias;
  bool run(Context& c) const override;
};

// `maxpool`, `avgpool`, `adaptive_avgpool` on NHWC float32; max_codes:
// `maxpool` on NHWC uint8 codes (maxpool_nhwc_u8).
struct PoolStep : Step {
  enum class Kind { max, avg, adaptive, max_codes };
  Kind kind = Kind::max;
  int src = -1, dst = -1;
  ConvGeometry g{};  // adaptive: B, H, W, C, OH, OW only
  bool count_include_pad = false;
  bool simd = true;  // max, max_codes: the AVX2 twin when the CPU has it (false under a forced scalar tier)
  bool run(Context& c) const override;
};

// im2col of NHWC codes (the convolution fallback), ops/pack.h; elem == 1
// and out_stride == kh*kw*C run im2col_nhwc itself.
//
// The same gather also runs on a map already converted to a dot family's
// packed levels (elem = 1: dot8's uint8 levels, 2: dotgemm's int16 levels):
// then out row r holds im2col row r's elements (pad_value where im2col
// writes the pad code, i.e. level(pad code)) followed by zeros up to out_stride
// elements -- exactly the family's packing of the im2col codes, since both
// packers map each code to its level independently and zero the row tail.
// A small-Cin stem levels H*W*C values instead of kh*kw times as many.
struct Im2colStep : Step {
  int src = -1, dst = -1;
  ConvGeometry g{};
  int16_t pad = 0;        // the padding element: the pad code, or level(pad code) on a levelled map
  size_t elem = 1;        // bytes per element: 1 or 2
  size_t out_stride = 0;  // elements per output row (>= kh*kw*C)
  bool run(Context& c) const override;
  // Output rows [m0, m1) of a levelled gather (elem 2 or out_stride > kh*kw*C).
  void gather_rows(Context& c, size_t m0, size_t m1) const;
};

// Channels [c0, c1) of (rows, C) codes, copied contiguous (a grouped
// convolution run group by group).
struct ChannelSliceStep : Step {
  int src = -1, dst = -1;
  size_t rows = 0, C = 0, c0 = 0, c1 = 0;
  bool run(Context& c) const override;
};

// Activation packing, in the layouts the families' pack_activations build
// (python/lowbit/families):
//  * groups:    pack_groups (grouplut, grouplut6, lutgemm), then pad_rows
//               rows packing K copies of pad_code;
//  * dotgemm:   int16 levels;  dot8: uint8 levels, the pad rows holding
//               the level of pad_code for k < K and 0 after;
//  * bitplanes: bitserial, `bits` planes of `plane` bytes a row (plane b of
//               row m at m * 2 * plane + b * plane), zero elsewhere; uses
//               scratch buffers `plane_codes` (M x K) and `plane_out`
//               (M x plane).
struct PackStep : Step {
  enum class Kind { groups, dotgemm, dot8, bitplanes };
  Kind kind = Kind::groups;
  int src = -1, dst = -1;
  size_t M = 0, K = 0;
  int bits = 0, group = 0, shift = 0;
  size_t out_stride = 0;  // bytes (groups, bitplanes: the whole row), levels (dotgemm, dot8)
  Tier tier = Tier::scalar;
  size_t pad_rows = 0;
  int pad_code = 0;
  std::vector<int16_t> levels16;
  std::vector<uint8_t> levels8;
  size_t plane = 0;
  int plane_codes = -1, plane_out = -1;
  std::vector<uint8_t> pad_codes;  // K copies of pad_code (groups)
  bool run(Context& c) const override;

  // The same packing done by the step that writes the codes (GemmStep::store;
  // groups kind only): store_tile packs the codes of rows [m0, m1) x columns
  // [n0, n1) into their bytes of the packed rows (n0 a multiple of `group`,
  // n1 too unless n1 == K; the tile with n1 == K also zeroes the row tails);
  // write_pad_rows writes the pad rows. Together, over a partition of the
  // M x K codes, they write exactly the bytes run() writes.
  bool store_tile(Context& c, size_t m0, size_t m1, size_t n0, size_t n1) const;
  void write_pad_rows(Context& c) const;
};

// One GEMM (ops/gemm.h) with the fused epilogue: packed activations in
// buffer `a` (rows of a_stride bytes), or through the indirection offsets
// (`offsets`, M x segs byte offsets into `a`), or packed by the driver from
// the (M, K) codes in `codes` (grouplut, FusedPack).
struct GemmStep : Step {
  const KernelInfo* kernel = nullptr;
  GemmGeometry geometry{};
  const uint8_t* w = nullptr;
  const int8_t* tables = nullptr;
  const int32_t* col_correction = nullptr;
  size_t M = 0, N = 0, k_steps = 0;
  uint32_t flush8 = 1, flush16 = 1, a_code_shift = 0;
  int32_t correction = 0;
  int a = -1;
  size_t a_stride = 0;
  std::vector<int64_t> offsets;
  size_t segs = 0, seg_steps = 0;
  int codes = -1;
  size_t K = 0;
  int bits = 0, group = 0;
  // When set, the GEMM's tasks write their own rows of `a` with this levelled
  // im2col gather (its dst is `a`) right before multiplying them.
  std::unique_ptr<Im2colStep> gather;
  EpilogueSpec ep;
  // When set, the next layer's activation packing of this step's output codes
  // (its src: ep.out, or ep.codes for a float32 output with codes; whole rows
  // of N codes): each task packs the tile it has just finished
  // (GemmCall::after_tile, PackStep::store_tile) instead of a later pack step
  // re-reading every code; the pad rows are written after the GEMM.
  std::unique_ptr<PackStep> store;
  void prepare(Context& c) const override;
  bool run(Context& c) const override;
};

// The padding correction of a convolution whose activation codebook has no
// zero level (padding then reads code 0), then its epilogue, as
// lowbit.conv._conv_group: acc[m, n] -= sum over the padded taps t of row m
// of table[t][n] (= level of code 0 * the weight levels' sum of tap t),
// modulo 2^32, then the fused epilogue over the corrected sums.
struct PadCorrectionStep : Step {
  int acc = -1;  // (M, N) int32 sums, corrected in place
  size_t M = 0, N = 0, taps = 0;
  std::vector<uint8_t> padded;  // (M, taps): 1 where the tap reads padding
  std::vector<int64_t> table;   // (taps, N)
  EpilogueSpec ep;
  bool run(Context& c) const override;
};

// Depthwise convolution (run_dwconv) and grouped convolution on dotgemm
// (run_grouped_conv), codes from buffer `src`.
struct DwconvStep : Step {
  DwconvCall call;  // x and the epilogue pointers are set per run
  int src = -1;
  EpilogueSpec ep;
  bool run(Context& c) const override;
};

struct GroupedConvStep : Step {
  GroupedConvCall call;
  GemmGeometry gg{};
  int src = -1;
  EpilogueSpec ep;
  bool run(Context& c) const override;
};

// `conv_f32` / `linear_f32` node (a linear layer: the 1x1 convolution of a
// 1x1 map): FloatConv::run (ops/float_gemm.h) on NHWC float32 `src`, the
// layer's weights packed once, owned by the Python object the bindings keep.
struct FloatConvStep : Step {
  const FloatConv* conv = nullptr;
  int src = -1, dst = -1;
  ConvGeometry g{};
  bool simd = true;  // the AVX2 tier when the CPU has it (false under a forced scalar tier)
  bool run(Context& c) const override;
};

// The exact codes of a `quantize` node fed by a float layer (lowbit.exact_float):
// fix_float_quantize_ties (ops/float_gemm.h) on the layer's input x, the node's
// float32 input y and its codes, after the node's quantize step.
struct ExactFloatFixStep : Step {
  const ExactFloatQuantize* spec = nullptr;
  int x = -1, y = -1, codes = -1;
  ConvGeometry g{};
  bool simd = true;  // the AVX2 scan when the CPU has it (false under a forced scalar tier)
  bool run(Context& c) const override;
};

// `concat` node (runtime.concat_channels): row r of the output is row r of
// every input in order, input i contributing row_bytes[i] bytes (its last
// axis: float32 channels or codes).
struct ConcatStep : Step {
  std::vector<int> srcs;
  std::vector<size_t> row_bytes;
  int dst = -1;
  size_t rows = 0;
  bool run(Context& c) const override;
};

// `pad` node (runtime.pad_nhwc): NHWC (B, H, W, C) elements of `elem` bytes
// (4: float32, 1: codes) framed by top/left/bottom/right rows and columns of
// `fill` (its first `elem` bytes: 0.0f, -inf, or the code of level 0).
struct PadStep : Step {
  int src = -1, dst = -1;
  size_t B = 0, H = 0, W = 0, C = 0, elem = 1;
  size_t top = 0, left = 0, bottom = 0, right = 0;
  uint8_t fill[4] = {0, 0, 0, 0};
  bool run(Context& c) const override;
};

}  // namespace runtime
}  // namespace lowbit
