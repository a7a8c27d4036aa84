// The runtime's non-GEMM graph operations (contract: ops/graph_ops.h). Every
// float step is a separate statement (this file is built with
// -ffp-contract=off), in the order the NumPy reference takes it.
#include "ops/graph_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/cpu_features.h"
#include "core/thread_pool.h"
#include "ops/epilogue.h"

namespace lowbit {

namespace {

// Elementwise work is split into blocks of this many elements; below two
// blocks it runs inline on the calling thread (waking the pool costs more
// than the work). Blocks are independent, so results never depend on threads.
constexpr size_t kBlock = size_t(1) << 16;
// Stack buffers (nothing here allocates): values quantized or channels summed at a time.
constexpr size_t kChunk = 256;
// At most this many channels: the NCHW -> NHWC quantizer quantizes channel rows in place, then interleaves.
constexpr size_t kFewChannels = 16;

template <class Body>
void for_blocks(size_t n, Body&& body) {  // body(i0, i1) for consecutive blocks of [0, n)
  if (n < 2 * kBlock) {
    if (n) body(size_t(0), n);
    return;
  }
  const size_t tasks = (n + kBlock - 1) / kBlock;
  auto task = [&](size_t t) { body(t * kBlock, std::min(n, (t + 1) * kBlock)); };
  parallel_for(tasks, task);
}

// Runs row(r) for r in [0, rows), in parallel when the rows hold at least
// two blocks of work in all (`row_work` elements each).
template <class Row>
void for_rows(size_t rows, size_t row_work, Row&& row) {
  if (rows * std::max<size_t>(row_work, 1) < 2 * kBlock) {
    for (size_t r = 0; r < rows; ++r) row(r);
    return;
  }
  parallel_for(rows, row);
}

// a + b with NumPy's NaN rule: when both are NaN the result is a's NaN (the
// first operand of the x86 add NumPy's loops use). The compiler may swap the
// operands of a plain a + b, so the rule is written out.
template <class T>
inline T add_nan_first(T a, T b) {
  return a != a ? a : a + b;
}

// The quantize rule for x[0, n) on the calling thread.
void quantize_serial(const float* x, size_t n, const QuantizeParams& p, uint8_t* out) {
  if (p.binary) {
    for (size_t i = 0; i < n; ++i) out[i] = x[i] >= 0.0f ? 1 : 0;  // NaN compares false: code 0
    return;
  }
  if (!p.pre) return quantize_codes(x, n, p.step, p.qn, p.qp, out, p.simd);
  // QONNX Trunc: integers at pre_step, scaled by 1 / pre_div, then the plain rule at step 1
  // (x / 1.0f is x exactly, NaN and -0.0 included).
  float t[kChunk];
  for (size_t i0 = 0; i0 < n; i0 += kChunk) {
    const size_t len = std::min(kChunk, n - i0);
    for (size_t i = 0; i < len; ++i) {
      float v = x[i0 + i] / p.pre_step;
      v = std::nearbyint(v);  // the default rounding mode: half to even, as np.rint
      t[i] = v * p.pre_inv_div;
    }
    quantize_codes(t, len, 1.0f, p.qn, p.qp, out + i0, p.simd);
  }
}

// out[i * C + c] = planes[c * len + i] for i < len, c < C (a byte transpose).
template <size_t C>
void interleave(const uint8_t* planes, size_t len, uint8_t* out) {
  for (size_t i = 0; i < len; ++i)
    for (size_t c = 0; c < C; ++c) out[i * C + c] = planes[c * len + i];
}
void interleave_any(const uint8_t* planes, size_t len, size_t C, uint8_t* out) {
  for (size_t i = 0; i < len; ++i)
    for (size_t c = 0; c < C; ++c) out[i * C + c] = planes[c * len + i];
}

}  // namespace

void quantize_f32(const float* x, size_t n, const QuantizeParams& p, uint8_t* out) {
  for_blocks(n, [&](size_t i0, size_t i1) { quantize_serial(x + i0, i1 - i0, p, out + i0); });
}

bool all_finite_f32(const float* x, size_t n) {
  uint32_t bad = 0;  // branch-free, so the compiler vectorizes it
  for (size_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof(bits));
    bad |= uint32_t((bits & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

void quantize_nchw_to_nhwc(const float* x, size_t B, size_t C, size_t H, size_t W, const QuantizeParams& p,
                           uint8_t* out, std::atomic<bool>* nonfinite) {
  // the values of a chunk just quantized (still in L1), checked when asked
  auto check = [nonfinite](const float* v, size_t n) {
    if (nonfinite && !all_finite_f32(v, n)) nonfinite->store(true, std::memory_order_relaxed);
  };
  if (C <= kFewChannels) {
    // Few channels (an image): each channel's run of a row is quantized where it lies (contiguous, the
    // vector rule), then the codes are interleaved into NHWC -- a byte transpose instead of a float gather.
    // The rule is elementwise, so the codes are the same.
    const size_t pixels = kChunk * 16 / C;  // per chunk of codes[C][pixels]
    for_rows(B * H, W * C, [&](size_t r) {
      const size_t b = r / H, y = r % H;
      const float* src = x + b * C * H * W + y * W;  // channel c of pixel xx: src[c * H * W + xx]
      uint8_t* dst = out + r * W * C;
      uint8_t codes[kChunk * 16];
      for (size_t x0 = 0; x0 < W; x0 += pixels) {
        const size_t len = std::min(pixels, W - x0);
        if (C == 1) {  // NHWC is NCHW
          quantize_serial(src + x0, len, p, dst + x0);
          check(src + x0, len);
          continue;
        }
        for (size_t c = 0; c < C; ++c) {
          quantize_serial(src + c * H * W + x0, len, p, codes + c * len);
          check(src + c * H * W + x0, len);
        }
        if (C == 3) {
#if LOWBIT_HAVE_X86_KERNELS
          if (p.simd && best_tier() >= Tier::avx2) {
            interleave3_u8__avx2(codes, len, dst + x0 * C);
            continue;
          }
#endif
          interleave<3>(codes, len, dst + x0 * C);
        } else {
          interleave_any(codes, len, C, dst + x0 * C);
        }
      }
    });
    return;
  }
  // One output row (b, y) at a time, in chunks of at most kChunk values in NHWC order (whole pixels
  // when C <= kChunk, else channel runs of one pixel), gathered from the NCHW planes and quantized.
  const size_t plane = H * W, cc = std::min(C, kChunk), pixels = std::max<size_t>(1, kChunk / cc);
  for_rows(B * H, W * C, [&](size_t r) {
    const size_t b = r / H, y = r % H;
    const float* src = x + b * C * plane + y * W;  // channel c of pixel xx: src[c * plane + xx]
    uint8_t* dst = out + r * W * C;
    float t[kChunk];
    for (size_t x0 = 0; x0 < W; x0 += pixels) {
      const size_t x1 = std::min(W, x0 + pixels);
      for (size_t c0 = 0; c0 < C; c0 += cc) {
        const size_t c1 = std::min(C, c0 + cc);
        size_t len = 0;
        for (size_t xx = x0; xx < x1; ++xx)
          for (size_t c = c0; c < c1; ++c) t[len++] = src[c * plane + xx];
        quantize_serial(t, len, p, dst + x0 * C + c0);
        check(t, len);
      }
    }
  });
}

void maxpool_nhwc(const float* x, const ConvGeometry& g, float* out, bool simd) {
#if LOWBIT_HAVE_X86_KERNELS
  if (simd && best_tier() >= Tier::avx2) return maxpool_nhwc_f32__avx2(x, g, out);
#endif
  (void)simd;
  maxpool_nhwc_f32(x, g, out);
}

void maxpool_nhwc_u8__scalar(const uint8_t* x, const ConvGeometry& g, uint8_t* out) {
  for_rows(g.B * g.OH, g.OW * g.kh * g.kw * g.C, [&](size_t r) {
    maxpool_row_nhwc(x, g, r, out, uint8_t(0), [](uint8_t o, uint8_t v) { return std::max(o, v); });
  });
}

void maxpool_nhwc_u8(const uint8_t* x, const ConvGeometry& g, uint8_t* out, bool simd) {
#if LOWBIT_HAVE_X86_KERNELS
  if (simd && best_tier() >= Tier::avx2) return maxpool_nhwc_u8__avx2(x, g, out);
#endif
  (void)simd;
  maxpool_nhwc_u8__scalar(x, g, out);
}

void dequantize_codes(const uint8_t* codes, size_t n, const int32_t* levels, float step, float* out) {
  for_blocks(n, [&](size_t i0, size_t i1) {
    for (size_t i = i0; i < i1; ++i) {
      const float level = static_cast<float>(levels[codes[i]]);
      out[i] = level * step;
    }
  });
}

namespace {

// out[b, c, i] = x[b, i, c] for a (B, I, C) array (I = H*W): NHWC <-> NCHW.
template <class T>
void swap_last_two(const T* x, size_t B, size_t I, size_t C, T* out) {
  for (size_t b = 0; b < B; ++b) {
    const T* src = x + b * I * C;
    T* dst = out + b * I * C;
    for (size_t i = 0; i < I; ++i)
      for (size_t c = 0; c < C; ++c) dst[c * I + i] = src[i * C + c];
  }
}

}  // namespace

void nchw_to_nhwc_f32(const float* x, size_t B, size_t C, size_t H, size_t W, float* out) {
  swap_last_two(x, B, C, H * W, out);
}

void nhwc_to_nchw_f32(const float* x, size_t B, size_t H, size_t W, size_t C, float* out) {
  swap_last_two(x, B, H * W, C, out);
}

void flatten_nhwc_f32(const float* x, size_t B, size_t H, size_t W, size_t C, float* out) {
  swap_last_two(x, B, H * W, C, out);  // (B, C, H, W) row-major is the flat (B, C*H*W)
}

void flatten_nhwc_u8(const uint8_t* x, size_t B, size_t H, size_t W, size_t C, uint8_t* out) {
  swap_last_two(x, B, H * W, C, out);
}

void add_f32(const float* a, const float* b, size_t n, float* out) {
  for (size_t i = 0; i < n; ++i) out[i] = add_nan_first(a[i], b[i]);
}

void clamp_f32(const float* x, size_t n, float lo, float hi, float* out) {
  // np.maximum(x, lo) keeps x when x > lo or x is NaN, else lo (so max(-0.0, 0.0) is lo);
  // np.minimum likewise with x < hi.
  for (size_t i = 0; i < n; ++i) {
    float v = x[i];
    v = (v > lo || v != v) ? v : lo;
    v = (v < hi || v != v) ? v : hi;
    out[i] = v;
  }
}

void affine_f32(const float* x, size_t rows, size_t C, const float* scale, const float* bias, float* out) {
  const size_t rows_per_block = std::max<size_t>(1, kBlock / std::max<size_t>(C, 1));
  const size_t blocks = (rows + rows_per_block - 1) / rows_per_block;
  for_rows(blocks, rows_per_block * C, [&](size_t blk) {
    const size_t r1 = std::min(rows, (blk + 1) * rows_per_block);
    for (size_t r = blk * rows_per_block; r < r1; ++r) {
      const float* src = x + r * C;
      float* dst = out + r * C;
      for (size_t c = 0; c < C; ++c) {
        float v = src[c] * scale[c];
        v = v + bias[c];
        dst[c] = v;
      }
    }
  });
}

void avgpool_nhwc_f32(const float* x, const ConvGeometry& g, bool count_include_pad, float* out) {
  const size_t C = g.C;
  const bool whole_window = count_include_pad || (g.ph == 0 && g.pw == 0);
  const double window = double(g.kh * g.kw);
  for_rows(g.B * g.OH, g.OW * g.kh * g.kw * C, [&](size_t r) {  // one output row: image b, output y oy
    const size_t b = r / g.OH, oy = r % g.OH;
    double acc[kChunk];
    for (size_t ox = 0; ox < g.OW; ++ox) {
      float* o = out + (r * g.OW + ox) * C;
      for (size_t c0 = 0; c0 < C; c0 += kChunk) {
        const size_t len = std::min(kChunk, C - c0);
        size_t inside = 0;  // in-image taps
        for (size_t ky = 0; ky < g.kh; ++ky) {
          const ptrdiff_t iy = ptrdiff_t(oy * g.sh + ky) - ptrdiff_t(g.ph);
          for (size_t kx = 0; kx < g.kw; ++kx) {
            const ptrdiff_t ix = ptrdiff_t(ox * g.sw + kx) - ptrdiff_t(g.pw);
            const bool first = ky == 0 && kx == 0;
            if (iy >= 0 && iy < ptrdiff_t(g.H) && ix >= 0 && ix < ptrdiff_t(g.W)) {
              ++inside;
              const float* v = x + ((b * g.H + size_t(iy)) * g.W + size_t(ix)) * C + c0;
              if (first) {
                for (size_t c = 0; c < len; ++c) acc[c] = double(v[c]);
              } else {
                for (size_t c = 0; c < len; ++c) acc[c] = add_nan_first(acc[c], double(v[c]));
              }
            } else if (first) {  // a padding tap holds 0.0
              for (size_t c = 0; c < len; ++c) acc[c] = 0.0;
            } else {  // adding it still matters: it turns a -0.0 sum into +0.0
              for (size_t c = 0; c < len; ++c) acc[c] = add_nan_first(acc[c], 0.0);
            }
          }
        }
        const double divisor = whole_window ? window : double(inside);
        for (size_t c = 0; c < len; ++c) {
          const double mean = acc[c] / divisor;
          o[c0 + c] = static_cast<float>(mean);
        }
      }
    }
  });
}

void adaptive_avgpool_nhwc_f32(const float* x, size_t B, size_t H, size_t W, size_t C, size_t OH, size_t OW,
                               float* out) {
  for_rows(B * OH, (H / OH + 1) * W * C, [&](size_t r) {  // one output row: image b, output row i
    const size_t b = r / OH, i = r % OH;
    const size_t y0 = i * H / OH, y1 = ((i + 1) * H + OH - 1) / OH;
    double acc[kChunk];
    for (size_t j = 0; j < OW; ++j) {
      const size_t x0 = j * W / OW, x1 = ((j + 1) * W + OW - 1) / OW;
      const double count = double((y1 - y0) * (x1 - x0));
      float* o = out + (r * OW + j) * C;
      for (size_t c0 = 0; c0 < C; c0 += kChunk) {
        const size_t len = std::min(kChunk, C - c0);
        for (size_t y = y0; y < y1; ++y) {
          for (size_t xx = x0; xx < x1; ++xx) {
            const float* v = x + ((b * H + y) * W + xx) * C + c0;
            if (y == y0 && xx == x0) {  // the first tap's value is the start
              for (size_t c = 0; c < len; ++c) acc[c] = double(v[c]);
            } else {
              for (size_t c = 0; c < len; ++c) acc[c] = add_nan_first(acc[c], double(v[c]));
            }
          }
        }
        for (size_t c = 0; c < len; ++c) {
          const double mean = acc[c] / count;
          o[c0 + c] = static_cast<float>(mean);
        }
      }
    }
  });
}

}  // namespace lowbit
