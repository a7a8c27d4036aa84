// grouplut6, __avx512icl tier. Two register tiles (bounds in grouplut6.h):
//
// grouplut6__avx512icl (4 rows x 64 channels): per group one 64-byte load of
// weight indices serves up to 4 rows; each row loads its 64-byte table
// (picked by its activation group code) and does one vpermb + vpaddb:
// 64 lanes x gw multiply-accumulates per lookup. int8 lanes are widened to
// even/odd int16 sums every flush8 groups (shifts) and to int32 every flush16
// widenings.
//
// grouplut6_4x128__avx512icl (4 rows x 128 channels): each loaded table serves
// two 64-channel blocks (two vpermb), so a group costs 2 weight loads + 4
// table loads for 8 lookups instead of 5 loads for 4. The int8 lanes are
// widened with vpmaddubsw against 0/1 byte selectors (multiply pipes, off the
// shuffle port vpermb needs) into even/odd int16 accumulators kept in
// registers (8 int8 + 16 int16 zmm), and to int32 every flush16 widenings.
// A tile of at most 64 channels (N = 32, N = 64, the last tile of
// N = 64 (mod 128)) runs one block only. Built with the avx512icl flags only.
#include "core/simd_avx512.h"

#include "kernels/grouplut6/grouplut6.h"

