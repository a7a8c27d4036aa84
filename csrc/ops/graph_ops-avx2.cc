// AVX2 twins of graph operations (contract: ops/graph_ops.h); identical
// results to the scalar functions they name.
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "core/thread_pool.h"
#include "ops/graph_ops.h"

namespace lowbit {

namespace {

// maxpool_nhwc_f32's rule for one tap value v and running maximum m (8
// lanes): m = (v > m || v != v) ? v : m -- a compare-greater or unordered
// mask, then a blend.
inline __m256 max_rule(__m256 m, __m256 v) {
  const __m256 take = _mm256_or_ps(_mm256_cmp_ps(v, m, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_ps(m, v, take);
}

// 8 * NV channels of one output pixel: `first` points at the first in-image
// tap's first channel; the taps are rows ky < nky (row_step floats apart) by
// columns kx < nkx (col_step floats apart), met in (ky, kx) order. NV
// independent running maxima stay in registers (independent dependency
// chains: the blend's latency is hidden behind the other blocks').
template <int NV>
inline void max_channels(const float* first, size_t nky, size_t row_step, size_t nkx, size_t col_step, float* o) {
  __m256 m[NV];
  for (int j = 0; j < NV; ++j) m[j] = _mm256_set1_ps(-INFINITY);
  for (size_t ky = 0; ky < nky; ++ky) {
    const float* row = first + ky * row_step;
    for (size_t kx = 0; kx < nkx; ++kx) {
      const float* p = row + kx * col_step;
      for (int j = 0; j < NV; ++j) m[j] = max_rule(m[j], _mm256_loadu_ps(p + 8 * j));
    }
  }
  for (int j = 0; j < NV; ++j) _mm256_storeu_ps(o + 8 * j, m[j]);
}

// max_channels for windows without NaN, at one vmaxps per tap and vector:
// max_ps(v, m) = v > m ? v : m is max_rule when v is not NaN (equal values,
// +0 and -0 included, keep m, the earlier tap). So that a NaN is never missed,
// every tap is also added into sum[j] (running sums carried over the
// channels and pixels of an output row): a NaN tap makes that sum NaN for
// good. The caller redoes the row with max_channels when a sum is NaN
// (which +inf and -inf taps, or an overflow to both, can also cause: then the
// exact rule merely runs when it was not needed).
template <int NV>
inline void max_channels_unless_nan(const float* first, size_t nky, size_t row_step, size_t nkx, size_t col_step,
                                    float* o, __m256* sum) {
  __m256 m[NV], s[NV];
  for (int j = 0; j < NV; ++j) m[j] = _mm256_set1_ps(-INFINITY), s[j] = sum[j];
  for (size_t ky = 0; ky < nky; ++ky) {
    const float* row = first + ky * row_step;
    for (size_t kx = 0; kx < nkx; ++kx) {
      const float* p = row + kx * col_step;
      for (int j = 0; j < NV; ++j) {
        const __m256 v = _mm256_loadu_ps(p + 8 * j);
        m[j] = _mm256_max_ps(v, m[j]);
        s[j] = _mm256_add_ps(s[j], v);
      }
    }
  }
  for (int j = 0; j < NV; ++j) _mm256_storeu_ps(o + 8 * j, m[j]), sum[j] = s[j];
}

}  // namespace

void interleave3_u8__avx2(const uint8_t* planes, size_t len, uint8_t* out) {
  // shuffle[k][c]: which byte of plane c's 16 pixels lands at each of the output bytes [16k, 16k + 16)
  // (-1: none, pshufb writes 0)
  struct Shuffles {
    alignas(16) int8_t byte[3][3][16];
    Shuffles() {
      for (int k = 0; k < 3; ++k)
        for (int c = 0; c < 3; ++c)
          for (int j = 0; j < 16; ++j) byte[k][c][j] = (16 * k + j) % 3 == c ? int8_t((16 * k + j) / 3) : int8_t(-1);
    }
  };
  static const Shuffles shuffle;
  __m128i mask[3][3];
  for (int k = 0; k < 3; ++k)
    for (int c = 0; c < 3; ++c) mask[k][c] = _mm_load_si128(reinterpret_cast<const __m128i*>(shuffle.byte[k][c]));
  size_t i = 0;
  for (; i + 16 <= len; i += 16) {
    const __m128i p0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(planes + i));
    const __m128i p1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(planes + len + i));
    const __m128i p2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(planes + 2 * len + i));
    for (int k = 0; k < 3; ++k) {
      const __m128i v = _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(p0, mask[k][0]), _mm_shuffle_epi8(p1, mask[k][1])),
                                     _mm_shuffle_epi8(p2, mask[k][2]));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 3 * i + 16 * k), v);
    }
  }
  for (; i < len; ++i)
    for (size_t c = 0; c < 3; ++c) out[3 * i + c] = planes[c * len + i];
}

