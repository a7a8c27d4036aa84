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
#include "core/simd_avx512.h"

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
#if LOWBIT_AVX512_VNNI
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

#if LOWBIT_X86_INLINE_ASM
// The full 8-row tile in assembly (the intrinsic form above compiles to a
// loop that keeps accumulators on the stack with GCC 12). zmm0-15 accumulate
// (row r: zmm 2r, 2r+1), zmm16/17 hold the weights of one k pair; rows are
// addressed as r0 + {0,1,2} * stride, r3 + {0,1,2} * stride, r6 + {0,1} * stride.
// VNNI: vpdpwssd with a {1to16} broadcast memory operand. Otherwise:
// vpbroadcastd into zmm18, vpmaddwd into zmm19, vpaddd.
#define LOWBIT_DOT512_VNNI_ROW(ADDR, A0, A1)                        \
  "vpdpwssd " ADDR "%{1to16%}, %%zmm16, %%zmm" A0 "\n\t"          \
  "vpdpwssd " ADDR "%{1to16%}, %%zmm17, %%zmm" A1 "\n\t"
#define LOWBIT_DOT512_MADD_ROW(ADDR, A0, A1)                        \
  "vpbroadcastd " ADDR ", %%zmm18\n\t"                              \
  "vpmaddwd %%zmm16, %%zmm18, %%zmm19\n\t"                          \
  "vpaddd %%zmm19, %%zmm" A0 ", %%zmm" A0 "\n\t"                    \
  "vpmaddwd %%zmm17, %%zmm18, %%zmm19\n\t"                          \
  "vpaddd %%zmm19, %%zmm" A1 ", %%zmm" A1 "\n\t"
#define LOWBIT_DOT512_STEP(ROW)                                               \
  "vmovdqu32 (%[w]), %%zmm16\n\t"                                             \
  "vmovdqu32 64(%[w]), %%zmm17\n\t"                                           \
  ROW("(%[r0])", "0", "1") ROW("(%[r0],%[st],1)", "2", "3")                    \
  ROW("(%[r0],%[st],2)", "4", "5") ROW("(%[r3])", "6", "7")                    \
  ROW("(%[r3],%[st],1)", "8", "9") ROW("(%[r3],%[st],2)", "10", "11")          \
  ROW("(%[r6])", "12", "13") ROW("(%[r6],%[st],1)", "14", "15")                \
  "add $128, %[w]\n\t"                                                        \
  "add $4, %[r0]\n\t"                                                         \
  "add $4, %[r3]\n\t"                                                         \
  "add $4, %[r6]\n\t"
