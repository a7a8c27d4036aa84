#include "ops/pack.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/thread_pool.h"

namespace lowbit {

bool pack_groups__scalar(const uint8_t* codes, size_t codes_stride, size_t M, size_t K, int bits, int group,
                         int shift, uint8_t* out, size_t out_stride, size_t out_bytes) {
  unsigned seen = 0;  // OR of all codes: any bit >= `bits` means out of range
  const size_t g = size_t(group), full = K / g;
  for (size_t m = 0; m < M; ++m) {
    const uint8_t* row = codes + m * codes_stride;
    uint8_t* dst = out + m * out_stride;
    for (size_t j = 0; j < full; ++j) {
      unsigned v = 0;
      for (size_t i = 0; i < g; ++i) {
        seen |= row[j * g + i];
        v |= unsigned(row[j * g + i]) << (bits * int(i));
      }
      dst[j] = uint8_t(v << shift);
    }
    size_t j = full;
    if (full * g < K) {
      unsigned v = 0;
      for (size_t k = full * g; k < K; ++k) {
        seen |= row[k];
        v |= unsigned(row[k]) << (bits * int(k - full * g));
      }
      dst[j++] = uint8_t(v << shift);
    }
    if (j < out_bytes) std::memset(dst + j, 0, out_bytes - j);
  }
  return (seen >> bits) == 0;
}

namespace {

// memcpy / memset for the short runs of im2col (a few taps of a few
// channels): inline 8-byte moves instead of a library call per run.
inline void copy_bytes(uint8_t* d, const uint8_t* s, size_t n) {
  if (n >= 64) {
    std::memcpy(d, s, n);
    return;
  }
  size_t i = 0;
  for (; i + 8 <= n; i += 8) std::memcpy(d + i, s + i, 8);
  for (; i < n; ++i) d[i] = s[i];
}

inline void fill_bytes(uint8_t* d, uint8_t v, size_t n) {
  if (n >= 64) {
    std::memset(d, v, n);
    return;
  }
  for (size_t i = 0; i < n; ++i) d[i] = v;
}

}  // namespace

void im2col_nhwc(const uint8_t* x, const ConvGeometry& g, uint8_t pad_code, uint8_t* out) {
  const size_t C = g.C, tap_row = g.kw * C, out_row = g.kh * tap_row;
  const ptrdiff_t H = ptrdiff_t(g.H), W = ptrdiff_t(g.W), kw = ptrdiff_t(g.kw);
  const uint8_t* x_end = x + g.B * g.H * g.W * C;
  auto task = [&](size_t r) {  // one output row: image b, output y oy
    const size_t b = r / g.OH, oy = r % g.OH;
    uint8_t* dst = out + r * g.OW * out_row;
    // this task's output ends here: a 32-byte over-copy may run up to it
    // (later taps overwrite the excess) but never into another task's rows
    const uint8_t* task_end = dst + g.OW * out_row;
    for (size_t ox = 0; ox < g.OW; ++ox, dst += out_row) {
      const ptrdiff_t ix0 = ptrdiff_t(ox * g.sw) - ptrdiff_t(g.pw);
      for (size_t ky = 0; ky < g.kh; ++ky) {
        uint8_t* d = dst + ky * tap_row;
        const ptrdiff_t iy = ptrdiff_t(oy * g.sh + ky * g.dh) - ptrdiff_t(g.ph);
        if (iy < 0 || iy >= H) {
          fill_bytes(d, pad_code, tap_row);
          continue;
        }
        const uint8_t* src = x + (b * g.H + size_t(iy)) * g.W * C;
        if (g.dw == 1) {  // taps [lo, hi) are inside the image and contiguous in x
          const ptrdiff_t lo = std::min(kw, std::max<ptrdiff_t>(0, -ix0));
          const ptrdiff_t hi = std::max(lo, std::min(kw, W - ix0));
          fill_bytes(d, pad_code, size_t(lo) * C);
          uint8_t* dd = d + size_t(lo) * C;
          const uint8_t* ss = src + size_t(ix0 + lo) * C;
          const size_t n = size_t(hi - lo) * C;
          if (n <= 32 && dd + 32 <= task_end && ss + 32 <= x_end)
            std::memcpy(dd, ss, 32);  // fixed size: two vector moves
          else
            copy_bytes(dd, ss, n);
          fill_bytes(d + size_t(hi) * C, pad_code, size_t(kw - hi) * C);
        } else {
          for (ptrdiff_t kx = 0; kx < kw; ++kx) {
            const ptrdiff_t ix = ix0 + kx * ptrdiff_t(g.dw);
            if (ix < 0 || ix >= W) fill_bytes(d + size_t(kx) * C, pad_code, C);
            else copy_bytes(d + size_t(kx) * C, src + size_t(ix) * C, C);
          }
        }
      }
    }
  };
  parallel_for(g.B * g.OH, task);
}

void maxpool_nhwc_f32(const float* x, const ConvGeometry& g, float* out) {
  auto row = [&](size_t r) {
    maxpool_row_nhwc(x, g, r, out, -INFINITY, [](float o, float v) { return (v > o || v != v) ? v : o; });
  };
  parallel_for(g.B * g.OH, row);
}

bool pack_groups_block(const uint8_t* codes, size_t codes_stride, size_t M, size_t K, int bits, int group, int shift,
                       uint8_t* out, size_t out_stride, size_t out_bytes, Tier tier) {
#if LOWBIT_HAVE_X86_KERNELS
  const bool vector_group = group == 1 || group == 2 || group == 3 || group == 4 || group == 6 || group == 8;
  if (tier >= Tier::avx2 && vector_group)
    return pack_groups__avx2(codes, codes_stride, M, K, bits, group, shift, out, out_stride, out_bytes);
#endif
#if LOWBIT_HAVE_ARM_KERNELS
  const bool vector_group = group == 1 || group == 2 || group == 4 || group == 8;
  if (tier >= Tier::neon && vector_group) {
    if (codes_stride == K && out_bytes == out_stride)
      return pack_groups__neon(codes, M, K, bits, group, shift, out, out_stride);
    bool ok = true;  // a block of a wider matrix: row by row (the NEON packer reads whole rows of K codes)
    for (size_t m = 0; m < M; ++m)
      ok &= pack_groups__neon(codes + m * codes_stride, 1, K, bits, group, shift, out + m * out_stride, out_bytes);
    return ok;
  }
#endif
  (void)tier;
  return pack_groups__scalar(codes, codes_stride, M, K, bits, group, shift, out, out_stride, out_bytes);
}

bool pack_groups_serial(const uint8_t* codes, size_t M, size_t K, int bits, int group, int shift, uint8_t* out,
                        size_t out_stride, Tier tier) {
  return pack_groups_block(codes, K, M, K, bits, group, shift, out, out_stride, out_stride, tier);
}

bool pack_groups(const uint8_t* codes, size_t M, size_t K, int bits, int group, int shift, uint8_t* out,
                 size_t out_stride, Tier tier) {
  return parallel_row_blocks(M, K, [&](size_t m0, size_t m1) {
    return pack_groups_serial(codes + m0 * K, m1 - m0, K, bits, group, shift, out + m0 * out_stride, out_stride,
                              tier);
  });
}

}  // namespace lowbit
