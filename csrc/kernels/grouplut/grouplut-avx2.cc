// grouplut, AVX2 tier. Tile: up to 4 rows x 64 channels (two 32-channel
// blocks of the layout). Per group: one 32-byte load of weight indices per
// block serves all rows; each row loads its table (picked by its
// activation group code) once and does one vpshufb + vpaddb per block: 32
// lanes x gw multiply-accumulates per lookup.
// int8 accumulators live in registers; every flush8 groups they are widened
// into even/odd int16 sums kept on the stack, and every flush16 widenings
// those are widened into int32 (bounds in grouplut.h).
#include <immintrin.h>

#include "kernels/grouplut/grouplut.h"

namespace lowbit {
namespace {

// Writes the 32 channels of one block from "mod 4" order (q[r][i] is channel
// 4i + r) to natural order; only the first `count` channels when count < 32.
inline void store_block(const int32_t (*q)[8], int32_t* dst, size_t count) {
  const __m256i c0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(q[0]));
  const __m256i c1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(q[1]));
  const __m256i c2 = _mm256_load_si256(reinterpret_cast<const __m256i*>(q[2]));
  const __m256i c3 = _mm256_load_si256(reinterpret_cast<const __m256i*>(q[3]));
  // per 128-bit lane h (channels 16h..): lo01 = [4i, 4i+1, 4i+4, 4i+5], ...
  const __m256i lo01 = _mm256_unpacklo_epi32(c0, c1), lo23 = _mm256_unpacklo_epi32(c2, c3);
  const __m256i hi01 = _mm256_unpackhi_epi32(c0, c1), hi23 = _mm256_unpackhi_epi32(c2, c3);
  const __m256i r0 = _mm256_unpacklo_epi64(lo01, lo23);  // channels 0-3 | 16-19
  const __m256i r1 = _mm256_unpackhi_epi64(lo01, lo23);  // 4-7 | 20-23
  const __m256i r2 = _mm256_unpacklo_epi64(hi01, hi23);  // 8-11 | 24-27
  const __m256i r3 = _mm256_unpackhi_epi64(hi01, hi23);  // 12-15 | 28-31
  const __m256i rows[4] = {_mm256_permute2x128_si256(r0, r1, 0x20), _mm256_permute2x128_si256(r2, r3, 0x20),
                           _mm256_permute2x128_si256(r0, r1, 0x31), _mm256_permute2x128_si256(r2, r3, 0x31)};
  for (int j = 0; j < 4; ++j) {
    const size_t base = size_t(j) * 8;
    if (count >= base + 8) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + base), rows[j]);
    } else if (count > base) {
      const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
      const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(count - base)), lane);
      _mm256_maskstore_epi32(dst + base, mask, rows[j]);
    }
  }
}

