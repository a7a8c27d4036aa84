// dotgemm, AVX2 tier: vpmaddwd (int16 x int16 -> int32 pairs) + vpaddd.
// Tile: up to 6 rows x 16 channels. Per k pair: two 32-byte weight loads
// (16 channels x 2 levels) serve all rows; each row broadcasts its 32-bit
// activation pair once; 12 vpmaddwd + 12 vpaddd into 12 int32 accumulators
// (registers: 12 accumulators + 2 weights + 1 broadcast = 15 of 16 ymm).
// No narrow stage (bound in dotgemm.h). Also the AVX2 activation packer.
#include <immintrin.h>

#include <cstring>

#include "kernels/dotgemm/dotgemm.h"

namespace lowbit {
namespace {

constexpr int kNR = 16;
constexpr size_t kStepW = size_t(kNR) * kDotgemmStepBytes;  // weight bytes per k pair

inline __m256i bcast_pair(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// One k pair of the full 6 x 16 tile: ymm0-11 accumulate (row r: ymm 2r,
// 2r+1), ymm12/13 hold the weights, ymm14 the broadcast pair, ymm15 a product.
// Written in assembly: GCC's scheduling of the intrinsic form hoists the
// broadcasts and spills accumulators to the stack (about half the speed).
#define LOWBIT_DOT_ROW(ROW, A0, A1, OFF)                 \
  "vpbroadcastd " OFF "(%[" ROW "],%[k]), %%ymm14\n\t"  \
  "vpmaddwd %%ymm12, %%ymm14, %%ymm15\n\t"               \
  "vpaddd %%ymm15, %%ymm" A0 ", %%ymm" A0 "\n\t"         \
  "vpmaddwd %%ymm13, %%ymm14, %%ymm15\n\t"               \
  "vpaddd %%ymm15, %%ymm" A1 ", %%ymm" A1 "\n\t"
#define LOWBIT_DOT_STEP(WOFF, WOFF2, AOFF)                               \
  "vmovdqu " WOFF "(%[w]), %%ymm12\n\t"                                  \
  "vmovdqu " WOFF2 "(%[w]), %%ymm13\n\t"                                 \
  LOWBIT_DOT_ROW("a0", "0", "1", AOFF) LOWBIT_DOT_ROW("a1", "2", "3", AOFF) \
  LOWBIT_DOT_ROW("a2", "4", "5", AOFF) LOWBIT_DOT_ROW("a3", "6", "7", AOFF) \
  LOWBIT_DOT_ROW("a4", "8", "9", AOFF) LOWBIT_DOT_ROW("a5", "10", "11", AOFF)

void tile6(const UKernelArgs& p) {
  alignas(32) int32_t acc[6][kNR];
  const uint8_t* a0 = p.a;
  const uint8_t* a1 = a0 + p.a_stride;
  const uint8_t* a2 = a1 + p.a_stride;
  const uint8_t* a3 = a2 + p.a_stride;
  const uint8_t* a4 = a3 + p.a_stride;
  const uint8_t* a5 = a4 + p.a_stride;
  const uint8_t* w = p.w;
  size_t k = 0;                              // byte offset into the rows
  const size_t kend = p.k_steps * kDotgemmStepBytes;
  const size_t kodd = (p.k_steps & 1) * kDotgemmStepBytes;
  __asm__ volatile(
      "vpxor %%xmm0, %%xmm0, %%xmm0\n\t" "vpxor %%xmm1, %%xmm1, %%xmm1\n\t"
      "vpxor %%xmm2, %%xmm2, %%xmm2\n\t" "vpxor %%xmm3, %%xmm3, %%xmm3\n\t"
      "vpxor %%xmm4, %%xmm4, %%xmm4\n\t" "vpxor %%xmm5, %%xmm5, %%xmm5\n\t"
      "vpxor %%xmm6, %%xmm6, %%xmm6\n\t" "vpxor %%xmm7, %%xmm7, %%xmm7\n\t"
      "vpxor %%xmm8, %%xmm8, %%xmm8\n\t" "vpxor %%xmm9, %%xmm9, %%xmm9\n\t"
      "vpxor %%xmm10, %%xmm10, %%xmm10\n\t" "vpxor %%xmm11, %%xmm11, %%xmm11\n\t"
      "test %[kodd], %[kodd]\n\t"
      "jz 1f\n\t"
      LOWBIT_DOT_STEP("0", "32", "0")
      "add $64, %[w]\n\t"
      "add $4, %[k]\n\t"
      "1:\n\t"
      "cmp %[kend], %[k]\n\t"
      "jae 2f\n\t"
      ".p2align 4\n\t"
      "3:\n\t"
      LOWBIT_DOT_STEP("0", "32", "0")
      LOWBIT_DOT_STEP("64", "96", "4")
      "sub $-128, %[w]\n\t"
      "add $8, %[k]\n\t"
      "cmp %[kend], %[k]\n\t"
      "jb 3b\n\t"
      "2:\n\t"
      "vmovdqa %%ymm0, 0(%[acc])\n\t" "vmovdqa %%ymm1, 32(%[acc])\n\t"
      "vmovdqa %%ymm2, 64(%[acc])\n\t" "vmovdqa %%ymm3, 96(%[acc])\n\t"
      "vmovdqa %%ymm4, 128(%[acc])\n\t" "vmovdqa %%ymm5, 160(%[acc])\n\t"
      "vmovdqa %%ymm6, 192(%[acc])\n\t" "vmovdqa %%ymm7, 224(%[acc])\n\t"
      "vmovdqa %%ymm8, 256(%[acc])\n\t" "vmovdqa %%ymm9, 288(%[acc])\n\t"
      "vmovdqa %%ymm10, 320(%[acc])\n\t" "vmovdqa %%ymm11, 352(%[acc])\n\t"
      "vzeroupper\n\t"
      : [w] "+r"(w), [k] "+r"(k)
      : [a0] "r"(a0), [a1] "r"(a1), [a2] "r"(a2), [a3] "r"(a3), [a4] "r"(a4), [a5] "r"(a5),
        [kend] "r"(kend), [kodd] "r"(kodd), [acc] "r"(&acc[0][0])
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
  for (int m = 0; m < 6; ++m) std::memcpy(p.c + size_t(m) * p.c_stride, acc[m], p.nr * sizeof(int32_t));
}
#undef LOWBIT_DOT_STEP
#undef LOWBIT_DOT_ROW

// Edge tiles (fewer than 6 rows): intrinsics, few enough accumulators that
// the compiler keeps them in registers.
template <int MR>
void tile(const UKernelArgs& p) {
  __m256i acc[MR][2];
  for (int m = 0; m < MR; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_si256();
  const uint8_t* a[MR];
  for (int m = 0; m < MR; ++m) a[m] = p.a + size_t(m) * p.a_stride;
  const uint8_t* w = p.w;
  const size_t S = p.k_steps;
  for (size_t s = 0; s < S; ++s) {
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32));
    for (int m = 0; m < MR; ++m) {
      const __m256i x = bcast_pair(a[m] + s * kDotgemmStepBytes);
      acc[m][0] = _mm256_add_epi32(acc[m][0], _mm256_madd_epi16(x, w0));
      acc[m][1] = _mm256_add_epi32(acc[m][1], _mm256_madd_epi16(x, w1));
    }
    w += kStepW;
  }
  for (int m = 0; m < MR; ++m) {
    alignas(32) int32_t tmp[kNR];
    _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), acc[m][0]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(tmp + 8), acc[m][1]);
    std::memcpy(p.c + size_t(m) * p.c_stride, tmp, p.nr * sizeof(int32_t));
  }
}

// 32 codes (< 16) -> 32 int16 levels via two vpshufb (low and high bytes).
inline void decode32_small(const uint8_t* src, int16_t* dst, __m256i tlo, __m256i thi, __m256i* seen) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
  *seen = _mm256_or_si256(*seen, v);
  const __m256i lo = _mm256_shuffle_epi8(tlo, v), hi = _mm256_shuffle_epi8(thi, v);
  const __m256i r0 = _mm256_unpacklo_epi8(lo, hi);  // codes 0-7 | 16-23
  const __m256i r1 = _mm256_unpackhi_epi8(lo, hi);  // codes 8-15 | 24-31
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_permute2x128_si256(r0, r1, 0x20));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 16), _mm256_permute2x128_si256(r0, r1, 0x31));
}

}  // namespace

