// AVX2 tier of the float32 convolution / linear kernels (ops/float_gemm.h).
// Each vector lane is one output's chain: acc = acc + a * w (a multiply,
// then an add, each rounded: no FMA), then + bias, exactly the scalar twins'
// operations in the same order, so the results are identical bit for bit.
// Tails (rows, channels) run the same chain on fewer lanes or in scalar code.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "ops/float_gemm.h"

namespace lowbit {

namespace {

static_assert(kFloatPanel == 16, "the register tile holds a panel as two vectors");

// Writes one tile row: 16 channels, or the first ncols of them.
inline void store_row(float* o, __m256 lo, __m256 hi, size_t ncols) {
  if (ncols == kFloatPanel) {
    _mm256_storeu_ps(o, lo);
    _mm256_storeu_ps(o + 8, hi);
  } else {  // the last panel of a layer whose channels are not a multiple of 16
    alignas(32) float t[kFloatPanel];
    _mm256_store_ps(t, lo);
    _mm256_store_ps(t + 8, hi);
    std::memcpy(o, t, ncols * sizeof(float));
  }
}

// R rows (R <= 6) x one 16-channel panel, accumulated in 2R named registers
// over all K (named, not an array: GCC then keeps them in registers).
template <size_t R>
inline void tile(const FloatTile& a, const float* panel, const float* bias, float* out, size_t ldo, size_t ncols) {
  static_assert(R >= 1 && R <= 6, "six rows fill the 16 vector registers");
  const __m256 zero = _mm256_setzero_ps();
  __m256 lo0 = zero, hi0 = zero, lo1 = zero, hi1 = zero, lo2 = zero, hi2 = zero;
  __m256 lo3 = zero, hi3 = zero, lo4 = zero, hi4 = zero, lo5 = zero, hi5 = zero;
#define LOWBIT_FLOAT_ROW(i)                                              \
  if (R > i) {                                                           \
    const __m256 v = _mm256_broadcast_ss(row + i * lda + t);             \
    lo##i = _mm256_add_ps(lo##i, _mm256_mul_ps(v, w0));                  \
    hi##i = _mm256_add_ps(hi##i, _mm256_mul_ps(v, w1));                  \
  }
  const size_t lda = a.lda;
  for (size_t s = 0; s < a.nseg; ++s) {
    const float* row = a.base + s * a.seg_stride;
    for (size_t t = 0; t < a.seg_len; ++t, panel += kFloatPanel) {
      const __m256 w0 = _mm256_loadu_ps(panel), w1 = _mm256_loadu_ps(panel + 8);
      LOWBIT_FLOAT_ROW(0)
      LOWBIT_FLOAT_ROW(1)
      LOWBIT_FLOAT_ROW(2)
      LOWBIT_FLOAT_ROW(3)
      LOWBIT_FLOAT_ROW(4)
      LOWBIT_FLOAT_ROW(5)
    }
  }
#undef LOWBIT_FLOAT_ROW
#define LOWBIT_FLOAT_STORE(i)                                           \
  if (R > i) {                                                          \
    if (bias) {                                                         \
      lo##i = _mm256_add_ps(lo##i, _mm256_loadu_ps(bias));              \
      hi##i = _mm256_add_ps(hi##i, _mm256_loadu_ps(bias + 8));          \
    }                                                                   \
    store_row(out + i * ldo, lo##i, hi##i, ncols);                      \
  }
  LOWBIT_FLOAT_STORE(0)
  LOWBIT_FLOAT_STORE(1)
  LOWBIT_FLOAT_STORE(2)
  LOWBIT_FLOAT_STORE(3)
  LOWBIT_FLOAT_STORE(4)
  LOWBIT_FLOAT_STORE(5)
#undef LOWBIT_FLOAT_STORE
}

}  // namespace

void float_gemm_tiles__avx2(const FloatTile* tiles, size_t ntiles, const float* panels, size_t p0, size_t p1,
                            const float* bias, size_t N, float* out, size_t ldo) {
  static_assert(kFloatTileRows == 6, "tile<1..6> below");
  const size_t K = tiles[0].nseg * tiles[0].seg_len;  // the same chain length for every tile
  for (size_t p = p0; p < p1; ++p) {
    const float* panel = panels + p * K * kFloatPanel;
    const size_t n0 = p * kFloatPanel, ncols = std::min(kFloatPanel, N - n0);
    const float* b = bias ? bias + n0 : nullptr;
    for (size_t i = 0; i < ntiles; ++i) {
      const FloatTile& a = tiles[i];
      float* o = out + a.out_row * ldo + n0;
      switch (a.rows) {
        case 6: tile<6>(a, panel, b, o, ldo, ncols); break;
        case 5: tile<5>(a, panel, b, o, ldo, ncols); break;
        case 4: tile<4>(a, panel, b, o, ldo, ncols); break;
        case 3: tile<3>(a, panel, b, o, ldo, ncols); break;
        case 2: tile<2>(a, panel, b, o, ldo, ncols); break;
        default: tile<1>(a, panel, b, o, ldo, ncols); break;
      }
    }
  }
}

void float_dwconv_rows__avx2(const float* x, const ConvGeometry& g, const float* w, const float* bias, size_t r0,
                             size_t r1, float* out) {
  const size_t C = g.C, taps = g.kh * g.kw, cvec = C / 8 * 8;
  std::vector<const float*> src(taps);  // per tap: the input pixel, or null for padding
  for (size_t r = r0; r < r1; ++r) {
    const size_t b = r / g.OH, oy = r % g.OH;
    for (size_t ox = 0; ox < g.OW; ++ox) {
      for (size_t ky = 0; ky < g.kh; ++ky) {
        const ptrdiff_t iy = ptrdiff_t(oy * g.sh + ky * g.dh) - ptrdiff_t(g.ph);
        for (size_t kx = 0; kx < g.kw; ++kx) {
          const ptrdiff_t ix = ptrdiff_t(ox * g.sw + kx * g.dw) - ptrdiff_t(g.pw);
          const bool inside = iy >= 0 && iy < ptrdiff_t(g.H) && ix >= 0 && ix < ptrdiff_t(g.W);
          src[ky * g.kw + kx] = inside ? x + ((b * g.H + size_t(iy)) * g.W + size_t(ix)) * C : nullptr;
        }
      }
      float* o = out + (r * g.OW + ox) * C;
      for (size_t c = 0; c < cvec; c += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (size_t t = 0; t < taps; ++t) {
          const __m256 v = src[t] ? _mm256_loadu_ps(src[t] + c) : _mm256_setzero_ps();
          acc = _mm256_add_ps(acc, _mm256_mul_ps(v, _mm256_loadu_ps(w + t * C + c)));
        }
        if (bias) acc = _mm256_add_ps(acc, _mm256_loadu_ps(bias + c));
        _mm256_storeu_ps(o + c, acc);
      }
      for (size_t c = cvec; c < C; ++c) {  // the channel tail: the same chain in scalar code
        float acc = 0.0f;
        for (size_t t = 0; t < taps; ++t) acc = acc + (src[t] ? src[t][c] : 0.0f) * w[t * C + c];
        o[c] = bias ? acc + bias[c] : acc;
      }
    }
  }
}

}  // namespace lowbit
