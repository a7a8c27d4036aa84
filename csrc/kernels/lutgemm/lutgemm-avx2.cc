// lutgemm, AVX2 tier: vpshufb on ymm (the 16-entry table is replicated in both
// 128-bit lanes); lanes run along K. The int8-table kernel reads weight
// layout 1 (pre-masked planes, tile 1x4); the split-table kernel reads the
// dense layout 0 (tile 2x2). Each iteration reads
// 32 bytes (two family steps) of every row; an odd last step reads 16 bytes
// into the low lane and masks the high lane's products to zero.
// Built with -mavx2 -mfma -mbmi2; everything here has internal linkage so no
// AVX2 code can leak into baseline translation units.
#include <immintrin.h>

#include "kernels/lutgemm/lutgemm.h"

namespace lowbit {
namespace {

inline __m256i load_table(const int8_t* t) {
  return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t)));
}

// 32 bytes of a row, or (tail) 16 bytes in the low lane and zeros above.
inline __m256i load_row(const uint8_t* p, bool tail) {
  if (tail) return _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

inline __m256i lo_nib(__m256i x, __m256i m0f) { return _mm256_and_si256(x, m0f); }
inline __m256i hi_nib(__m256i x, __m256i m0f) { return _mm256_and_si256(_mm256_srli_epi16(x, 4), m0f); }

// Sums of the 8 int32 lanes of four accumulators: {v0, v1, v2, v3}.
inline __m128i hsum4(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
  const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

inline void store_tile(const UKernelArgs& p, __m128i sums) {  // sums = {c00, c01, c10, c11}
  alignas(16) int32_t s[4];
  _mm_store_si128(reinterpret_cast<__m128i*>(s), sums);
  for (size_t m = 0; m < p.mr; ++m)
    for (size_t n = 0; n < p.nr; ++n) p.c[m * p.c_stride + n] = s[m * 2 + n];
}

struct Consts {
  __m256i T, Tt, mcc, m33, m0f, ones8, ones16, low_lane;
  explicit Consts(const int8_t* t)
      : T(load_table(t)), Tt(load_table(t + 16)), mcc(_mm256_set1_epi8(char(0xCC))), m33(_mm256_set1_epi8(0x33)),
        m0f(_mm256_set1_epi8(0x0F)), ones8(_mm256_set1_epi8(1)), ones16(_mm256_set1_epi16(1)),
        low_lane(_mm256_setr_epi32(-1, -1, -1, -1, 0, 0, 0, 0)) {}
};

// TableKind::i8 on weight layout 1 (four pre-masked planes), one row x up to
// 4 columns. Per 32-byte iteration: the row's 4 activation planes (1 shift +
// 4 AND, shared by the columns); per output: 4 OR (each with a weight plane
// straight from memory), 4 vpshufb, 3 vpaddb for the 4 products of a byte
// position and 1 vpaddb into an int8 accumulator. Every flush8 iterations the
// int8 lanes go to int32 (vpmaddubsw with ones, vpmaddwd with ones, vpaddd).
template <int NR>
void tile_i8(const UKernelArgs& p, const Consts& k) {
  __m256i acc8[NR], acc32[NR];
  for (int n = 0; n < NR; ++n) acc8[n] = acc32[n] = _mm256_setzero_si256();
  const __m256i m0c = _mm256_set1_epi8(0x0C), m03 = _mm256_set1_epi8(0x03);
  uint32_t left8 = p.flush8;
  for (size_t s = 0; s < p.k_steps; s += 2) {
    const bool tail = s + 1 == p.k_steps;
    const size_t plane = tail ? 16 : 32;  // bytes per weight plane in this iteration
    const __m256i A = load_row(p.a + s * kLutgemmStepBytes, tail);
    const __m256i As = _mm256_srli_epi16(A, 4);
    const __m256i a1 = _mm256_and_si256(A, m0c), a0 = _mm256_and_si256(A, m03);
    const __m256i a3 = _mm256_and_si256(As, m0c), a2 = _mm256_and_si256(As, m03);
    for (int n = 0; n < NR; ++n) {
      const uint8_t* w = p.w + n * p.w_stride + s * 4 * kLutgemmStepBytes;
      const __m256i s1 = _mm256_add_epi8(_mm256_shuffle_epi8(k.T, _mm256_or_si256(a1, load_row(w, tail))),
                                         _mm256_shuffle_epi8(k.Tt, _mm256_or_si256(a0, load_row(w + plane, tail))));
      const __m256i s2 = _mm256_add_epi8(_mm256_shuffle_epi8(k.T, _mm256_or_si256(a3, load_row(w + 2 * plane, tail))),
                                         _mm256_shuffle_epi8(k.Tt, _mm256_or_si256(a2, load_row(w + 3 * plane, tail))));
      __m256i sum = _mm256_add_epi8(s1, s2);
      if (tail) sum = _mm256_and_si256(sum, k.low_lane);  // zero bytes read no data
      acc8[n] = _mm256_add_epi8(acc8[n], sum);
    }
    if (--left8 == 0 || s + 2 >= p.k_steps) {
      for (int n = 0; n < NR; ++n) {
        acc32[n] = _mm256_add_epi32(acc32[n], _mm256_madd_epi16(_mm256_maddubs_epi16(k.ones8, acc8[n]), k.ones16));
        acc8[n] = _mm256_setzero_si256();
      }
      left8 = p.flush8;
    }
  }
  const __m256i z = _mm256_setzero_si256();
  alignas(16) int32_t out[4];
  _mm_store_si128(reinterpret_cast<__m128i*>(out),
                  hsum4(acc32[0], NR > 1 ? acc32[NR > 1 ? 1 : 0] : z, NR > 2 ? acc32[NR > 2 ? 2 : 0] : z,
                        NR > 3 ? acc32[NR > 3 ? 3 : 0] : z));
  for (int n = 0; n < NR; ++n) p.c[n] = out[n];
}

// TableKind::split. Low bytes are unsigned: vpmaddubsw(lo, ones) sums two of
// them (<= 510) per 16-bit lane; high bytes are signed: vpmaddubsw(ones, hi).
template <int MR, int NR>
void tile_split(const UKernelArgs& p) {
  const __m256i Tlo = load_table(p.tables), Thi = load_table(p.tables + 16);
  const __m256i Ttlo = load_table(p.tables + 32), Tthi = load_table(p.tables + 48);
  const __m256i mcc = _mm256_set1_epi8(char(0xCC)), m33 = _mm256_set1_epi8(0x33);
  const __m256i m0f = _mm256_set1_epi8(0x0F), ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  const __m256i low_lane = _mm256_setr_epi32(-1, -1, -1, -1, 0, 0, 0, 0);
  __m256i lo16[2][2], hi16[2][2], lo32[2][2], hi32[2][2];
  for (int m = 0; m < 2; ++m)
    for (int n = 0; n < 2; ++n) lo16[m][n] = hi16[m][n] = lo32[m][n] = hi32[m][n] = _mm256_setzero_si256();
  uint32_t left = p.flush16;
  for (size_t s = 0; s < p.k_steps; s += 2) {
    const bool tail = s + 1 == p.k_steps;
    for (int n = 0; n < NR; ++n) {
      const __m256i W = load_row(p.w + n * p.w_stride + s * kLutgemmStepBytes, tail);
      for (int m = 0; m < MR; ++m) {
        const __m256i A = load_row(p.a + m * p.a_stride + s * kLutgemmStepBytes, tail);
        const __m256i i1 = _mm256_or_si256(_mm256_and_si256(A, mcc), _mm256_and_si256(W, m33));
        const __m256i i2 = _mm256_or_si256(_mm256_and_si256(W, mcc), _mm256_and_si256(A, m33));
        const __m256i idx[4] = {lo_nib(i1, m0f), hi_nib(i1, m0f), lo_nib(i2, m0f), hi_nib(i2, m0f)};
        for (int q = 0; q < 4; ++q) {
          __m256i l = _mm256_shuffle_epi8(q < 2 ? Tlo : Ttlo, idx[q]);
          __m256i h = _mm256_shuffle_epi8(q < 2 ? Thi : Tthi, idx[q]);
          if (tail) {
            l = _mm256_and_si256(l, low_lane);
            h = _mm256_and_si256(h, low_lane);
          }
          lo16[m][n] = _mm256_add_epi16(lo16[m][n], _mm256_maddubs_epi16(l, ones8));
          hi16[m][n] = _mm256_add_epi16(hi16[m][n], _mm256_maddubs_epi16(ones8, h));
        }
      }
    }
    if (--left == 0 || s + 2 >= p.k_steps) {
      for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) {
          lo32[m][n] = _mm256_add_epi32(lo32[m][n], _mm256_madd_epi16(lo16[m][n], ones16));
          hi32[m][n] = _mm256_add_epi32(hi32[m][n], _mm256_madd_epi16(hi16[m][n], ones16));
          lo16[m][n] = hi16[m][n] = _mm256_setzero_si256();
        }
      left = p.flush16;
    }
  }
  // total = hi * 256 + lo, in wrapping int32 arithmetic
  const __m128i lo = hsum4(lo32[0][0], lo32[0][1], lo32[1][0], lo32[1][1]);
  const __m128i hi = hsum4(hi32[0][0], hi32[0][1], hi32[1][0], hi32[1][1]);
  store_tile(p, _mm_add_epi32(_mm_slli_epi32(hi, 8), lo));
}

#define LOWBIT_TILE_SWITCH(fn, p)                                  \
  do {                                                             \
    if ((p).mr == 2 && (p).nr == 2) return fn<2, 2>(p);            \
    if ((p).mr == 2) return fn<2, 1>(p);                           \
    if ((p).nr == 2) return fn<1, 2>(p);                           \
    return fn<1, 1>(p);                                            \
  } while (0)

}  // namespace

void lutgemm_w2a2_i8__avx2(const UKernelArgs& p) {
  const Consts k(p.tables);
  for_row_blocks(p, 1, [&k](const UKernelArgs& q) {
    switch (q.nr) {
      case 1: return tile_i8<1>(q, k);
      case 2: return tile_i8<2>(q, k);
      case 3: return tile_i8<3>(q, k);
      default: return tile_i8<4>(q, k);
    }
  });
}
void lutgemm_w2a2_split__avx2(const UKernelArgs& p) {
  for_row_blocks(p, 2, [](const UKernelArgs& q) { LOWBIT_TILE_SWITCH(tile_split, q); });
}

}  // namespace lowbit