#define LOWBIT_DOT512_ASM(ROW, ...)                                             \
  __asm__ volatile(                                                             \
      "vpxord %%zmm0, %%zmm0, %%zmm0\n\t" "vpxord %%zmm1, %%zmm1, %%zmm1\n\t"   \
      "vpxord %%zmm2, %%zmm2, %%zmm2\n\t" "vpxord %%zmm3, %%zmm3, %%zmm3\n\t"   \
      "vpxord %%zmm4, %%zmm4, %%zmm4\n\t" "vpxord %%zmm5, %%zmm5, %%zmm5\n\t"   \
      "vpxord %%zmm6, %%zmm6, %%zmm6\n\t" "vpxord %%zmm7, %%zmm7, %%zmm7\n\t"   \
      "vpxord %%zmm8, %%zmm8, %%zmm8\n\t" "vpxord %%zmm9, %%zmm9, %%zmm9\n\t"   \
      "vpxord %%zmm10, %%zmm10, %%zmm10\n\t" "vpxord %%zmm11, %%zmm11, %%zmm11\n\t" \
      "vpxord %%zmm12, %%zmm12, %%zmm12\n\t" "vpxord %%zmm13, %%zmm13, %%zmm13\n\t" \
      "vpxord %%zmm14, %%zmm14, %%zmm14\n\t" "vpxord %%zmm15, %%zmm15, %%zmm15\n\t" \
      "test %[n], %[n]\n\t"                                                     \
      "jz 2f\n\t"                                                               \
      ".p2align 4\n\t"                                                          \
      "1:\n\t"                                                                  \
      LOWBIT_DOT512_STEP(ROW)                                                   \
      "dec %[n]\n\t"                                                            \
      "jnz 1b\n\t"                                                              \
      "2:\n\t"                                                                  \
      "vmovdqa32 %%zmm0, 0(%[acc])\n\t" "vmovdqa32 %%zmm1, 64(%[acc])\n\t"      \
      "vmovdqa32 %%zmm2, 128(%[acc])\n\t" "vmovdqa32 %%zmm3, 192(%[acc])\n\t"   \
      "vmovdqa32 %%zmm4, 256(%[acc])\n\t" "vmovdqa32 %%zmm5, 320(%[acc])\n\t"   \
      "vmovdqa32 %%zmm6, 384(%[acc])\n\t" "vmovdqa32 %%zmm7, 448(%[acc])\n\t"   \
      "vmovdqa32 %%zmm8, 512(%[acc])\n\t" "vmovdqa32 %%zmm9, 576(%[acc])\n\t"   \
      "vmovdqa32 %%zmm10, 640(%[acc])\n\t" "vmovdqa32 %%zmm11, 704(%[acc])\n\t" \
      "vmovdqa32 %%zmm12, 768(%[acc])\n\t" "vmovdqa32 %%zmm13, 832(%[acc])\n\t" \
      "vmovdqa32 %%zmm14, 896(%[acc])\n\t" "vmovdqa32 %%zmm15, 960(%[acc])\n\t" \
      "vzeroupper\n\t"                                                          \
      : [w] "+r"(w), [r0] "+r"(r0), [r3] "+r"(r3), [r6] "+r"(r6), [n] "+r"(n)   \
      : [st] "r"(st), [acc] "r"(&acc[0][0])                                     \
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6",  \
        "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14",    \
        "xmm15", "xmm16", "xmm17", __VA_ARGS__)

template <bool VNNI>
void tile512_full(const UKernelArgs& p) {
  alignas(64) int32_t acc[8][kNR512];
  const uint8_t* w = p.w;
  const size_t st = p.a_stride;
  const uint8_t* r0 = p.a;
  const uint8_t* r3 = p.a + 3 * st;
  const uint8_t* r6 = p.a + 6 * st;
  size_t n = p.k_steps;
  if (VNNI) {
#if LOWBIT_AVX512_VNNI
    LOWBIT_DOT512_ASM(LOWBIT_DOT512_VNNI_ROW, "xmm18");
#endif
  } else {
    LOWBIT_DOT512_ASM(LOWBIT_DOT512_MADD_ROW, "xmm18", "xmm19");
  }
  for (int m = 0; m < 8; ++m) std::memcpy(p.c + size_t(m) * p.c_stride, acc[m], p.nr * sizeof(int32_t));
}
#undef LOWBIT_DOT512_ASM
#undef LOWBIT_DOT512_STEP
#undef LOWBIT_DOT512_MADD_ROW
#undef LOWBIT_DOT512_VNNI_ROW
#endif  // LOWBIT_X86_INLINE_ASM

template <bool VNNI>
void dotgemm_8x32(const UKernelArgs& p) {
  for_row_blocks(p, 8, [](const UKernelArgs& q) {
    switch (q.mr) {
      case 1: return tile512<1, VNNI>(q);
      case 2: return tile512<2, VNNI>(q);
      case 3: return tile512<3, VNNI>(q);
      case 4: return tile512<4, VNNI>(q);
      case 5: return tile512<5, VNNI>(q);
      case 6: return tile512<6, VNNI>(q);
      case 7: return tile512<7, VNNI>(q);
#if LOWBIT_X86_INLINE_ASM
      default: return tile512_full<VNNI>(q);
#else
      default: return tile512<8, VNNI>(q);  // same results, intrinsics only
#endif
    }
  });
}

}  // namespace
}  // namespace lowbit