// The taps of a pooling window that lie inside the image along one axis:
// kernel offsets [k0, k0 + n) for output coordinate o (n = 0: none).
struct TapRange {
  size_t k0, n;
};
static TapRange taps_inside(size_t o, size_t stride, size_t dil, size_t pad, size_t k, size_t extent) {
  size_t k0 = 0, k1 = 0;
  for (size_t t = 0; t < k; ++t) {
    const ptrdiff_t i = ptrdiff_t(o * stride + t * dil) - ptrdiff_t(pad);
    if (i < 0) k0 = t + 1;
    if (i >= 0 && i < ptrdiff_t(extent)) k1 = t + 1;
  }
  return {k0, k1 > k0 ? k1 - k0 : 0};
}

// Element offset of the first in-image tap of window (b, oy, ox); only
// meaningful when both ranges are non-empty.
static size_t first_tap(const ConvGeometry& g, size_t b, size_t oy, size_t ox, TapRange ry, TapRange rx) {
  const size_t iy = oy * g.sh + ry.k0 * g.dh - g.ph, ix = ox * g.sw + rx.k0 * g.dw - g.pw;
  return ((b * g.H + iy) * g.W + ix) * g.C;
}

// maxpool_nhwc_f32 (ops/pack.h) 8 channels at a time; the channel tail runs
// the scalar rule in the same tap order. Each output row runs first with
// max_channels_unless_nan (32 channels per pass over the window), and again
// with the exact rule (max_channels, up to 64 channels per pass) when one of
// its windows may hold a NaN.
void maxpool_nhwc_f32__avx2(const float* x, const ConvGeometry& g, float* out) {
  const size_t C = g.C, cvec = C / 8 * 8;
  const size_t row_step = g.dh * g.W * C, col_step = g.dw * C;
  // the output pixel's vector channels, with the fast rule (sum: its 4 NaN sentinels) or the exact one
  auto vector_channels = [&](const float* first, size_t nky, size_t nkx, float* o, __m256* sum) {
    size_t c = 0;
    if (sum) {
      // 32 channels a pass: 4 maxima and 4 sums stay in registers (measured on the AVX2 EPYC: faster
      // than 8 maxima and 8 sums, which spill, and than a sum per vector of channels)
      for (; c + 32 <= cvec; c += 32) max_channels_unless_nan<4>(first + c, nky, row_step, nkx, col_step, o + c, sum);
      if (c + 16 <= cvec) max_channels_unless_nan<2>(first + c, nky, row_step, nkx, col_step, o + c, sum), c += 16;
      if (c + 8 <= cvec) max_channels_unless_nan<1>(first + c, nky, row_step, nkx, col_step, o + c, sum), c += 8;
      return;
    }
    for (; c + 64 <= cvec; c += 64) max_channels<8>(first + c, nky, row_step, nkx, col_step, o + c);
    if (c + 32 <= cvec) max_channels<4>(first + c, nky, row_step, nkx, col_step, o + c), c += 32;
    if (c + 16 <= cvec) max_channels<2>(first + c, nky, row_step, nkx, col_step, o + c), c += 16;
    if (c + 8 <= cvec) max_channels<1>(first + c, nky, row_step, nkx, col_step, o + c), c += 8;
  };
  auto task = [&](size_t r) {  // one output row: image b, output y oy
    const size_t b = r / g.OH, oy = r % g.OH;
    const TapRange ry = taps_inside(oy, g.sh, g.dh, g.ph, g.kh, g.H);  // the same for the whole row
    float* const row_out = out + r * g.OW * C;
    // pass 0: the fast rule with its NaN sentinels; pass 1 (only when a sentinel is NaN): the exact rule
    for (int pass = 0; pass < 2; ++pass) {
      __m256 sum[4];
      for (__m256& s : sum) s = _mm256_setzero_ps();
      float* o = row_out;
      for (size_t ox = 0; ox < g.OW; ++ox, o += C) {
        const TapRange rx = taps_inside(ox, g.sw, g.dw, g.pw, g.kw, g.W);
        const size_t nky = ry.n, nkx = rx.n;
        // the first in-image tap (unused when there is none)
        const float* first = nky && nkx ? x + first_tap(g, b, oy, ox, ry, rx) : x;
        vector_channels(first, nky, nkx, o, pass == 0 ? sum : nullptr);
        for (size_t c = cvec; c < C; ++c) {
          float m = -INFINITY;
          for (size_t ky = 0; ky < nky; ++ky)
            for (size_t kx = 0; kx < nkx; ++kx) {
              const float v = first[ky * row_step + kx * col_step + c];
              m = (v > m || v != v) ? v : m;
            }
          o[c] = m;
        }
      }
      if (pass == 1) break;
      __m256 nan = _mm256_setzero_ps();
      for (const __m256& s : sum) nan = _mm256_or_ps(nan, _mm256_cmp_ps(s, s, _CMP_UNORD_Q));
      if (_mm256_movemask_ps(nan) == 0) break;  // no window held a NaN: the fast rule's results are exact
    }
  };
  parallel_for(g.B * g.OH, task);
}