namespace lowbit {
namespace {

template <int MR>
void tile(const UKernelArgs& p) {
  const uint8_t* tab = reinterpret_cast<const uint8_t*>(p.tables);
  const size_t G = p.k_steps;
  alignas(64) int16_t e16[MR][32], o16[MR][32];   // channels 2j / 2j+1
  alignas(64) int32_t acc32[MR][4][16] = {};      // acc32[m][r][i]: channel 4i + r
  const size_t chunk16 = size_t(p.flush8) * p.flush16;
  StepCursor<MR> rows(p);  // activation group codes, direct or indirect
  size_t g = 0;
  while (g < G) {
    for (int m = 0; m < MR; ++m) {
      _mm512_store_si512(e16[m], _mm512_setzero_si512());
      _mm512_store_si512(o16[m], _mm512_setzero_si512());
    }
    const size_t end16 = G - g < chunk16 ? G : g + chunk16;
    while (g < end16) {
      __m512i acc8[MR];
      for (int m = 0; m < MR; ++m) acc8[m] = _mm512_setzero_si512();
      const size_t end8 = end16 - g < p.flush8 ? end16 : g + p.flush8;
      while (g < end8) {
        const size_t stop = rows.run(g, end8);
        for (; g < stop; ++g) {
          const __m512i widx = _mm512_loadu_si512(p.w + g * kGrouplut6Lanes);
          for (int m = 0; m < MR; ++m) {
            const __m512i t = _mm512_loadu_si512(tab + size_t(rows.code(m, g)) * 64);
            acc8[m] = _mm512_add_epi8(acc8[m], _mm512_permutexvar_epi8(widx, t));
          }
        }
      }
      for (int m = 0; m < MR; ++m) {
        _mm512_store_si512(e16[m], _mm512_add_epi16(_mm512_load_si512(e16[m]),
                                                    _mm512_srai_epi16(_mm512_slli_epi16(acc8[m], 8), 8)));
        _mm512_store_si512(o16[m], _mm512_add_epi16(_mm512_load_si512(o16[m]), _mm512_srai_epi16(acc8[m], 8)));
      }
    }
    for (int m = 0; m < MR; ++m) {
      const __m512i e = _mm512_load_si512(e16[m]), o = _mm512_load_si512(o16[m]);
      const __m512i parts[4] = {_mm512_srai_epi32(_mm512_slli_epi32(e, 16), 16),
                                _mm512_srai_epi32(_mm512_slli_epi32(o, 16), 16), _mm512_srai_epi32(e, 16),
                                _mm512_srai_epi32(o, 16)};
      for (int r = 0; r < 4; ++r)
        _mm512_store_si512(acc32[m][r], _mm512_add_epi32(_mm512_load_si512(acc32[m][r]), parts[r]));
    }
  }
  // natural channel order: out[16j + l] = acc32[m][(16j+l) & 3][(16j+l) >> 2]
  for (size_t m = 0; m < size_t(MR); ++m)
    for (size_t j = 0; j * 16 < p.nr; ++j) {
      const __m512i lane = _mm512_add_epi32(_mm512_set1_epi32(int(16 * j)),
                                            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
      const __m512i idx = _mm512_add_epi32(_mm512_slli_epi32(_mm512_and_si512(lane, _mm512_set1_epi32(3)), 4),
                                           _mm512_srli_epi32(lane, 2));
      const __m512i v = _mm512_i32gather_epi32(idx, &acc32[m][0][0], 4);
      const size_t left = p.nr - 16 * j;
      const __mmask16 k = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
      _mm512_mask_storeu_epi32(p.c + m * p.c_stride + 16 * j, k, v);
    }
}

// ---- 4 rows x 128 channels: each table reused by NB = 2 blocks (or 1 for a tile of <= 64 channels)
template <int MR, int NB>
void tile_reuse(const UKernelArgs& p) {
  const uint8_t* tab = reinterpret_cast<const uint8_t*>(p.tables);
  const size_t G = p.k_steps;
  const uint8_t* wblock[NB];  // block b of the tile: channels 64b .. 64b + 63
  for (int b = 0; b < NB; ++b) wblock[b] = p.w + size_t(b) * G * kGrouplut6Lanes;
  // int32 sums of channels 64b + 2j (even) and 64b + 2j + 1 (odd), j < 32
  alignas(64) int32_t even32[MR][NB][32] = {}, odd32[MR][NB][32] = {};
  const __m512i pick_even = _mm512_set1_epi16(0x0001), pick_odd = _mm512_set1_epi16(0x0100);
  const size_t chunk16 = size_t(p.flush8) * p.flush16;
  StepCursor<MR> rows(p);
  size_t g = 0;
  while (g < G) {
    __m512i e16[MR][NB], o16[MR][NB];  // int16: channel 2j / 2j + 1 of the block in lane j
    for (int m = 0; m < MR; ++m)
      for (int b = 0; b < NB; ++b) e16[m][b] = o16[m][b] = _mm512_setzero_si512();
    const size_t end16 = G - g < chunk16 ? G : g + chunk16;
    while (g < end16) {
      __m512i acc8[MR][NB];
      for (int m = 0; m < MR; ++m)
        for (int b = 0; b < NB; ++b) acc8[m][b] = _mm512_setzero_si512();
      const size_t end8 = end16 - g < p.flush8 ? end16 : g + p.flush8;
      while (g < end8) {
        const size_t stop = rows.run(g, end8);
        for (; g < stop; ++g) {
          __m512i widx[NB];
          for (int b = 0; b < NB; ++b) widx[b] = _mm512_loadu_si512(wblock[b] + g * kGrouplut6Lanes);
          for (int m = 0; m < MR; ++m) {
            const __m512i t = _mm512_loadu_si512(tab + size_t(rows.code(m, g)) * 64);
            for (int b = 0; b < NB; ++b) acc8[m][b] = _mm512_add_epi8(acc8[m][b], _mm512_permutexvar_epi8(widx[b], t));
          }
        }
      }
      // vpmaddubsw(selector u8, sums s8): 1 * the picked byte + 0 * its neighbour, exact in int16
      for (int m = 0; m < MR; ++m)
        for (int b = 0; b < NB; ++b) {
          e16[m][b] = _mm512_add_epi16(e16[m][b], _mm512_maddubs_epi16(pick_even, acc8[m][b]));
          o16[m][b] = _mm512_add_epi16(o16[m][b], _mm512_maddubs_epi16(pick_odd, acc8[m][b]));
        }
    }
    for (int m = 0; m < MR; ++m)
      for (int b = 0; b < NB; ++b)
        for (int h = 0; h < 2; ++h) {  // int16 lanes 16h .. 16h + 15 -> int32
          int32_t* e = even32[m][b] + 16 * h;
          int32_t* o = odd32[m][b] + 16 * h;
          const __m256i eh = h ? _mm512_extracti64x4_epi64(e16[m][b], 1) : _mm512_castsi512_si256(e16[m][b]);
          const __m256i oh = h ? _mm512_extracti64x4_epi64(o16[m][b], 1) : _mm512_castsi512_si256(o16[m][b]);
          _mm512_store_si512(e, _mm512_add_epi32(_mm512_load_si512(e), _mm512_cvtepi16_epi32(eh)));
          _mm512_store_si512(o, _mm512_add_epi32(_mm512_load_si512(o), _mm512_cvtepi16_epi32(oh)));
        }
  }
  // natural channel order: channel 32q + 2j + s comes from (s ? odd : even)[j] of quarter q
  const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512i correction = _mm512_set1_epi32(p.correction);
  for (size_t m = 0; m < size_t(MR); ++m)
    for (size_t q = 0; q * 32 < p.nr; ++q) {  // 32 channels: 16 even + 16 odd sums
      const __m512i e = _mm512_load_si512(even32[m][q / 2] + 16 * (q % 2));
      const __m512i o = _mm512_load_si512(odd32[m][q / 2] + 16 * (q % 2));
      const __m512i halves[2] = {_mm512_permutex2var_epi32(e, first, o), _mm512_permutex2var_epi32(e, second, o)};
      for (size_t h = 0; h < 2; ++h) {
        const size_t n0 = 32 * q + 16 * h;
        if (n0 >= p.nr) break;
        const size_t left = p.nr - n0;
        const __mmask16 k = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
        _mm512_mask_storeu_epi32(p.c + m * p.c_stride + n0, k, _mm512_sub_epi32(halves[h], correction));
      }
    }
}

template <int MR>
void tile_reuse_rows(const UKernelArgs& q) {
  if (q.nr > size_t(kGrouplut6Lanes)) return tile_reuse<MR, 2>(q);
  tile_reuse<MR, 1>(q);
}

}  // namespace

void grouplut6_4x128__avx512icl(const UKernelArgs& p) {
  for_row_blocks(p, 4, [](const UKernelArgs& q) {
    switch (q.mr) {
      case 1: return tile_reuse_rows<1>(q);
      case 2: return tile_reuse_rows<2>(q);
      case 3: return tile_reuse_rows<3>(q);
      default: return tile_reuse_rows<4>(q);
    }
  });
}

void grouplut6__avx512icl(const UKernelArgs& p) {
  for_row_blocks(p, 4, [](const UKernelArgs& q) {
    switch (q.mr) {
      case 1: return tile<1>(q);
      case 2: return tile<2>(q);
      case 3: return tile<3>(q);
      default: return tile<4>(q);
    }
  });
}

}  // namespace lowbit