template <int MR, int NV>
void tile(const UKernelArgs& p) {
  const uint8_t* tab = reinterpret_cast<const uint8_t*>(p.tables);
  const size_t G = p.k_steps;
  const uint8_t* wblk[2] = {p.w, p.w + G * kGrouplutLanes};  // block b+1 follows block b
  // int16 sums: e16[m][v] holds channels 2j, o16 channels 2j+1 of block v.
  alignas(32) int16_t e16[MR][NV][16], o16[MR][NV][16];
  // int32 sums in "mod 4" order: acc32[m][v][r][i] is channel 4i + r of block v.
  alignas(32) int32_t acc32[MR][NV][4][8];
  bool first_flush = true;  // the first int32 flush stores instead of adding
  const size_t chunk16 = size_t(p.flush8) * p.flush16;
  StepCursor<MR> rows(p);  // activation group codes, direct or indirect
  size_t g = 0;
  while (g < G) {
    for (int m = 0; m < MR; ++m)
      for (int v = 0; v < NV; ++v) {
        _mm256_store_si256(reinterpret_cast<__m256i*>(e16[m][v]), _mm256_setzero_si256());
        _mm256_store_si256(reinterpret_cast<__m256i*>(o16[m][v]), _mm256_setzero_si256());
      }
    const size_t end16 = G - g < chunk16 ? G : g + chunk16;
    while (g < end16) {
      __m256i acc8[MR][NV];
      for (int m = 0; m < MR; ++m)
        for (int v = 0; v < NV; ++v) acc8[m][v] = _mm256_setzero_si256();
      const size_t end8 = end16 - g < p.flush8 ? end16 : g + p.flush8;
      while (g < end8) {
        const size_t stop = rows.run(g, end8);
        for (; g < stop; ++g) {
          __m256i widx[NV];
          for (int v = 0; v < NV; ++v)
            widx[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wblk[v] + g * kGrouplutLanes));
          for (int m = 0; m < MR; ++m) {
            const __m256i t =
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tab + size_t(rows.code(m, g)) * 32));
            for (int v = 0; v < NV; ++v)
              acc8[m][v] = _mm256_add_epi8(acc8[m][v], _mm256_shuffle_epi8(t, widx[v]));
          }
        }
      }
      for (int m = 0; m < MR; ++m)  // int8 -> even/odd int16
        for (int v = 0; v < NV; ++v) {
          __m256i* e = reinterpret_cast<__m256i*>(e16[m][v]);
          __m256i* o = reinterpret_cast<__m256i*>(o16[m][v]);
          _mm256_store_si256(e, _mm256_add_epi16(_mm256_load_si256(e),
                                                 _mm256_srai_epi16(_mm256_slli_epi16(acc8[m][v], 8), 8)));
          _mm256_store_si256(o, _mm256_add_epi16(_mm256_load_si256(o), _mm256_srai_epi16(acc8[m][v], 8)));
        }
    }
    for (int m = 0; m < MR; ++m)  // int16 -> int32: channels 4i, 4i+1, 4i+2, 4i+3
      for (int v = 0; v < NV; ++v) {
        const __m256i e = _mm256_load_si256(reinterpret_cast<const __m256i*>(e16[m][v]));
        const __m256i o = _mm256_load_si256(reinterpret_cast<const __m256i*>(o16[m][v]));
        const __m256i parts[4] = {_mm256_srai_epi32(_mm256_slli_epi32(e, 16), 16),
                                  _mm256_srai_epi32(_mm256_slli_epi32(o, 16), 16), _mm256_srai_epi32(e, 16),
                                  _mm256_srai_epi32(o, 16)};
        for (int r = 0; r < 4; ++r) {
          __m256i* dst = reinterpret_cast<__m256i*>(acc32[m][v][r]);
          _mm256_store_si256(dst, first_flush ? parts[r] : _mm256_add_epi32(_mm256_load_si256(dst), parts[r]));
        }
      }
    first_flush = false;
  }
  if (first_flush)  // G == 0
    for (int m = 0; m < MR; ++m)
      for (int v = 0; v < NV; ++v)
        for (int r = 0; r < 4; ++r) _mm256_store_si256(reinterpret_cast<__m256i*>(acc32[m][v][r]), _mm256_setzero_si256());
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) {
      const size_t n0 = size_t(v) * kGrouplutLanes;
      if (n0 >= p.nr) break;
      store_block(acc32[m][v], p.c + size_t(m) * p.c_stride + n0, p.nr - n0);
    }
}

template <int NV>
void by_rows(const UKernelArgs& p) {
  switch (p.mr) {
    case 1: return tile<1, NV>(p);
    case 2: return tile<2, NV>(p);
    case 3: return tile<3, NV>(p);
    default: return tile<4, NV>(p);
  }
}

}  // namespace

void grouplut__avx2(const UKernelArgs& p) {
  if (p.nr > size_t(kGrouplutLanes)) return for_row_blocks(p, 4, by_rows<2>);
  return for_row_blocks(p, 4, by_rows<1>);
}

}  // namespace lowbit
