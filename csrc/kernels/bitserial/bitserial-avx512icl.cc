// bitserial, __avx512icl tier: AND + vpopcntq on 512-bit words, 64-bit counts
// accumulated directly (no narrow stage). The last 64-byte iteration of an
// odd k_steps reads 32 bytes (masked load). Two register tiles:
//
// bitserial__avx512icl (1 row x 4 columns): per 64 bytes 1 + 4 loads, one
//   row popcount and 4 AND + popcount + add.
// bitserial_4x4__avx512icl (4 rows x 4 columns; 2 x 4 for 2-bit activations,
//   whose two planes double the accumulators): per 64 bytes MR*BA + 4 loads
//   for MR*BA*4 AND + popcount + add (instead of BA + 4 loads for BA*4):
//   fewer loads per product; both tiles compute a row's own popcount once
//   per 4 columns. docs/kernels.md has the estimates (llvm-mca).
#include "core/simd_avx512.h"

#include "kernels/bitserial/bitserial.h"

namespace lowbit {
namespace {

// MR rows x NR columns: MR*BA*NR (16) 64-bit-lane count accumulators and the
// rows' own popcounts (for the affine terms) in registers.
template <int MR, int NR, int BA>
void tile_rows(const UKernelArgs& p, const int32_t* coef) {
  const size_t plane = p.k_steps * kBitserialStepBytes;
  __m512i cnt[MR][BA][NR], row[MR][BA];
  for (int m = 0; m < MR; ++m)
    for (int b = 0; b < BA; ++b) {
      row[m][b] = _mm512_setzero_si512();
      for (int n = 0; n < NR; ++n) cnt[m][b][n] = _mm512_setzero_si512();
    }
  for (size_t off = 0; off < plane; off += 64) {
    const __mmask64 k = plane - off >= 64 ? ~__mmask64(0) : (__mmask64(1) << (plane - off)) - 1;
    __m512i a[MR][BA];
    // The pragmas unroll before the compiler's scalar replacement of these
    // arrays (without them GCC 12 keeps cnt in memory: a load and a store per step).
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 2
      for (int b = 0; b < BA; ++b) {
        a[m][b] = _mm512_maskz_loadu_epi8(k, p.a + m * p.a_stride + b * plane + off);
        row[m][b] = _mm512_add_epi64(row[m][b], _mm512_popcnt_epi64(a[m][b]));
      }
#pragma GCC unroll 4
    for (int n = 0; n < NR; ++n) {
      const __m512i w = _mm512_maskz_loadu_epi8(k, p.w + n * p.w_stride + off);
#pragma GCC unroll 4
      for (int m = 0; m < MR; ++m)
#pragma GCC unroll 2
        for (int b = 0; b < BA; ++b)
          cnt[m][b][n] = _mm512_add_epi64(cnt[m][b][n], _mm512_popcnt_epi64(_mm512_and_si512(a[m][b], w)));
    }
  }
  // Reduce every accumulator with fully unrolled loops (constant indices), so
  // that the compiler keeps cnt and row in registers through the K loop.
  uint32_t pop_a[MR][2] = {}, pop_aw[MR][NR][2] = {};
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 16
    for (int b = 0; b < BA; ++b) {
      pop_a[m][b] = uint32_t(_mm512_reduce_add_epi64(row[m][b]));
#pragma GCC unroll 16
      for (int n = 0; n < NR; ++n) pop_aw[m][n][b] = uint32_t(_mm512_reduce_add_epi64(cnt[m][b][n]));
    }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n)
      p.c[m * p.c_stride + n] = bitserial_combine(coef, BA, p.k_steps, pop_a[m], pop_aw[m][n],
                                                  bitserial_row_popcount(p.w + n * p.w_stride, p.k_steps));
}

// Rows of the 4x4 kernel MR at a time; columns: the full tile of 4, or the tail's count.
template <int MR, int BA>
void rows_by_cols(const UKernelArgs& q, const int32_t* coef) {
  switch (q.nr) {
    case 1: return tile_rows<MR, 1, BA>(q, coef);
    case 2: return tile_rows<MR, 2, BA>(q, coef);
    case 3: return tile_rows<MR, 3, BA>(q, coef);
    default: return tile_rows<MR, 4, BA>(q, coef);
  }
}

template <int BA>
void rows_4x4(const UKernelArgs& p, const int32_t* coef) {
  constexpr int kRows = BA == 1 ? 4 : 2;  // 16 count accumulators either way
  for_row_blocks(p, kRows, [coef](const UKernelArgs& q) {
    switch (q.mr) {
      case 1: return rows_by_cols<1, BA>(q, coef);
      case 2: return rows_by_cols<2, BA>(q, coef);
      case 3: return rows_by_cols<(kRows >= 3 ? 3 : 1), BA>(q, coef);  // 3 only when kRows == 4
      default: return rows_by_cols<kRows, BA>(q, coef);
    }
  });
}

template <int NR, int BA>
void tile(const UKernelArgs& p, const int32_t* coef) {
  const size_t plane = p.k_steps * kBitserialStepBytes;
  __m512i cnt[BA][NR], row[BA];
  for (int b = 0; b < BA; ++b) {
    row[b] = _mm512_setzero_si512();
    for (int n = 0; n < NR; ++n) cnt[b][n] = _mm512_setzero_si512();
  }
  for (size_t off = 0; off < plane; off += 64) {
    const __mmask64 k = plane - off >= 64 ? ~__mmask64(0) : (__mmask64(1) << (plane - off)) - 1;
    __m512i a[BA];
    for (int b = 0; b < BA; ++b) {
      a[b] = _mm512_maskz_loadu_epi8(k, p.a + b * plane + off);
      row[b] = _mm512_add_epi64(row[b], _mm512_popcnt_epi64(a[b]));
    }
    for (int n = 0; n < NR; ++n) {
      const __m512i w = _mm512_maskz_loadu_epi8(k, p.w + n * p.w_stride + off);
      for (int b = 0; b < BA; ++b)
        cnt[b][n] = _mm512_add_epi64(cnt[b][n], _mm512_popcnt_epi64(_mm512_and_si512(a[b], w)));
    }
  }
  uint32_t pop_a[2] = {0, 0};
  for (int b = 0; b < BA; ++b) pop_a[b] = uint32_t(_mm512_reduce_add_epi64(row[b]));
  for (int n = 0; n < NR; ++n) {
    uint32_t pop_aw[2] = {0, 0};
    for (int b = 0; b < BA; ++b) pop_aw[b] = uint32_t(_mm512_reduce_add_epi64(cnt[b][n]));
    p.c[n] = bitserial_combine(coef, BA, p.k_steps, pop_a, pop_aw, bitserial_row_popcount(p.w + n * p.w_stride, p.k_steps));
  }
}

template <int BA>
void by_cols(const UKernelArgs& q, const int32_t* coef) {
  switch (q.nr) {
    case 1: return tile<1, BA>(q, coef);
    case 2: return tile<2, BA>(q, coef);
    case 3: return tile<3, BA>(q, coef);
    default: return tile<4, BA>(q, coef);
  }
}

}  // namespace

void bitserial__avx512icl(const UKernelArgs& p) {
  const int32_t* coef = reinterpret_cast<const int32_t*>(p.tables);
  for_row_blocks(p, 1, [coef](const UKernelArgs& q) {
    if (coef[6] == 2) return by_cols<2>(q, coef);
    return by_cols<1>(q, coef);
  });
}

void bitserial_4x4__avx512icl(const UKernelArgs& p) {
  const int32_t* coef = reinterpret_cast<const int32_t*>(p.tables);
  if (coef[6] == 2) return rows_4x4<2>(p, coef);
  rows_4x4<1>(p, coef);
}

}  // namespace lowbit
