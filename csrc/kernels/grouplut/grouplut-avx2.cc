// grouplut, AVX2 tier. Tile: up to 4 rows x 64 channels (two 32-channel
// blocks of the layout). Per group: one 32-byte load of weight indices per
// block serves all rows; each row loads its table (picked by its
// activation group code) once and does one vpshufb + vpaddb per block: 32
// lanes x gw multiply-accumulates per lookup.
// int8 accumulators live in registers; every flush8 groups they are widened
// (vpmaddubsw with a byte mask) into even/odd-channel int16 sums kept on the
// stack, and every flush16 widenings those are widened into int32 in natural
// channel order (bounds in grouplut.h); the last chunk is stored directly.
#include <immintrin.h>

#include "kernels/grouplut/grouplut.h"

namespace lowbit {
namespace {

// Stores the 32 int32 sums of one block (v[0]: channels 0-7, ... v[3]:
// 24-31) to dst; only the first `count` channels when count < 32.
inline void store_block(const __m256i v[4], int32_t* dst, size_t count) {
  for (int j = 0; j < 4; ++j) {
    const size_t base = size_t(j) * 8;
    if (count >= base + 8) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + base), v[j]);
    } else if (count > base) {
      const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
      const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(count - base)), lane);
      _mm256_maskstore_epi32(dst + base, mask, v[j]);
    }
  }
}

// Even-channel (e) and odd-channel (o) int16 sums of one block -> int32 in
// natural channel order.
inline void widen_natural(__m256i e, __m256i o, __m256i v[4]) {
  const __m256i lo = _mm256_unpacklo_epi16(e, o);  // channels 0-7 | 16-23
  const __m256i hi = _mm256_unpackhi_epi16(e, o);  // channels 8-15 | 24-31
  v[0] = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(lo));
  v[1] = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(hi));
  v[2] = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(lo, 1));
  v[3] = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(hi, 1));
}

// kTableStride: bytes between tables per unit of activation byte, i.e. 32 when
// the bytes hold plain group codes and 8 when they hold code << 2 (the table
// address is then one base + index * 8 addressing mode, no shift in the loop).
template <int MR, int NV, int kTableStride>
void tile(const UKernelArgs& p) {
  const uint8_t* tab = reinterpret_cast<const uint8_t*>(p.tables);
  const size_t G = p.k_steps;
  const uint8_t* wblk[NV];  // block b+1 follows block b
  for (int v = 0; v < NV; ++v) wblk[v] = p.w + size_t(v) * G * kGrouplutLanes;
  // int16 sums: e16[m][v] holds channels 2j, o16 channels 2j+1 of block v.
  alignas(32) int16_t e16[MR][NV][16], o16[MR][NV][16];
  // int32 sums in natural channel order; only used when K spans several int16 chunks.
  alignas(32) int32_t acc32[MR][NV][32];
  // vpmaddubsw(byte mask, int8 sums) sign-extends the even (odd) bytes into
  // int16 on the multiply pipes, leaving the shuffle pipes to vpshufb.
  const __m256i even_bytes = _mm256_set1_epi16(0x0001), odd_bytes = _mm256_set1_epi16(0x0100);
  const __m256i correction = _mm256_set1_epi32(p.correction);
  const size_t chunk16 = size_t(p.flush8) * p.flush16;
  StepCursor<MR> rows(p);  // activation bytes, direct or indirect
  bool first_chunk = true;
  size_t g = 0;
  do {
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
            const __m256i t = _mm256_loadu_si256(
                reinterpret_cast<const __m256i*>(tab + size_t(rows.code(m, g)) * kTableStride));
            for (int v = 0; v < NV; ++v)
              acc8[m][v] = _mm256_add_epi8(acc8[m][v], _mm256_shuffle_epi8(t, widx[v]));
          }
        }
      }
      for (int m = 0; m < MR; ++m)  // int8 -> even/odd int16
        for (int v = 0; v < NV; ++v) {
          __m256i* e = reinterpret_cast<__m256i*>(e16[m][v]);
          __m256i* o = reinterpret_cast<__m256i*>(o16[m][v]);
          _mm256_store_si256(e, _mm256_add_epi16(_mm256_load_si256(e), _mm256_maddubs_epi16(even_bytes, acc8[m][v])));
          _mm256_store_si256(o, _mm256_add_epi16(_mm256_load_si256(o), _mm256_maddubs_epi16(odd_bytes, acc8[m][v])));
        }
    }
    // int16 -> int32: the last chunk goes straight to the output
    const bool last_chunk = g >= G;
    for (int m = 0; m < MR; ++m)
      for (int v = 0; v < NV; ++v) {
        const size_t n0 = size_t(v) * kGrouplutLanes;
        if (last_chunk && n0 >= p.nr) break;
        __m256i q[4];
        widen_natural(_mm256_load_si256(reinterpret_cast<const __m256i*>(e16[m][v])),
                      _mm256_load_si256(reinterpret_cast<const __m256i*>(o16[m][v])), q);
        __m256i* sums = reinterpret_cast<__m256i*>(acc32[m][v]);
        if (!first_chunk)
          for (int j = 0; j < 4; ++j) q[j] = _mm256_add_epi32(q[j], _mm256_load_si256(sums + j));
        if (last_chunk) {
          for (int j = 0; j < 4; ++j) q[j] = _mm256_sub_epi32(q[j], correction);
          store_block(q, p.c + size_t(m) * p.c_stride + n0, p.nr - n0);
        } else {
          for (int j = 0; j < 4; ++j) _mm256_store_si256(sums + j, q[j]);
        }
      }
    first_chunk = false;
  } while (g < G);
}

template <int NV, int kTableStride>
void by_rows(const UKernelArgs& p) {
  switch (p.mr) {
    case 1: return tile<1, NV, kTableStride>(p);
    case 2: return tile<2, NV, kTableStride>(p);
    case 3: return tile<3, NV, kTableStride>(p);
    default: return tile<4, NV, kTableStride>(p);
  }
}

}  // namespace

void grouplut__avx2(const UKernelArgs& p) {
  const bool two_blocks = p.nr > size_t(kGrouplutLanes);
  if (p.a_code_shift == 2)
    return for_row_blocks(p, 4, two_blocks ? by_rows<2, 8> : by_rows<1, 8>);
  return for_row_blocks(p, 4, two_blocks ? by_rows<2, 32> : by_rows<1, 32>);
}

}  // namespace lowbit