void dotgemm_6x16__avx2(const UKernelArgs& p) {
  for_row_blocks(p, 6, [](const UKernelArgs& q) {
    switch (q.mr) {
      case 1: return tile<1>(q);
      case 2: return tile<2>(q);
      case 3: return tile<3>(q);
      case 4: return tile<4>(q);
      case 5: return tile<5>(q);
      default: return tile6(q);
    }
  });
}

bool dotgemm_pack_a__avx2(const uint8_t* codes, size_t M, size_t K, int bits, const int16_t* levels, int16_t* out,
                          size_t out_cols) {
  const size_t kvec = K / 32 * 32;
  const size_t nlev = size_t(1) << bits;
  unsigned seen_tail = 0;
  __m256i seen = _mm256_setzero_si256();
  // 8-bit codebooks that are a shift of the codes (level = code + off, e.g.
  // the default 0..255) or the codes read as int8 (level = int8(code)) widen
  // directly; any other 8-bit codebook goes through the scalar table.
  int mode = 0;  // 0: table (scalar for 8 bits, vpshufb below), 1: code + off, 2: int8(code)
  int16_t off = 0;
  if (bits == 8) {
    bool affine = true, as_int8 = true;
    off = levels[0];
    for (size_t i = 0; i < nlev; ++i) {
      affine = affine && levels[i] == int16_t(int(i) + off);
      as_int8 = as_int8 && levels[i] == int16_t(int8_t(uint8_t(i)));
    }
    mode = affine ? 1 : as_int8 ? 2 : 0;
    if (mode == 0) return dotgemm_pack_a__scalar(codes, M, K, bits, levels, out, out_cols);
  }
  alignas(16) uint8_t lo_b[16] = {0}, hi_b[16] = {0};
  if (bits <= 4)
    for (size_t i = 0; i < nlev; ++i) {
      lo_b[i] = uint8_t(uint16_t(levels[i]) & 0xFF);
      hi_b[i] = uint8_t(uint16_t(levels[i]) >> 8);
    }
  const __m256i tlo = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(lo_b)));
  const __m256i thi = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(hi_b)));
  const __m256i voff = _mm256_set1_epi16(off);
  const unsigned mask = unsigned(nlev - 1);
  for (size_t m = 0; m < M; ++m) {
    const uint8_t* row = codes + m * K;
    int16_t* dst = out + m * out_cols;
    for (size_t k = 0; k < kvec; k += 32) {
      if (bits <= 4) {
        decode32_small(row + k, dst + k, tlo, thi, &seen);
      } else {
        for (int h = 0; h < 2; ++h) {
          const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k + 16 * h));
          const __m256i x = mode == 1 ? _mm256_add_epi16(_mm256_cvtepu8_epi16(v), voff) : _mm256_cvtepi8_epi16(v);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k + 16 * h), x);
        }
      }
    }
    for (size_t k = kvec; k < K; ++k) {
      seen_tail |= row[k];
      dst[k] = levels[row[k] & mask];
    }
    for (size_t k = K; k < out_cols; ++k) dst[k] = 0;
  }
  alignas(32) uint8_t lanes[32];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), seen);
  for (uint8_t b : lanes) seen_tail |= b;
  return (seen_tail >> bits) == 0;
}

}  // namespace lowbit
