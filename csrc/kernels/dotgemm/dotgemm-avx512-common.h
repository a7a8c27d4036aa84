// The AVX-512 dotgemm tile, shared by the __avx512 (vpmaddwd + vpaddd) and
// __avx512icl (vpdpwssd) kernels. Everything has internal linkage: each
// including translation unit compiles its own copy with its own ISA flags, so
// no instruction of one tier leaks into another.
//
// Tile: up to 8 rows x 32 channels (two zmm of 16 int32 lanes per row):
// 16 accumulators + 2 weight registers + 1 broadcast, of 32 zmm. Per k pair:
// two 64-byte weight loads serve all rows; each row broadcasts its 32-bit
// activation pair ({1to16} memory operand). Accumulator bound: dotgemm.h (no
// narrow stage; vpdpwssd is the non-saturating form, so it wraps exactly like
// vpmaddwd + vpaddd).
#pragma once
#include <immintrin.h>

#include <cstring>

#include "kernels/dotgemm/dotgemm.h"

namespace lowbit {
namespace {

constexpr int kNR512 = 32;
constexpr size_t kStepW512 = size_t(kNR512) * kDotgemmStepBytes;  // weight bytes per k pair

inline __m512i bcast_pair512(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

template <bool VNNI>
inline __m512i dot_acc(__m512i acc, __m512i x, __m512i w) {
#if defined(__AVX512VNNI__)
  if (VNNI) return _mm512_dpwssd_epi32(acc, x, w);
#endif
  return _mm512_add_epi32(acc, _mm512_madd_epi16(x, w));
}

template <int MR, bool VNNI>
void tile512(const UKernelArgs& p) {
  __m512i acc[MR][2];
  for (int m = 0; m < MR; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_si512();
  const uint8_t* a[MR];
  for (int m = 0; m < MR; ++m) a[m] = p.a + size_t(m) * p.a_stride;
  const uint8_t* w = p.w;
  const size_t S = p.k_steps;
  for (size_t s = 0; s < S; ++s) {
    const __m512i w0 = _mm512_loadu_si512(w);
    const __m512i w1 = _mm512_loadu_si512(w + 64);
    for (int m = 0; m < MR; ++m) {
      const __m512i x = bcast_pair512(a[m] + s * kDotgemmStepBytes);
      acc[m][0] = dot_acc<VNNI>(acc[m][0], x, w0);
      acc[m][1] = dot_acc<VNNI>(acc[m][1], x, w1);
    }
    w += kStepW512;
  }
  // Channels [0, nr) of the tile: masked stores for a partial last tile.
  const size_t nr = p.nr;
  const __mmask16 k0 = nr >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << nr) - 1u);
  const __mmask16 k1 = nr >= 32 ? __mmask16(0xFFFF) : nr > 16 ? __mmask16((1u << (nr - 16)) - 1u) : __mmask16(0);
  for (int m = 0; m < MR; ++m) {
    int32_t* c = p.c + size_t(m) * p.c_stride;
    _mm512_mask_storeu_epi32(c, k0, acc[m][0]);
    _mm512_mask_storeu_epi32(c + 16, k1, acc[m][1]);
  }
}

template <bool VNNI>
void dotgemm_8x32(const UKernelArgs& p) {
  switch (p.mr) {
    case 1: return tile512<1, VNNI>(p);
    case 2: return tile512<2, VNNI>(p);
    case 3: return tile512<3, VNNI>(p);
    case 4: return tile512<4, VNNI>(p);
    case 5: return tile512<5, VNNI>(p);
    case 6: return tile512<6, VNNI>(p);
    case 7: return tile512<7, VNNI>(p);
    default: return tile512<8, VNNI>(p);
  }
}

}  // namespace
}  // namespace lowbit
