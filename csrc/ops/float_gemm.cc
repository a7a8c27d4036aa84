// Float32 convolution / linear layers: weight packing, the driver that splits
// a layer over the thread pool, and the scalar twins of the tiers' kernels
// (contract and summation order: ops/float_gemm.h).
#include "ops/float_gemm.h"

#include <algorithm>
#include <cstring>

#include "core/cpu_features.h"
#include "core/thread_pool.h"

namespace lowbit {

namespace {

// Output rows (pixels) per task: their rows (read in place, or im2col rows
// the task writes, at most kRowBlock x K floats) stay in cache while every
// panel multiplies them.
constexpr size_t kRowBlock = 64;

// n floats from s to d: an inlined loop (the runs here are short: a few
// channels, or one kernel row of them).
inline void copy_floats(float* d, const float* s, size_t n) {
  for (size_t i = 0; i < n; ++i) d[i] = s[i];
}

// im2col rows [m0, m1) of output pixels, channels [c0, c0 + cg) of x, written
// contiguously (K = kh * kw * cg floats a row, (ky, kx, c) order, 0.0f for
// padding). A kernel row wholly inside the image, undilated, over all
// channels is one contiguous run of the input row.
void im2col_f32_rows(const float* x, const ConvGeometry& g, size_t c0, size_t cg, size_t m0, size_t m1, float* out) {
  const bool whole_pixels = cg == g.C && g.dw == 1;
  const size_t run = g.kw * cg;
  size_t ox = m0 % g.OW, oy = (m0 / g.OW) % g.OH, b = m0 / (g.OW * g.OH);
  for (size_t m = m0; m < m1; ++m) {
    const ptrdiff_t ix0 = ptrdiff_t(ox * g.sw) - ptrdiff_t(g.pw);
    const bool cols_inside = ix0 >= 0 && ix0 + ptrdiff_t((g.kw - 1) * g.dw) < ptrdiff_t(g.W);
    for (size_t ky = 0; ky < g.kh; ++ky, out += run) {
      const ptrdiff_t iy = ptrdiff_t(oy * g.sh + ky * g.dh) - ptrdiff_t(g.ph);
      if (iy < 0 || iy >= ptrdiff_t(g.H)) {
        std::fill(out, out + run, 0.0f);
        continue;
      }
      const float* row = x + (b * g.H + size_t(iy)) * g.W * g.C + c0;
      if (whole_pixels && cols_inside) {
        copy_floats(out, row + size_t(ix0) * g.C, run);
        continue;
      }
      for (size_t kx = 0; kx < g.kw; ++kx) {
        const ptrdiff_t ix = ix0 + ptrdiff_t(kx * g.dw);
        if (ix >= 0 && ix < ptrdiff_t(g.W))
          copy_floats(out + kx * cg, row + size_t(ix) * g.C, cg);
        else
          std::fill(out + kx * cg, out + (kx + 1) * cg, 0.0f);
      }
    }
    if (++ox == g.OW) {
      ox = 0;
      if (++oy == g.OH) {
        oy = 0;
        ++b;
      }
    }
  }
}

bool use_avx2(bool simd) {
#if LOWBIT_HAVE_X86_KERNELS
  return simd && best_tier() >= Tier::avx2;
#else
  (void)simd;
  return false;
#endif
}

}  // namespace

FloatConv::FloatConv(const float* w, const float* bias, size_t cout_, size_t cg_, size_t kh_, size_t kw_,
                     size_t groups_)
    : cout(cout_), cg(cg_), kh(kh_), kw(kw_), groups(groups_) {
  K = kh * kw * cg;
  opg = cout / groups;
  depthwise = cg == 1 && cout == groups;
  has_bias_ = bias != nullptr;
  const size_t taps = kh * kw;
  if (depthwise) {
    panels_ = 0;
    packed_.resize(taps * cout);
    for (size_t c = 0; c < cout; ++c)
      for (size_t t = 0; t < taps; ++t) packed_[t * cout + c] = w[c * taps + t];
    if (has_bias_) bias_.assign(bias, bias + cout);
    return;
  }
  panels_ = (opg + kFloatPanel - 1) / kFloatPanel;
  packed_.assign(groups * panels_ * K * kFloatPanel, 0.0f);
  for (size_t g = 0; g < groups; ++g)
    for (size_t n = 0; n < opg; ++n) {
      float* panel = packed_.data() + (g * panels_ + n / kFloatPanel) * K * kFloatPanel + n % kFloatPanel;
      const float* wn = w + (g * opg + n) * cg * taps;  // (cg, kh, kw) of output channel g * opg + n
      for (size_t t = 0; t < taps; ++t)
        for (size_t c = 0; c < cg; ++c) panel[(t * cg + c) * kFloatPanel] = wn[c * taps + t];
    }
  if (has_bias_) {
    bias_.assign(groups * panels_ * kFloatPanel, 0.0f);
    for (size_t g = 0; g < groups; ++g)
      std::copy(bias + g * opg, bias + (g + 1) * opg, bias_.begin() + g * panels_ * kFloatPanel);
  }
}

const char* FloatConv::kernel_name(bool simd) const {
  const bool avx2 = use_avx2(simd);
  if (depthwise) return avx2 ? "f32dwconv_avx2" : "f32dwconv_scalar";
  return avx2 ? "f32gemm_avx2" : "f32gemm_scalar";
}

void FloatConv::run(const float* x, const ConvGeometry& g, float* out, bool simd) const {
  const bool avx2 = use_avx2(simd);
  const size_t threads = size_t(get_num_threads());
  if (depthwise) {
    auto rows_fn = float_dwconv_rows_scalar;
#if LOWBIT_HAVE_X86_KERNELS
    if (avx2) rows_fn = float_dwconv_rows__avx2;
#endif
    const size_t rows = g.B * g.OH;  // output rows
    const size_t block = std::max<size_t>(1, rows / (4 * threads));
    const size_t tasks = (rows + block - 1) / block;
    const float* w = packed_.data();
    const float* bias = has_bias_ ? bias_.data() : nullptr;
    auto task = [&](size_t i) { rows_fn(x, g, w, bias, i * block, std::min(rows, (i + 1) * block), out); };
    parallel_for(tasks, task);
    return;
  }
  auto tiles_fn = float_gemm_tiles_scalar;
#if LOWBIT_HAVE_X86_KERNELS
  if (avx2) tiles_fn = float_gemm_tiles__avx2;
#endif
  const size_t M = g.B * g.OH * g.OW;
  // a 1x1 window at stride 1 without padding reads the input pixels themselves
  const bool pixels = kh == 1 && kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
  // windows read in place: whole pixels (all channels), undilated kernel rows
  const bool windows = cg == g.C && g.dw == 1;
  const size_t row_blocks = (M + kRowBlock - 1) / kRowBlock;
  // few row blocks (a linear layer at a small batch): split the panels too, for two tasks a thread
  const size_t spread = (2 * threads + row_blocks * groups - 1) / (row_blocks * groups);
  const size_t per_chunk = (panels_ + std::min(panels_, spread) - 1) / std::min(panels_, spread);
  const size_t chunks = (panels_ + per_chunk - 1) / per_chunk;
  const size_t tasks = groups * row_blocks * chunks;
  auto task = [&](size_t i) {
    const size_t grp = i / (row_blocks * chunks), rb = (i / chunks) % row_blocks, ch = i % chunks;
    const size_t m0 = rb * kRowBlock, m1 = std::min(M, m0 + kRowBlock);
    FloatTile tiles[(kRowBlock + kFloatTileRows - 1) / kFloatTileRows];
    size_t ntiles = 0;
    thread_local std::vector<float> cols;  // this thread's im2col rows (sized before any tile points into it)
    if (!pixels) cols.resize((m1 - m0) * K);
    const float* xg = x + grp * cg;
    size_t ox = m0 % g.OW, oy = (m0 / g.OW) % g.OH, b = m0 / (g.OW * g.OH);  // pixel m of the loop below
    for (size_t m = m0; m < m1;) {
      FloatTile& t = tiles[ntiles++];
      t.out_row = m - m0;
      t.rows = std::min(kFloatTileRows, m1 - m);
      const ptrdiff_t iy0 = ptrdiff_t(oy * g.sh) - ptrdiff_t(g.ph), ix0 = ptrdiff_t(ox * g.sw) - ptrdiff_t(g.pw);
      if (pixels) {
        t = FloatTile{xg + m * g.C, 0, 1, cg, g.C, t.rows, t.out_row};
      } else if (windows && ox + t.rows <= g.OW && iy0 >= 0 && iy0 + ptrdiff_t((kh - 1) * g.dh) < ptrdiff_t(g.H) &&
                 ix0 >= 0 && ix0 + ptrdiff_t((t.rows - 1) * g.sw + kw - 1) < ptrdiff_t(g.W)) {
        t = FloatTile{x + ((b * g.H + size_t(iy0)) * g.W + size_t(ix0)) * g.C, g.dh * g.W * g.C, kh, kw * g.C,
                      g.sw * g.C, t.rows, t.out_row};
      } else {
        float* rows = cols.data() + (m - m0) * K;
        im2col_f32_rows(x, g, grp * cg, cg, m, m + t.rows, rows);
        t = FloatTile{rows, 0, 1, K, K, t.rows, t.out_row};
      }
      for (size_t r = 0; r < t.rows; ++r, ++m)  // step the pixel
        if (++ox == g.OW) {
          ox = 0;
          if (++oy == g.OH) {
            oy = 0;
            ++b;
          }
        }
    }
    const size_t p0 = ch * per_chunk, p1 = std::min(panels_, p0 + per_chunk);
    tiles_fn(tiles, ntiles, packed_.data() + grp * panels_ * K * kFloatPanel, p0, p1,
             has_bias_ ? bias_.data() + grp * panels_ * kFloatPanel : nullptr, opg, out + m0 * cout + grp * opg, cout);
  };
  parallel_for(tasks, task);
}

void float_gemm_tiles_scalar(const FloatTile* tiles, size_t ntiles, const float* panels, size_t p0, size_t p1,
                             const float* bias, size_t N, float* out, size_t ldo) {
  for (size_t p = p0; p < p1; ++p) {
    const size_t n0 = p * kFloatPanel, ncols = std::min(kFloatPanel, N - n0);
    for (size_t i = 0; i < ntiles; ++i) {
      const FloatTile& a = tiles[i];
      const float* panel = panels + p * a.nseg * a.seg_len * kFloatPanel;
      for (size_t r = 0; r < a.rows; ++r)
        for (size_t j = 0; j < ncols; ++j) {
          float acc = 0.0f;
          const float* w = panel + j;
          for (size_t s = 0; s < a.nseg; ++s) {
            const float* row = a.base + s * a.seg_stride + r * a.lda;
            for (size_t t = 0; t < a.seg_len; ++t, w += kFloatPanel) acc = acc + row[t] * *w;
          }
          out[(a.out_row + r) * ldo + n0 + j] = bias ? acc + bias[n0 + j] : acc;
        }
    }
  }
}

void float_dwconv_rows_scalar(const float* x, const ConvGeometry& g, const float* w, const float* bias, size_t r0,
                              size_t r1, float* out) {
  const size_t C = g.C;
  for (size_t r = r0; r < r1; ++r) {
    const size_t b = r / g.OH, oy = r % g.OH;
    for (size_t ox = 0; ox < g.OW; ++ox) {
      float* o = out + (r * g.OW + ox) * C;
      for (size_t c = 0; c < C; ++c) {
        float acc = 0.0f;
        for (size_t ky = 0; ky < g.kh; ++ky) {
          const ptrdiff_t iy = ptrdiff_t(oy * g.sh + ky * g.dh) - ptrdiff_t(g.ph);
          for (size_t kx = 0; kx < g.kw; ++kx) {
            const ptrdiff_t ix = ptrdiff_t(ox * g.sw + kx * g.dw) - ptrdiff_t(g.pw);
            const bool inside = iy >= 0 && iy < ptrdiff_t(g.H) && ix >= 0 && ix < ptrdiff_t(g.W);
            const float v = inside ? x[((b * g.H + size_t(iy)) * g.W + size_t(ix)) * C + c] : 0.0f;
            acc = acc + v * w[(ky * g.kw + kx) * C + c];
          }
        }
        o[c] = bias ? acc + bias[c] : acc;
      }
    }
  }
}

}  // namespace lowbit
