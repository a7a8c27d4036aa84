// AVX2 twins of graph operations (contract: ops/graph_ops.h); identical
// results to the scalar functions they name.
#include <immintrin.h>

#include <cmath>

#include "core/thread_pool.h"
#include "ops/graph_ops.h"

namespace lowbit {

// maxpool_nhwc_f32 (ops/pack.h) 8 channels at a time. Its rule, per tap value
// v and running maximum o (starting at -inf): o = (v > o || v != v) ? v : o,
// i.e. a NaN tap makes the result NaN (the first NaN met is kept) -- a
// compare-greater or unordered mask, then a blend. Each 8-channel block keeps
// its maximum in a register over the taps; the channel tail runs the scalar
// rule.
void maxpool_nhwc_f32__avx2(const float* x, const ConvGeometry& g, float* out) {
  const size_t C = g.C, cvec = C / 8 * 8;
  auto task = [&](size_t r) {  // one output row: image b, output y oy
    const size_t b = r / g.OH, oy = r % g.OH;
    // the kernel rows inside the image (the same for the whole output row)
    size_t ky0 = 0, ky1 = 0;
    for (size_t ky = 0; ky < g.kh; ++ky) {
      const ptrdiff_t iy = ptrdiff_t(oy * g.sh + ky * g.dh) - ptrdiff_t(g.ph);
      if (iy < 0) ky0 = ky + 1;
      if (iy >= 0 && iy < ptrdiff_t(g.H)) ky1 = ky + 1;
    }
    float* o = out + r * g.OW * C;
    for (size_t ox = 0; ox < g.OW; ++ox, o += C) {
      size_t kx0 = 0, kx1 = 0;
      for (size_t kx = 0; kx < g.kw; ++kx) {
        const ptrdiff_t ix = ptrdiff_t(ox * g.sw + kx * g.dw) - ptrdiff_t(g.pw);
        if (ix < 0) kx0 = kx + 1;
        if (ix >= 0 && ix < ptrdiff_t(g.W)) kx1 = kx + 1;
      }
      const auto tap = [&](size_t ky, size_t kx) {
        const size_t iy = oy * g.sh + ky * g.dh - g.ph, ix = ox * g.sw + kx * g.dw - g.pw;
        return x + ((b * g.H + iy) * g.W + ix) * C;
      };
      for (size_t c = 0; c < cvec; c += 8) {
        __m256 m = _mm256_set1_ps(-INFINITY);
        for (size_t ky = ky0; ky < ky1; ++ky)
          for (size_t kx = kx0; kx < kx1; ++kx) {
            const __m256 v = _mm256_loadu_ps(tap(ky, kx) + c);
            const __m256 take = _mm256_or_ps(_mm256_cmp_ps(v, m, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            m = _mm256_blendv_ps(m, v, take);
          }
        _mm256_storeu_ps(o + c, m);
      }
      for (size_t c = cvec; c < C; ++c) {
        float m = -INFINITY;
        for (size_t ky = ky0; ky < ky1; ++ky)
          for (size_t kx = kx0; kx < kx1; ++kx) {
            const float v = tap(ky, kx)[c];
            m = (v > m || v != v) ? v : m;
          }
        o[c] = m;
      }
    }
  };
  parallel_for(g.B * g.OH, task);
}

}  // namespace lowbit