// maxpool_nhwc_u8__scalar 32 channels a vector (vpmaxub), up to 4 vectors
// (128 channels) per pass over the window; the channel tail is scalar.
void maxpool_nhwc_u8__avx2(const uint8_t* x, const ConvGeometry& g, uint8_t* out) {
  const size_t C = g.C, cvec = C / 32 * 32;
  const size_t row_step = g.dh * g.W * C, col_step = g.dw * C;
  auto task = [&](size_t r) {  // one output row: image b, output y oy
    const size_t b = r / g.OH, oy = r % g.OH;
    const TapRange ry = taps_inside(oy, g.sh, g.dh, g.ph, g.kh, g.H);  // the same for the whole row
    uint8_t* o = out + r * g.OW * C;
    for (size_t ox = 0; ox < g.OW; ++ox, o += C) {
      const TapRange rx = taps_inside(ox, g.sw, g.dw, g.pw, g.kw, g.W);
      const size_t nky = ry.n, nkx = rx.n;
      // the first in-image tap (unused when there is none)
      const uint8_t* first = nky && nkx ? x + first_tap(g, b, oy, ox, ry, rx) : x;
      size_t c = 0;
      for (; c < cvec; c += 128) {
        const int nv = int(std::min<size_t>(4, (cvec - c) / 32));
        __m256i m[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                        _mm256_setzero_si256()};
        for (size_t ky = 0; ky < nky; ++ky)
          for (size_t kx = 0; kx < nkx; ++kx) {
            const uint8_t* p = first + ky * row_step + kx * col_step + c;
            for (int j = 0; j < nv; ++j)
              m[j] = _mm256_max_epu8(m[j], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * j)));
          }
        for (int j = 0; j < nv; ++j) _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + c + 32 * j), m[j]);
      }
      for (c = cvec; c < C; ++c) {
        uint8_t m = 0;
        for (size_t ky = 0; ky < nky; ++ky)
          for (size_t kx = 0; kx < nkx; ++kx) m = std::max(m, first[ky * row_step + kx * col_step + c]);
        o[c] = m;
      }
    }
  };
  parallel_for(g.B * g.OH, task);
}

}  // namespace lowbit
